//! The remembered ids as a whole: the open segment, frozen segments waiting for their run to be
//! written, and the runs. Plain data and reads: the commit stage's checkpoint writes what
//! [`IdBook::take_changes`] hands it ([`super::store`]) and gives the runs back
//! ([`IdBook::install`]).

use std::io;
use std::sync::Arc;

use super::filter::Filters;
use super::hash::IdHash;
use super::run::Run;
use super::segment::{Entry, Segment};

/// What a known id says about an event that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not known: a new event.
    New,
    /// The same event again.
    Same,
    /// A different event under an id already used.
    Conflict,
}

/// What a checkpoint writes for the ids.
#[derive(Debug, Default)]
pub struct IdChanges {
    /// The open segment's ids since the last checkpoint, for its log.
    pub append: Option<Append>,
    /// Segments to write as runs (their logs go once the runs are durable).
    pub freeze: Vec<Arc<Segment>>,
    /// Segments and runs whose ids expired: their files go.
    pub expired: Vec<u64>,
}

impl IdChanges {
    pub fn is_empty(&self) -> bool {
        self.append.is_none() && self.freeze.is_empty() && self.expired.is_empty()
    }
}

/// A block for the open segment's log.
#[derive(Debug)]
pub struct Append {
    pub number: u64,
    pub entries: Vec<Entry>,
    pub first_at: i64,
    pub last_at: i64,
}

/// What the id files held at start ([`super::store::IdFiles::open`]).
#[derive(Debug, Default)]
pub struct Loaded {
    pub runs: Vec<Run>,
    /// Segments read back from their logs, oldest first.
    pub segments: Vec<Segment>,
}

#[derive(Debug)]
pub struct IdBook {
    open: Segment,
    /// Frozen, not yet handed to a checkpoint.
    frozen: Vec<Arc<Segment>>,
    /// Handed to a checkpoint; searched until their runs are installed.
    writing: Vec<Arc<Segment>>,
    /// Oldest first.
    runs: Vec<Run>,
    /// Their filters, bit by bit, in the same order.
    filters: Filters,
    next: u64,
    expired: Vec<u64>,
    ttl: i64,
}

/// Runs whose files stay open: the newest, where resends mostly land. With many runs (a high
/// rate of ids) the others are opened for each read, so the descriptors stay bounded.
const OPEN_RUNS: usize = 32;

fn hour(at: i64) -> i64 {
    at.div_euclid(3600)
}

impl IdBook {
    /// An empty book whose ids are remembered at least `ttl` seconds (and at most an hour more).
    pub fn new(ttl: i64) -> Self {
        Self::restore(Loaded::default(), ttl)
    }

    /// The book the id files held: the newest segment read from a log stays open, older ones
    /// (frozen before a crash, their runs never written) are written again at the next checkpoint.
    pub fn restore(loaded: Loaded, ttl: i64) -> Self {
        let Loaded { mut runs, mut segments } = loaded;
        runs.sort_by_key(|run| run.number);
        segments.sort_by_key(|segment| segment.number);
        let last = runs.iter().map(|r| r.number).chain(segments.iter().map(|s| s.number)).max().unwrap_or(0);
        let open = match segments.pop() {
            Some(segment) if runs.last().is_none_or(|run| run.number < segment.number) => segment,
            Some(segment) => {
                segments.push(segment);
                Segment::new(last + 1)
            }
            None => Segment::new(last + 1),
        };
        let next = open.number.max(last) + 1;
        let frozen = segments.into_iter().map(Arc::new).collect();
        let added: Vec<_> = runs.iter_mut().map(Run::take_filter).collect();
        let filters = Filters::default().rebuild(&[], &added);
        let book = Self { open, frozen, writing: Vec::new(), runs, filters, next, expired: Vec::new(), ttl };
        book.release_old_files();
        book
    }

    /// Keeps the files of the newest [`OPEN_RUNS`] runs open; older ones are opened per read.
    fn release_old_files(&self) {
        let older = self.runs.len().saturating_sub(OPEN_RUNS);
        self.runs[..older].iter().for_each(Run::release);
    }

    /// Whether `hash` was remembered, and for the same event (`digest`) or another.
    pub fn check(&self, hash: &IdHash, digest: u32) -> io::Result<Seen> {
        self.check_live(hash, digest, i64::MIN)
    }

    /// [`IdBook::check`] among the segments and runs still alive at `at` (whose last id is less
    /// than the ttl older): what a check at `at` saw, whenever expiry has run since.
    fn check_live(&self, hash: &IdHash, digest: u32, at: i64) -> io::Result<Seen> {
        let seen = |found: u32| if found == digest { Seen::Same } else { Seen::Conflict };
        let alive = |last_at: i64| last_at.saturating_add(self.ttl) > at;
        let segments =
            std::iter::once(&self.open).chain(self.frozen.iter().chain(&self.writing).rev().map(|s| &**s));
        for segment in segments.filter(|s| alive(s.last_at)) {
            if let Some(found) = segment.get(hash) {
                return Ok(seen(found));
            }
        }
        for run in
            self.filters.candidates_newest_first(hash).map(|r| &self.runs[r]).filter(|r| alive(r.last_at))
        {
            if let Some(found) = run.find(hash)? {
                return Ok(seen(found));
            }
        }
        Ok(Seen::New)
    }

