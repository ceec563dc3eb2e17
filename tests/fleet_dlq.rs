//! Fleet dead letters from any host: `meterd dlq retry|drop` on a host that does not hold the
//! lease changes the fleet's records and late partials in PostgreSQL, under the lease epoch, and
//! each change is recorded with who and when.

mod common;

use std::time::Duration;

use aws_sdk_marketplacemetering::primitives::DateTime;
use aws_sdk_marketplacemetering::types::UsageRecord;
use common::daemon::{ACCESS_KEY, Emu, Launch, Meterd, PRODUCT};
use common::fleet::{H, events_now, fleet, lease_held, wait_until};
use common::pg::Pg;
use serde_json::Value;

/// Bills `customer`'s `requests` of `hour` with 1, as another sender would have: the fleet's
/// record for it is then a `DuplicateRecord`.
fn billed_before(emu: &Emu, customer: &str, hour: i64) {
    let client = common::client(&emu.url(), ACCESS_KEY);
    let record = UsageRecord::builder()
        .customer_aws_account_id(customer)
        .dimension("requests")
        .quantity(1)
        .timestamp(DateTime::from_secs(hour))
        .build()
        .unwrap();
    let sent =
        emu.runtime.block_on(client.batch_meter_usage().product_code(PRODUCT).usage_records(record).send());
    assert_eq!(sent.unwrap().results().len(), 1);
}

/// `meterd dlq <args>` on `launch`'s host; its exit code and output.
fn dlq(launch: &Launch, args: &[&str]) -> (i32, String) {
    let mut all = vec!["dlq"];
    all.extend(args);
    let (code, out, err) = Meterd::cli(launch, &all);
    (code, out + &err)
}

/// The fleet's dead letters as `meterd dlq export` lists them on `launch`'s host.
fn listed(launch: &Launch) -> Vec<Value> {
    let (code, out) = dlq(launch, &["export", "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn fleet_dead_letters_are_retried_and_dropped_from_a_host_without_the_lease_and_recorded() {
    let pg = Pg::start();
    let emu = Emu::start(|_| {});
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let host = |i: usize| fleet(dirs[i].path(), &emu, &pg, ["host-a", "host-b", "host-c"][i]);
    let nowhere = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port + 1);
    // Five hours back: host-a ships two customers' usage; host-c cannot reach the database.
    let a = host(0).offset(-5 * H).start();
    wait_until("the lease held", Duration::from_secs(30), || lease_held(&a));
    let mut events = events_now("500000000001", 3, "x");
    events.extend(events_now("500000000002", 4, "y"));
    assert!(a.send(&events).iter().all(|r| r["ok"] == true));
    assert!(a.signal("TERM").success());
    let hour: i64 = pg.query("SELECT DISTINCT hour FROM meterd.partials")[0][0].parse().unwrap();
    let c = host(2).env("METERD_FLEET__DATABASE_URL", &nowhere).offset(-5 * H).start();
    assert!(c.send(&events_now("500000000001", 100, "z")).iter().all(|r| r["ok"] == true));
    assert!(c.signal("TERM").success());
    // The service already holds another quantity for both of host-a's records.
    billed_before(&emu, "500000000001", hour);
    billed_before(&emu, "500000000002", hour);

    // At the real time host-a closes the hour and submits: two DuplicateRecord dead letters.
    // host-c's partial arrives after the close and is refused (late_events = reject).
    let a = host(0).start();
    wait_until("two fleet dead letters", Duration::from_secs(60), || {
        pg.query("SELECT count(*) FROM meterd.records WHERE state = 'dead_letter'") == [["2"]]
    });
    let c = host(2).env("METERD_SUBMIT__LATE_EVENTS", "reject").start();
    c.wait_metric("meterd_fleet_late_partials_total{outcome=\"dead_letter\"}", 1.0, Duration::from_secs(30));
    assert!(lease_held(&a) && !lease_held(&c));
    let dead = listed(&host(2));
    let id = |customer: &str, reason: &str| -> String {
        let found = dead.iter().find(|d| d["customer_aws_account_id"] == customer && d["reason"] == reason);
        found.unwrap_or_else(|| panic!("{customer} {reason} in {dead:?}"))["id"].as_str().unwrap().to_string()
    };
    let (retried, dropped) = (id("500000000001", "duplicate_record"), id("500000000002", "duplicate_record"));
    let late = id("500000000001", "late_partial");
    assert_eq!(late, retried, "the same customer, dimension and hour: the same id");

    // An operator on host-c (not the holder): the service's records were a mistake and are gone.
    emu.control("POST", "/_emulator/reset", Value::Null);
    let (code, out) = dlq(&host(2), &["retry", &retried, "--reason", "duplicate_record"]);
    assert_eq!((code, out.trim()), (0, "retried 1 dead letter(s)"));
    let (code, out) = dlq(&host(2), &["drop", &dropped, "--yes"]);
    assert_eq!((code, out.trim()), (0, "dropped 1 dead letter(s)"));
    // The holder resends the retried record, byte-identical, and it is billed in its own hour.
    let records = emu.wait_records(1, Duration::from_secs(30));
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (records[0]["customer_aws_account_id"].as_str(), records[0]["quantity"].as_u64()),
        (Some("500000000001"), Some(9))
    );
    assert_eq!(records[0]["hour"], hour);
    wait_until("the retried record accepted", Duration::from_secs(30), || {
        pg.query("SELECT state FROM meterd.records ORDER BY customer") == [["accepted"]]
    });

    // The late partial, retried: carried into the fleet's hour open now.
    let (code, out) = dlq(&host(1), &["retry", &late]);
    assert!(
        code != 0 && out.contains("meterd is not running"),
        "a change goes through a running host: {out}"
    );
    let (code, out) = dlq(&host(2), &["retry", &late]);
    assert_eq!((code, out.trim()), (0, "retried 1 dead letter(s)"));
    let carried = pg.query("SELECT carried_to, coalesce(reason, '') FROM meterd.late_partials");
    let to: i64 = carried[0][0].parse().unwrap();
    assert_eq!((to / H * H, to > hour, carried[0][1].as_str()), (to, true, ""));
    let moved =
        pg.query(&format!("SELECT host_id, sum(quantity) FROM meterd.partials WHERE hour = {to} GROUP BY 1"));
    assert_eq!(moved, [["host-c", "300"]]);
    assert!(listed(&host(0)).is_empty(), "nothing left to list");

    // Each change is recorded: what, by whom, when, under which epoch.
    let epoch = pg.query("SELECT epoch FROM meterd.lease")[0][0].clone();
    let actions = pg.query(
        "SELECT action, kind, customer, quantity, reason, by_host, by_uid IS NOT NULL, epoch FROM meterd.dead_letter_actions ORDER BY id",
    );
    let row = |a: &str, k: &str, c: &str, q: &str, r: &str| {
        [a, k, c, q, r, "host-c", "t", epoch.as_str()].map(str::to_string).to_vec()
    };
    assert_eq!(
        actions,
        [
            row("retry", "record", "500000000001", "9", "duplicate_record"),
            row("drop", "record", "500000000002", "12", "duplicate_record"),
            row("retry", "late_partial", "500000000001", "300", "late_partial"),
        ]
    );
    drop((a, c));
}
