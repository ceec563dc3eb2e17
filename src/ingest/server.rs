//! The ingest socket: accepting connections, framing lines, and answering in order.
//!
//! Each connection has a reader and a writer. The reader turns every read into one submission of
//! its well-formed events (so a pipelining client costs one queue hop per read, not per line) and
//! queues, in line order, either a ready reply (a refused line) or a slot for the commit stage's
//! answer. The writer sends replies in that order. Framing (`framing.rs`) turns the bytes into lines;
//! a line over `max_line_bytes` is answered `line_too_long`.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::event::EventParser;
use super::framing::{Frame, Framer, READ_CHUNK};
use super::reply::Reply;
use crate::commit::{Command, Outcome, Submission};
use crate::context::Context;
use crate::model::{ErrorCode, Event};
use crate::telemetry::metrics::Metrics;

/// Read batches a connection may have waiting for replies before it stops reading.
const MAX_PENDING_READS: usize = 64;

/// The event parser, replaced whole when a reload changes the dimension allowlist.
pub type SharedParser = Arc<RwLock<Arc<EventParser>>>;

/// Everything a connection needs.
pub struct IngestServer {
    pub parser: SharedParser,
    pub commands: mpsc::Sender<Command>,
    pub ctx: Context,
    pub max_line_bytes: usize,
    pub overload_timeout: Duration,
    /// Empty = any peer that can open the socket.
    pub allowed_uids: Vec<u32>,
    /// Whether meterd bound the socket file (and so removes it at shutdown). A socket passed by
    /// systemd belongs to systemd and stays.
    pub owns_socket: bool,
}

enum Slot {
    Ready(Reply),
    /// The next `count` replies come from the commit stage.
    Committed(usize),
}

/// The answer to the events of one read.
enum Answer {
    /// The commit stage's outcomes, once durable.
    Waiting(oneshot::Receiver<Vec<Outcome>>),
    /// Refused before the commit stage saw them (overloaded).
    Refused(Vec<Reply>),
}

struct Pending {
    slots: Vec<Slot>,
    answer: Option<Answer>,
}

