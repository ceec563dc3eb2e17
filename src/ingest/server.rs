//! The ingest socket: accepting connections, framing lines, and answering in order.
//!
//! Each connection has a reader and a writer. The reader turns every read into one submission of
//! its well-formed events (so a pipelining client costs one queue hop per read, not per line) and
//! queues, in line order, either a ready reply (a refused line) or a slot for the commit stage's
//! answer. The writer sends replies in that order. A line over `max_line_bytes` is skipped up to
//! its newline and answered `line_too_long`; an unterminated fragment at end of stream is dropped,
//! since it may be a torn write.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::event::{ErrorCode, EventParser, Reply};
use crate::commit::{Command, Submission};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;

/// Read batches a connection may have waiting for replies before it stops reading.
const MAX_PENDING_READS: usize = 64;
const READ_CHUNK: usize = 64 * 1024;

/// The gid of `group`: a numeric gid, or a name looked up in /etc/group.
pub fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").map_err(|e| format!("cannot read /etc/group: {e}"))?;
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            Some((fields.next()?, fields.nth(1)?))
        })
        .find(|(name, _)| *name == group)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| format!("no group {group:?} in /etc/group (a numeric gid works too)"))
}

/// Binds `path` for ingest: replaces a stale socket file left by a crash, refuses to touch a live
/// one or anything that is not a socket, and sets the file's permission bits to `mode` (and its
/// group to `group`).
pub fn bind_socket(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener, String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("failed to create socket directory {}: {e}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(format!("socket {} is in use by another process", path.display())),
            Err(_) => {
                tracing::warn!(socket = %path.display(), "replacing stale socket file");
                std::fs::remove_file(path)
                    .map_err(|e| format!("failed to remove stale socket {}: {e}", path.display()))?;
            }
        },
        Ok(_) => {
            return Err(format!("{} exists and is not a socket; refusing to replace it", path.display()));
        }
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(format!("failed to inspect {}: {err}", path.display())),
    }
    let listener =
        UnixListener::bind(path).map_err(|e| format!("failed to bind socket {}: {e}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| format!("failed to set group {gid} on {}: {e}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("failed to set mode {mode:o} on {}: {e}", path.display()))?;
    Ok(listener)
}

/// The event parser, replaced whole when a reload changes the dimension allowlist.
pub type SharedParser = Arc<RwLock<Arc<EventParser>>>;

/// Everything a connection needs.
pub struct IngestServer {
    pub parser: SharedParser,
    pub commands: mpsc::Sender<Command>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
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

struct Pending {
    slots: Vec<Slot>,
    committed: Option<oneshot::Receiver<Vec<Reply>>>,
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
        self.metrics.connections_refused.inc();
        Some(Reply::rejected(None, ErrorCode::PermissionDenied, message))
    }

