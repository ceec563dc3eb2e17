//! The ingest socket: accepting connections, framing lines, and answering in order.
//!
//! Each connection has a reader and a writer. The reader turns each read into submissions of its
//! well-formed events (one per read, so a pipelining client costs one queue hop per read, not per
//! line) and queues, in line order, either a ready reply (a refused line) or a slot for the commit
//! stage's answer. The writer sends replies in that order. Framing (`framing.rs`) turns the bytes
//! into lines; a line over `max_line_bytes` is answered `line_too_long`.
//!
//! Limits. The replies a connection has not sent yet may take `max_pending_reply_bytes` (refused
//! lines at their exact size, committed events at an estimate until answered); past that the
//! reader stops reading until the client reads, so a client that never reads costs bounded memory
//! and its writes block. At most `max_connections` connections are served; one more gets one
//! `overloaded` line and is closed. An idle connection is never closed: applications keep one
//! open for hours, and the cap bounds what idle connections can hold.

use std::ops::ControlFlow;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::event::EventParser;
use super::framing::{Frame, Framer, READ_CHUNK};
use super::reply::Reply;
use crate::commit::{Command, Intake, Outcome, Submission};
use crate::context::Context;
use crate::listen::{self, Backoff, Cap, Refusals};
use crate::model::{ErrorCode, Event};
use crate::telemetry::metrics::Metrics;
use crate::unix::{Accepted, Watched};

/// Reply bytes one batch of lines may cost before the rest of a read goes in the next batch: a
/// read of ordinary events stays one batch; a read of thousands of refused lines is split.
const BATCH_REPLY_BYTES: usize = 256 * 1024;

/// What the reply to a committed event is taken to cost until it is known (an `ok` line with a
/// generated id), plus the length of the client's id.
const COMMITTED_REPLY_BYTES: usize = 48;

/// Once meterd is stopping, how long a write may wait for a client that does not read.
const UNREAD_AT_SHUTDOWN: Duration = Duration::from_secs(1);

/// The event parser, replaced whole when a reload changes the dimension allowlist.
pub type SharedParser = Arc<RwLock<Arc<EventParser>>>;

/// Everything a connection needs (HTTP ingest serves with a clone of it).
#[derive(Clone)]
pub struct IngestServer {
    pub parser: SharedParser,
    pub intake: Intake,
    pub ctx: Context,
    pub max_line_bytes: usize,
    pub overload_timeout: Duration,
    /// Empty = any peer that can open the socket.
    pub allowed_uids: Vec<u32>,
    /// Connections served at once (`ingest.max_connections`).
    pub max_connections: usize,
    /// Reply bytes a connection may have unsent before it stops reading
    /// (`ingest.max_pending_reply_bytes`).
    pub max_pending_reply_bytes: usize,
}

enum Slot {
    /// The next this many bytes of the batch's ready replies.
    Ready(usize),
    /// The next `count` replies come from the commit stage.
    Committed(usize),
}

/// The answer to the events of one read.
enum Answer {
    /// The commit stage's outcomes, once durable.
    Waiting(oneshot::Receiver<Vec<Outcome>>),
    /// Outcomes committed inline: already durable.
    Done(Vec<Outcome>),
    /// Refused before the commit stage saw them (overloaded).
    Refused(Vec<Reply>),
}

/// One batch of lines on its way to the writer.
#[derive(Default)]
struct Pending {
    /// The refused lines' replies, written out, in line order.
    ready: Vec<u8>,
    slots: Vec<Slot>,
    answer: Option<Answer>,
    /// Bytes taken from the connection's reply budget, given back once the replies are sent.
    cost: usize,
}

impl IngestServer {
    /// Accepts connections until `cancel`, then stops accepting, removes the socket file (if it
    /// is still the one meterd bound), and waits for every connection to answer the lines it has
    /// read. Tells readiness when the socket file is lost or replaced, and when it is back.
    pub async fn serve(self, mut listener: Watched, cancel: CancellationToken) {
        let this = Arc::new(self);
        let tracker = TaskTracker::new();
        let metrics = &this.ctx.metrics;
        let label = ["ingest"];
        let cap = Cap::new(
            this.max_connections,
            metrics.connections.with_label_values(&label),
            metrics.connections_over_limit.with_label_values(&label),
        );
        let refusals = Refusals::default();
        let mut backoff = Backoff::new("ingest", metrics.accept_errors.with_label_values(&label));
        loop {
            let accepted = tokio::select! {
                accepted = listener.next() => accepted,
                _ = cancel.cancelled() => break,
            };
            match accepted {
                Accepted::Trouble(trouble) => this.ctx.health.set_socket_trouble(trouble),
                Accepted::Connection(Err(err)) => backoff.pause(&err, &cancel).await,
                Accepted::Connection(Ok(stream)) => {
                    backoff.succeeded();
                    if let Some(refusal) = this.refusal(&stream) {
                        refusals.refuse(stream, refusal);
                    } else if let Some(slot) = cap.admit() {
                        tracker.spawn(this.clone().connection(stream, slot, cancel.clone()));
                    } else {
                        let message = format!(
                            "meterd has ingest.max_connections ({}) connections open; retry later",
                            cap.max()
                        );
                        refusals.refuse(stream, line(Reply::rejected(None, ErrorCode::Overloaded, message)));
                    }
                }
            }
        }
        listener.close();
        tracker.close();
        tracker.wait().await;
    }

