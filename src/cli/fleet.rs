//! `meterd fleet status`: the fleet as PostgreSQL sees it — hosts, the lease, hours waiting and
//! for which hosts, records by state, late partials — read straight from the database.

use std::process::ExitCode;

use serde::Serialize;

use crate::clock::Clock;
use crate::config::Config;
use crate::fleet::FleetSettings;
use crate::fleet::db::{DbError, Target};

#[derive(Debug, Serialize)]
struct Host {
    host_id: String,
    heartbeat_age_secs: i64,
    shipped_through: Option<i64>,
    deregistered: bool,
    alive: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    this_host: String,
    schema: String,
    hosts: Vec<Host>,
    lease_holder: String,
    lease_epoch: i64,
    lease_expires_in_secs: i64,
    /// Open hours that have ended, with the hosts each one waits for.
    waiting_hours: Vec<(i64, Vec<String>)>,
    records: Vec<(String, i64)>,
    late_partials_carried: i64,
    late_partials_dead: i64,
}

/// Prints the fleet's state; exit 1 when fleet mode is off or the database cannot be read.
pub fn status(config: &Config, json: bool) -> ExitCode {
    if !config.fleet() {
        eprintln!("meterd: fleet mode is off (fleet.database_url is not set)");
        return ExitCode::FAILURE;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    match runtime.block_on(report(config)) {
        Ok(report) if json => {
            println!("{}", serde_json::to_string_pretty(&report).expect("a report encodes"));
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print_report(&report);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("meterd: cannot read the fleet database: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn report(config: &Config) -> Result<Report, DbError> {
    let fleet = &config.fleet;
    let this_host =
        crate::fleet::host::host_id(&fleet.host_id).await.unwrap_or_else(|err| format!("({err})"));
    let target = Target::new(&fleet.database_url, &fleet.password_file, &fleet.ca_file, &fleet.schema)?;
    let client = target.connect().await?;
    let settings = FleetSettings::new(config, this_host.clone());
    let now = Clock::from_env().unwrap_or_default().now();
    let hosts = client
        .query("SELECT host_id, heartbeat, shipped_through, deregistered_at FROM hosts ORDER BY host_id", &[])
        .await?
        .into_iter()
        .map(|row| {
            let heartbeat: i64 = row.get(1);
            let deregistered = row.get::<_, Option<i64>>(3).is_some();
            Host {
                host_id: row.get(0),
                heartbeat_age_secs: now - heartbeat,
                shipped_through: row.get(2),
                deregistered,
                alive: !deregistered && now - heartbeat <= settings.host_timeout,
            }
        })
        .collect();
    let (lease_holder, lease_epoch, expires) = crate::fleet::lease::holder(&client).await?;
    let waiting_hours = crate::fleet::close::due_hours(&client, &settings, now).await?;
    let records = client
        .query("SELECT state, count(*) FROM records GROUP BY state ORDER BY state", &[])
        .await?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let late = client
        .query_one("SELECT count(carried_to), count(*) - count(carried_to) FROM late_partials", &[])
        .await?;
    Ok(Report {
        this_host,
        schema: fleet.schema.clone(),
        hosts,
        lease_holder,
        lease_epoch,
        lease_expires_in_secs: expires - now,
        waiting_hours,
        records,
        late_partials_carried: late.get(0),
        late_partials_dead: late.get(1),
    })
}

fn print_report(report: &Report) {
    println!("this host:      {}", report.this_host);
    println!("schema:         {}", report.schema);
    println!(
        "lease:          {} (epoch {}, expires in {}s)",
        report.lease_holder, report.lease_epoch, report.lease_expires_in_secs
    );
    println!("hosts:");
    for host in &report.hosts {
        let state = if host.deregistered {
            "deregistered"
        } else if host.alive {
            "alive"
        } else {
            "silent"
        };
        let through = host.shipped_through.map_or("-".into(), crate::admin::time_text);
        println!(
            "  {:<40} {state:<12} heartbeat {}s ago, shipped through {through}",
            host.host_id, host.heartbeat_age_secs
        );
    }
    println!("hours ended and still open:");
    for (hour, waiting) in &report.waiting_hours {
        let waiting = if waiting.is_empty() {
            "closing".to_string()
        } else {
            format!("waiting for {}", waiting.join(", "))
        };
        println!("  {}  {waiting}", crate::admin::time_text(*hour));
    }
    let records: Vec<String> = report.records.iter().map(|(state, n)| format!("{state} {n}")).collect();
    println!("records:        {}", if records.is_empty() { "none".into() } else { records.join(", ") });
    println!(
        "late partials:  {} carried, {} dead letters",
        report.late_partials_carried, report.late_partials_dead
    );
}