    async fn connection(self: Arc<Self>, stream: UnixStream, cancel: CancellationToken) {
        let (mut read, write) = stream.into_split();
        let (pending_tx, pending_rx) = mpsc::channel(MAX_PENDING_READS);
        let writer = tokio::spawn(write_replies(write, pending_rx));
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut skipping = false;
        loop {
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            let read_result = tokio::select! {
                result = read.read_buf(&mut buf) => result,
                _ = cancel.cancelled() => break,
            };
            match read_result {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let received = Instant::now();
            let parser = self.parser.read().expect("parser lock").clone();
            let mut slots = Vec::new();
            let mut events = Vec::new();
            let mut start = 0;
            while let Some(at) = memchr(&buf[start..]) {
                let line = &buf[start..start + at];
                start += at + 1;
                if std::mem::take(&mut skipping) {
                    slots.push(Slot::Ready(self.refuse(
                        None,
                        ErrorCode::LineTooLong,
                        format!("line longer than {} bytes; skipped", self.max_line_bytes),
                    )));
                    continue;
                }
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if line.len() > self.max_line_bytes {
                    slots.push(Slot::Ready(self.refuse(
                        None,
                        ErrorCode::LineTooLong,
                        format!("line of {} bytes is longer than {}", line.len(), self.max_line_bytes),
                    )));
                    continue;
                }
                match parser.parse(line) {
                    Ok(event) => {
                        events.push(event);
                        match slots.last_mut() {
                            Some(Slot::Committed(n)) => *n += 1,
                            _ => slots.push(Slot::Committed(1)),
                        }
                    }
                    Err(err) => {
                        self.metrics.events_rejected.with_label_values(&[err.rejection.code.as_str()]).inc();
                        slots.push(Slot::Ready(Reply::Err(err)));
                    }
                }
            }
            buf.drain(..start);
            if buf.len() > self.max_line_bytes {
                // The rest of this line is dropped as it arrives; its reply goes out at its newline.
                skipping = true;
                buf.clear();
            } else if skipping {
                buf.clear();
            }
            if slots.is_empty() {
                continue;
            }
            let committed = if events.is_empty() {
                None
            } else if self.health.outbox_full() {
                Some(self.refuse_all(events, "the outbox is full (storage.max_bytes); retry later"))
            } else {
                Some(self.submit(events, received).await)
            };
            if pending_tx.send(Pending { slots, committed }).await.is_err() {
                break;
            }
        }
        drop(pending_tx);
        let _ = writer.await;
    }

    fn refuse(&self, id: Option<String>, code: ErrorCode, message: String) -> Reply {
        self.metrics.events_rejected.with_label_values(&[code.as_str()]).inc();
        Reply::rejected(id, code, message)
    }

    /// Answers every event `overloaded` with `reason`, as the commit stage's reply would come.
    fn refuse_all(&self, events: Vec<crate::ingest::Event>, reason: &str) -> oneshot::Receiver<Vec<Reply>> {
        let (reply, receiver) = oneshot::channel();
        self.metrics
            .events_rejected
            .with_label_values(&[ErrorCode::Overloaded.as_str()])
            .inc_by(events.len() as u64);
        let _ = reply
            .send(events.into_iter().map(|e| Reply::rejected(e.id, ErrorCode::Overloaded, reason)).collect());
        receiver
    }

    /// Queues events for the commit stage; answers `overloaded` if it has no room in time.
    async fn submit(
        &self,
        events: Vec<crate::ingest::Event>,
        received: Instant,
    ) -> oneshot::Receiver<Vec<Reply>> {
        let (reply, receiver) = oneshot::channel();
        let command = Command::Submit(Submission { events, received, reply });
        if let Err(err) = self.commands.send_timeout(command, self.overload_timeout).await {
            let (Command::Submit(submission), reason) = (match err {
                mpsc::error::SendTimeoutError::Timeout(c) => (c, "meterd is overloaded; retry later"),
                mpsc::error::SendTimeoutError::Closed(c) => (c, "meterd is stopping; retry later"),
            }) else {
                unreachable!("only submissions are sent here")
            };
            let count = submission.events.len();
            self.metrics
                .events_rejected
                .with_label_values(&[ErrorCode::Overloaded.as_str()])
                .inc_by(count as u64);
            let replies = submission
                .events
                .into_iter()
                .map(|e| Reply::rejected(e.id, ErrorCode::Overloaded, reason))
                .collect();
            let _ = submission.reply.send(replies);
        }
        receiver
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

fn memchr(haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == b'\n')
}

async fn write_replies(mut write: tokio::net::unix::OwnedWriteHalf, mut pending: mpsc::Receiver<Pending>) {
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    while let Some(Pending { slots, committed }) = pending.recv().await {
        let mut committed = match committed {
            Some(mut receiver) => {
                // Replies already formatted go out before waiting on a group commit.
                let ready = match receiver.try_recv() {
                    Ok(replies) => Some(replies),
                    Err(oneshot::error::TryRecvError::Empty) => {
                        if !out.is_empty() && write.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                        receiver.await.ok()
                    }
                    Err(oneshot::error::TryRecvError::Closed) => None,
                };
                ready.map(Vec::into_iter)
            }
            None => None,
        };
        for slot in slots {
            match slot {
                Slot::Ready(reply) => reply.write_to(&mut out),
                Slot::Committed(count) => {
                    for _ in 0..count {
                        match committed.as_mut().and_then(Iterator::next) {
                            Some(reply) => reply.write_to(&mut out),
                            None => Reply::rejected(
                                None,
                                ErrorCode::StorageError,
                                "meterd stopped before the event was stored; it was not counted",
                            )
                            .write_to(&mut out),
                        }
                    }
                }
            }
        }
        // Coalesce the replies of reads that are already answered into one write.
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
