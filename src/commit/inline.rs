//! The commit stage's shared state, and inline commits.
//!
//! A lone event otherwise crosses three threads: the connection's runtime worker queues it, the
//! commit thread logs and syncs it, and the worker is woken again to write the reply. On a
//! virtual machine each of those wake-ups of an idle CPU costs tens of microseconds, as much as a
//! third of a device flush. So when the stage is idle — no submission queued or being logged, no
//! group waiting for the sync thread — the connection takes the committer's lock and logs, syncs
//! and answers its events itself, on its own thread, exactly as the commit thread would have.
//!
//! | rule | why |
//! |---|---|
//! | only while events come one at a time (the last barrier covered one submission, and nothing arrived while it ran) | under concurrent load the first event of a round would take a flush alone and the rest would wait for a second one |
//! | only when nothing is queued, being logged, or waiting for a barrier | groups are logged and answered strictly in order, and a connection's submissions in the order it sent them |
//! | the lock is held through the barrier | no later group can be answered before this one is durable |
//! | only small submissions ([`super::INLINE_EVENTS`]) | a large one is better overlapped with the next group by the sync thread |
//! | only when the runtime has another worker | a worker blocked on the device never stalls the rest of meterd (metrics, health, submission) |
//! | not before the commit thread has sealed what was due at start, nor after its last checkpoint began | the same order of sealing and counting as the queue's |
//!
//! Under load the stage is never idle, and every event goes through the queue as before.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::sync::{Answering, spin_then_wait, sync_loop};
use super::{Command, Committer, INLINE_EVENTS, Outcome, Submission};
use crate::model::Event;
use crate::outbox::OutboxError;

/// What the commit thread and the connections committing inline share.
pub struct Shared {
    committer: Mutex<Committer>,
    pub(super) answering: Answering,
    /// Submissions sent to the commit queue and not yet logged.
    pub(super) queued: AtomicUsize,
    /// Set once the commit thread has sealed what was due at start; cleared when it stops.
    running: AtomicBool,
    /// Whether connections may commit inline (the runtime has more than one worker).
    inline: bool,
}

impl Shared {
    /// The committer; a poisoned lock means a panic while committing, which ends meterd.
    fn lock(&self) -> std::sync::MutexGuard<'_, Committer> {
        self.committer.lock().expect("commit lock")
    }
}

/// Where connections hand their events: inline when the stage is idle, else the commit queue.
#[derive(Clone)]
pub struct Intake {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl Committer {
    /// Shares the committer between its thread ([`run`]) and the connections ([`Intake`]).
    /// `inline`: whether a connection may commit on its own thread.
    pub fn share(self, commands: mpsc::Sender<Command>, inline: bool) -> (Intake, Arc<Shared>) {
        let answering = Answering {
            outbox: self.outbox.clone(),
            ctx: self.ctx.clone(),
            failed: self.failed.clone(),
            outstanding: Arc::new(AtomicUsize::new(0)),
            solo: Arc::new(AtomicBool::new(false)),
        };
        let shared = Arc::new(Shared {
            committer: Mutex::new(self),
            answering,
            queued: AtomicUsize::new(0),
            running: AtomicBool::new(false),
            inline,
        });
        (Intake { commands, shared: shared.clone() }, shared)
    }
}

impl Intake {
    /// Queues `submission` for the commit thread, waiting at most `timeout` for room.
    pub async fn submit(
        &self,
        submission: Submission,
        timeout: Duration,
    ) -> Result<(), mpsc::error::SendTimeoutError<Command>> {
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        let sent = self.commands.send_timeout(Command::Submit(submission), timeout).await;
        if sent.is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    /// Logs, syncs and answers `events` on this thread if the commit stage is idle (see the
    /// module's rules); otherwise gives them back untouched. Blocks for one device flush.
    pub fn try_inline(&self, events: Vec<Event>, received: Instant) -> Result<Vec<Outcome>, Vec<Event>> {
        let shared = &*self.shared;
        if !shared.inline || events.len() > INLINE_EVENTS || !self.idle() {
            return Err(events);
        }
        let Ok(mut committer) = shared.committer.try_lock() else { return Err(events) };
        // Checked again under the lock: the commit thread changes these only while holding it.
        if !self.idle() {
            return Err(events);
        }
        let (reply, mut answer) = oneshot::channel();
        let logged = committer.commit(&mut vec![Submission { events, received, reply }]);
        shared.answering.barrier_and_answer(vec![logged], "connection");
        if shared.queued.load(Ordering::Acquire) > 0 {
            shared.answering.solo.store(false, Ordering::Release);
        }
        drop(committer);
        Ok(answer.try_recv().unwrap_or_default())
    }

    fn idle(&self) -> bool {
        let shared = &*self.shared;
        shared.running.load(Ordering::Acquire)
            && shared.answering.solo.load(Ordering::Acquire)
            && shared.queued.load(Ordering::Acquire) == 0
            && shared.answering.outstanding.load(Ordering::Acquire) == 0
    }
}

/// The commit thread: runs until every sender of `commands` is gone, then writes a last
/// checkpoint.
pub fn run(shared: Arc<Shared>, mut commands: mpsc::Receiver<Command>) -> Result<(), OutboxError> {
    shared.lock().start()?;
    shared.running.store(true, Ordering::Release);
    let (sync_tx, sync_rx) = std::sync::mpsc::channel();
    let sync = {
        let answering = shared.answering.clone();
        std::thread::Builder::new()
            .name("meterd-sync".into())
            .spawn(move || sync_loop(answering, sync_rx))
            .map_err(OutboxError::Sync)?
    };
    let mut group: Vec<Submission> = Vec::new();
    let try_next = |commands: &mut mpsc::Receiver<Command>| match commands.try_recv() {
        Ok(command) => Ok(Some(command)),
        Err(mpsc::error::TryRecvError::Empty) => Ok(None),
        Err(mpsc::error::TryRecvError::Disconnected) => Err(()),
    };
    // A reload or flush that ended a group (`Committer::take_group`) starts the next, under the
    // same hold of the lock: no connection commits between the two.
    let mut held = None;
    'turns: while let Some(mut first) = spin_then_wait(&mut commands, try_next, |c| c.blocking_recv()) {
        let mut committer = shared.lock();
        loop {
            let tick = committer.take_group(first, &mut commands, &mut group, &mut held);
            if !group.is_empty() && !committer.log_group(&mut group, &shared, &commands, &sync_tx) {
                break 'turns;
            }
            committer.after_turn(tick)?;
            match held.take() {
                Some(next) => first = next,
                None => break,
            }
        }
    }
    let mut committer = shared.lock();
    shared.running.store(false, Ordering::Release);
    drop(sync_tx);
    let _ = sync.join();
    if committer.failed() {
        // A checkpoint still in flight ends before the thread does; its error is logged already
        // or does not matter now.
        let _ = committer.settle();
        return Ok(());
    }
    committer.checkpoint(true)
}