    /// The refusal line for this peer, if it may not send events.
    fn refusal(&self, stream: &UnixStream) -> Option<Vec<u8>> {
        if self.allowed_uids.is_empty() {
            return None;
        }
        let message = match stream.peer_cred() {
            Ok(cred) if self.allowed_uids.contains(&cred.uid()) => return None,
            Ok(cred) => format!("uid {} may not send events (ingest.allowed_uids)", cred.uid()),
            Err(err) => format!("the peer's credentials are unreadable ({err}); ingest.allowed_uids is set"),
        };
        tracing::warn!(%message, "ingest connection refused");
        self.ctx.metrics.connections_refused.inc();
        Some(line(Reply::rejected(None, ErrorCode::PermissionDenied, message)))
    }

    async fn connection(self: Arc<Self>, stream: UnixStream, slot: listen::Slot, cancel: CancellationToken) {
        // Ids are scoped to the sending uid; a peer whose credentials are unreadable shares one
        // scope that no real uid has.
        let peer = stream.peer_cred().map_or(u32::MAX, |cred| cred.uid());
        let (mut read, write) = stream.into_split();
        let budget = Arc::new(Semaphore::new(self.max_pending_reply_bytes));
        let (pending_tx, pending_rx) = mpsc::unbounded_channel();
        let writer =
            Writer { budget: budget.clone(), metrics: self.ctx.metrics.clone(), cancel: cancel.clone() };
        let writer = tokio::spawn(writer.run(write, pending_rx));
        let mut framer = Framer::new(self.max_line_bytes);
        'reading: loop {
            let read_result = tokio::select! {
                result = read.read_buf(framer.buffer()) => result,
                _ = cancel.cancelled() => break,
            };
            if !matches!(read_result, Ok(1..)) {
                break;
            }
            let received = Instant::now();
            loop {
                let (mut pending, events) = self.parse(&mut framer, peer);
                if pending.slots.is_empty() {
                    break;
                }
                let Some(permit) = self.reserve(&budget, pending.cost, &cancel).await else { break 'reading };
                pending.cost = permit.num_permits();
                permit.forget();
                pending.answer = self.answer(events, received).await;
                if pending_tx.send(pending).is_err() {
                    break 'reading;
                }
            }
        }
        drop(pending_tx);
        let _ = writer.await;
        drop(slot);
    }