impl IngestServer {
    /// Accepts connections until `cancel`, then stops accepting, removes the socket file, and
    /// waits for every connection to answer the lines it has read.
    pub async fn serve(self, listener: UnixListener, socket: PathBuf, cancel: CancellationToken) {
        let this = Arc::new(self);
        let tracker = TaskTracker::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if let Some(refusal) = this.refusal(&stream) {
                            tracker.spawn(refuse_connection(stream, refusal));
                        } else {
                            tracker.spawn(this.clone().connection(stream, cancel.clone()));
                        }
                    }
                    Err(err) => {
                        tracing::warn!(%err, "ingest accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = cancel.cancelled() => break,
            }
        }
        drop(listener);
        if this.owns_socket
            && let Err(err) = std::fs::remove_file(&socket)
        {
            tracing::warn!(%err, socket = %socket.display(), "failed to remove socket file");
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Why this peer may not send events, if it may not.
    fn refusal(&self, stream: &UnixStream) -> Option<Reply> {
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
        Some(Reply::rejected(None, ErrorCode::PermissionDenied, message))
    }

    async fn connection(self: Arc<Self>, stream: UnixStream, cancel: CancellationToken) {
        // Ids are scoped to the sending uid; a peer whose credentials are unreadable shares one
        // scope that no real uid has.
        let peer = stream.peer_cred().map_or(u32::MAX, |cred| cred.uid());
        let (mut read, write) = stream.into_split();
        let (pending_tx, pending_rx) = mpsc::channel(MAX_PENDING_READS);
        let writer = tokio::spawn(write_replies(write, pending_rx, self.ctx.metrics.clone()));
        let mut framer = Framer::new(self.max_line_bytes);
        loop {
            let read_result = tokio::select! {
                result = read.read_buf(framer.buffer()) => result,
                _ = cancel.cancelled() => break,
            };
            if !matches!(read_result, Ok(1..)) {
                break;
            }
            let received = Instant::now();
            let (slots, events) = self.parse(&mut framer, peer);
            if slots.is_empty() {
                continue;
            }
            let answer = self.answer(events, received).await;
            if pending_tx.send(Pending { slots, answer }).await.is_err() {
                break;
            }
        }
        drop(pending_tx);
        let _ = writer.await;
    }

    /// The frames of one read: a slot per line in order, and the well-formed events.
    fn parse(&self, framer: &mut Framer, peer: u32) -> (Vec<Slot>, Vec<Event>) {
        let parser = self.parser.read().expect("parser lock").clone();
        let mut slots = Vec::new();
        let mut events = Vec::new();
        framer.frames(|frame| {
            let refusal = match frame {
                Frame::Skipped => format!("line longer than {} bytes; skipped", self.max_line_bytes),
                Frame::TooLong(len) => format!("line of {len} bytes is longer than {}", self.max_line_bytes),
                Frame::Line(line) => match parser.parse(line) {
                    Ok(event) => {
                        events.push(Event { peer, ..event });
                        match slots.last_mut() {
                            Some(Slot::Committed(n)) => *n += 1,
                            _ => slots.push(Slot::Committed(1)),
                        }
                        return;
                    }
                    Err(err) => {
                        self.ctx
                            .metrics
                            .events_rejected
                            .with_label_values(&[err.rejection.code.as_str()])
                            .inc();
                        slots.push(Slot::Ready(Reply::Err(err)));
                        return;
                    }
                },
            };
            slots.push(Slot::Ready(self.refuse(None, ErrorCode::LineTooLong, refusal)));
        });
        (slots, events)
    }

    /// Hands the events of one read to the commit stage, unless meterd cannot take them now.
    async fn answer(&self, events: Vec<Event>, received: Instant) -> Option<Answer> {
        if events.is_empty() {
            return None;
        }
        if self.ctx.health.outbox_full() {
            return Some(self.overloaded(events, "the outbox is full (storage.max_bytes); retry later"));
        }
        let (reply, receiver) = oneshot::channel();
        let command = Command::Submit(Submission { events, received, reply });
        match self.commands.send_timeout(command, self.overload_timeout).await {
            Ok(()) => Some(Answer::Waiting(receiver)),
            Err(mpsc::error::SendTimeoutError::Timeout(command)) => {
                Some(self.overloaded(submitted(command), "meterd is overloaded; retry later"))
            }
            Err(mpsc::error::SendTimeoutError::Closed(command)) => {
                Some(self.overloaded(submitted(command), "meterd is stopping; retry later"))
            }
        }
    }

    fn refuse(&self, id: Option<String>, code: ErrorCode, message: String) -> Reply {
        self.ctx.metrics.events_rejected.with_label_values(&[code.as_str()]).inc();
        Reply::rejected(id, code, message)
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
        Command::Tick | Command::Reconfigure(_) | Command::Flush { .. } => Vec::new(),
    }
}

/// Sends the refusal line and closes the connection. What the peer already sent is read and
/// dropped first (for at most a second), because closing a socket with unread data resets it and
/// the peer might lose the refusal line.
async fn refuse_connection(mut stream: UnixStream, refusal: Reply) {
    let mut out = Vec::new();
    refusal.write_to(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await;
}

/// The replies to an [`Answer`]; outcomes the commit stage never sent (it stopped) are
/// `storage_error`. Refusals are counted by their code.
async fn answered(answer: Answer, metrics: &Metrics) -> Vec<Reply> {
    let outcomes = match answer {
        Answer::Refused(replies) => return replies,
        Answer::Waiting(receiver) => receiver.await.unwrap_or_default(),
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

/// Sends the replies of each read in order, coalescing reads that are already answered into one
/// write. Replies already formatted go out before waiting on a group commit.
async fn write_replies(
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut pending: mpsc::Receiver<Pending>,
    metrics: Arc<Metrics>,
) {
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    while let Some(Pending { slots, answer }) = pending.recv().await {
        let mut committed = match answer {
            Some(answer) => {
                if !out.is_empty() && !answer.is_ready() {
                    if write.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                answered(answer, &metrics).await.into_iter()
            }
            None => Vec::new().into_iter(),
        };
        for slot in slots {
            match slot {
                Slot::Ready(reply) => reply.write_to(&mut out),
                Slot::Committed(count) => {
                    for _ in 0..count {
                        committed.next().unwrap_or_else(stopped).write_to(&mut out);
                    }
                }
            }
        }
        if pending.is_empty() || out.len() >= READ_CHUNK {
            if write.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
    if !out.is_empty() {
        let _ = write.write_all(&out).await;
    }
    let _ = write.shutdown().await;
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
            Answer::Refused(_) => true,
            Answer::Waiting(receiver) => !receiver.is_empty(),
        }
    }
}
