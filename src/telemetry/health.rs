//! The daemon's live state that is not a metric: what `/readyz`, the systemd watchdog and
//! `meterd status` report. Every stage writes its own part; readers take a [`Snapshot`].
//!
//! Health endpoints give short reasons only. A pause reason or a registration error is written as
//! `<summary>: <detail>` (how `submit::ApiFailure` displays: the service's error code, then its
//! message and the SDK's description with request ids and the raw response); `/readyz` shows only
//! the summary, while `meterd status` (the admin socket, owner-only) shows all of it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const STOPPING: u8 = 2;

#[derive(Debug)]
pub struct Health {
    started: Instant,
    phase: AtomicU8,
    /// [`OutboxFull`] as bits.
    outbox_full: AtomicU8,
    /// Milliseconds after `started` of the commit thread's last turn (group or tick).
    commit_turn_ms: AtomicU64,
    submission: Mutex<SubmissionState>,
    registration: Mutex<Option<RegistrationStatus>>,
    /// Why clients cannot reach the ingest socket through its path, while they cannot.
    socket_trouble: Mutex<Option<String>>,
}

/// Where RegisterUsage stands (`aws.register_usage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationStatus {
    pub public_key_version: i32,
    /// The signed token RegisterUsage returned; `None` while still registering.
    pub signature: Option<String>,
    /// When AWS Marketplace rotates out this public key version, epoch seconds.
    pub public_key_rotation_timestamp: Option<i64>,
    /// When RegisterUsage succeeded, epoch seconds.
    pub registered_at: Option<i64>,
    /// The last transient failure while registering: `<summary>: <detail>`.
    pub last_error: Option<String>,
}

/// Why the outbox counts as full; new events are refused while either holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxFull {
    /// Its size on disk is over `storage.max_bytes`.
    pub over_max_bytes: bool,
    /// Its filesystem has less than `storage.min_free_bytes` free.
    pub low_free_space: bool,
}

impl OutboxFull {
    pub fn any(self) -> bool {
        self.over_max_bytes || self.low_free_space
    }

    fn bits(self) -> u8 {
        u8::from(self.over_max_bytes) | (u8::from(self.low_free_space) << 1)
    }

    fn from_bits(bits: u8) -> Self {
        Self { over_max_bytes: bits & 1 != 0, low_free_space: bits & 2 != 0 }
    }
}

/// The summary of a reason written as `<summary>: <detail>` (see the module header).
fn summary(reason: &str) -> &str {
    reason.split_once(": ").map_or(reason, |(summary, _)| summary)
}

/// What the submit stage last did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionState {
    /// Why submission is paused, if it is: `<summary>: <detail>`.
    pub paused: Option<String>,
    /// Outcome label of the last call (as in `meterd_api_requests_total`) and its epoch second.
    pub last_outcome: Option<(String, i64)>,
}

/// The live state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub uptime: Duration,
    /// Why `/readyz` fails, short and free of the service's details; empty when ready.
    pub not_ready: Vec<String>,
    pub submission: SubmissionState,
    pub registration: Option<RegistrationStatus>,
}

impl RegistrationStatus {
    /// Not registered yet.
    pub fn pending(public_key_version: i32) -> Self {
        Self {
            public_key_version,
            signature: None,
            public_key_rotation_timestamp: None,
            registered_at: None,
            last_error: None,
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            phase: AtomicU8::new(STARTING),
            outbox_full: AtomicU8::new(0),
            commit_turn_ms: AtomicU64::new(0),
            submission: Mutex::new(SubmissionState::default()),
            registration: Mutex::new(None),
            socket_trouble: Mutex::new(None),
        }
    }

    /// Replay is done and the ingest socket accepts events.
    pub fn set_serving(&self) {
        self.phase.store(SERVING, Ordering::SeqCst);
    }

    pub fn set_stopping(&self) {
        self.phase.store(STOPPING, Ordering::SeqCst);
    }

    pub fn set_outbox_full(&self, full: OutboxFull) {
        self.outbox_full.store(full.bits(), Ordering::SeqCst);
    }

    /// Whether new events are refused because the outbox is full, for either reason.
    pub fn outbox_full(&self) -> bool {
        self.outbox_fullness().any()
    }

    pub fn outbox_fullness(&self) -> OutboxFull {
        OutboxFull::from_bits(self.outbox_full.load(Ordering::SeqCst))
    }

    /// The commit thread calls this on every turn; the watchdog checks it.
    pub fn commit_turned(&self) {
        self.commit_turn_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long ago the commit thread last turned.
    pub fn since_commit_turn(&self) -> Duration {
        let at = Duration::from_millis(self.commit_turn_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(at)
    }

    pub fn set_paused(&self, reason: Option<String>) {
        self.submission.lock().expect("health lock").paused = reason;
    }

    pub fn record_outcome(&self, outcome: &str, at: i64) {
        self.submission.lock().expect("health lock").last_outcome = Some((outcome.to_string(), at));
    }

    pub fn set_registration(&self, status: RegistrationStatus) {
        *self.registration.lock().expect("health lock") = Some(status);
    }

    /// The ingest listener reports that its socket file is lost or replaced (`Some`), or back.
    pub fn set_socket_trouble(&self, trouble: Option<String>) {
        *self.socket_trouble.lock().expect("health lock") = trouble;
    }

    pub fn snapshot(&self) -> Snapshot {
        let submission = self.submission.lock().expect("health lock").clone();
        let registration = self.registration.lock().expect("health lock").clone();
        let mut not_ready = Vec::new();
        let registering = registration.as_ref().filter(|r| r.signature.is_none());
        if let Some(status) = registering {
            let error = status
                .last_error
                .as_deref()
                .map(|e| format!(" (last error: {})", summary(e)))
                .unwrap_or_default();
            not_ready.push(format!("registering usage with AWS Marketplace (aws.register_usage){error}"));
        }
        match self.phase.load(Ordering::SeqCst) {
            STARTING if registering.is_none() => {
                not_ready.push("starting: the outbox is being replayed".to_string())
            }
            STOPPING => not_ready.push("stopping".to_string()),
            _ => {}
        }
        let full = self.outbox_fullness();
        if full.over_max_bytes {
            not_ready.push("the outbox is full (storage.max_bytes); new events are refused".to_string());
        }
        if full.low_free_space {
            not_ready.push(
                "the outbox is full: its filesystem has less than storage.min_free_bytes free; new \
                 events are refused"
                    .to_string(),
            );
        }
        if let Some(reason) = &submission.paused {
            not_ready.push(format!("submission paused: {}", summary(reason)));
        }
        if let Some(trouble) = self.socket_trouble.lock().expect("health lock").clone() {
            not_ready.push(trouble);
        }
        Snapshot { uptime: self.started.elapsed(), not_ready, submission, registration }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reasons_are_short() {
        let health = Health::new();
        health.set_serving();
        health.set_paused(Some(
            "AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/r/i is not \
             authorized [service error: … x-amzn-requestid …]"
                .into(),
        ));
        health.set_outbox_full(OutboxFull { over_max_bytes: false, low_free_space: true });
        let snapshot = health.snapshot();
        assert_eq!(
            snapshot.not_ready,
            [
                "the outbox is full: its filesystem has less than storage.min_free_bytes free; new \
                 events are refused",
                "submission paused: AccessDeniedException",
            ]
        );
        assert!(snapshot.submission.paused.unwrap().contains("x-amzn-requestid"));
        assert!(health.outbox_full());
        health.set_outbox_full(OutboxFull::default());
        assert!(!health.outbox_full());
    }
}
