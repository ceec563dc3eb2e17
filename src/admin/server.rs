//! The daemon's side of the admin socket. At most `admin.max_connections` connections are served
//! at once (one more gets an error line and is closed), and a connection that sends no request
//! line within [`REQUEST_TIMEOUT`] is answered with an error and closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::view::{RecordView, StatusReport, select, select_by, time_text};
use super::{Line, Request};
use crate::commit::Command;
use crate::context::Context;
use crate::listen::{self, Backoff, Cap, Refusals};
use crate::outbox::{Outbox, OutboxError, StoredRecord};
use crate::submit::Control;
use crate::unix::{Accepted, Watched};

/// How much of a streamed answer is handed to the connection at a time.
const STREAM_CHUNK_BYTES: usize = 64 * 1024;

/// Longest request line read.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// How long a connection may take to send its request line (`meterd status` sends it at once).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin socket needs from the daemon.
pub struct AdminServer {
    pub ctx: Context,
    pub outbox: Arc<Outbox>,
    pub controls: mpsc::Sender<Control>,
    /// The commit stage, for `flush`.
    pub commands: mpsc::Sender<Command>,
    /// Whether this is the sandbox, where `flush` may close every open hour at once.
    pub sandbox: bool,
    pub data_dir: String,
    /// `submit.deadline` in seconds.
    pub deadline: i64,
    /// Connections served at once (`admin.max_connections`).
    pub max_connections: usize,
    /// Fleet mode: this host's id, and the database whose dead letters `dlq list` adds.
    pub fleet: Option<(String, crate::fleet::db::Target)>,
    /// The notification consumer's state and ledger, when it is on.
    pub notifications: Option<Arc<crate::notifications::Shared>>,
}

/// Answers admin connections until `cancel`, then removes the socket file if it is still the one
/// meterd bound.
pub async fn serve(server: AdminServer, mut listener: Watched, cancel: CancellationToken) {
    let server = Arc::new(server);
    let metrics = &server.ctx.metrics;
    let label = ["admin"];
    let cap = Cap::new(
        server.max_connections,
        metrics.connections.with_label_values(&label),
        metrics.connections_over_limit.with_label_values(&label),
    );
    let refusals = Refusals::default();
    let mut backoff = Backoff::new("admin", metrics.accept_errors.with_label_values(&label));
    loop {
        let accepted = tokio::select! {
            accepted = listener.next() => accepted,
            _ = cancel.cancelled() => break,
        };
        match accepted {
            // Readiness is about events; a lost admin socket is logged by the listener.
            Accepted::Trouble(_) => {}
            Accepted::Connection(Err(err)) => backoff.pause(&err, &cancel).await,
            Accepted::Connection(Ok(stream)) => {
                backoff.succeeded();
                match cap.admit() {
                    Some(slot) => {
                        tokio::spawn(server.clone().connection(stream, slot));
                    }
                    None => {
                        let message = format!(
                            "meterd has admin.max_connections ({}) connections open; retry later",
                            cap.max()
                        );
                        refusals.refuse(stream, Line::error(message).to_json().into_bytes());
                    }
                }
            }
        }
    }
    listener.close();
}