    /// Takes `cost` bytes (at most the whole budget) from the connection's reply budget. While the
    /// client has not read enough of its replies this waits, and the connection reads nothing.
    /// `None` once meterd is stopping or the writer has ended.
    async fn reserve<'b>(
        &self,
        budget: &'b Semaphore,
        cost: usize,
        cancel: &CancellationToken,
    ) -> Option<SemaphorePermit<'b>> {
        let cost = cost.min(self.max_pending_reply_bytes) as u32;
        if let Ok(permit) = budget.try_acquire_many(cost) {
            return Some(permit);
        }
        self.ctx.metrics.ingest_reads_paused.inc();
        tokio::select! {
            permit = budget.acquire_many(cost) => permit.ok(),
            _ = cancel.cancelled() => None,
        }
    }

    /// The next batch of complete lines in the framer: a slot per line in order, the refused
    /// lines' replies, the well-formed events, and what the replies will cost. A batch ends after
    /// [`BATCH_REPLY_BYTES`] of replies or with the last complete line.
    fn parse(&self, framer: &mut Framer, peer: u32) -> (Pending, Vec<Event>) {
        let parser = self.parser.read().expect("parser lock").clone();
        let mut pending = Pending::default();
        let mut events = Vec::new();
        let mut committed_cost = 0;
        framer.frames(|frame| {
            let before = pending.ready.len();
            match frame {
                Frame::Line(line) => match parser.parse(line) {
                    Ok(event) => {
                        committed_cost += COMMITTED_REPLY_BYTES + event.id.as_ref().map_or(0, String::len);
                        let mut event = Event { peer, ..event };
                        event.id_print = crate::aggregate::id_print(&event);
                        events.push(event);
                        match pending.slots.last_mut() {
                            Some(Slot::Committed(n)) => *n += 1,
                            _ => pending.slots.push(Slot::Committed(1)),
                        }
                    }
                    Err(err) => {
                        let code = err.rejection.code;
                        self.ctx.metrics.events_rejected.with_label_values(&[code.as_str()]).inc();
                        Reply::Err(err).write_to(&mut pending.ready);
                    }
                },
                Frame::Skipped => {
                    let message = format!("line longer than {} bytes; skipped", self.max_line_bytes);
                    self.refuse(ErrorCode::LineTooLong, message).write_to(&mut pending.ready);
                }
                Frame::TooLong(len) => {
                    let message = format!("line of {len} bytes is longer than {}", self.max_line_bytes);
                    self.refuse(ErrorCode::LineTooLong, message).write_to(&mut pending.ready);
                }
            }
            let written = pending.ready.len() - before;
            if written > 0 {
                match pending.slots.last_mut() {
                    Some(Slot::Ready(n)) => *n += written,
                    _ => pending.slots.push(Slot::Ready(written)),
                }
            }
            if pending.ready.len() + committed_cost >= BATCH_REPLY_BYTES {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        pending.cost = pending.ready.len() + committed_cost;
        (pending, events)
    }

    /// Hands the events of one batch to the commit stage, unless meterd cannot take them now.
    async fn answer(&self, events: Vec<Event>, received: Instant) -> Option<Answer> {
        if events.is_empty() {
            return None;
        }
        if self.ctx.health.outbox_full() {
            return Some(self.overloaded(events, "the outbox is full (storage.max_bytes); retry later"));
        }
        let events = match self.intake.try_inline(events, received) {
            Ok(outcomes) => return Some(Answer::Done(outcomes)),
            Err(events) => events,
        };
        let (reply, receiver) = oneshot::channel();
        match self.intake.submit(Submission { events, received, reply }, self.overload_timeout).await {
            Ok(()) => Some(Answer::Waiting(receiver)),
            Err(mpsc::error::SendTimeoutError::Timeout(command)) => {
                Some(self.overloaded(submitted(command), "meterd is overloaded; retry later"))
            }
            Err(mpsc::error::SendTimeoutError::Closed(command)) => {
                Some(self.overloaded(submitted(command), "meterd is stopping; retry later"))
            }
        }
    }

    /// The replies to a whole body of lines (HTTP ingest), in line order, once every event is
    /// durable or refused: the same parsing, submissions and replies as a connection's. A last
    /// line without its newline counts, because the body is complete. Every batch is submitted
    /// before the first answer is awaited, so a long body is one pipeline of group commits.
    pub(super) async fn replies(&self, body: &[u8], peer: u32) -> Vec<u8> {
        let received = Instant::now();
        let mut framer = Framer::new(self.max_line_bytes);
        framer.buffer().extend_from_slice(body);
        if !body.ends_with(b"\n") {
            framer.buffer().push(b'\n');
        }
        let mut batches = Vec::new();
        loop {
            let (mut pending, events) = self.parse(&mut framer, peer);
            if pending.slots.is_empty() {
                break;
            }
            pending.answer = self.answer(events, received).await;
            batches.push(pending);
        }
        let mut out = Vec::new();
        for Pending { ready, slots, answer, .. } in batches {
            let committed = match answer {
                Some(answer) => answered(answer, &self.ctx.metrics).await,
                None => Vec::new(),
            };
            write_batch(&ready, slots, &mut committed.into_iter(), &mut out);
        }
        out
    }

    fn refuse(&self, code: ErrorCode, message: String) -> Reply {
        self.ctx.metrics.events_rejected.with_label_values(&[code.as_str()]).inc();
        Reply::rejected(None, code, message)
    }

    /// Answers every event `overloaded` with `reason`.
    fn overloaded(&self, events: Vec<Event>, reason: &str) -> Answer {
        self.ctx
            .metrics
            .events_rejected
            .with_label_values(&[ErrorCode::Overloaded.as_str()])
            .inc_by(events.len() as u64);
        Answer::Refused(
            events.into_iter().map(|e| Reply::rejected(e.id, ErrorCode::Overloaded, reason)).collect(),
        )
    }
}

/// The events of a submission the commit queue did not take.
fn submitted(command: Command) -> Vec<Event> {
    match command {
        Command::Submit(submission) => submission.events,
        Command::Tick | Command::Reconfigure(_) | Command::Flush { .. } | Command::Open { .. } => Vec::new(),
    }
}

/// `reply` as one line of bytes.
fn line(reply: Reply) -> Vec<u8> {
    let mut out = Vec::new();
    reply.write_to(&mut out);
    out
}

/// The replies to an [`Answer`]; outcomes the commit stage never sent (it stopped) are
/// `storage_error`. Refusals are counted by their code.
async fn answered(answer: Answer, metrics: &Metrics) -> Vec<Reply> {
    let outcomes = match answer {
        Answer::Refused(replies) => return replies,
        Answer::Waiting(receiver) => receiver.await.unwrap_or_default(),
        Answer::Done(outcomes) => outcomes,
    };
    outcomes
        .into_iter()
        .map(|outcome| {
            let reply = Reply::from_outcome(outcome);
            if let Reply::Err(err) = &reply
                && err.rejection.code != ErrorCode::StorageError
            {
                metrics.events_rejected.with_label_values(&[err.rejection.code.as_str()]).inc();
            }
            reply
        })
        .collect()
}

/// Appends the replies of one batch to `out` in line order: the ready ones from `ready`, the
/// committed ones from `committed`.
fn write_batch(
    ready: &[u8],
    slots: Vec<Slot>,
    committed: &mut impl Iterator<Item = Reply>,
    out: &mut Vec<u8>,
) {
    let mut at = 0;
    for slot in slots {
        match slot {
            Slot::Ready(len) => {
                out.extend_from_slice(&ready[at..at + len]);
                at += len;
            }
            Slot::Committed(count) => {
                for _ in 0..count {
                    committed.next().unwrap_or_else(stopped).write_to(out);
                }
            }
        }
    }
}

/// The writing half of a connection.
struct Writer {
    /// The connection's reply budget: the writer gives bytes back once they are sent.
    budget: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
}

impl Writer {
    /// Sends the replies of each batch in order, coalescing batches that are already answered
    /// into one write. Replies already formatted go out before waiting on a group commit. When it
    /// ends (the client is gone) it closes the budget, which stops the reader.
    async fn run(
        self,
        mut write: tokio::net::unix::OwnedWriteHalf,
        mut pending: mpsc::UnboundedReceiver<Pending>,
    ) {
        let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut reserved = 0;
        while let Some(Pending { ready, slots, answer, cost }) = pending.recv().await {
            let mut committed = match answer {
                Some(answer) => {
                    if !out.is_empty()
                        && !answer.is_ready()
                        && !self.send(&mut write, &mut out, &mut reserved).await
                    {
                        break;
                    }
                    answered(answer, &self.metrics).await.into_iter()
                }
                None => Vec::new().into_iter(),
            };
            write_batch(&ready, slots, &mut committed, &mut out);
            reserved += cost;
            if (pending.is_empty() || out.len() >= READ_CHUNK)
                && !self.send(&mut write, &mut out, &mut reserved).await
            {
                break;
            }
        }
        if !out.is_empty() {
            self.send(&mut write, &mut out, &mut reserved).await;
        }
        self.budget.close();
        let _ = write.shutdown().await;
    }

    /// Writes `out` and gives its `reserved` bytes back to the budget. False if the client is
    /// gone, or if meterd is stopping and the client has not read for [`UNREAD_AT_SHUTDOWN`].
    async fn send(
        &self,
        write: &mut tokio::net::unix::OwnedWriteHalf,
        out: &mut Vec<u8>,
        reserved: &mut usize,
    ) -> bool {
        let stopping = async {
            self.cancel.cancelled().await;
            tokio::time::sleep(UNREAD_AT_SHUTDOWN).await;
        };
        let sent = tokio::select! {
            result = write.write_all(out) => result.is_ok(),
            _ = stopping => false,
        };
        out.clear();
        self.budget.add_permits(std::mem::take(reserved));
        sent
    }
}

/// The reply to an event the commit stage never answered.
fn stopped() -> Reply {
    Reply::rejected(
        None,
        ErrorCode::StorageError,
        "meterd stopped before the event was stored; it was not counted",
    )
}

impl Answer {
    /// Whether the replies can be written without waiting.
    fn is_ready(&self) -> bool {
        match self {
            Answer::Refused(_) | Answer::Done(_) => true,
            Answer::Waiting(receiver) => !receiver.is_empty(),
        }
    }
}
