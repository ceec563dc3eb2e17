//! Fleet mode's benchmark (docs/performance.md, `bash scripts/bench_fleet.sh`): N hosts each ship
//! P partials of one hour into one PostgreSQL through the real ship stage, then the lease holder
//! closes the hour (sums N × P partials into records ready to submit). Prints the times and the
//! round trips.
//!
//! `fleet_bench --url postgres://… [--hosts 10] [--partials 100000]`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use meterd::aggregate::SealedRecord;
use meterd::clock::{Clock, hour_of};
use meterd::context::Context;
use meterd::fleet::db::Target;
use meterd::fleet::ship::Shipper;
use meterd::fleet::{FleetSettings, close, lease};
use meterd::model::{Customer, LateEvents, RecordKey, Scope};
use meterd::outbox::{Outbox, RecordState, StoredRecord};

/// Partials per ship transaction (src/fleet/ship.rs) and statements per transaction: BEGIN,
/// hours, hours FOR SHARE, known partials, the rows, the host's row, COMMIT.
const BATCH: usize = 500;
const STATEMENTS_PER_BATCH: usize = 7;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.into())
}

fn host_partials(host: usize, partials: usize, hour: i64) -> BTreeMap<(i64, String), StoredRecord> {
    (0..partials)
        .map(|i| {
            let key = RecordKey {
                scope: Scope::ProductCode("prod-bench".into()),
                customer: Customer::AwsAccountId(format!("{:012}", 100_000_000_000u64 + i as u64)),
                dimension: "requests".into(),
                hour,
            };
            let record = SealedRecord { key, quantity: 1 + host as u32, allocations: Vec::new() };
            let stored =
                StoredRecord { record, sealed_at: hour + 3900, state: RecordState::Pending, generation: 0 };
            ((hour, format!("{i:08}")), stored)
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = arg("--url", "");
    let hosts: usize = arg("--hosts", "10").parse()?;
    let partials: usize = arg("--partials", "100000").parse()?;
    let target = Target::new(&url, std::path::Path::new(""), std::path::Path::new(""), "bench")?;
    target.migrate().await?;
    let now = Clock::default().now();
    let hour = hour_of(now) - 3 * 3600;
    let dirs: Vec<tempfile::TempDir> = (0..hosts).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let mut shippers = Vec::new();
    for (host, dir) in dirs.iter().enumerate() {
        let (outbox, _) = Outbox::open(dir.path(), Default::default())?;
        let settings = FleetSettings {
            host_id: format!("bench-{host}"),
            close_after: 600,
            host_timeout: 120,
            lease_ttl: 30,
            deadline: 24 * 3600,
            late_events: LateEvents::CarryForward,
            retention: 35 * 86_400,
        };
        let (_, sealed_through) = tokio::sync::watch::channel(Some(hour));
        shippers.push(Shipper {
            ctx: Context::new(Clock::default()),
            settings: Arc::new(settings),
            target: target.clone(),
            outbox: Arc::new(outbox),
            pending: host_partials(host, partials, hour),
            sealed_through,
            stop_by: tokio::sync::watch::channel(None).1,
        });
    }
    let started = Instant::now();
    let tasks: Vec<_> = shippers
        .into_iter()
        .map(|mut shipper| {
            tokio::spawn(async move {
                let started = Instant::now();
                shipper.ship_pending().await.map(|()| started.elapsed())
            })
        })
        .collect();
    let mut slowest = 0f64;
    for task in tasks {
        slowest = slowest.max(task.await??.as_secs_f64());
    }
    let ship_secs = started.elapsed().as_secs_f64();
    let round_trips = partials.div_ceil(BATCH) * STATEMENTS_PER_BATCH;
    println!(
        "ship hosts={hosts} partials_per_host={partials} all_hosts_s={ship_secs:.2} slowest_host_s={slowest:.2} partials_per_s={:.0} round_trips_per_host={round_trips}",
        (hosts * partials) as f64 / ship_secs
    );

    let mut client = target.connect().await?;
    let held = lease::acquire(&client, "bench-holder", now, 600, None).await?.expect("the lease is free");
    let started = Instant::now();
    let records = close::close(&mut client, hour, held.epoch, now).await?.expect("the hour is open");
    let close_secs = started.elapsed().as_secs_f64();
    let total: u64 = records.iter().map(|r| u64::from(r.quantity)).sum();
    let expected: u64 = (0..hosts as u64).map(|h| (h + 1) * partials as u64).sum();
    assert_eq!(total, expected, "the sums are exact");
    println!(
        "close partials={} records={} close_s={close_secs:.2} round_trips={}",
        hosts * partials,
        records.len(),
        5 + records.len().div_ceil(1000)
    );
    Ok(())
}
