//! Fleet mode against a real PostgreSQL (started by the test) and the emulator: several meterd
//! processes ship partials, one holds the submitter lease, closes hours and submits their sums.

mod common;

use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd, event};
use common::fleet::{
    Billing, H, billed, events_now, fleet, lease_held, send_killing_host_b, usage, wait_until,
};
use common::hour_start;
use common::pg::Pg;
use serde_json::{Value, json};

#[test]
fn three_hosts_bill_the_sum_once_through_kills_and_a_database_restart() {
    let pg = Pg::start();
    let emu = Emu::start(|_| {});
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let hosts = ["host-a", "host-b", "host-c"];
    // The hosts are down for four hours below: long enough a host timeout and close delay that
    // the fleet waits for every one of them to ship before it closes the hours (the holder closes
    // as soon as it may).
    let start = |i: usize, offset: i64| {
        fleet(dirs[i].path(), &emu, &pg, hosts[i])
            .env("METERD_FLEET__HOST_TIMEOUT", "6h")
            .env("METERD_FLEET__CLOSE_AFTER", "6h")
            .offset(offset)
            .start()
    };
    let mut meterds: Vec<Option<Meterd>> = (0..3).map(|i| Some(start(i, 0))).collect();

    // The same customers, dimensions and hours on every host; every event has an id.
    let mut expected = Billing::new();
    let mut sent: Vec<Vec<Value>> = vec![Vec::new(); 3];
    for n in 0..60u64 {
        let host = (n % 3) as usize;
        let customer = format!("{}", 100_000_000_000u64 + n % 4);
        let dimension = if n % 2 == 0 { "requests" } else { "storage" };
        let hours_ago = (n % 2) as i64;
        let team = if n % 5 == 0 { "a" } else { "b" };
        let e = usage(&customer, dimension, n + 1, hours_ago, &format!("e-{n}"), team);
        let entry = expected.entry((customer, dimension.to_string(), hour_start(hours_ago))).or_default();
        entry.0 += n + 1;
        *entry.1.entry(team.to_string()).or_default() += n + 1;
        sent[host].push(e);
    }
    // host-b is killed mid-stream, restarted, and its client resends everything by id.
    send_killing_host_b(&mut meterds, &sent, || start(1, 0));

    // The database goes away while the hosts stop: each seals its hours now, cannot ship them,
    // and keeps them in its outbox.
    pg.kill();
    for meterd in meterds.iter_mut() {
        assert!(meterd.take().unwrap().signal("TERM").success());
    }
    pg.restart();

    // Four hours later (every host's clock and the service's), the hosts ship, the holder closes
    // both hours and submits; the holder's first answer is lost and it is killed before hearing.
    emu.set_clock_offset(4 * H);
    // Every answer is lost until the holder is killed: the service holds the records, the
    // holder never heard, and the next holder must resend them byte-identical.
    emu.faults(json!({"drop_after_apply": 1000}));
    let mut meterds: Vec<Option<Meterd>> = (0..3).map(|i| Some(start(i, 4 * H))).collect();
    wait_until("the first batch applied", Duration::from_secs(60), || !emu.records().is_empty());
    let lease = pg.query("SELECT holder, epoch FROM meterd.lease");
    let (holder, killed_epoch) = (lease[0][0].clone(), lease[0][1].parse::<i64>().unwrap());
    let index = hosts.iter().position(|h| *h == holder).expect("a host holds the lease");
    meterds[index].take().unwrap().kill9();
    emu.clear_faults();
    wait_until("every record billed", Duration::from_secs(60), || billed(&emu).len() == expected.len());
    assert_eq!(billed(&emu), expected, "one record per key with the sum of every host's events");
    let statuses = emu.statuses();
    assert!(!statuses.contains_key("DuplicateRecord"), "{statuses:?}");
    let late = pg.query("SELECT count(*) FROM meterd.late_partials");
    assert_eq!(late[0][0], "0");
    wait_until("every fleet record accepted", Duration::from_secs(30), || {
        pg.query("SELECT count(*) FROM meterd.records WHERE state <> 'accepted'")[0][0] == "0"
    });
    // The killed holder heard no answer; the next holder settled every record.
    for row in pg.query("SELECT epoch FROM meterd.records") {
        assert!(row[0].parse::<i64>().unwrap() > killed_epoch, "settled by a later epoch: {row:?}");
    }
    // `meterd fleet status` reads the same from the database.
    let (code, out, err) = Meterd::cli(
        &fleet(dirs[0].path(), &emu, &pg, "host-a").offset(4 * H),
        &["fleet", "status", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["this_host"], "host-a");
    assert_eq!(status["records"], json!([["accepted", expected.len()]]));
    let listed: Vec<&str> =
        status["hosts"].as_array().unwrap().iter().map(|h| h["host_id"].as_str().unwrap()).collect();
    assert_eq!(listed, hosts);
    assert_ne!(status["lease_holder"], holder.as_str());
}

/// Five hours back by the host's clock, `events` go into its current hour; at SIGTERM a fleet
/// host seals that hour now and ships it (when it can reach the database).
fn sent_five_hours_ago(launch: Launch, events: &[Value]) {
    let meterd = launch.offset(-5 * H).start();
    assert!(meterd.send(events).iter().all(|r| r["ok"] == true));
    assert!(meterd.signal("TERM").success());
}

/// Like [`sent_five_hours_ago`], once the host holds the lease (the fleet's schema is in place),
/// so that the partial is in PostgreSQL when it has stopped.
fn shipped_five_hours_ago(launch: Launch, events: &[Value]) {
    let meterd = launch.offset(-5 * H).start();
    wait_until("the lease held", Duration::from_secs(20), || lease_held(&meterd));
    assert!(meterd.send(events).iter().all(|r| r["ok"] == true));
    assert!(meterd.signal("TERM").success());
}

#[test]
fn one_host_submits_at_a_time_and_another_takes_over_when_the_holder_stops() {
    const OTHER_KEY: &str = "AKIDFLEETOTHER";
    let pg = Pg::start();
    let emu = Emu::start(|config| {
        config.credentials.push(meterd::emulator::Credential {
            access_key_id: OTHER_KEY.into(),
            secret_access_key: common::SECRET.into(),
        })
    });
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let host_a = || fleet(dirs[0].path(), &emu, &pg, "host-a");
    let host_b = || fleet(dirs[1].path(), &emu, &pg, "host-b").env("AWS_ACCESS_KEY_ID", OTHER_KEY);
    // Records to submit once the hosts are back at the real time, whose answers are all lost at
    // first: the holder keeps trying.
    emu.faults(json!({"drop_after_apply": 100_000}));
    sent_five_hours_ago(host_a(), &events_now("300000000001", 2, "a"));
    sent_five_hours_ago(host_b(), &events_now("300000000001", 5, "b"));
    let a = host_a().start();
    let b = host_b().start();
    let hosts = [&a, &b];
    wait_until("one host holds the lease", Duration::from_secs(10), || hosts.iter().any(|h| lease_held(h)));
    for _ in 0..20 {
        assert!(hosts.iter().filter(|h| lease_held(h)).count() <= 1, "never two holders");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (holder, other, holder_key) =
        if lease_held(&a) { (&a, &b, common::daemon::ACCESS_KEY) } else { (&b, &a, OTHER_KEY) };
    wait_until("the holder submits", Duration::from_secs(30), || {
        emu.requests().iter().any(|r| r["caller"] == holder_key && r["operation"] == "BatchMeterUsage")
    });

    // The holder is paused (a long GC, a frozen VM): the other host takes over once the lease
    // runs out, and the paused one, resumed, submits nothing more.
    let paused =
        std::process::Command::new("kill").args(["-STOP", &holder.pid().to_string()]).status().unwrap();
    assert!(paused.success());
    let lease = || pg.query("SELECT holder, epoch, expires_at FROM meterd.lease").remove(0);
    let before = lease();
    assert_ne!(before[2], "0", "not given up: a paused holder cannot give its lease up");
    wait_until("the other host takes over", Duration::from_secs(60), || lease_held(other));
    // Taken while the holder was still paused, so that it could not have given the lease up: the
    // takeover came from the lease running out (the only other way `lease::acquire` takes it).
    assert_eq!(process_state(holder.pid()), 'T', "the old holder is still stopped");
    let after = lease();
    assert_ne!(after[0], before[0], "another holder");
    assert_eq!(
        after[1].parse::<i64>().unwrap(),
        before[1].parse::<i64>().unwrap() + 1,
        "one take, a new epoch"
    );
    emu.clear_faults();
    wait_until("the record billed", Duration::from_secs(30), || {
        pg.query("SELECT count(*) FROM meterd.records WHERE state = 'accepted'")[0][0] == "1"
    });
    let seen = emu.requests().len();
    let resumed =
        std::process::Command::new("kill").args(["-CONT", &holder.pid().to_string()]).status().unwrap();
    assert!(resumed.success());
    std::thread::sleep(Duration::from_secs(3));
    let after: Vec<Value> = emu.requests().into_iter().skip(seen).collect();
    assert!(
        after.iter().all(|r| r["caller"] != holder_key),
        "the old holder submitted after losing the lease: {after:?}"
    );
    assert!(!lease_held(holder) && lease_held(other));
    let billed = billed(&emu);
    assert_eq!(billed.len(), 1);
    assert_eq!(billed.values().next().unwrap().0, 3 * 2 + 3 * 5);
    assert!(!emu.statuses().contains_key("DuplicateRecord"));
}

/// The state letter of process `pid` in `/proc/<pid>/stat` (`T`: stopped by a signal).
fn process_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.trim_start().chars().next().unwrap()
}

#[test]
fn a_host_whose_database_is_down_keeps_acknowledging_and_ships_later() {
    let pg = Pg::start();
    pg.kill();
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let launch = || fleet(dir.path(), &emu, &pg, "host-a");
    let meterd = launch().offset(-5 * H).start();
    let replies = meterd.send(&events_now("300000000002", 4, "d"));
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
    assert_eq!(meterd.get("/readyz").0, 200, "ready for ingest while the database is down");
    wait_until("ship errors counted", Duration::from_secs(10), || {
        meterd.metric("meterd_fleet_ship_errors_total") >= 1.0
    });
    // Stopping, it seals the hour but cannot ship it: the partial stays in its outbox.
    assert!(meterd.signal("TERM").success());
    assert!(emu.records().is_empty());

    pg.restart();
    let meterd = launch().start();
    meterd.wait_metric("meterd_fleet_partials_shipped_total", 1.0, Duration::from_secs(40));
    assert_eq!(meterd.metric("meterd_fleet_backlog"), 0.0);
    let records = emu.wait_records(1, Duration::from_secs(30));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["quantity"], 12);
}

