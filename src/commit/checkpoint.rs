//! Checkpoints. The commit thread seals what is due and encodes the open records changed since
//! the last checkpoint; then come writing them (the open-hours file and its sync, sled's batch,
//! the barrier, the journal's trim). At a million open records a checkpoint held the commit thread
//! 45–145 ms, 20–65 ms of it that I/O, and every client waited through it (docs/performance.md,
//! run E). So a checkpoint that only writes changes is written on a thread of
//! its own while the commit thread goes on counting and logging the next groups: what it writes
//! is the state as of its group, exactly as before, and the journal keeps every group after it.
//!
//! | rule | why |
//! |---|---|
//! | at most one checkpoint in flight; the next one (and the end of the run) first waits for it | generations of the open-hours files, sled's meta and the journal's trim stay in order |
//! | a checkpoint that seals records, moves the last sealed hour, answers a flush, or ends the run is written before the commit thread goes on | sealed records reach the submit stage, the hour is told, and a flush is answered, only once durable |
//! | the encoded chunks pass through a channel of [`CHUNKS_IN_FLIGHT`] | what waits for the writer is bounded (1 MiB, and the file's 1 MiB buffer), whatever is open |
//! | a failed checkpoint stops meterd at the commit thread's next turn, which takes no event after it | between two groups, as a checkpoint of its own did; the journal is intact, so groups already in it are answered by their own barrier (an ok is true, a refused event is not replayed); a failed journal sync on this thread fails every later one (`Journal::sync`) |
//! | journal segments go only when every record in them is of a group the checkpoint holds | the commit thread appends meanwhile, and a group can start in one segment and end in the next (`Segment::highest_seq`) |
//! | a checkpoint whose thread cannot be started is written on the commit thread | as before, only slower |

use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use super::Committer;
use crate::aggregate::Delta;
use crate::ids::Run;
use crate::outbox::{Checkpointed, Chunker, OpenFile, OpenWrite, Outbox, OutboxError, StoredRecord};

/// Chunks (each at most 64 KiB) encoded ahead of the checkpoint thread's writes.
const CHUNKS_IN_FLIGHT: usize = 16;

/// A checkpoint written on its own thread.
/// It gives back the id runs it wrote.
pub(super) type InFlight = JoinHandle<Result<Vec<Run>, OutboxError>>;

/// One checkpoint's writes: the open records' chunks as they come, then the rest.
struct Job {
    outbox: Arc<Outbox>,
    seq: u64,
    delta: Delta,
    /// The open-hours file the chunks go to, if any.
    open: Option<OpenOut>,
    now: i64,
    durable: bool,
}

/// An open-hours file being written: its generation, whether it holds every open record, and
/// the first failed write (the chunks after it are taken and dropped).
struct OpenOut {
    file: OpenFile,
    generation: u64,
    full: bool,
    failed: Option<std::io::Error>,
}

impl Job {
    fn chunk(&mut self, chunk: &[u8]) {
        if let Some(out) = &mut self.open
            && out.failed.is_none()
        {
            out.failed = out.file.chunk(chunk).err();
        }
    }

    /// Syncs the open-hours file and writes the checkpoint naming it; returns what it wrote: the
    /// id runs and the sealed records, each under its generation.
    fn finish(self) -> Result<Checkpointed, OutboxError> {
        let open = match self.open {
            Some(OpenOut { file, generation, full, failed }) => {
                let path = file.path().to_path_buf();
                let io = |err: std::io::Error| OutboxError::OpenFile {
                    path: path.clone(),
                    reason: err.to_string(),
                };
                if let Some(err) = failed {
                    return Err(io(err));
                }
                let bytes = file.finish().map_err(io)?;
                OpenWrite { generation: Some(generation), bytes, full }
            }
            None => OpenWrite::default(),
        };
        self.outbox.checkpoint(self.seq, &self.delta, open, self.now, self.durable)
    }
}

impl Committer {
    /// Waits for the checkpoint in flight, if any. A failed one (logged on its own thread) stops
    /// meterd: from here on no event is taken.
    pub(super) fn settle(&mut self) -> Result<(), OutboxError> {
        let Some(handle) = self.in_flight.take() else { return Ok(()) };
        let written = handle.join().unwrap_or_else(|_| {
            Err(OutboxError::OpenFile {
                path: self.outbox.open_dir().to_path_buf(),
                reason: "the checkpoint thread panicked".into(),
            })
        });
        match written {
            Ok(runs) => {
                self.aggregator.install_id_runs(runs);
                Ok(())
            }
            Err(err) => {
                self.checkpoint_failed = true;
                self.ctx.fail();
                Err(err)
            }
        }
    }

    /// Takes in a checkpoint that has finished, without waiting for one that has not.
    pub(super) fn settle_finished(&mut self) -> Result<(), OutboxError> {
        if self.in_flight.as_ref().is_some_and(JoinHandle::is_finished) { self.settle() } else { Ok(()) }
    }

