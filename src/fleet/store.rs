//! The fleet's records as the submit loop's [`Store`]: each settle is one UPDATE fenced by the
//! lease epoch (zero rows: the lease moved on, and this store refuses everything from then on).
//! PostgreSQL commits durably, so there is no separate barrier.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_postgres::Client;

use super::db::{DbError, Target, key_columns};
use crate::aggregate::SealedRecord;
use crate::model::{DeadReason, RecordKey};
use crate::outbox::{RecordState, StoredRecord};
use crate::submit::{Store, StoreError};

/// The records table, written under one lease epoch.
pub struct FleetStore {
    client: tokio::sync::Mutex<Client>,
    clock: crate::clock::Clock,
    host: String,
    epoch: i64,
    fenced: AtomicBool,
    /// The longest a write may take (`fleet.lease_ttl`: past it the lease is gone anyway).
    timeout: std::time::Duration,
}

impl FleetStore {
    pub async fn new(
        target: Target,
        clock: crate::clock::Clock,
        host: String,
        epoch: i64,
        timeout: std::time::Duration,
    ) -> Result<Self, DbError> {
        let client = target.connect().await?;
        Ok(Self {
            client: tokio::sync::Mutex::new(client),
            clock,
            host,
            epoch,
            fenced: AtomicBool::new(false),
            timeout,
        })
    }

    /// Runs `work` on this store's connection from the submit loop's synchronous calls. A
    /// database error retires the store like a lost lease: the submit loop stops, and the lease
    /// loop starts it again on a new connection from what the database holds (a settle that
    /// failed leaves its record pending, to be resent unchanged).
    fn blocking<T>(&self, work: impl AsyncFnOnce(&Client) -> Result<T, DbError>) -> Result<T, StoreError> {
        // Bounded: a database that stops answering must not hold the submit loop (nor, through
        // its thread, a stopping meterd) until the kernel gives the connection up.
        let done = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(tokio::time::timeout(self.timeout, async {
                let client = self.client.lock().await;
                work(&client).await
            }))
        });
        let failed = |reason: String| {
            self.fenced.store(true, Ordering::SeqCst);
            StoreError(reason)
        };
        match done {
            Ok(result) => result.map_err(|e| failed(e.to_string())),
            Err(_) => Err(failed(format!("the fleet database did not answer within {:?}", self.timeout))),
        }
    }

    fn refuse_if_fenced(&self, changed: u64) -> Result<(), StoreError> {
        if changed == 0 {
            self.fenced.store(true, Ordering::SeqCst);
            return Err(StoreError(format!("the submitter lease moved past epoch {}", self.epoch)));
        }
        Ok(())
    }
}

/// The columns [`stored_of`] reads, in its order.
pub(super) const COLUMNS: &str =
    "record, state, metering_record_id, dead_reason, message, sealed_at, settled_at";

/// The lease condition every write carries (`$1` host, `$2` epoch).
const FENCED: &str = "EXISTS (SELECT 1 FROM lease WHERE name = 'submitter' AND holder = $1 AND epoch = $2)";

impl Store for FleetStore {
    fn settle(&self, stored: &StoredRecord) -> Result<(), StoreError> {
        let (state, receipt, reason, message, at): (
            &str,
            Option<&str>,
            Option<&str>,
            Option<&str>,
            Option<i64>,
        ) = match &stored.state {
            RecordState::Pending => ("pending", None, None, None, None),
            RecordState::Accepted { metering_record_id, at } => {
                ("accepted", Some(metering_record_id), None, None, Some(*at))
            }
            RecordState::DeadLetter { reason, message, at } => {
                ("dead_letter", None, Some(reason.as_str()), Some(message), Some(*at))
            }
            RecordState::Shipped { at } => ("shipped", None, None, None, Some(*at)),
        };
        let key = &stored.record.key;
        let (scope_kind, scope, customer_kind, customer) = key_columns(key);
        let changed = self.blocking(async |client| {
            Ok(client
                .execute(
                    &format!(
                        "UPDATE records SET state = $3, metering_record_id = $4, dead_reason = $5, message = $6,
                           settled_at = $7, epoch = $2
                         WHERE scope_kind = $8 AND scope = $9 AND customer_kind = $10 AND customer = $11
                           AND dimension = $12 AND hour = $13 AND {FENCED}"
                    ),
                    &[&self.host, &self.epoch, &state, &receipt, &reason, &message, &at, &scope_kind, &scope, &customer_kind, &customer, &key.dimension, &key.hour],
                )
                .await?)
        })?;
        self.refuse_if_fenced(changed)
    }