impl AdminServer {
    async fn connection(self: Arc<Self>, stream: UnixStream, _slot: listen::Slot) {
        // Who asks: a fleet dead letter's change is recorded with it.
        let uid = stream.peer_cred().ok().map(|cred| cred.uid());
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES);
        let lines = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                Ok(Request::Receipts { since, until }) => {
                    self.receipts(since..until, &mut write).await;
                    let _ = write.shutdown().await;
                    return;
                }
                Ok(request) => self.answer(request, uid).await,
                Err(err) => vec![Line::error(format!("invalid request: {err}"))],
            },
            Ok(Err(err)) => vec![Line::error(format!("unreadable request: {err}"))],
            Err(_) => vec![Line::error("no request line within 10s; closing")],
        };
        let mut out = String::new();
        for line in lines {
            out.push_str(&line.to_json());
        }
        let _ = write.write_all(out.as_bytes()).await;
        let _ = write.shutdown().await;
    }

    async fn answer(self: &Arc<Self>, request: Request, uid: Option<u32>) -> Vec<Line> {
        match request {
            Request::Status => match self.scan().await {
                Ok(records) => vec![Line::Status { ok: true, status: Box::new(self.status(records)) }],
                Err(err) => vec![Line::error(err.to_string())],
            },
            Request::DlqShow { ref id } => {
                let mut lines = self.list(&request).await;
                if matches!(lines.last(), Some(Line::Count { count: 0, .. })) {
                    lines = vec![Line::error(format!("no dead letter with id {id}"))];
                }
                lines
            }
            Request::DlqList => self.list(&request).await,
            Request::Receipts { since, until } => {
                vec![Line::error(format!("receipts {since}..{until} are streamed, not listed"))]
            }
            Request::DlqRetry { selection } => self.change(selection, true, uid).await,
            Request::DlqDrop { selection } => self.change(selection, false, uid).await,
            Request::Flush { customer, product_code } => self.flush(customer, product_code).await,
            Request::Customer { id } => self.customer(id).await,
        }
    }

    /// One customer: its lifecycle, its open records (asked of the commit stage) and its sealed
    /// records by state.
    async fn customer(&self, id: String) -> Vec<Line> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Open { customer: id.clone(), reply }).await.is_err() {
            return vec![Line::error("meterd is stopping")];
        }
        let Ok(open) = answer.await else { return vec![Line::error("meterd is stopping")] };
        let sealed = match self.scan().await {
            Ok(records) => records,
            Err(err) => return vec![Line::error(err.to_string())],
        };
        let lifecycle = self.notifications.as_ref().map(|n| n.customer(&id));
        let view = super::CustomerView::new(&id, lifecycle, open, &sealed);
        vec![Line::Customer { ok: true, customer: Box::new(view) }]
    }

    /// Seals the matching open hours now; answers how many records were sealed.
    async fn flush(&self, customer: Option<String>, product: Option<String>) -> Vec<Line> {
        if customer.is_none() && !self.sandbox {
            return vec![Line::error(
                "flushing every open hour closes the current hour early for every customer; only the sandbox allows it (name one: meterd flush --customer ID)",
            )];
        }
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Flush { customer, product, every_hour: false, reply }).await.is_err() {
            return vec![Line::error("meterd is stopping")];
        }
        match answer.await {
            Ok(count) => vec![Line::Count { ok: true, count }],
            Err(_) => vec![Line::error("meterd is stopping")],
        }
    }

    /// Every sealed record, read on a blocking thread.
    async fn scan(&self) -> Result<Vec<StoredRecord>, OutboxError> {
        let outbox = self.outbox.clone();
        tokio::task::spawn_blocking(move || outbox.records().collect::<Result<Vec<_>, _>>())
            .await
            .expect("outbox scan task")
    }

    /// Writes the receipts whose hour is in `hours` as they are read, a chunk at a time (a month
    /// of them is far too much to hold as lines), then the count or the error that stopped the
    /// read.
    async fn receipts(&self, hours: std::ops::Range<i64>, write: &mut OwnedWriteHalf) {
        let (chunks, mut receive) = mpsc::channel::<String>(4);
        let outbox = self.outbox.clone();
        let reader = tokio::task::spawn_blocking(move || {
            let mut chunk = String::new();
            let mut count = 0;
            let read = outbox.receipts(hours, &mut |stored| {
                count += 1;
                chunk.push_str(&Line::Record { record: Box::new(RecordView::new(&stored)) }.to_json());
                if chunk.len() >= STREAM_CHUNK_BYTES {
                    // A client that went away only makes the rest of the read go nowhere.
                    let _ = chunks.blocking_send(std::mem::take(&mut chunk));
                }
            });
            let last = match read {
                Ok(()) => Line::Count { ok: true, count },
                Err(err) => Line::error(err.to_string()),
            };
            chunk.push_str(&last.to_json());
            let _ = chunks.blocking_send(chunk);
        });
        while let Some(chunk) = receive.recv().await {
            if write.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        drop(receive);
        let _ = reader.await;
    }

    async fn list(&self, request: &Request) -> Vec<Line> {
        match self.scan().await {
            Ok(mut records) => {
                if let (Request::DlqList | Request::DlqShow { .. }, Some((_, target))) =
                    (request, &self.fleet)
                {
                    match crate::fleet::dlq::dead_letters(target).await {
                        Ok(fleet) => records.extend(fleet.into_iter().map(|dead| dead.stored)),
                        Err(err) => {
                            return vec![Line::error(format!("cannot read the fleet's dead letters: {err}"))];
                        }
                    }
                }
                let mut lines: Vec<Line> = records
                    .iter()
                    .filter(|s| request.lists(s))
                    .map(|s| Line::Record { record: Box::new(RecordView::new(s)) })
                    .collect();
                lines.push(Line::Count { ok: true, count: lines.len() });
                lines
            }
            Err(err) => vec![Line::error(err.to_string())],
        }
    }

    async fn change(&self, selection: super::Selection, retry: bool, uid: Option<u32>) -> Vec<Line> {
        if let Some((host, target)) = &self.fleet {
            return self.change_fleet(selection, host, target, retry, uid).await;
        }
        let records = match self.scan().await {
            Ok(records) => records,
            Err(err) => return vec![Line::error(err.to_string())],
        };
        let chosen = match select(records.into_iter(), &selection) {
            Ok(chosen) => chosen,
            Err(err) => return vec![Line::error(err)],
        };
        let keys = chosen.into_iter().map(|s| s.record.key).collect();
        let (reply, answer) = oneshot::channel();
        let control = if retry { Control::Retry { keys, reply } } else { Control::Drop { keys, reply } };
        if self.controls.send(control).await.is_err() {
            return vec![Line::error("meterd is stopping")];
        }
        match answer.await {
            Ok(count) => vec![Line::Count { ok: true, count }],
            Err(_) => vec![Line::error("meterd is stopping")],
        }
    }

    /// Fleet mode: the fleet's dead letters change, in PostgreSQL, whichever host this is; this
    /// host's own (a partial the database holds another of) are only listed.
    async fn change_fleet(
        &self,
        selection: super::Selection,
        host: &str,
        target: &crate::fleet::db::Target,
        retry: bool,
        uid: Option<u32>,
    ) -> Vec<Line> {
        use crate::fleet::dlq;
        let listed = match dlq::dead_letters(target).await {
            Ok(listed) => listed,
            Err(err) => return vec![Line::error(format!("cannot read the fleet's dead letters: {err}"))],
        };
        let chosen = match select_by(listed.into_iter(), |dead| &dead.stored, &selection) {
            Ok(chosen) => chosen,
            Err(err) => return vec![Line::error(err)],
        };
        let change = dlq::Change {
            retry,
            by_host: host.to_string(),
            by_uid: uid,
            now: self.ctx.clock.now(),
            deadline: self.deadline,
        };
        match dlq::apply(target, &chosen, &change).await {
            Ok(count) => vec![Line::Count { ok: true, count }],
            Err(err) => vec![Line::error(format!("fleet dead letters unchanged: {err}"))],
        }
    }

    fn status(&self, records: Vec<StoredRecord>) -> StatusReport {
        let now = self.ctx.clock.now();
        let mut report = StatusReport::from_records(records.into_iter(), &self.data_dir, self.deadline, now);
        report.running = true;
        report.fleet_host_id = self.fleet.as_ref().map(|(host, _)| host.clone());
        let gauge = |state: &str| self.ctx.metrics.records.with_label_values(&[state]).get().max(0) as u64;
        report.records.insert("open".into(), gauge("open"));
        report.records.insert("in_flight".into(), gauge("in_flight"));
        let snapshot = self.ctx.health.snapshot();
        report.uptime_secs = Some(snapshot.uptime.as_secs());
        report.last_submission =
            snapshot.submission.last_outcome.map(|(outcome, at)| (outcome, time_text(at)));
        report.paused = snapshot.submission.paused;
        report.not_ready = snapshot.not_ready;
        report.registration = snapshot.registration;
        report.outbox_bytes = self.outbox.size_on_disk().unwrap_or(0);
        report.notifications = self.notifications.as_ref().map(|n| n.report(&self.ctx));
        report.add_archive(self.outbox.archive_totals());
        report
    }
}
