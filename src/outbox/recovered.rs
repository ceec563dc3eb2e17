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
    /// Ids an older meterd kept in sled (`i` and `j` keys).
    pub ids: Vec<(IdKey, IdEntry)>,
    /// What the id files hold (the daemon's open only).
    pub id_files: crate::ids::Loaded,
    /// Events logged after the checkpoint, in commit order, in the batches they were stored in
    /// (a journal payload or an older meterd's sled log chunk each).
    pub log: Vec<Vec<Admitted>>,
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
                    self.log.push(legacy::decode_log(key, value)?);
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
    /// Takes the journal's groups after the checkpoint into the log to replay.
    pub fn absorb_journal(&mut self, groups: &[crate::journal::Group]) -> Result<(), OutboxError> {
        let after: Vec<_> = groups.iter().filter(|g| g.seq > self.meta.log_seq).collect();
        let payloads: Vec<(u64, &[u8])> =
            after.iter().flat_map(|g| g.payloads.iter().map(|p| (g.seq, p.as_slice()))).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(DECODE_THREADS);
        self.log.extend(decode_payloads(&payloads, threads)?);
        self.last_seq = after.iter().map(|g| g.seq).fold(self.last_seq, u64::max);
        Ok(())
    }

    /// The number of events to replay.
    pub fn log_len(&self) -> usize {
        self.log.iter().map(Vec::len).sum()
    }

    /// The events to replay, in commit order.
    pub fn log_events(&self) -> impl Iterator<Item = &Admitted> {
        self.log.iter().flatten()
    }
}

/// Most threads that decode the journal at start.
const DECODE_THREADS: usize = 4;

/// Decodes journal payloads (each stands alone) on `threads` threads, in order: with a million
/// events since the checkpoint, decoding them one after the other took about half of a restart.
/// The first payload that does not decode gives the error.
fn decode_payloads(payloads: &[(u64, &[u8])], threads: usize) -> Result<Vec<Vec<Admitted>>, OutboxError> {
    // One flat list per part: a payload may hold a single event.
    let decode_all = |part: &[(u64, &[u8])]| -> Result<Vec<Admitted>, OutboxError> {
        let mut events = Vec::new();
        for (seq, payload) in part {
            events.extend(legacy::decode_log(format!("journal group {seq}").as_bytes(), payload)?);
        }
        Ok(events)
    };
    if threads < 2 || payloads.len() < 2 * threads {
        return Ok(vec![decode_all(payloads)?]);
    }
    let parts: Vec<_> = payloads.chunks(payloads.len().div_ceil(threads)).collect();
    let decoded: Vec<Result<_, _>> = std::thread::scope(|scope| {
        // A part whose thread cannot start (a task limit) is decoded here, after the first.
        let rest: Vec<_> = parts[1..]
            .iter()
            .map(|part| {
                std::thread::Builder::new()
                    .name("meterd-decode".into())
                    .spawn_scoped(scope, || decode_all(part))
                    .map_err(|_| part)
            })
            .collect();
        let first = decode_all(parts[0]);
        std::iter::once(first)
            .chain(rest.into_iter().map(|started| match started {
                Ok(handle) => handle.join().expect("decoding a payload never panics"),
                Err(part) => decode_all(part),
            }))
            .collect()
    });
    decoded.into_iter().collect()
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

    #[test]
    fn payloads_decode_on_threads_in_order_and_the_first_bad_one_is_named() {
        let good: Vec<Vec<u8>> = (1..=10).map(payload).collect();
        let decode = |bytes: &[Vec<u8>], threads| {
            let payloads: Vec<(u64, &[u8])> =
                bytes.iter().enumerate().map(|(n, p)| (n as u64 + 1, p.as_slice())).collect();
            decode_payloads(&payloads, threads)
        };
        for threads in [1, 3] {
            let log = decode(&good, threads).unwrap();
            assert_eq!(
                log.iter().flatten().map(|a| a.quantity).collect::<Vec<_>>(),
                (1..=10).collect::<Vec<_>>()
            );
        }
        let mut bad = good.clone();
        bad[7] = vec![layout::LOG_FORMAT_VERSION, 0xff];
        let named = |result: Result<_, OutboxError>| match result {
            Err(OutboxError::Corrupt { key, .. }) => key,
            other => panic!("not corrupt: {other:?}"),
        };
        assert_eq!(named(decode(&bad, 3)), "journal group 8");
        bad[2] = vec![layout::LOG_FORMAT_VERSION, 0xff];
        assert_eq!(named(decode(&bad, 3)), "journal group 3", "the first in commit order");
    }
}
