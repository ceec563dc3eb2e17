//! Sealed records in sled (`r` keys): written by checkpoints, each under its generation, read,
//! settled, removed and compacted.

use super::{Delta, Outbox, OutboxError, RecordKey, RecordState, Run, StoredRecord, decode, encode, layout};

/// What [`Outbox::checkpoint`] wrote: the id runs, and the newly sealed records as stored.
#[derive(Debug, Default)]
pub struct Checkpointed {
    pub runs: Vec<Run>,
    pub sealed: Vec<StoredRecord>,
}

/// A sealed record with the generation its `r` key names.
pub(super) fn decode_record(key: &[u8], value: &[u8]) -> Result<StoredRecord, OutboxError> {
    let mut stored: StoredRecord = decode(key, value)?;
    stored.generation = layout::key_generation(key).ok_or_else(|| OutboxError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: "not a record key".into(),
    })?;
    Ok(stored)
}

impl Outbox {
    /// Puts the records `delta` sealed in `batch` as `Pending`, each under the first free
    /// generation of its key where `delta.generations` allows more than one; returns them as
    /// stored.
    pub(super) fn stage_sealed(
        &self,
        batch: &mut sled::Batch,
        delta: &Delta,
        now: i64,
    ) -> Result<Vec<StoredRecord>, OutboxError> {
        let mut sealed: Vec<StoredRecord> = Vec::with_capacity(delta.sealed.len());
        for record in &delta.sealed {
            // `delta.sealed` is in key order: a key sealed twice since the last checkpoint comes
            // twice in a row, and its second record takes the generation after the first's.
            let first = match sealed.last() {
                Some(last) if last.record.key == record.key => last.generation + 1,
                _ => 0,
            };
            let Some(generation) = self.free_generation(&record.key, first, delta.generations)? else {
                // Only a fleet host seals a key twice; should a single host ever, the first
                // record stands.
                tracing::error!(
                    hour = record.key.hour,
                    quantity = record.quantity,
                    "a record for this key and hour was sealed before; keeping the first, never rewriting it"
                );
                continue;
            };
            let stored = StoredRecord {
                record: record.clone(),
                sealed_at: now,
                state: RecordState::Pending,
                generation,
            };
            batch.insert(layout::generation_key(&record.key, generation), encode(&stored));
            sealed.push(stored);
        }
        Ok(sealed)
    }

    /// The first generation of `key` from `first` on that no record holds yet; with
    /// `generations` off (a single host), only `first` itself, or `None`.
    fn free_generation(
        &self,
        key: &RecordKey,
        first: u32,
        generations: bool,
    ) -> Result<Option<u32>, OutboxError> {
        if !generations && first > 0 {
            return Ok(None);
        }
        let mut generation = first;
        while self.db.contains_key(layout::generation_key(key, generation))? {
            if !generations {
                return Ok(None);
            }
            generation += 1;
        }
        Ok(Some(generation))
    }

    /// Every sealed record, oldest hour first.
    pub fn records(&self) -> impl Iterator<Item = Result<StoredRecord, OutboxError>> + '_ {
        self.db.scan_prefix([layout::RECORD]).map(|item| {
            let (key, value) = item?;
            decode_record(&key, &value)
        })
    }

    /// One sealed record.
    pub fn record(&self, key: &RecordKey) -> Result<Option<StoredRecord>, OutboxError> {
        let db_key = layout::record_key(key);
        self.db.get(&db_key)?.map(|value| decode(&db_key, &value)).transpose()
    }

    /// Removes a sealed record; durable after the next [`Outbox::barrier`].
    pub fn remove_record(&self, key: &RecordKey) -> Result<(), OutboxError> {
        self.db.remove(layout::record_key(key))?;
        Ok(())
    }

    /// Removes receipts and dead letters settled before `before` (epoch seconds) and returns them;
    /// durable after the next [`Outbox::barrier`]. Pending records are never removed.
    pub fn compact(&self, before: i64) -> Result<Vec<StoredRecord>, OutboxError> {
        let mut removed = Vec::new();
        let mut batch = sled::Batch::default();
        for item in self.db.scan_prefix([layout::RECORD]) {
            let (key, value) = item?;
            let stored: StoredRecord = decode(&key, &value)?;
            if stored.settled_at().is_some_and(|at| at < before) {
                batch.remove(key);
                removed.push(stored);
            }
        }
        if !removed.is_empty() {
            self.db.apply_batch(batch)?;
        }
        Ok(removed)
    }

    /// Records a sealed record's new state (of its generation); durable after the next
    /// [`Outbox::barrier`].
    pub fn settle(&self, stored: &StoredRecord) -> Result<(), OutboxError> {
        self.db.insert(layout::generation_key(&stored.record.key, stored.generation), encode(stored))?;
        Ok(())
    }
}
