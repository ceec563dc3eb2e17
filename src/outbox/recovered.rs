//! What opening the outbox finds: sled's checkpoint, open hours, ids and records, and the logged
//! events after the checkpoint (the journal's, and an older meterd's sled log chunks).

use std::path::Path;

use sled::Db;

use super::watermark::{Marks, WATERMARK_FILE};
use super::{
    IdEntry, IdKey, JOURNAL_DIR, Limits, Meta, OUTBOX_DIR, OutboxError, StoredRecord, decode, layout, legacy,
};
use crate::aggregate::{Admitted, SealedRecord};
use crate::journal::Journal;
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
                self.meta = super::decode_meta(key, value)?;
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
    for kind in [layout::LOG, layout::OPEN, layout::ID, layout::SCOPED_ID, layout::RECORD] {
        for item in db.scan_prefix([kind]) {
            let (key, value) = item?;
            out.absorb(&key, &value)?;
        }
    }
    Ok(out)
}

/// Opens the journal for writing, or (an offline read) reads it in place; an offline read takes a
/// damaged journal as its loss instead of an error, so that what sled holds can still be exported.
pub(super) fn open_journal(
    dir: &Path,
    limits: Limits,
    floor: u64,
    offline: bool,
) -> Result<OpenedJournal, OutboxError> {
    if offline {
        return Ok(match Journal::read(dir, floor) {
            Ok(groups) => OpenedJournal { journal: None, groups, damaged: None },
            Err(err) => OpenedJournal { journal: None, groups: Vec::new(), damaged: Some(err.into()) },
        });
    }
    let (journal, groups) = Journal::open(dir, limits.journal_segment_bytes, floor)?;
    Ok(OpenedJournal { journal: Some(journal), groups, damaged: None })
}

/// What [`open_journal`] found.
pub(super) struct OpenedJournal {
    pub journal: Option<Journal>,
    pub groups: Vec<crate::journal::Group>,
    pub damaged: Option<OutboxError>,
}

/// Whether the outbox holds less than the watermark says was made durable. sled treats a damaged
/// stretch of its log like a torn write and recovers only what comes before it, without an error,
/// and a journal cut short at its end looks like a torn write; the watermark is how meterd
/// notices.
pub(super) fn loss(recovered: &Recovered, marks: Marks, named: &Path) -> Option<OutboxError> {
    let watermark = named.join(WATERMARK_FILE);
    if recovered.meta.log_seq < marks.checkpoint {
        // sled came back with an older checkpoint than one made durable: the journal it needs
        // to replay from there is gone.
        return Some(OutboxError::LostCheckpoint {
            path: named.join(OUTBOX_DIR).join("db"),
            watermark,
            found: recovered.meta.log_seq,
            expected: marks.checkpoint,
        });
    }
    (recovered.last_seq < marks.durable).then(|| OutboxError::Lost {
        path: named.join(JOURNAL_DIR),
        watermark,
        found: recovered.last_seq,
        expected: marks.durable,
    })
}
