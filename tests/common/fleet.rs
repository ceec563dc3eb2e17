//! Fleet mode's test helpers: hosts pointed at a test PostgreSQL, events, and what the emulator
//! billed per key.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::daemon::{Emu, Launch, Meterd, event};
use super::hour_start;
use super::pg::Pg;
#[allow(unused_imports)]
pub use super::wait_until;

/// An hour, in seconds.
pub const H: i64 = 3600;

/// A fleet host: its own host id, the database at `pg`, short lease and host timeouts.
pub fn fleet<'a>(dir: &'a std::path::Path, emu: &Emu, pg: &Pg, host: &str) -> Launch<'a> {
    Launch::new(dir, emu)
        .env("METERD_FLEET__DATABASE_URL", &pg.url())
        .env("METERD_FLEET__HOST_ID", host)
        .env("METERD_FLEET__LEASE_TTL", "3s")
        .env("METERD_FLEET__HOST_TIMEOUT", "6s")
        .env("METERD_FLEET__CLOSE_AFTER", "30m")
}

/// Event `n` of `customer`, `dimension`, in the hour `hours_ago`, with a tag and an id.
pub fn usage(customer: &str, dimension: &str, quantity: u64, hours_ago: i64, id: &str, team: &str) -> Value {
    let mut e = event(customer, dimension, quantity);
    e["timestamp"] = json!(hour_start(hours_ago) + 60);
    e["id"] = json!(id);
    e["tags"] = json!({ "team": team });
    e
}

/// Sends each host its events, half at a time. Host-b (index 1) is killed with SIGKILL after its
/// first half and started again by `restart`; its client then resends all of its events by id,
/// and the first half must come back `duplicate`.
pub fn send_killing_host_b(
    meterds: &mut [Option<Meterd>],
    sent: &[Vec<Value>],
    restart: impl Fn() -> Meterd,
) {
    for (host, events) in sent.iter().enumerate() {
        let (first, second) = events.split_at(events.len() / 2);
        let replies = meterds[host].as_ref().unwrap().send(first);
        assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
        if host == 1 {
            meterds[1].take().unwrap().kill9();
            meterds[1] = Some(restart());
            let replies = meterds[1].as_ref().unwrap().send(events);
            assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
            assert_eq!(replies.iter().filter(|r| r["duplicate"] == true).count(), first.len());
        } else {
            let replies = meterds[host].as_ref().unwrap().send(second);
            assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
        }
    }
}

/// (customer, dimension, hour) → (quantity, tag → quantity), as billed by the emulator.
/// Per (customer, dimension, hour): the quantity, and the quantity per `team` tag.
pub type Billing = BTreeMap<(String, String, i64), (u64, BTreeMap<String, u64>)>;

/// What the emulator billed; one record per key.
pub fn billed(emu: &Emu) -> Billing {
    let mut out = BTreeMap::new();
    for r in emu.records() {
        let key = (
            r["customer_aws_account_id"].as_str().unwrap().to_string(),
            r["dimension"].as_str().unwrap().to_string(),
            r["hour"].as_i64().unwrap(),
        );
        let mut tags = BTreeMap::new();
        for a in r["allocations"].as_array().cloned().unwrap_or_default() {
            let team = a["tags"]["team"].as_str().unwrap_or_else(|| panic!("{a}")).to_string();
            tags.insert(team, a["quantity"].as_u64().unwrap());
        }
        assert!(
            out.insert(key.clone(), (r["quantity"].as_u64().unwrap(), tags)).is_none(),
            "one record per key: {key:?}"
        );
    }
    out
}

/// Whether `meterd` holds the submitter lease.
pub fn lease_held(meterd: &Meterd) -> bool {
    meterd.metric("meterd_fleet_lease_held") == 1.0
}

/// Three events of `customer` without a timestamp: they count in the host's current hour.
pub fn events_now(customer: &str, quantity: u64, ids: &str) -> Vec<Value> {
    (0..3)
        .map(|i| {
            let mut e = event(customer, "requests", quantity);
            e["id"] = json!(format!("{ids}-{i}"));
            e
        })
        .collect()
}

/// The quantity the emulator billed per key, as `key` reads it from a record; fails when two
/// records share a key (the service keeps one per customer, dimension and hour).
pub fn one_record_per_key<K: Ord + Clone + std::fmt::Debug>(
    emu: &Emu,
    key: impl Fn(&Value) -> K,
) -> BTreeMap<K, u64> {
    let mut out = BTreeMap::new();
    for r in emu.records() {
        let key = key(&r);
        assert!(
            out.insert(key.clone(), r["quantity"].as_u64().unwrap()).is_none(),
            "one record per key: {key:?}"
        );
    }
    out
}
