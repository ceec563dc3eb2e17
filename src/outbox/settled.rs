//! Settled records leaving sled: the move of final records (receipts, shipped fleet partials) to
//! the receipts archive (`archive/`), the archive's expiry, and reads of receipts across both.

use std::ops::Range;

use super::archive::{ArchiveTotals, Mark};
use super::{Outbox, OutboxError, RecordState, StoredRecord, decode, encode, layout};

/// What [`Outbox::archive_settled`] moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    pub records: usize,
}

/// Most records one move takes (64 blocks): the receipts a month of an older meterd left in sled
/// move in bounded steps, never all in memory at once.
const MOVE_RECORDS: usize = 64 * super::archive::BLOCK_RECORDS;

/// The archive's mark as sled holds it; none yet is the empty mark.
pub(super) fn read_mark(db: &sled::Db) -> Result<Mark, OutboxError> {
    match db.get(layout::ARCHIVED)? {
        Some(value) => decode(layout::ARCHIVED, &value),
        None => Ok(Mark::default()),
    }
}

impl Outbox {
    /// Moves every final record (`Accepted`, `Shipped`) whose hour starts before `hours_before`
    /// from sled to the receipts archive, [`MOVE_RECORDS`] at a time: for each, the archive's
    /// blocks are written and synced first, then one sled batch removes the records and commits
    /// the archive's new mark, then the barrier. A crash between the two leaves them in sled only
    /// (`archive/mod.rs`). Moves run one at a time.
    pub fn archive_settled(&self, hours_before: i64) -> Result<Moved, OutboxError> {
        self.archive_in_steps(hours_before, MOVE_RECORDS)
    }

    /// [`Outbox::archive_settled`], `step` records per move.
    fn archive_in_steps(&self, hours_before: i64, step: usize) -> Result<Moved, OutboxError> {
        let _one_move = self.archive.moving();
        let mut moved = Moved::default();
        while let Some((keys, staged)) = self.stage_archive(hours_before, step)? {
            let mut batch = sled::Batch::default();
            for key in &keys {
                batch.remove(key.clone());
            }
            batch.insert(layout::ARCHIVED, encode(&staged.mark));
            {
                let _readers_wait = self.archive_lock.write().expect("archive lock");
                self.db.apply_batch(batch)?;
                self.archive.note(staged);
            }
            self.barrier()?;
            moved.records += keys.len();
            if keys.len() < step {
                break;
            }
        }
        Ok(moved)
    }

    /// The first step of a move: the keys of up to `limit` final records, and their blocks
    /// written and synced.
    pub(super) fn stage_archive(
        &self,
        hours_before: i64,
        limit: usize,
    ) -> Result<Option<(Vec<sled::IVec>, super::archive::Staged)>, OutboxError> {
        let mut keys = Vec::new();
        let mut records = Vec::new();
        for item in self.db.scan_prefix([layout::RECORD]) {
            let (key, value) = item?;
            let stored: StoredRecord = decode(&key, &value)?;
            let final_state =
                matches!(stored.state, RecordState::Accepted { .. } | RecordState::Shipped { .. });
            if final_state && stored.record.key.hour < hours_before {
                keys.push(key);
                records.push(stored);
                if records.len() == limit {
                    break;
                }
            }
        }
        if records.is_empty() {
            return Ok(None);
        }
        Ok(Some((keys, self.archive.append(&records)?)))
    }

    /// Deletes the archive's day files whose whole day settled before `before`; returns what they
    /// held. The mark keeps naming them until the next move; readers skip a file that is gone.
    pub fn expire_archive(&self, before: i64) -> Result<ArchiveTotals, OutboxError> {
        Ok(self.archive.expire(before)?)
    }

    /// What the archive holds.
    pub fn archive_totals(&self) -> ArchiveTotals {
        self.archive.totals()
    }