    /// Seals what is due, writes the changes, trims the log, and passes sealed records on. With
    /// `wait`, or when it seals, it is written before this returns; else it may be in flight.
    pub(super) fn checkpoint(&mut self, wait: bool) -> Result<(), OutboxError> {
        self.settle()?;
        let now = self.now();
        self.aggregator.seal_due(now);
        let delta = self.aggregator.take_delta();
        let sealing = !delta.sealed.is_empty();
        // Sealed records leave the open hours: a full write, so that no chunk still holds them.
        let full = sealing || self.outbox.wants_full_checkpoint();
        let open_changes = self.aggregator.has_open_changes();
        if delta.is_empty()
            && !full
            && !delta.sealed_through_advanced
            && !open_changes
            && self.seq == self.checkpointed_seq
        {
            return Ok(());
        }
        let open = match (full || open_changes).then(|| self.outbox.open_file()).transpose() {
            Ok(file) => file.map(|(file, generation)| OpenOut { file, generation, full, failed: None }),
            Err(err) => return Err(self.failed_checkpoint(err)),
        };
        let sealed_through = delta.sealed_through;
        let advanced = delta.sealed_through_advanced;
        let job = Job { outbox: self.outbox.clone(), seq: self.seq, delta, open, now, durable: sealing };
        let sealed = if wait || sealing || advanced {
            self.write_here(job, full).map_err(|err| self.failed_checkpoint(err))?
        } else {
            self.write_beside(job, full).map_err(|err| self.failed_checkpoint(err))?;
            Vec::new()
        };
        self.checkpointed_seq = self.seq;
        self.ctx.metrics.records.with_label_values(&["open"]).set(self.aggregator.open_records() as i64);
        if sealing {
            tracing::info!(records = sealed.len(), "sealed hourly records");
            let _ = self.sealed_tx.send(sealed);
        }
        // After the records: whoever sees this hour also finds its records in the channel. Told
        // only when it moves (the ship stage wakes for it).
        self.sealed_through
            .send_if_modified(|through| std::mem::replace(through, sealed_through) != sealed_through);
        Ok(())
    }

    /// Writes `job` on this thread; returns the sealed records written.
    fn write_here(&mut self, mut job: Job, full: bool) -> Result<Vec<StoredRecord>, OutboxError> {
        self.visit_open(full, |chunk| job.chunk(&chunk));
        let Checkpointed { runs, sealed } = job.finish()?;
        self.aggregator.install_id_runs(runs);
        Ok(sealed)
    }

    /// Starts `job` on a thread of its own and feeds it the open records' chunks; written here
    /// if no thread can be started.
    fn write_beside(&mut self, job: Job, full: bool) -> Result<(), OutboxError> {
        let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<(Job, Receiver<Vec<u8>>)>(1);
        let started = std::thread::Builder::new().name("meterd-checkpoint".into()).spawn(move || {
            let (mut job, chunks) = job_rx.recv().expect("the commit thread sends the job once started");
            chunks.iter().for_each(|chunk| job.chunk(&chunk));
            let written = job.finish().map(|written| written.runs);
            if let Err(err) = &written {
                // The commit thread stops meterd at its next turn (`settle`), between two groups
                // as for a checkpoint of its own. Until then the journal is intact and groups are
                // answered by their own barrier; a failed journal sync here fails every later one
                // (`Journal::sync`).
                tracing::error!(%err, "outbox checkpoint failed on the checkpoint thread; stopping");
            }
            written
        });
        match started {
            Ok(handle) => {
                let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel(CHUNKS_IN_FLIGHT);
                self.in_flight = Some(handle);
                job_tx.send((job, chunk_rx)).expect("the checkpoint thread waits for its job");
                // The writer takes every chunk, also after a failed write.
                self.visit_open(full, |chunk| drop(chunk_tx.send(chunk)));
                Ok(())
            }
            Err(err) => {
                tracing::debug!(%err, "no thread for the checkpoint; written on the commit thread");
                self.write_here(job, full).map(drop)
            }
        }
    }

    /// Encodes the open records changed since the last checkpoint (every one when `full`) and
    /// hands each chunk to `sink` as it is sealed.
    fn visit_open(&mut self, full: bool, mut sink: impl FnMut(Vec<u8>)) {
        let mut chunker = Chunker::open_hours();
        self.aggregator.visit_open(full, |totals| {
            chunker.push_encoded(|body| totals.encode(body));
            chunker.take_chunks().into_iter().for_each(&mut sink);
        });
        chunker.finish().0.into_iter().for_each(sink);
    }

    /// A failed checkpoint stops meterd and the intake of events. Unlike a failed journal write,
    /// it does not refuse the groups already in the journal: their own barrier answers them.
    fn failed_checkpoint(&mut self, err: OutboxError) -> OutboxError {
        tracing::error!(%err, "outbox checkpoint failed; stopping");
        self.checkpoint_failed = true;
        self.ctx.fail();
        err
    }
}