    /// Reads where [`IdBook::check`] will first look for `hash`: each segment's index and the
    /// runs' filters (one cache line each). Returns a sum of what it read.
    pub fn read_ahead(&self, hash: &IdHash) -> u64 {
        let segments = self.frozen.iter().chain(&self.writing).map(|segment| segment.read_ahead(hash));
        segments.fold(self.filters.read_ahead(hash) ^ self.open.read_ahead(hash), u64::wrapping_add)
    }

    /// Remembers an id [`IdBook::check`] found new, accepted at `at`. A segment holds one UTC
    /// hour of ids at most, so that its run expires at most an hour after its first id would.
    pub fn remember(&mut self, hash: IdHash, digest: u32, at: i64) {
        if !self.open.is_empty() && (self.open.is_full() || hour(at) != hour(self.open.first_at)) {
            self.freeze_open();
        }
        self.open.insert(Entry { hash, digest }, at);
    }

    /// Remembers an id accepted at `at` unless it is known already (replaying the journal after
    /// a checkpoint that may already hold it). Only what was alive at `at` counts: a run that had
    /// expired when the id was accepted may still be on disk after a crash, and must not hide it.
    pub fn remember_if_new(&mut self, hash: IdHash, digest: u32, at: i64) -> io::Result<()> {
        if self.check_live(&hash, digest, at)? == Seen::New {
            self.remember(hash, digest, at);
        }
        Ok(())
    }

    /// Freezes the open segment (if it holds any id): the next checkpoint writes it as a run.
    pub fn freeze(&mut self) {
        if !self.open.is_empty() {
            self.freeze_open();
        }
    }

    fn freeze_open(&mut self) {
        let segment = std::mem::replace(&mut self.open, Segment::new(self.next));
        self.next += 1;
        self.frozen.push(Arc::new(segment));
    }

    /// Forgets every run (and frozen segment) whose last id was accepted `ttl` or more before
    /// `now`; the open segment is frozen once its hour has passed, so that it expires too.
    pub fn expire(&mut self, now: i64) {
        if !self.open.is_empty() && hour(now) != hour(self.open.first_at) {
            self.freeze_open();
        }
        let ttl = self.ttl;
        let expired = &mut self.expired;
        let keep: Vec<bool> = self.runs.iter().map(|run| run.last_at + ttl > now).collect();
        if keep.contains(&false) {
            self.filters = std::mem::take(&mut self.filters).rebuild(&keep, &[]);
            let mut kept = keep.iter();
            self.runs.retain(|run| {
                let keep = *kept.next().expect("one flag a run");
                if !keep {
                    expired.push(run.number);
                }
                keep
            });
        }
        for segments in [&mut self.frozen, &mut self.writing] {
            segments.retain(|segment| {
                let keep = segment.last_at + ttl > now;
                if !keep {
                    expired.push(segment.number);
                }
                keep
            });
        }
    }

    /// Whether segments wait to be written (a checkpoint should come soon: they hold memory).
    pub fn has_frozen(&self) -> bool {
        !self.frozen.is_empty()
    }

    /// What the next checkpoint writes; the frozen segments stay searchable until
    /// [`IdBook::install`] gets their runs.
    pub fn take_changes(&mut self) -> IdChanges {
        let open = &mut self.open;
        let append = (open.logged < open.len()).then(|| Append {
            number: open.number,
            entries: open.unlogged().to_vec(),
            first_at: open.first_at,
            last_at: open.last_at,
        });
        open.logged = open.len();
        let freeze: Vec<_> = std::mem::take(&mut self.frozen);
        self.writing.extend(freeze.iter().cloned());
        IdChanges { append, freeze, expired: std::mem::take(&mut self.expired) }
    }

