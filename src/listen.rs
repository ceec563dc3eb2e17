//! What every listener (ingest, admin, metrics) shares: a cap on the connections it keeps open,
//! a short-lived refusal for a connection it will not serve, a back-off on accept errors with a
//! rate-limited log line, and the open-file budget all of that has to fit in.
//!
//! File descriptors: at start meterd raises its soft `RLIMIT_NOFILE` to the hard limit and checks
//! that the caps of the three listeners, their refusals in progress and [`RESERVED_FDS`] (the
//! outbox, the AWS client, the runtime) fit below it; if they do not, it refuses to start. A
//! listener at its cap never accepts past it, so connections cannot take the descriptors the
//! outbox needs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Descriptors kept for everything that is not a client connection: sled's files, the lock and
/// watermark files, the AWS client's connections, the runtime's epoll and signal pipes, stdio.
/// meterd uses about 30 of them.
pub const RESERVED_FDS: u64 = 128;

/// Refusals a Unix listener sends at once; past that, a connection it will not serve is closed
/// without a word.
pub const MAX_REFUSING: usize = 16;

/// How long a refused peer's input is read and dropped after the refusal line.
const REFUSAL_DRAIN: Duration = Duration::from_secs(1);

/// The first and the longest pause after an accept error.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per listener per this long while accepting fails.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Raises the soft open-file limit to the hard limit, and checks that `caps` (the listeners'
/// `max_connections` together, HTTP ingest's included when it is on), the two Unix listeners'
/// refusals and [`RESERVED_FDS`] fit in it. Returns the limit.
pub fn reserve_fds(caps: u64) -> Result<u64, String> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut soft = limit.current.unwrap_or(u64::MAX);
    if let Some(hard) = limit.maximum.filter(|&hard| hard > soft) {
        // A sandbox may forbid setrlimit; then the soft limit is what there is.
        match setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(hard), ..limit }) {
            Ok(()) => soft = hard,
            Err(err) => tracing::warn!(%err, soft, hard, "could not raise the open-file limit"),
        }
    }
    let refusing = 2 * MAX_REFUSING as u64;
    let needed = caps + refusing + RESERVED_FDS;
    if needed > soft {
        return Err(format!(
            "the open-file limit ({soft}) is below the {needed} descriptors meterd may use: {caps} for \
             ingest.max_connections + admin.max_connections + metrics.max_connections (+ \
             ingest.http_max_connections), {refusing} for \
             refusals in progress and {RESERVED_FDS} kept for the outbox and the AWS client; raise the \
             limit (LimitNOFILE=, ulimit -n) or lower the caps"
        ));
    }
    Ok(soft)
}

/// The most connections a listener keeps open, and its two metrics.
pub struct Cap {
    slots: Arc<Semaphore>,
    max: usize,
    open: IntGauge,
    over: IntCounter,
}

/// One open connection's place under its listener's [`Cap`]; dropping it frees the place.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
}

impl Cap {
    /// `open` counts the connections open, `over` those closed at once for being over `max`.
    pub fn new(max: usize, open: IntGauge, over: IntCounter) -> Self {
        Self { slots: Arc::new(Semaphore::new(max)), max, open, over }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for one more connection, or `None` (counted) when `max` are open.
    pub fn admit(&self) -> Option<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                self.open.inc();
                Some(Slot { _permit: permit, open: self.open.clone() })
            }
            Err(_) => {
                self.over.inc();
                None
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Refusals in progress on one Unix listener, at most [`MAX_REFUSING`].
pub struct Refusals(Arc<Semaphore>);

impl Default for Refusals {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(MAX_REFUSING)))
    }
}

impl Refusals {
    /// Sends `line` and closes the connection. What the peer already sent is read and dropped
    /// first (for at most a second), because closing a socket with unread data resets it and the
    /// peer might lose the line. With [`MAX_REFUSING`] refusals already under way the connection
    /// is closed at once instead, so that refusing cannot take more descriptors than that.
    pub fn refuse(&self, mut stream: UnixStream, line: Vec<u8>) {
        let Ok(permit) = self.0.clone().try_acquire_owned() else { return };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REFUSAL_DRAIN, async {
                let _ = stream.write_all(&line).await;
                let _ = stream.shutdown().await;
                let mut sink = [0u8; 4096];
                while let Ok(1..) = stream.read(&mut sink).await {}
            })
            .await;
        });
    }
}