#[test]
fn a_partial_for_a_closed_hour_is_carried_into_the_open_hour_or_dead_lettered() {
    let pg = Pg::start();
    let emu = Emu::start(|_| {});
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // host-b and host-c cannot reach the database while host-a's hour is closed without them.
    let nowhere = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port + 1);
    let host_a = || fleet(dirs[0].path(), &emu, &pg, "host-a");
    let host_b = || fleet(dirs[1].path(), &emu, &pg, "host-b");
    let host_c = || fleet(dirs[2].path(), &emu, &pg, "host-c").env("METERD_SUBMIT__LATE_EVENTS", "reject");
    sent_five_hours_ago(host_a(), &events_now("300000000003", 1, "a"));
    sent_five_hours_ago(
        host_b().env("METERD_FLEET__DATABASE_URL", &nowhere),
        &events_now("300000000003", 10, "b"),
    );
    sent_five_hours_ago(
        host_c().env("METERD_FLEET__DATABASE_URL", &nowhere),
        &events_now("300000000003", 100, "c"),
    );
    let a = host_a().start();
    let records = emu.wait_records(1, Duration::from_secs(30));
    assert_eq!(records[0]["quantity"], 3, "the hour closed with host-a's partial only");
    let hour = records[0]["hour"].as_i64().unwrap();

    // Back on the database, their partials are late: carried into the open hour by host-b,
    // a late_partial dead letter by host-c (late_events = reject).
    let b = host_b().start();
    let c = host_c().start();
    b.wait_metric("meterd_fleet_late_partials_total{outcome=\"carried\"}", 1.0, Duration::from_secs(20));
    c.wait_metric("meterd_fleet_late_partials_total{outcome=\"dead_letter\"}", 1.0, Duration::from_secs(20));
    let late = pg.query("SELECT host_id, hour, quantity, carried_to, coalesce(reason, '') FROM meterd.late_partials ORDER BY host_id");
    assert_eq!(late[0][..3], ["host-b".to_string(), hour.to_string(), "30".to_string()]);
    assert_eq!(late[0][3], hour_start(0).to_string(), "carried into the hour open now");
    assert_eq!(
        late[1],
        [
            "host-c".to_string(),
            hour.to_string(),
            "300".to_string(),
            String::new(),
            "late_partial".to_string()
        ]
    );
    assert!(!emu.statuses().contains_key("DuplicateRecord"));
    // Every host lists the fleet's dead letters, and says which host it is.
    let (code, listed, err) = Meterd::cli(&host_c(), &["dlq", "export", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        listed.contains("late_partial: host host-c shipped 300 after the fleet closed the hour"),
        "{listed}"
    );
    let (code, status, _) = Meterd::cli(&host_c(), &["status"]);
    assert_eq!(code, 0);
    assert!(status.contains("fleet host: host-c"), "{status}");
    drop((a, b, c));
}

