//! Where the submit loop keeps its records' states: the local outbox on one host, the fleet's
//! `records` table for the lease holder in fleet mode. The loop settles, reads, drops and compacts
//! records through this seam only.

use crate::model::RecordKey;
use crate::outbox::{Outbox, OutboxError, StoredRecord};

/// A failure of the store. With [`Store::fenced`] set it means "no longer ours", not "broken".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl From<OutboxError> for StoreError {
    fn from(err: OutboxError) -> Self {
        StoreError(err.to_string())
    }
}

/// The records' states, as the submit loop sees them.
pub trait Store: Send + Sync {
    /// Writes a record's new state.
    fn settle(&self, stored: &StoredRecord) -> Result<(), StoreError>;
    /// Makes what was settled durable.
    fn barrier(&self) -> Result<(), StoreError>;
    /// One record, if the store holds it.
    fn record(&self, key: &RecordKey) -> Result<Option<StoredRecord>, StoreError>;
    /// Deletes one record.
    fn remove_record(&self, key: &RecordKey) -> Result<(), StoreError>;
    /// Deletes settled records older than `before`; returns them.
    fn compact(&self, before: i64) -> Result<Vec<StoredRecord>, StoreError>;
    /// Moves final records whose hour starts before `hours_before` out of the store's hot part
    /// (the outbox's: to its receipts archive, outside `storage.max_bytes`); returns how many.
    /// Made durable before it returns.
    fn archive(&self, _hours_before: i64) -> Result<usize, StoreError> {
        Ok(0)
    }
    /// Deletes archived receipts of whole days that settled before `before`; returns how many.
    fn expire_archive(&self, _before: i64) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// Receipts kept in the archive.
    fn archived_receipts(&self) -> u64 {
        0
    }
    /// Whether writes are refused because another submitter took over (fleet mode); the loop
    /// then stops instead of stopping meterd.
    fn fenced(&self) -> bool {
        false
    }
    /// Asked before every call to the service: whether this loop may still submit (fleet mode:
    /// the lease is still this epoch's and not expired). A `false` stops the loop.
    fn may_submit(&self) -> bool {
        true
    }
}

impl Store for Outbox {
    fn settle(&self, stored: &StoredRecord) -> Result<(), StoreError> {
        Ok(Outbox::settle(self, stored)?)
    }
    fn barrier(&self) -> Result<(), StoreError> {
        Ok(Outbox::barrier(self)?)
    }
    fn record(&self, key: &RecordKey) -> Result<Option<StoredRecord>, StoreError> {
        Ok(Outbox::record(self, key)?)
    }
    fn remove_record(&self, key: &RecordKey) -> Result<(), StoreError> {
        Ok(Outbox::remove_record(self, key)?)
    }
    fn compact(&self, before: i64) -> Result<Vec<StoredRecord>, StoreError> {
        Ok(Outbox::compact(self, before)?)
    }
    fn archive(&self, hours_before: i64) -> Result<usize, StoreError> {
        Ok(Outbox::archive_settled(self, hours_before)?.records)
    }
    fn expire_archive(&self, before: i64) -> Result<u64, StoreError> {
        Ok(Outbox::expire_archive(self, before)?.accepted)
    }
    fn archived_receipts(&self) -> u64 {
        Outbox::archive_totals(self).accepted
    }
}
