//! Fleet mode: a key sealed before its hour ended (`meterd flush`, a stopping host) and counted
//! again within the hour is shipped as another partial of the same hour, so that a rolling
//! restart, or a flush, moves nothing into another hour.

mod common;

use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd};
use common::fleet::{Billing, H, billed, fleet, lease_held, usage, wait_until};
use common::hour_start;
use common::pg::Pg;
use serde_json::Value;

/// Five hours back by the hosts' clocks: the hour the events go into is still open there, and
/// sealed (3 h `seal_delay`) once the hosts run at the real time.
const BACK: i64 = 5;

/// Round `round`'s events for host `host`: every customer and dimension, in the hour [`BACK`]
/// hours ago, with ids of their own; added to `expected`.
fn round(round: u64, host: usize, expected: &mut Billing) -> Vec<Value> {
    let mut events = Vec::new();
    for customer in 0..3u64 {
        for dimension in ["requests", "storage"] {
            let customer_id = format!("{}", 400_000_000_000u64 + customer);
            let quantity = 1 + round * 100 + host as u64 * 10 + customer;
            let team = if (round + customer).is_multiple_of(2) { "a" } else { "b" };
            let id = format!("r{round}-h{host}-c{customer}-{dimension}");
            events.push(usage(&customer_id, dimension, quantity, BACK, &id, team));
            let entry = expected.entry((customer_id, dimension.to_string(), hour_start(BACK))).or_default();
            entry.0 += quantity;
            *entry.1.entry(team.to_string()).or_default() += quantity;
        }
    }
    events
}

fn sent(meterd: &Meterd, events: &[Value]) {
    let replies = meterd.send(events);
    assert!(replies.iter().all(|r| r["ok"] == true && r["duplicate"].is_null()), "{replies:?}");
}

#[test]
fn a_flush_and_two_rolling_restarts_within_the_hour_bill_every_key_once_in_its_own_hour() {
    let pg = Pg::start();
    let emu = Emu::start(|_| {});
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let hosts = ["host-a", "host-b", "host-c"];
    // The fleet waits for every host before it closes an hour, however long one is down.
    let launch = |i: usize, offset: i64| -> Launch<'_> {
        fleet(dirs[i].path(), &emu, &pg, hosts[i])
            .env("METERD_FLEET__HOST_TIMEOUT", "6h")
            .env("METERD_FLEET__CLOSE_AFTER", "6h")
            .offset(offset)
    };
    let mut expected = Billing::new();
    let mut meterds: Vec<Meterd> = (0..3).map(|i| launch(i, -BACK * H).start()).collect();
    wait_until("a host holds the lease", Duration::from_secs(30), || meterds.iter().any(lease_held));
    for (i, meterd) in meterds.iter().enumerate() {
        sent(meterd, &round(0, i, &mut expected));
    }
    // An operator flushes one customer on host-a; its usage of the hour goes on.
    let (code, out, err) = Meterd::cli(&launch(0, -BACK * H), &["flush", "--customer", "400000000000"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "sealed 2 record(s); they are submitted now");
    for (i, meterd) in meterds.iter().enumerate() {
        sent(meterd, &round(1, i, &mut expected));
    }
    // Two rolling restarts, one host at a time, each host taking more events once back: every
    // stop seals the host's keys early, and ships them.
    for restart in 0..2u64 {
        for i in 0..3 {
            let old = meterds.remove(i);
            assert!(old.signal("TERM").success());
            meterds.insert(i, launch(i, -BACK * H).start());
            sent(&meterds[i], &round(2 + restart, i, &mut expected));
        }
    }
    for meterd in meterds {
        assert!(meterd.signal("TERM").success());
    }
    let late = pg.query("SELECT count(*) FROM meterd.late_partials");
    assert_eq!(late, [["0"]], "nothing reached the database after its hour closed");

    // At the real time the hour is past its seal point: the hosts ship, the holder closes it.
    let meterds: Vec<Meterd> = (0..3).map(|i| launch(i, 0).start()).collect();
    wait_until("every key billed", Duration::from_secs(60), || billed(&emu).len() >= expected.len());
    assert_eq!(billed(&emu), expected, "each key once, in its own hour, with every host's events");
    assert!(!emu.statuses().contains_key("DuplicateRecord"), "{:?}", emu.statuses());
    let generations = pg.query("SELECT max(generation) FROM meterd.partials");
    assert_eq!(generations, [["3"]], "a host's keys were sealed four times within the hour");
    let local = pg.query("SELECT count(DISTINCT partial_id) FROM meterd.partials WHERE generation > 0");
    assert_ne!(local, [["0"]]);
    drop(meterds);
}

#[test]
fn a_database_written_before_partials_had_generations_is_migrated_and_its_partials_summed() {
    let pg = Pg::start();
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let launch = |offset: i64| fleet(dir.path(), &emu, &pg, "host-a").offset(offset);
    let mut expected = Billing::new();
    let meterd = launch(-BACK * H).start();
    wait_until("the lease held", Duration::from_secs(30), || lease_held(&meterd));
    sent(&meterd, &round(0, 0, &mut expected));
    assert!(meterd.signal("TERM").success());
    // The database as the meterd before generations left it (schema version 1), with another
    // host's partials of the same keys written by it.
    pg.query(
        "ALTER TABLE meterd.partials DROP COLUMN generation;
         ALTER TABLE meterd.late_partials DROP COLUMN generation;
         DROP TABLE meterd.dead_letter_actions;
         DELETE FROM meterd.migrations WHERE version > 1;
         INSERT INTO meterd.partials (host_id, partial_id, tags, scope_kind, scope, customer_kind, customer,
           dimension, hour, quantity, digest)
         SELECT 'host-old', 'old:' || partial_id, tags, scope_kind, scope, customer_kind, customer, dimension,
           hour, quantity, digest FROM meterd.partials",
    );
    round(0, 0, &mut expected);
    // Back within the hour: the schema is migrated (by the lease loop, at its first turn), the
    // keys sealed at the stop take more.
    let meterd = launch(-BACK * H).start();
    wait_until("the lease held", Duration::from_secs(30), || lease_held(&meterd));
    sent(&meterd, &round(1, 0, &mut expected));
    assert!(meterd.signal("TERM").success());
    assert_eq!(pg.query("SELECT version FROM meterd.migrations ORDER BY 1"), [["1"], ["2"], ["3"]]);
    let generations =
        pg.query("SELECT host_id, generation, count(*) FROM meterd.partials GROUP BY 1, 2 ORDER BY 1, 2");
    assert_eq!(generations, [["host-a", "0", "6"], ["host-a", "1", "6"], ["host-old", "0", "6"]]);

    let meterd = launch(0).start();
    wait_until("every key billed", Duration::from_secs(60), || billed(&emu).len() >= expected.len());
    assert_eq!(billed(&emu), expected);
    drop(meterd);
}