#[test]
fn partials_with_tags_that_cannot_be_read_stop_their_record() {
    let pg = Pg::start();
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let host = || fleet(dir.path(), &emu, &pg, "host-a");
    let mut tagged = events_now("300000000007", 2, "t");
    for e in &mut tagged {
        e["tags"] = json!({ "team": "a" });
    }
    shipped_five_hours_ago(host(), &tagged);
    // Another host's partial of the same key and hour, with a tag set no meterd wrote.
    pg.query(
        "INSERT INTO meterd.partials (host_id, partial_id, tags, scope_kind, scope, customer_kind, customer,
           dimension, hour, quantity, digest)
         SELECT 'host-z', 'z:1', '{\"team\": 1', scope_kind, scope, customer_kind, customer, dimension, hour, 10, 0
         FROM meterd.partials LIMIT 1",
    );
    let meterd = host().start();
    wait_until("the hour closed", Duration::from_secs(30), || {
        pg.query("SELECT count(*) FROM meterd.hours WHERE state = 'closed'")[0][0] == "1"
    });
    let record = pg.query("SELECT state, dead_reason, quantity, message FROM meterd.records");
    assert_eq!(record.len(), 1);
    assert_eq!(record[0][..3], ["dead_letter", "invalid", "16"], "{record:?}");
    assert!(record[0][3].starts_with(r#"unreadable tags "{\"team\": 1" in a partial: "#), "{}", record[0][3]);
    assert_eq!(pg.query("SELECT count(*) FROM meterd.records WHERE state = 'pending'"), [["0"]]);
    assert!(emu.records().is_empty(), "nothing billed: {:?}", emu.records());
    drop(meterd);
}

/// The offset that puts a host's clock `before` seconds ahead of the end of the current hour,
/// and that hour.
fn near_the_end_of_the_hour(before: i64) -> (i64, i64) {
    let hour = common::now_secs() / H * H;
    (hour + H - before - common::now_secs(), hour)
}

/// An event of `quantity` stamped `at`, with an id.
fn stamped(customer: &str, quantity: u64, at: i64, id: &str) -> Value {
    let mut e = event(customer, "requests", quantity);
    e["timestamp"] = json!(at);
    e["id"] = json!(id);
    e
}

#[test]
fn a_lost_reply_to_the_closing_commit_does_not_stall_the_hour() {
    let pg = Pg::start();
    let proxy = common::proxy::Proxy::start(pg.port);
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let host = || fleet(dir.path(), &emu, &pg, "host-a").env("METERD_FLEET__CLOSE_AFTER", "6h");
    shipped_five_hours_ago(host(), &events_now("300000000006", 3, "l"));
    let hour = pg.query("SELECT hour FROM meterd.partials")[0][0].clone();
    // Another host, alive, holds the hour open while host-a takes the lease through the proxy.
    pg.query("INSERT INTO meterd.hosts (host_id, first_seen, heartbeat) VALUES ('host-w', 0, 4102444800)");
    proxy.lose_commit_reply_after("UPDATE hours SET state = 'closed'");
    let meterd = host().env("METERD_FLEET__DATABASE_URL", &proxy.url()).start();
    wait_until("the lease held", Duration::from_secs(20), || lease_held(&meterd));
    let epoch = pg.query("SELECT epoch FROM meterd.lease")[0][0].clone();
    // The hour closes: PostgreSQL commits it, the holder hears only that its connection went away.
    pg.query(&format!("UPDATE meterd.hosts SET shipped_through = {hour} WHERE host_id = 'host-w'"));
    let records = emu.wait_records(1, Duration::from_secs(30));
    assert_eq!(proxy.lost(), 1, "the reply to the close was lost");
    assert_eq!(records.len(), 1, "submitted by the holder that closed the hour: {records:?}");
    assert_eq!(records[0]["quantity"], 9);
    assert_eq!(pg.query("SELECT state FROM meterd.hours WHERE state = 'closed'"), [["closed"]]);
    assert_eq!(pg.query("SELECT epoch FROM meterd.lease")[0][0], epoch, "the same lease, never lost");
    let missed =
        meterd.wait_log("closed fleet records the submit loop was not given", Duration::from_secs(1));
    assert_eq!(missed["records"], 1);
    assert!(!emu.statuses().contains_key("DuplicateRecord"));
}

#[test]
fn an_hour_closes_as_soon_as_the_last_host_has_shipped_it() {
    let pg = Pg::start();
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    // Heartbeats every 30 s and lease renewals every 20 s; the host is waited for 10 minutes and
    // the hour closes without it only after 6 hours. The host's clock starts 2 s into an hour and
    // seals the hour before at 45 s.
    let (offset, hour) = near_the_end_of_the_hour(-2);
    let meterd = fleet(dir.path(), &emu, &pg, "host-a")
        .env("METERD_FLEET__LEASE_TTL", "60s")
        .env("METERD_FLEET__HOST_TIMEOUT", "10m")
        .env("METERD_FLEET__CLOSE_AFTER", "6h")
        .env("METERD_SUBMIT__SEAL_DELAY", "45s")
        .offset(offset)
        .start();
    let replies = meterd.send(&[stamped("300000000008", 4, hour + 60, "s")]);
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
    wait_until("the lease held", Duration::from_secs(30), || lease_held(&meterd));
    // One statement, one snapshot: the hour's partials, how far the host says it shipped, and
    // the hour's state.
    let snapshot = || {
        pg.query(&format!(
            "SELECT (SELECT count(*) FROM meterd.partials WHERE hour = {hour}),
                    (SELECT coalesce(shipped_through, 0) >= {hour} FROM meterd.hosts WHERE host_id = 'host-a'),
                    (SELECT coalesce(max(state), '') FROM meterd.hours WHERE hour = {hour})"
        ))
        .remove(0)
    };
    let mut first = Vec::new();
    wait_until("the partial shipped", Duration::from_secs(120), || {
        first = snapshot();
        first[0] != "0"
    });
    // The host's shipped-through hour came with the partial, in its transaction: the holder may
    // close the hour at its next look, not after the next heartbeat.
    assert_eq!(first[1], "t", "shipped through the hour with its partial: {first:?}");
    // Not `close_after` (6 h), not a host timed out (10 min): only the shipped partial makes the
    // hour due.
    wait_until("the hour closed", Duration::from_secs(120), || snapshot()[2] == "closed");
    drop(meterd);
}

/// One event for the hour about to end and one stamped five seconds into the next hour
/// (inside `future_tolerance`), both acknowledged, a minute before the hour ends by the host's
/// clock. Returns the host, its clock offset and the hour.
fn acknowledged_across_the_hour(launch: Launch) -> (Meterd, i64, i64) {
    let (offset, hour) = near_the_end_of_the_hour(60);
    let meterd = launch.offset(offset).start();
    wait_until("the lease held", Duration::from_secs(20), || lease_held(&meterd));
    let customer = "300000000005";
    let events = [stamped(customer, 7, hour + H - 90, "now"), stamped(customer, 5, hour + H + 5, "next")];
    let replies = meterd.send(&events);
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
    (meterd, offset, hour)
}

#[test]
fn a_stopping_host_ships_every_hour_it_acknowledged_before_it_deregisters() {
    let pg = Pg::start();
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let (meterd, offset, hour) = acknowledged_across_the_hour(fleet(dir.path(), &emu, &pg, "host-a"));
    assert!(common::now_secs() + offset < hour + H, "stopped before the hour ended");
    assert!(meterd.signal("TERM").success());

    let shipped = pg.query("SELECT hour, sum(quantity) FROM meterd.partials GROUP BY hour ORDER BY hour");
    let expected = [[hour.to_string(), "7".into()], [(hour + H).to_string(), "5".into()]];
    assert_eq!(shipped, expected, "both hours in PostgreSQL");
    let host = pg.query("SELECT deregistered_at IS NOT NULL FROM meterd.hosts WHERE host_id = 'host-a'");
    assert_eq!(host, [["t"]], "deregistered once everything is in PostgreSQL");
    let launch = fleet(dir.path(), &emu, &pg, "host-a").offset(offset);
    let (code, out, err) = Meterd::cli(&launch, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["records"]["open"], 0, "{status}");
    assert_eq!(status["records"]["shipped"], 2, "{status}");
}

#[test]
fn a_stopping_host_that_cannot_reach_the_database_stays_registered_and_says_what_it_keeps() {
    let pg = Pg::start();
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let launch = || fleet(dir.path(), &emu, &pg, "host-a").env("METERD_SHUTDOWN__GRACE", "3s");
    let (meterd, offset, hour) = acknowledged_across_the_hour(launch());
    wait_until("the host registered", Duration::from_secs(20), || {
        pg.query("SELECT count(*) FROM meterd.hosts")[0][0] == "1"
    });
    // The test cluster commits asynchronously: what the host wrote is made durable before the
    // crash.
    pg.query("CHECKPOINT");
    pg.kill();
    assert!(common::now_secs() + offset < hour + H, "stopped before the hour ended");
    meterd.signal_only("TERM");
    let error = meterd.wait_log("stopping with partials not shipped", Duration::from_secs(10));
    assert_eq!(error["level"], "ERROR");
    assert_eq!((error["partials"].as_u64(), error["quantity"].as_u64()), (Some(2), Some(12)), "{error}");
    assert!(meterd.wait_exit(Duration::from_secs(10)).success());

    pg.restart();
    let host = pg.query("SELECT deregistered_at IS NULL FROM meterd.hosts WHERE host_id = 'host-a'");
    assert_eq!(host, [["t"]], "still registered: the fleet waits for it");
    assert_eq!(pg.query("SELECT count(*) FROM meterd.partials"), [["0"]]);
    let (code, out, err) = Meterd::cli(&launch().offset(offset), &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (status["records"]["open"].as_u64(), status["records"]["pending"].as_u64()),
        (Some(0), Some(2))
    );
}

#[test]
fn a_stopping_host_whose_database_stops_answering_says_what_it_keeps_before_the_grace_runs_out() {
    let pg = Pg::start();
    let proxy = common::proxy::Proxy::start(pg.port);
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let launch = fleet(dir.path(), &emu, &pg, "host-a")
        .env("METERD_FLEET__DATABASE_URL", &proxy.url())
        .env("METERD_SHUTDOWN__GRACE", "3s");
    let (meterd, _, _) = acknowledged_across_the_hour(launch);
    wait_until("the host registered", Duration::from_secs(20), || {
        pg.query("SELECT count(*) FROM meterd.hosts")[0][0] == "1"
    });
    // Connections hang instead of failing: every attempt must be given up in time.
    proxy.blackhole();
    meterd.signal_only("TERM");
    let error = meterd.wait_log("stopping with partials not shipped", Duration::from_secs(10));
    assert_eq!((error["partials"].as_u64(), error["quantity"].as_u64()), (Some(2), Some(12)), "{error}");
    let logs = meterd.logs();
    let status = meterd.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}; logs:\n{}", logs.join("\n"));
    let host = pg.query("SELECT deregistered_at IS NULL FROM meterd.hosts WHERE host_id = 'host-a'");
    assert_eq!(host, [["t"]], "still registered: the fleet waits for it");
}