    /// Calls `visit` with every receipt (`Accepted` record) whose hour is in `hours`: the
    /// archive's, oldest day first, then those still in sled. Each receipt is visited once, even
    /// while a move runs: sled's receipts and the archive's committed lengths are read together.
    pub fn receipts(
        &self,
        hours: Range<i64>,
        visit: &mut dyn FnMut(StoredRecord),
    ) -> Result<(), OutboxError> {
        let (in_sled, ends) = {
            let _no_move = self.archive_lock.read().expect("archive lock");
            let mut in_sled = Vec::new();
            for stored in self.records() {
                let stored = stored?;
                if matches!(stored.state, RecordState::Accepted { .. })
                    && hours.contains(&stored.record.key.hour)
                {
                    in_sled.push(stored);
                }
            }
            (in_sled, self.archive.ends())
        };
        self.archive.visit(&ends, hours, &mut |stored| {
            if matches!(stored.state, RecordState::Accepted { .. }) {
                visit(stored);
            }
        })?;
        in_sled.into_iter().for_each(visit);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::SealedRecord;
    use crate::model::{Customer, DeadReason, RecordKey, Scope};
    use crate::outbox::Limits;

    const HOUR: i64 = 1_796_601_600;

    fn stored(customer: &str, state: RecordState) -> StoredRecord {
        let key = RecordKey {
            scope: Scope::ProductCode("prod".into()),
            customer: Customer::AwsAccountId(customer.into()),
            dimension: "requests".into(),
            hour: HOUR,
        };
        StoredRecord {
            record: SealedRecord { key, quantity: 3, allocations: Vec::new() },
            sealed_at: HOUR + 3660,
            state,
            generation: 0,
        }
    }

    fn accepted(customer: &str) -> StoredRecord {
        let id = format!("00000000-0000-4000-8000-{customer}");
        stored(customer, RecordState::Accepted { metering_record_id: id, at: HOUR + 3700 })
    }

    fn receipts(outbox: &Outbox) -> Vec<StoredRecord> {
        let mut out = Vec::new();
        outbox.receipts(i64::MIN..i64::MAX, &mut |s| out.push(s)).unwrap();
        out.sort_by(|a, b| a.record.key.cmp(&b.record.key));
        out
    }

    /// A crash between the archive's sync and sled's commit: the receipts stay in sled only, each
    /// visible once; the next move archives them, still once, and a restart changes nothing.
    #[test]
    fn a_move_cut_short_after_the_archive_write_leaves_one_copy() {
        let dir = tempfile::tempdir().unwrap();
        let expected: Vec<StoredRecord> =
            ["111122223333", "111122224444", "111122225555"].map(accepted).to_vec();
        {
            let (outbox, _) = Outbox::open(dir.path(), Limits::default()).unwrap();
            for record in &expected {
                outbox.settle(record).unwrap();
            }
            let dead = RecordState::DeadLetter {
                reason: DeadReason::Invalid,
                message: "no".into(),
                at: HOUR + 3700,
            };
            outbox.settle(&stored("999922223333", dead)).unwrap();
            outbox.settle(&stored("888822223333", RecordState::Pending)).unwrap();
            outbox.barrier().unwrap();
            let (keys, staged) = outbox.stage_archive(i64::MAX, MOVE_RECORDS).unwrap().unwrap();
            assert_eq!((keys.len(), staged.mark.seq), (3, 1));
            assert_eq!(receipts(&outbox), expected);
        }
        let day_file = dir.path().join("receipts/2026-12-07.rcpt");
        assert!(std::fs::metadata(&day_file).unwrap().len() > 0);

        let (outbox, recovered) = Outbox::open(dir.path(), Limits::default()).unwrap();
        assert!(!day_file.exists(), "the uncommitted move's new file is removed");
        assert_eq!(recovered.records.len(), 5);
        assert_eq!(receipts(&outbox), expected);
        assert_eq!(outbox.archive_totals(), ArchiveTotals::default());

        // Receipts of hours from `HOUR` on stay in sled.
        assert_eq!(outbox.archive_settled(HOUR).unwrap(), Moved::default());
        let moved = outbox.archive_settled(HOUR + 1).unwrap();
        assert_eq!(moved.records, 3);
        assert_eq!(receipts(&outbox), expected);
        let left: Vec<RecordState> = outbox.records().map(|r| r.unwrap().state).collect();
        assert!(matches!(
            left[..],
            [RecordState::Pending, RecordState::DeadLetter { .. }]
                | [RecordState::DeadLetter { .. }, RecordState::Pending]
        ));
        assert_eq!(outbox.archive_totals().accepted, 3);
        assert_eq!(outbox.archive_settled(i64::MAX).unwrap(), Moved::default());
        drop(outbox);

        let (outbox, recovered) = Outbox::open(dir.path(), Limits::default()).unwrap();
        assert_eq!(recovered.records.len(), 2);
        assert_eq!(outbox.archive_totals().accepted, 3);
        assert_eq!(receipts(&outbox), expected);
        drop(outbox);
        let (offline, _, lost) = Outbox::open_read_only(dir.path()).unwrap();
        assert!(lost.is_none());
        assert_eq!(receipts(&offline), expected);
    }

    #[test]
    fn a_large_move_goes_in_steps_each_its_own_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), Limits::default()).unwrap();
        let expected: Vec<StoredRecord> = (0..5).map(|n| accepted(&format!("11112222{n:04}"))).collect();
        for record in &expected {
            outbox.settle(record).unwrap();
        }
        assert_eq!(outbox.archive_in_steps(i64::MAX, 2).unwrap(), Moved { records: 5 });
        assert_eq!(read_mark(&outbox.db).unwrap().seq, 3);
        assert_eq!(outbox.records().count(), 0);
        assert_eq!(receipts(&outbox), expected);
    }
}
