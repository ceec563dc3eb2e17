//! Fleet mode: many meterd hosts (an Auto Scaling group, an ECS service, an EKS Deployment), one
//! exact record per customer, dimension and hour, through PostgreSQL (`[fleet]`, on when
//! `fleet.database_url` is set). docs/fleet.md has the operator's view.
//!
//! ```text
//!  host A: ingest → commit (seal) ─partials─▶ ship ─┐                     ┌─ lease holder only ─┐
//!  host B: ingest → commit (seal) ─partials─▶ ship ─┼─▶ PostgreSQL ──────▶│ close hour (sum) ──▶ │─▶ submit loop ─▶ AWS
//!  host C: ingest → commit (seal) ─partials─▶ ship ─┘   partials, hosts,  │ records (fenced)     │
//!                                                       hours, records,   └──────────────────────┘
//!                                                       lease
//! ```
//!
//! | hour state | means | next |
//! |---|---|---|
//! | (no row) | no partial shipped for it yet | `open` when the first partial arrives |
//! | `open` | partials arrive; hosts report how far they shipped | `closed` when every live host shipped through it, or `close_after` after it ended |
//! | `closed` | summed into `records` (state `pending` → `accepted` / `dead_letter`, as on one host) | a partial arriving now is late ([`ship::Late`]) |

pub mod close;
pub mod db;
pub mod dlq;
pub mod holder;
pub mod host;
pub mod lease;
pub mod ship;
pub mod store;

use std::time::Duration;

use crate::aggregate::SealedRecord;
use crate::config::Config;
use crate::model::LateEvents;
use crate::outbox::StoredRecord;

/// What the fleet stages are configured with, in seconds where times.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub host_id: String,
    pub close_after: i64,
    pub host_timeout: i64,
    pub lease_ttl: i64,
    /// The operation's window (the month close applies on top).
    pub deadline: i64,
    pub late_events: LateEvents,
    /// `storage.retention` in seconds: shipped partials are kept this long in the outbox.
    pub retention: i64,
}

impl FleetSettings {
    pub fn new(config: &Config, host_id: String) -> Self {
        let secs = |d: Duration| d.as_secs() as i64;
        Self {
            host_id,
            close_after: secs(config.fleet.close_after),
            host_timeout: secs(config.fleet.host_timeout),
            lease_ttl: secs(config.fleet.lease_ttl),
            deadline: secs(config.deadline()),
            late_events: config.submit.late_events,
            retention: secs(config.storage.retention),
        }
    }

    /// How often a host beats its heart (and ships what waits) when nothing else happens.
    pub fn heartbeat_every(&self) -> Duration {
        Duration::from_millis((self.host_timeout * 1000 / 4).clamp(200, 30_000) as u64)
    }

    /// How often the lease is renewed (or tried).
    pub fn lease_every(&self) -> Duration {
        Duration::from_millis((self.lease_ttl * 1000 / 3).max(100) as u64)
    }

    /// How often the holder looks for hours to close: an hour closes a second or two after the
    /// last host shipped it.
    pub fn close_every(&self) -> Duration {
        self.lease_every().min(Duration::from_secs(1))
    }
}

/// This host's id of a local record (a partial) among its unshipped ones and in its partial id:
/// the record's id, and its generation after the first (`StoredRecord::generation`: the key was
/// sealed again within its hour, after a flush or a restart).
pub fn local_partial_id(stored: &StoredRecord) -> String {
    let id = crate::model::record_id(&stored.record.key);
    match stored.generation {
        0 => id,
        generation => format!("{id}:{generation}"),
    }
}

/// A stable digest of a partial (FNV-1a over its postcard bytes), to tell a resend from a
/// different partial under the same id.
pub fn partial_digest(record: &SealedRecord) -> i64 {
    let bytes = postcard::to_allocvec(record).expect("a record always encodes");
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
        as i64
}
