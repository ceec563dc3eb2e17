//! The sync thread: runs the durability barrier (the journal's `fdatasync`) for every group the
//! commit thread logged meanwhile, and only then answers them, strictly in order. When nothing
//! is waiting for it and no more work is queued, the commit thread runs the barrier itself: one
//! thread hand-off less for a lone event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Outcome;
use crate::context::Context;
use crate::outbox::Outbox;

/// How long the commit and sync threads poll for work before they park.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);

/// One group commit waiting for its barrier.
pub(super) struct Logged {
    /// Whether the group wrote to the log (otherwise it only waits for earlier groups).
    pub wrote: bool,
    /// The log sequence of the last group written, as of this one.
    pub seq: u64,
    pub accepted: u64,
    pub deliveries: Vec<Delivery>,
}

/// The outcomes of one submission, and where they go.
pub(super) struct Delivery {
    pub reply: oneshot::Sender<Vec<Outcome>>,
    pub outcomes: Vec<Outcome>,
    pub received: Instant,
}

/// What the commit and sync threads share to answer groups.
#[derive(Clone)]
pub(super) struct Answering {
    pub outbox: Arc<Outbox>,
    pub ctx: Context,
    pub failed: Arc<AtomicBool>,
    /// Groups handed to the sync thread and not answered yet. At 0 the commit thread may run
    /// the barrier itself (nothing logged earlier waits), saving a thread hand-off per ack.
    pub outstanding: Arc<AtomicUsize>,
    /// Whether events come one at a time: the last barrier covered a single submission, and
    /// none arrived while it ran. Only then may a connection commit inline (`inline.rs`): under
    /// concurrent load it would take the first event of a round through a flush alone and make
    /// the rest wait for a second one, where the queue makes them one group.
    pub solo: Arc<AtomicBool>,
}

impl Answering {
    /// The barrier over every group of `batch`, then their answers, in order; `by` names the
    /// thread (`meterd_barriers_total`).
    pub fn barrier_and_answer(&self, batch: Vec<Logged>, by: &str) {
        let submissions: usize = batch.iter().map(|g| g.deliveries.len()).sum();
        self.solo.store(submissions == 1, Ordering::Release);
        let mut ok = !self.failed.load(Ordering::SeqCst);
        if ok && batch.iter().any(|g| g.wrote) {
            let seq = batch.iter().map(|g| g.seq).max().unwrap_or(0);
            self.ctx.metrics.barriers.with_label_values(&[by]).inc();
            if let Err(err) = self.outbox.sync_journal() {
                tracing::error!(%err, "journal sync failed; refusing everything from now on and stopping");
                super::stop_after_storage_failure(&self.failed, &self.ctx);
                ok = false;
            }
            for group in batch.iter().filter(|_| ok) {
                self.ctx.metrics.events_accepted.inc_by(group.accepted);
            }
            self.answer(batch, ok);
            // The watermark after the answers: it is only a lower bound, never ahead of the
            // journal, and off the path of every ack.
            if ok && let Err(err) = self.outbox.mark_durable(seq) {
                tracing::error!(%err, "watermark write failed; refusing everything from now on and stopping");
                super::stop_after_storage_failure(&self.failed, &self.ctx);
            }
            return;
        }
        self.answer(batch, ok);
    }

    fn answer(&self, batch: Vec<Logged>, ok: bool) {
        for group in batch {
            for Delivery { reply, mut outcomes, received } in group.deliveries {
                if ok {
                    let latency = received.elapsed().as_secs_f64();
                    let acked = outcomes.iter().filter(|o| o.is_ok()).count();
                    (0..acked).for_each(|_| self.ctx.metrics.ack_latency.observe(latency));
                } else {
                    super::outcome::refuse_acks(&mut outcomes);
                }
                let _ = reply.send(outcomes);
            }
        }
    }
}

/// Barrier, then answer, for every group logged meanwhile; until the commit thread hangs up.
pub(super) fn sync_loop(answering: Answering, mut groups: std::sync::mpsc::Receiver<Logged>) {
    let try_next = |groups: &mut std::sync::mpsc::Receiver<Logged>| match groups.try_recv() {
        Ok(group) => Ok(Some(group)),
        Err(std::sync::mpsc::TryRecvError::Empty) => Ok(None),
        Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(()),
    };
    while let Some(first) = spin_then_wait(&mut groups, try_next, |groups| groups.recv().ok()) {
        let mut batch = vec![first];
        batch.extend(groups.try_iter());
        let count = batch.len();
        answering.barrier_and_answer(batch, "sync");
        answering.outstanding.fetch_sub(count, Ordering::AcqRel);
    }
}

/// The next item of a queue: polls `try_next` (`Ok(None)` = empty, `Err` = closed) for up to
/// [`SPIN_BEFORE_PARK`], yielding the CPU between tries, and only then parks in `wait`. Under load
/// the next item usually comes within microseconds, and a futex wake-up would add more than that
/// to every ack.
pub(super) fn spin_then_wait<Q, T>(
    queue: &mut Q,
    try_next: impl Fn(&mut Q) -> Result<Option<T>, ()>,
    wait: impl FnOnce(&mut Q) -> Option<T>,
) -> Option<T> {
    let started = Instant::now();
    while started.elapsed() < SPIN_BEFORE_PARK {
        match try_next(queue) {
            Ok(Some(item)) => return Some(item),
            Ok(None) => std::thread::yield_now(),
            Err(()) => return None,
        }
    }
    wait(queue)
}