/// The pause after accept errors: the project's backoff (`crate::backoff`) under a ceiling of
/// 10 ms doubling to 1 s, from 10 ms again after a success; one log line per [`LOG_EVERY`] at
/// most, with the number of errors it stands for.
pub struct Backoff {
    listener: &'static str,
    errors: IntCounter,
    /// Failed accepts since the last success.
    failures: u32,
    logged: Option<Instant>,
    unlogged: u64,
}

impl Backoff {
    /// `errors` counts every failed accept of `listener`.
    pub fn new(listener: &'static str, errors: IntCounter) -> Self {
        Self { listener, errors, failures: 0, logged: None, unlogged: 0 }
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Counts the failure, logs it if no line was logged within [`LOG_EVERY`], and returns how
    /// long to wait before accepting again.
    pub fn failed(&mut self, err: &std::io::Error) -> Duration {
        self.errors.inc();
        self.unlogged += 1;
        self.failures = self.failures.saturating_add(1);
        let delay = crate::backoff::delay(BACKOFF_FIRST, BACKOFF_MAX, self.failures);
        if self.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            let listener = self.listener;
            let errors = std::mem::take(&mut self.unlogged);
            tracing::warn!(listener, %err, errors, retry_in_ms = delay.as_millis() as u64, "{listener} accept failed; pausing before the next accept (at most one such line per 10s)");
            self.logged = Some(Instant::now());
        }
        delay
    }

    /// [`Backoff::failed`], then the pause itself, cut short by `cancel`.
    pub async fn pause(&mut self, err: &std::io::Error, cancel: &CancellationToken) {
        let delay = self.failed(err);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => {}
        }
    }
}

/// The next TCP connection under `cap`: accept errors pause with `backoff`, and a connection over
/// the cap is closed at once (counted by `cap`). `None` once `cancel` is cancelled.
pub async fn next_admitted(
    listener: &tokio::net::TcpListener,
    cap: &Cap,
    backoff: &mut Backoff,
    cancel: &CancellationToken,
) -> Option<(tokio::net::TcpStream, Slot)> {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    backoff.pause(&err, cancel).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => return None,
        };
        backoff.succeeded();
        if let Some(slot) = cap.admit() {
            return Some((stream, slot));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> std::io::Error {
        std::io::Error::from_raw_os_error(24)
    }

    #[test]
    fn accept_errors_back_off_under_10ms_doubling_to_1s_and_reset_after_a_success() {
        let errors = IntCounter::new("errors", "help").unwrap();
        let mut backoff = Backoff::new("test", errors.clone());
        for ceiling in [10, 20, 40, 80, 160, 320, 640, 1000, 1000] {
            assert!(backoff.failed(&emfile()) <= Duration::from_millis(ceiling));
        }
        assert_eq!(backoff.failures, 9);
        backoff.succeeded();
        assert!(backoff.failed(&emfile()) <= Duration::from_millis(10));
        assert_eq!(errors.get(), 10);
    }

    #[test]
    fn one_log_line_stands_for_the_errors_since_the_last() {
        let mut backoff = Backoff::new("test", IntCounter::new("errors", "help").unwrap());
        for _ in 0..1000 {
            backoff.failed(&emfile());
        }
        // The first error was logged; the 999 after it within 10s wait for the next line.
        assert_eq!(backoff.unlogged, 999);
        backoff.logged = Some(Instant::now() - LOG_EVERY);
        backoff.failed(&emfile());
        assert_eq!(backoff.unlogged, 0);
    }

    #[test]
    fn a_cap_admits_up_to_its_max_and_counts_the_rest() {
        let open = IntGauge::new("open", "help").unwrap();
        let over = IntCounter::new("over", "help").unwrap();
        let cap = Cap::new(2, open.clone(), over.clone());
        let first = cap.admit().unwrap();
        let _second = cap.admit().unwrap();
        assert!(cap.admit().is_none());
        assert_eq!((open.get(), over.get()), (2, 1));
        drop(first);
        assert_eq!(open.get(), 1);
        assert!(cap.admit().is_some());
    }
}
