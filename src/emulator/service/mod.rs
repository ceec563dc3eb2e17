//! The service's behaviour behind the wire, in rooms of its own:
//!
//! - [`operations`]: what each operation checks and does, against the catalogue and the window;
//! - [`dedup`]: the accepted records, keyed per customer, dimension and hour (first quantity wins);
//! - [`quota`]: the token bucket per access key;
//! - [`request_log`]: every request and its outcome, for inspection.
//!
//! Here they are held together, with the faults and the clock offset, as one state guarded by one
//! mutex that is never held across an `.await`; everything is synchronous. [`Service`] is what the
//! HTTP layer and the control API call.

mod dedup;
mod operations;
mod quota;
mod request_log;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::config::{Catalogue, EmulatorConfig};
use super::faults::{Faults, FaultsUpdate};
use super::sigv4::Caller;
use super::wire::ApiError;

pub use dedup::AcceptedRecord;
pub use operations::Operation;
pub use request_log::{RequestLog, Sent};

use dedup::DedupStore;
use quota::Quota;
use request_log::RequestLogBook;

struct State {
    catalogue: Catalogue,
    faults: Faults,
    accepted: DedupStore,
    /// (caller, product) pairs that have called RegisterUsage successfully.
    registrations: HashSet<(String, String)>,
    /// MeterUsage answers by (caller, `ClientToken`): the parameters sent and the answer given.
    client_tokens: HashMap<(String, String), (String, Value)>,
    requests: RequestLogBook,
    quota: Quota,
    clock_offset_secs: i64,
}

/// What an API call comes to: an answer, or an answer that must never reach the client.
pub enum Answer {
    Reply(Result<Value, ApiError>),
    /// Apply-then-drop: the request took effect; close the connection without a response.
    Drop,
}

/// The emulated service.
pub struct Service {
    config: EmulatorConfig,
    state: Mutex<State>,
}

impl Service {
    pub fn new(config: EmulatorConfig) -> Self {
        let state = State {
            catalogue: config.catalogue.clone(),
            faults: Faults::default(),
            accepted: DedupStore::default(),
            registrations: HashSet::new(),
            client_tokens: HashMap::new(),
            requests: RequestLogBook::new(),
            quota: Quota::new(config.requests_per_second, config.burst),
            clock_offset_secs: 0,
        };
        Self { config, state: Mutex::new(state) }
    }

    pub fn config(&self) -> &EmulatorConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The emulator's clock: the host's, shifted by the offset set through `/_emulator/clock`.
    pub fn now(&self) -> SystemTime {
        let offset = self.lock().clock_offset_secs;
        shift(SystemTime::now(), offset)
    }

    /// The delay to add before answering, from the `latency_ms` fault.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.lock().faults.latency_ms)
    }

    /// Runs one authenticated API call through faults, quota and the operation itself.
    pub fn call(&self, operation: Operation, caller: &Caller, body: &Map<String, Value>) -> Answer {
        let mut state = self.lock();
        let now = epoch(shift(SystemTime::now(), state.clock_offset_secs));
        if let Some(err) = state.faults.take_error(body) {
            return Answer::Reply(Err(err));
        }
        if !state.quota.admit(&caller.access_key_id) {
            return Answer::Reply(Err(ApiError::throttling()));
        }
        let result = state.operation(&self.config, operation, caller, body, now);
        if result.is_ok() && state.faults.take_drop() {
            return Answer::Drop;
        }
        Answer::Reply(result)
    }

    /// Records a request in the inspection log.
    pub fn log(
        &self,
        operation: Option<Operation>,
        caller: Option<&Caller>,
        status: u16,
        outcome: String,
        body: Option<&Value>,
        sent: Sent,
    ) {
        let mut state = self.lock();
        let now = shift(SystemTime::now(), state.clock_offset_secs);
        state.requests.push(RequestLog {
            seq: 0, // numbered by the log
            at: epoch(now),
            at_ms: epoch_ms(now),
            operation: operation.map(Operation::name),
            caller: caller.map(|c| c.access_key_id.clone()),
            status,
            outcome,
            records: sent.records,
            bytes: sent.bytes,
            client_token: sent.client_token,
            product_code: sent.product_code,
            statuses: request_log::statuses(body),
        });
    }

    pub fn records(&self) -> Vec<AcceptedRecord> {
        self.lock().accepted.records().to_vec()
    }

    pub fn requests(&self) -> Vec<RequestLog> {
        self.lock().requests.entries()
    }

    /// Forgets accepted records, the request log, faults, quota, registrations and client tokens;
    /// keeps the catalogue and the clock.
    pub fn reset(&self) {
        let mut state = self.lock();
        state.accepted.clear();
        state.registrations.clear();
        state.client_tokens.clear();
        state.requests.clear();
        state.quota.clear();
        state.faults = Faults::default();
    }

    pub fn catalogue(&self) -> Catalogue {
        self.lock().catalogue.clone()
    }

    pub fn set_catalogue(&self, catalogue: Catalogue) {
        self.lock().catalogue = catalogue;
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn update_faults(&self, update: FaultsUpdate) -> Result<Faults, String> {
        let mut state = self.lock();
        state.faults.update(update)?;
        Ok(state.faults.clone())
    }

    pub fn clear_faults(&self) {
        let mut state = self.lock();
        state.faults = Faults::default();
    }

    pub fn clock_offset(&self) -> i64 {
        self.lock().clock_offset_secs
    }

    pub fn set_clock_offset(&self, offset_secs: i64) {
        self.lock().clock_offset_secs = offset_secs;
    }
}

fn shift(time: SystemTime, offset_secs: i64) -> SystemTime {
    let delta = Duration::from_secs(offset_secs.unsigned_abs());
    if offset_secs >= 0 { time + delta } else { time - delta }
}

fn epoch_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn epoch(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}