    /// Takes the runs a checkpoint wrote in place of their segments; a run whose segment expired
    /// meanwhile is dropped (its files go with the expired ones).
    pub fn install(&mut self, runs: Vec<Run>) {
        let mut added = Vec::new();
        for mut run in runs {
            let before = self.writing.len();
            self.writing.retain(|segment| segment.number != run.number);
            if self.writing.len() < before {
                added.push(run.take_filter());
                self.runs.push(run);
            }
        }
        if !added.is_empty() {
            let keep = vec![true; self.runs.len() - added.len()];
            self.filters = std::mem::take(&mut self.filters).rebuild(&keep, &added);
            self.release_old_files();
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        let segments: usize = self.frozen.iter().chain(&self.writing).map(|s| s.len()).sum();
        self.open.len() + segments + self.runs.iter().map(Run::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        let segments: usize = self.frozen.iter().chain(&self.writing).map(|s| s.bytes()).sum();
        let runs = self.filters.bytes() + self.runs.iter().map(Run::bytes).sum::<usize>();
        self.open.bytes() + segments + runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: i64 = 25 * 3600;

    fn id(n: u64) -> IdHash {
        IdHash::of(1000, &format!("id-{n}"))
    }

    /// Writes what a checkpoint would, in memory.
    fn checkpoint(book: &mut IdBook) -> IdChanges {
        let mut changes = book.take_changes();
        let runs = changes
            .freeze
            .iter()
            .map(|s| Run::in_memory(s.number, s.entries(), s.first_at, s.last_at))
            .collect();
        book.install(runs);
        changes.freeze.clear();
        changes
    }

    #[test]
    fn ids_are_found_in_every_place_they_pass_through() {
        let mut book = IdBook::new(TTL);
        book.remember(id(1), 7, 3600);
        assert_eq!(book.check(&id(1), 7).unwrap(), Seen::Same);
        assert_eq!(book.check(&id(1), 8).unwrap(), Seen::Conflict);
        assert_eq!(book.check(&id(2), 7).unwrap(), Seen::New);
        // The next hour freezes the segment: found while frozen, while written, and in its run.
        book.remember(id(2), 9, 7200);
        assert!(book.has_frozen());
        assert_eq!(book.check(&id(1), 7).unwrap(), Seen::Same);
        let changes = book.take_changes();
        assert_eq!(changes.freeze.len(), 1);
        assert_eq!(changes.append.as_ref().map(|a| (a.number, a.entries.len())), Some((2, 1)));
        assert_eq!(book.check(&id(1), 7).unwrap(), Seen::Same, "while its run is written");
        book.install(vec![Run::in_memory(1, changes.freeze[0].entries(), 3600, 3600)]);
        assert_eq!(book.check(&id(1), 7).unwrap(), Seen::Same, "in its run");
        assert_eq!(book.check(&id(1), 6).unwrap(), Seen::Conflict, "in its run");
        assert_eq!(book.len(), 2);
        assert!(book.take_changes().is_empty(), "each id is handed over once");
    }

    #[test]
    fn whole_runs_expire_ttl_after_their_last_id_and_an_idle_segment_expires_too() {
        let mut book = IdBook::new(TTL);
        book.remember(id(1), 1, 3600);
        book.remember(id(2), 2, 3600 + 1800);
        book.expire(7200);
        checkpoint(&mut book);
        assert_eq!(book.runs.len(), 1, "the idle segment was frozen when its hour passed");
        book.expire(3600 + 1800 + TTL - 1);
        assert_eq!(book.check(&id(1), 1).unwrap(), Seen::Same, "kept until its run's last id expires");
        book.expire(3600 + 1800 + TTL);
        assert_eq!(book.check(&id(1), 1).unwrap(), Seen::New);
        assert_eq!(book.check(&id(2), 2).unwrap(), Seen::New);
        assert_eq!(checkpoint(&mut book).expired, vec![1]);
    }

    #[test]
    fn a_replayed_id_accepted_after_its_old_run_expired_is_remembered_again() {
        // A crash left an expired run on disk: the resend it no longer covered was accepted as
        // new and journaled, and replay must remember it again, not take the dead run's word.
        let run = Run::in_memory(1, &[Entry { hash: id(1), digest: 1 }], 100, 100);
        let loaded = Loaded { runs: vec![run], segments: Vec::new() };
        let mut book = IdBook::restore(loaded, TTL);
        let at = 100 + TTL + 60;
        book.remember_if_new(id(1), 2, at).unwrap();
        book.expire(at);
        assert_eq!(book.check(&id(1), 2).unwrap(), Seen::Same);
        // An id its run still covered at the time is not remembered twice.
        book.remember_if_new(id(1), 2, at + 1).unwrap();
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn a_restored_book_keeps_the_newest_log_open_and_writes_older_ones_again() {
        let mut older = Segment::new(4);
        older.insert(Entry { hash: id(1), digest: 1 }, 100);
        let mut newest = Segment::new(5);
        newest.insert(Entry { hash: id(2), digest: 2 }, 3700);
        newest.logged = 1;
        let run = Run::in_memory(3, &[Entry { hash: id(3), digest: 3 }], 50, 50);
        let loaded = Loaded { runs: vec![run], segments: vec![newest, older] };
        let mut book = IdBook::restore(loaded, TTL);
        assert_eq!((book.open.number, book.next, book.frozen.len()), (5, 6, 1));
        for n in 1..=3 {
            assert_eq!(book.check(&id(n), n as u32).unwrap(), Seen::Same, "id {n}");
        }
        book.remember_if_new(id(2), 2, 3700).unwrap();
        assert_eq!(book.len(), 3, "a replayed id already known is not added twice");
        let changes = book.take_changes();
        assert!(changes.append.is_none(), "the log holds the open segment already");
        assert_eq!(changes.freeze.iter().map(|s| s.number).collect::<Vec<_>>(), vec![4]);
    }
}
