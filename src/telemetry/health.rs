//! The daemon's live state that is not a metric: what `/readyz`, the systemd watchdog and
//! `meterd status` report. Every stage writes its own part; readers take a [`Snapshot`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const STOPPING: u8 = 2;

#[derive(Debug)]
pub struct Health {
    started: Instant,
    phase: AtomicU8,
    outbox_full: AtomicBool,
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
    /// The last transient failure while registering.
    pub last_error: Option<String>,
}

/// What the submit stage last did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionState {
    /// Why submission is paused, if it is.
    pub paused: Option<String>,
    /// Outcome label of the last call (as in `meterd_api_requests_total`) and its epoch second.
    pub last_outcome: Option<(String, i64)>,
}

/// Why `/readyz` fails; empty when ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub uptime: Duration,
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
            outbox_full: AtomicBool::new(false),
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

    pub fn set_outbox_full(&self, full: bool) {
        self.outbox_full.store(full, Ordering::SeqCst);
    }

    pub fn outbox_full(&self) -> bool {
        self.outbox_full.load(Ordering::SeqCst)
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
            let error =
                status.last_error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default();
            not_ready.push(format!("registering usage with AWS Marketplace (aws.register_usage){error}"));
        }
        match self.phase.load(Ordering::SeqCst) {
            STARTING if registering.is_none() => {
                not_ready.push("starting: the outbox is being replayed".to_string())
            }
            STOPPING => not_ready.push("stopping".to_string()),
            _ => {}
        }
        if self.outbox_full() {
            not_ready.push("the outbox is full (storage.max_bytes); new events are refused".to_string());
        }
        if let Some(reason) = &submission.paused {
            not_ready.push(format!("submission paused: {reason}"));
        }
        if let Some(trouble) = self.socket_trouble.lock().expect("health lock").clone() {
            not_ready.push(trouble);
        }
        Snapshot { uptime: self.started.elapsed(), not_ready, submission, registration }
    }
}
