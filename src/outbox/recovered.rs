//! What opening the outbox finds: sled's checkpoint, open hours, ids and records, and the logged
//! events after the checkpoint (the journal's, and an older meterd's sled log chunks).

use std::path::Path;

use sled::Db;

use super::open_files::OpenChunks;
use super::watermark::{Marks, WATERMARK_FILE};
use super::{
    IdEntry, IdKey, JOURNAL_DIR, Limits, Meta, OUTBOX_DIR, OutboxError, StoredRecord, decode, layout, legacy,
};
use crate::aggregate::{Admitted, SealedRecord};
use crate::journal::{Journal, Replay};
use crate::model::RecordKey;

/// Everything found on open: the checkpoint, the log after it, and every sealed record.
#[derive(Debug, Default)]
pub struct Recovered {
    pub meta: Meta,
    /// The open hours' checkpoint chunks, oldest first: each a [`FORMAT_VERSION`] byte, then a
    /// postcard `Vec<SealedRecord>` of totals; a later one replaces an earlier one's totals for
    /// the same key ([`decode_open_chunk`]).
    pub open_chunks: OpenChunks,
    /// Open hours an older meterd checkpointed as one `o` key each.
    pub legacy_open: Vec<SealedRecord>,
    /// Ids an older meterd kept in sled (`i` and `j` keys).
    pub ids: Vec<(IdKey, IdEntry)>,
    /// What the id files hold (the daemon's open only).
    pub id_files: crate::ids::Loaded,
    /// Events an older meterd logged in sled after the checkpoint, a chunk each, in commit order;
    /// they come before the journal's ([`Recovered::replay`]).
    pub legacy_log: Vec<Vec<Admitted>>,
    /// Where the journal's groups after the checkpoint are.
    pub journal: Replay,
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
            _ if key == layout::INSTANCE || key == layout::ARCHIVED => {}
            _ if key == layout::META => {
                self.meta = super::decode_meta(key, value)?;
                self.last_seq = self.last_seq.max(self.meta.log_seq);
            }
            Some(layout::LOG) => {
                let seq = layout::log_seq(key).ok_or_else(|| corrupt("a log key is 11 bytes"))?;
                if seq > self.meta.log_seq {
                    self.last_seq = self.last_seq.max(seq);
                    self.legacy_log.push(legacy::decode_log(key, value)?);
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
            Some(layout::RECORD) => self.records.push(super::records::decode_record(key, value)?),
            _ => return Err(corrupt("not a key meterd writes")),
        }
        Ok(())
    }
}

impl Recovered {
    /// Takes where the journal's groups after the checkpoint are, to replay.
    pub fn absorb_journal(&mut self, journal: Replay) {
        self.last_seq = self.last_seq.max(journal.last_seq());
        self.journal = journal;
    }

    /// Bytes of journal records to replay.
    pub fn journal_bytes(&self) -> u64 {
        self.journal.bytes()
    }

