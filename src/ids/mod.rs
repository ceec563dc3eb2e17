//! Client idempotency ids: which ids were accepted in the last 25 hours, for which event, in
//! memory that does not grow with them.
//!
//! An id is reduced to a 128-bit hash of (peer uid, id) and 32 bits of its event's digest
//! (`hash.rs`). New ids go to the open segment, in memory (`segment.rs`); each checkpoint appends
//! the segment's new ids to its log (`log.rs`) before the journal that holds their events may go.
//! A segment holds at most [`SEGMENT_IDS`] ids and one UTC hour of them; then it is frozen and
//! the next checkpoint writes it as a run: sorted, 12 bytes an id on disk, with a slot directory
//! and a Bloom filter (`filter.rs`) kept in memory, about 1.5 bytes an id of a full run
//! (`run.rs`); the filters of all runs share one geometry and are kept bit by bit, every run's
//! bit of a position together, so a lookup asks them all in five reads. A lookup asks the open and frozen segments, then the
//! filters; only a filter hit reads a run.
//! A run expires whole once its last id is 25 hours old: its file is removed, so expiry costs
//! nothing per id, and an id is remembered 25 hours at least and 26 at most.
//!
//! The files and the order they are written in: `store.rs`. Ids remembered by an older meterd
//! (sled's `j` and `i` keys) are the outbox's and the aggregator's to carry over.

mod book;
mod filter;
mod hash;
mod log;
mod run;
mod segment;
mod store;

pub use book::{Append, IdBook, IdChanges, Loaded, Seen};
pub use hash::{IdHash, short_digest};
pub use run::{Run, RunBytes};
pub use segment::{Entry, SEGMENT_IDS, Segment};
pub use store::{IdFiles, StoreError};
