//! What opening the outbox finds: sled's checkpoint, open hours, ids and records, and the logged
//! events after the checkpoint (the journal's, and an older meterd's sled log chunks).

use sled::Db;

use super::{IdEntry, IdKey, Meta, OutboxError, StoredRecord, decode, layout, legacy};
use crate::aggregate::{Admitted, SealedRecord};
use crate::model::RecordKey;

/// Everything found on open: the checkpoint, the log after it, and every sealed record.
#[derive(Debug, Default)]
pub struct Recovered {
    pub meta: Meta,
    /// The open hours' checkpoint chunks, oldest first: each a [`FORMAT_VERSION`] byte, then a
    /// postcard `Vec<SealedRecord>` of totals; a later one replaces an earlier one's totals for
    /// the same key ([`decode_open_chunk`]).
    pub open_chunks: Vec<Vec<u8>>,
    /// Open hours an older meterd checkpointed as one `o` key each.
    pub legacy_open: Vec<SealedRecord>,
    /// The generation the next open-hours chunks get.
    pub open_generation: u64,
    pub ids: Vec<(IdKey, IdEntry)>,
    /// Events logged after the checkpoint, in commit order.
    pub log: Vec<Admitted>,
    /// The highest log sequence on disk (or the checkpoint's).
    pub last_seq: u64,
    pub records: Vec<StoredRecord>,
}

impl Recovered {
    /// Decodes one outbox entry into what was found. Garbage gives [`OutboxError::Corrupt`], never
    /// a panic (the fuzz target `outbox_entry` holds it to that). The checkpoint must come first.
    pub fn absorb(&mut self, key: &[u8], value: &[u8]) -> Result<(), OutboxError> {
        let corrupt = |reason: &str| OutboxError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_string(),
        };
        match key.first().copied() {
            _ if key == layout::INSTANCE => {}
            _ if key == layout::META => {
                self.meta = decode(key, value)?;
                self.last_seq = self.last_seq.max(self.meta.log_seq);
            }
            Some(layout::LOG) => {
                let seq = layout::log_seq(key).ok_or_else(|| corrupt("a log key is 11 bytes"))?;
                if seq > self.meta.log_seq {
                    self.last_seq = self.last_seq.max(seq);
                    self.log.extend(legacy::decode_log(key, value)?);
                }
            }
            Some(layout::OPEN) => {
                let record_key: RecordKey =
                    postcard::from_bytes(&key[1..]).map_err(|e| corrupt(&e.to_string()))?;
                let bucket: legacy::BucketV1 = decode(key, value)?;
                self.legacy_open.push(bucket.into_totals(record_key));
            }
            Some(layout::ID) => {
                let id = String::from_utf8_lossy(&key[1..]).into_owned();
                let expiry: i64 = decode(key, value)?;
                self.ids.push((IdKey { peer: None, id }, IdEntry { expiry, digest: None }));
            }
            Some(layout::SCOPED_ID) => {
                let id_key =
                    layout::parse_scoped_id_key(key).ok_or_else(|| corrupt("an id key names its peer"))?;
                self.ids.push((id_key, decode(key, value)?));
            }
            Some(layout::RECORD) => self.records.push(decode(key, value)?),
            Some(layout::CHUNK) => {
                let generation = layout::chunk_gen(key).ok_or_else(|| corrupt("a chunk key is 13 bytes"))?;
                self.open_generation = self.open_generation.max(generation + 1);
                self.open_chunks.push(value.to_vec());
            }
            _ => return Err(corrupt("not a key meterd writes")),
        }
        Ok(())
    }
}

impl Recovered {
    /// Takes the journal's groups after the checkpoint into the log to replay.
    pub fn absorb_journal(&mut self, groups: &[crate::journal::Group]) -> Result<(), OutboxError> {
        for group in groups.iter().filter(|g| g.seq > self.meta.log_seq) {
            let key = format!("journal group {}", group.seq);
            for payload in &group.payloads {
                self.log.extend(legacy::decode_log(key.as_bytes(), payload)?);
            }
            self.last_seq = self.last_seq.max(group.seq);
        }
        Ok(())
    }
}

/// Everything sled holds: the checkpoint, legacy log chunks after it, open hours, ids, records.
pub(super) fn recover(db: &Db) -> Result<Recovered, OutboxError> {
    let mut out = Recovered::default();
    // The checkpoint first: it decides which log entries are still to replay.
    if let Some(value) = db.get(layout::META)? {
        out.absorb(layout::META, &value)?;
    }
    for kind in [layout::LOG, layout::OPEN, layout::CHUNK, layout::ID, layout::SCOPED_ID, layout::RECORD] {
        for item in db.scan_prefix([kind]) {
            let (key, value) = item?;
            out.absorb(&key, &value)?;
        }
    }
    Ok(out)
}