    /// Gives `apply` every event logged after the checkpoint, in commit order (an older meterd's
    /// log chunks, then the journal's groups), until it answers `false`; returns how many it took.
    /// The journal is read and decoded on a thread beside `apply`, a payload at a time and at most
    /// [`DECODE_AHEAD`] payloads ahead of it: however long the log, a restart holds no more of it
    /// than that, and decoding overlaps applying. The first payload that does not decode gives
    /// the error.
    pub fn replay(&self, mut apply: impl FnMut(&Admitted) -> bool) -> Result<u64, OutboxError> {
        let mut taken = 0;
        for admitted in self.legacy_log.iter().flatten() {
            taken += 1;
            if !apply(admitted) {
                return Ok(taken);
            }
        }
        // One payload's events to `apply`: `Ok(false)` once it wants no more.
        let mut take = |events: Result<Vec<Admitted>, OutboxError>| -> Result<bool, OutboxError> {
            for admitted in &events? {
                taken += 1;
                if !apply(admitted) {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        let journal = &self.journal;
        let (tx, rx) = std::sync::mpsc::sync_channel(DECODE_AHEAD);
        std::thread::scope(|scope| {
            let decoding = std::thread::Builder::new()
                .name("meterd-decode".into())
                .spawn_scoped(scope, move || decode_journal(journal, |events| tx.send(events).is_ok()));
            if let Err(err) = decoding {
                // No thread to decode beside this one (a task limit): decoded here, in turn.
                tracing::debug!(%err, "no thread to decode the journal; decoded in turn");
                let mut failed = None;
                decode_journal(journal, |events| {
                    take(events).unwrap_or_else(|err| {
                        failed = Some(err);
                        false
                    })
                });
                return failed.map_or(Ok(()), Err);
            }
            // Leaving early drops `rx`: the decoding thread ends at its next payload.
            for events in rx {
                if !take(events)? {
                    break;
                }
            }
            Ok(())
        })?;
        Ok(taken)
    }
}

/// Payloads decoded ahead of the replay: each at most [`crate::journal::MAX_PAYLOAD`] encoded.
const DECODE_AHEAD: usize = 4;

/// Why the walk through the journal's payloads ended early.
enum Ended {
    /// Whoever takes the events wants no more.
    Stopped,
    Failed(OutboxError),
}

impl From<crate::journal::JournalError> for Ended {
    fn from(err: crate::journal::JournalError) -> Self {
        Ended::Failed(err.into())
    }
}

/// Decodes the journal's payloads after the checkpoint, in order, and hands each payload's events
/// to `each` (an error in place of the first that does not decode, then no more) until it
/// answers `false`.
fn decode_journal(journal: &Replay, mut each: impl FnMut(Result<Vec<Admitted>, OutboxError>) -> bool) {
    let walked = journal.for_each(|seq, payload| {
        let events = legacy::decode_log(b"", payload).map_err(|err| match err {
            OutboxError::Corrupt { reason, .. } => {
                OutboxError::Corrupt { key: format!("journal group {seq}"), reason }
            }
            other => other,
        });
        let failed = events.is_err();
        if !each(events) || failed {
            return Err(Ended::Stopped);
        }
        Ok(())
    });
    if let Err(Ended::Failed(err)) = walked {
        each(Err(err));
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
            Ok(replay) => OpenedJournal { journal: None, replay, damaged: None },
            Err(err) => OpenedJournal { journal: None, replay: Replay::default(), damaged: Some(err.into()) },
        });
    }
    let (journal, replay) = Journal::open(dir, limits.journal_segment_bytes, floor)?;
    Ok(OpenedJournal { journal: Some(journal), replay, damaged: None })
}

/// What [`open_journal`] found.
pub(super) struct OpenedJournal {
    pub journal: Option<Journal>,
    pub replay: Replay,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Customer, Scope};

    fn payload(quantity: u32) -> Vec<u8> {
        let admitted = Admitted {
            key: RecordKey {
                scope: Scope::ProductCode("prod-1".into()),
                customer: Customer::AwsAccountId("123456789012".into()),
                dimension: "requests".into(),
                hour: 3600,
            },
            tags: Vec::new(),
            quantity,
            id: None,
            at: 3600,
        };
        super::super::chunks::encode_log(&[admitted]).remove(0)
    }

    /// A journal in a fresh directory holding `payloads` as groups 1, 2, …, read back to replay.
    fn journaled(payloads: &[Vec<u8>]) -> (tempfile::TempDir, Recovered) {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), crate::journal::MIN_SEGMENT_BYTES, 0).unwrap();
        for (n, payload) in payloads.iter().enumerate() {
            journal.append(n as u64 + 1, &[payload]).unwrap();
        }
        journal.sync().unwrap();
        drop(journal);
        let mut recovered = Recovered::default();
        recovered.absorb_journal(Journal::read(dir.path(), 0).unwrap());
        (dir, recovered)
    }

    fn replayed(recovered: &Recovered) -> Result<Vec<u32>, OutboxError> {
        let mut quantities = Vec::new();
        recovered.replay(|a| {
            quantities.push(a.quantity);
            true
        })?;
        Ok(quantities)
    }

    #[test]
    fn the_log_replays_in_commit_order_older_chunks_first_and_the_first_bad_payload_is_named() {
        let good: Vec<Vec<u8>> = (1..=10).map(payload).collect();
        let (_dir, mut recovered) = journaled(&good);
        assert_eq!(recovered.last_seq, 10);
        assert_eq!(replayed(&recovered).unwrap(), (1..=10).collect::<Vec<_>>());
        recovered.legacy_log = vec![super::super::legacy::decode_log(b"", &payload(70)).unwrap()];
        assert_eq!(replayed(&recovered).unwrap(), [70, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let mut taken = Vec::new();
        let count = recovered.replay(|a| {
            taken.push(a.quantity);
            taken.len() < 4
        });
        assert_eq!((count.unwrap(), taken), (4, vec![70, 1, 2, 3]), "no event after a `false`");

        let mut bad = good.clone();
        bad[7] = vec![layout::LOG_FORMAT_VERSION, 0xff];
        bad[8] = vec![layout::LOG_FORMAT_VERSION, 0xfe];
        let (_dir, recovered) = journaled(&bad);
        match replayed(&recovered) {
            Err(OutboxError::Corrupt { key, .. }) => {
                assert_eq!(key, "journal group 8", "the first in commit order")
            }
            other => panic!("not corrupt: {other:?}"),
        }
    }
}