    fn barrier(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn record(&self, key: &RecordKey) -> Result<Option<StoredRecord>, StoreError> {
        let (scope_kind, scope, customer_kind, customer) = key_columns(key);
        let row = self.blocking(async |client| {
            Ok(client
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM records WHERE scope_kind = $1 AND scope = $2 AND customer_kind = $3
                           AND customer = $4 AND dimension = $5 AND hour = $6"
                    ),
                    &[&scope_kind, &scope, &customer_kind, &customer, &key.dimension, &key.hour],
                )
                .await?)
        })?;
        Ok(row.as_ref().and_then(stored_of))
    }

    fn remove_record(&self, key: &RecordKey) -> Result<(), StoreError> {
        let (scope_kind, scope, customer_kind, customer) = key_columns(key);
        let changed = self.blocking(async |client| {
            Ok(client
                .execute(
                    &format!(
                        "DELETE FROM records WHERE scope_kind = $3 AND scope = $4 AND customer_kind = $5 AND customer = $6
                           AND dimension = $7 AND hour = $8 AND {FENCED}"
                    ),
                    &[&self.host, &self.epoch, &scope_kind, &scope, &customer_kind, &customer, &key.dimension, &key.hour],
                )
                .await?)
        })?;
        self.refuse_if_fenced(changed)
    }

    fn compact(&self, before: i64) -> Result<Vec<StoredRecord>, StoreError> {
        let rows = self.blocking(async |client| {
            Ok(client
                .query(
                    &format!(
                        "DELETE FROM records WHERE state IN ('accepted', 'dead_letter') AND settled_at < $3 AND {FENCED}
                         RETURNING {COLUMNS}"
                    ),
                    &[&self.host, &self.epoch, &before],
                )
                .await?)
        })?;
        Ok(rows.iter().filter_map(stored_of).collect())
    }

    fn fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    fn may_submit(&self) -> bool {
        if self.fenced() {
            return false;
        }
        let now = self.clock.now();
        let held = self.blocking(async |client| {
            Ok(client
                .query_opt(
                    "SELECT 1 FROM lease WHERE name = 'submitter' AND holder = $1 AND epoch = $2 AND expires_at > $3",
                    &[&self.host, &self.epoch, &now],
                )
                .await?
                .is_some())
        });
        if !matches!(held, Ok(true)) {
            self.fenced.store(true, Ordering::SeqCst);
        }
        matches!(held, Ok(true))
    }
}

/// The fleet's pending records, oldest hour first.
pub async fn pending(client: &Client) -> Result<Vec<StoredRecord>, DbError> {
    let rows = client
        .query(&format!("SELECT {COLUMNS} FROM records WHERE state = 'pending' ORDER BY hour"), &[])
        .await?;
    Ok(rows.iter().filter_map(stored_of).collect())
}

/// The hours that have pending records.
pub async fn pending_hours(client: &Client) -> Result<BTreeSet<i64>, DbError> {
    let rows = client.query("SELECT DISTINCT hour FROM records WHERE state = 'pending'", &[]).await?;
    Ok(rows.into_iter().map(|row| row.get(0)).collect())
}

/// The pending records of `hours`.
pub async fn pending_in(client: &Client, hours: &[i64]) -> Result<Vec<StoredRecord>, DbError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM records WHERE state = 'pending' AND hour = ANY($1) ORDER BY hour"
            ),
            &[&hours],
        )
        .await?;
    Ok(rows.iter().filter_map(stored_of).collect())
}

/// A `records` row as the submit loop knows it; `None` for bytes this meterd cannot read.
pub(super) fn stored_of(row: &tokio_postgres::Row) -> Option<StoredRecord> {
    let record: SealedRecord = postcard::from_bytes(row.get::<_, &[u8]>(0)).ok()?;
    let at: Option<i64> = row.get(6);
    let state = match row.get::<_, &str>(1) {
        "accepted" => RecordState::Accepted { metering_record_id: row.get::<_, Option<String>>(2)?, at: at? },
        "dead_letter" => {
            let reason = row.get::<_, Option<&str>>(3)?;
            let reason = DeadReason::ALL.into_iter().find(|r| r.as_str() == reason)?;
            RecordState::DeadLetter {
                reason,
                message: row.get::<_, Option<String>>(4).unwrap_or_default(),
                at: at?,
            }
        }
        _ => RecordState::Pending,
    };
    Some(StoredRecord { record, sealed_at: row.get(5), state, generation: 0 })
}
