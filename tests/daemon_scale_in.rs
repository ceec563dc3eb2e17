//! Scale-in of a `meter_usage` instance, task or pod: it is its own customer for the service, so
//! on SIGTERM it seals its current hour now and submits it before it exits, instead of losing
//! the usage of the hour in progress with its volume.

mod common;

use std::time::Duration;

use common::daemon::{ACCESS_KEY, Emu, Launch};
use common::hour_start;
use serde_json::json;

#[test]
fn a_stopping_meter_usage_instance_reports_its_current_hour() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu)
        .env("METERD_AWS__MODE", "meter_usage")
        .env("METERD_SUBMIT__DEADLINE", "6h")
        .start();
    let hour = hour_start(0);
    let usage = |q: u64| json!({ "dimension": "cpu", "quantity": q });
    assert!(meterd.send(&[usage(3), usage(4)]).iter().all(|r| r["ok"] == true));
    assert!(emu.records().is_empty(), "nothing is sent before the hour ends");
    let logs = {
        let status = meterd.signal("TERM");
        assert!(status.success(), "{status:?}");
        emu.records()
    };
    assert_eq!(logs.len(), 1, "{logs:?}");
    let record = &logs[0];
    assert_eq!(record["operation"], "MeterUsage");
    assert_eq!(record["caller"], ACCESS_KEY);
    assert_eq!(record["dimension"], "cpu");
    assert_eq!(record["hour"], hour);
    assert_eq!(record["quantity"], 7);

    // Started again within the hour, its later usage goes to the next hour (the service keeps
    // one record per caller, dimension and hour), which has not begun: it stays in the outbox
    // at this stop and is sent once that hour has ended.
    let launch = |offset: i64| {
        Launch::new(dir.path(), &emu)
            .env("METERD_AWS__MODE", "meter_usage")
            .env("METERD_SUBMIT__DEADLINE", "6h")
            .env("METERD_SUBMIT__SEAL_DELAY", "5m")
            .offset(offset)
    };
    let meterd = launch(0).start();
    assert!(meterd.send(&[usage(5)]).iter().all(|r| r["ok"] == true));
    assert_eq!(meterd.metric("meterd_late_events_total{policy=\"carry_forward\"}"), 1.0);
    assert!(meterd.signal("TERM").success());
    assert_eq!(emu.records().len(), 1);
    // Three hours on, that hour has certainly ended and passed its seal delay.
    emu.set_clock_offset(3 * 3600);
    let _meterd = launch(3 * 3600).start();
    let records = emu.wait_records(2, Duration::from_secs(20));
    let next = records.iter().find(|r| r["hour"] == hour + 3600).expect("the next hour's record");
    assert_eq!(next["quantity"], 5);
}
