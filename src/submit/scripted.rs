//! Test seams of the submit loop: a Metering Service that answers from a script
//! ([`ScriptedApi`]) and a store in memory ([`MemoryStore`]). With tokio's paused time and
//! [`crate::clock::Clock::driven`], the loop's retries, pauses, re-checks and deadlines run in
//! virtual time, and a test asserts exactly what was sent when.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::api::{ApiFailure, FailureKind, MeteringApi, RecordOutcome, Registration};
use super::store::{Store, StoreError};
use crate::aggregate::SealedRecord;
use crate::model::RecordKey;
use crate::outbox::StoredRecord;

/// One scripted answer to a BatchMeterUsage or MeterUsage call.
pub enum Answer {
    /// The whole call fails so.
    Fail(ApiFailure),
    /// Each record's outcome, from the record.
    Each(Box<dyn Fn(&SealedRecord) -> RecordOutcome + Send>),
    /// The call takes this long, then is answered by the next answer.
    Delay(Duration),
}

/// A service error with this HTTP status and code.
pub fn service(status: u16, code: &str) -> Answer {
    Answer::Fail(ApiFailure {
        kind: FailureKind::Service { status, code: code.into() },
        message: format!("scripted {code}"),
        detail: String::new(),
    })
}

/// How a [`ScriptedApi`] answers a call when no scripted answer is left.
pub type Rule = Box<dyn Fn(&[SealedRecord]) -> Option<Answer> + Send>;

/// What a [`ScriptedApi`] answers, and what it was asked.
#[derive(Default)]
pub struct Script {
    /// The next calls' answers, in order.
    pub answers: VecDeque<Answer>,
    /// Then this rule's answer, if it gives one; else every record is accepted.
    pub rule: Option<Rule>,
    /// Each call: when it came (tokio's clock) and its records' keys.
    pub calls: Vec<(Instant, Vec<RecordKey>)>,
}

/// A [`MeteringApi`] answering from a [`Script`] the test keeps a handle on.
#[derive(Clone, Default)]
pub struct ScriptedApi {
    pub script: Arc<Mutex<Script>>,
}

impl ScriptedApi {
    pub fn new(answers: impl IntoIterator<Item = Answer>) -> Self {
        let script = Script { answers: answers.into_iter().collect(), ..Script::default() };
        Self { script: Arc::new(Mutex::new(script)) }
    }

    /// Answers every call by `rule` (once the scripted answers are used up).
    pub fn with_rule(rule: impl Fn(&[SealedRecord]) -> Option<Answer> + Send + 'static) -> Self {
        let script = Script { rule: Some(Box::new(rule)), ..Script::default() };
        Self { script: Arc::new(Mutex::new(script)) }
    }

    /// The calls so far: each one's time since `start`, and its records' customers.
    pub fn calls(&self, start: Instant) -> Vec<(Duration, Vec<String>)> {
        let script = self.script.lock().unwrap();
        let customer = |key: &RecordKey| match &key.customer {
            crate::model::Customer::AwsAccountId(id) | crate::model::Customer::Identifier(id) => id.clone(),
            crate::model::Customer::Caller => "caller".into(),
        };
        script.calls.iter().map(|(at, keys)| (*at - start, keys.iter().map(customer).collect())).collect()
    }

    async fn answer(&self, records: &[SealedRecord]) -> Result<Vec<RecordOutcome>, ApiFailure> {
        let number = {
            let mut script = self.script.lock().unwrap();
            script.calls.push((Instant::now(), records.iter().map(|r| r.key.clone()).collect()));
            script.calls.len()
        };
        loop {
            let answer = {
                let mut script = self.script.lock().unwrap();
                let script = &mut *script;
                script.answers.pop_front().or_else(|| script.rule.as_ref().and_then(|rule| rule(records)))
            };
            let accept = |(i, _): (usize, &SealedRecord)| RecordOutcome::Accepted {
                metering_record_id: format!("mr-{number}-{i}"),
            };
            return match answer {
                None => Ok(records.iter().enumerate().map(accept).collect()),
                Some(Answer::Fail(failure)) => Err(failure),
                Some(Answer::Each(outcome)) => Ok(records.iter().map(outcome).collect()),
                Some(Answer::Delay(delay)) => {
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
        }
    }
}

impl MeteringApi for ScriptedApi {
    async fn batch_meter_usage(
        &self,
        _product_code: Option<&str>,
        records: &[SealedRecord],
    ) -> Result<Vec<RecordOutcome>, ApiFailure> {
        self.answer(records).await
    }

    async fn meter_usage(&self, _product_code: &str, record: &SealedRecord) -> Result<String, ApiFailure> {
        match self.answer(std::slice::from_ref(record)).await?.pop() {
            Some(RecordOutcome::Accepted { metering_record_id }) => Ok(metering_record_id),
            other => panic!("a MeterUsage script answers accepted or fails, not {other:?}"),
        }
    }

    async fn register_usage(
        &self,
        _product_code: &str,
        _public_key_version: i32,
        _nonce: Option<&str>,
    ) -> Result<Registration, ApiFailure> {
        Ok(Registration { signature: "scripted".into(), public_key_rotation_timestamp: None })
    }
}

/// A [`Store`] in memory, counting what the loop asked of it.
#[derive(Default)]
pub struct MemoryStore {
    pub records: Mutex<BTreeMap<RecordKey, StoredRecord>>,
    pub barriers: AtomicUsize,
    /// Calls of [`Store::archive`]: one per turn of the loop.
    pub turns: AtomicUsize,
}

impl MemoryStore {
    /// Every record's state, by customer, in key order.
    pub fn states(&self) -> Vec<(String, crate::outbox::RecordState)> {
        let records = self.records.lock().unwrap();
        records.values().map(|r| (format!("{:?}", r.record.key.customer), r.state.clone())).collect()
    }
}

impl Store for MemoryStore {
    fn settle(&self, stored: &StoredRecord) -> Result<(), StoreError> {
        self.records.lock().unwrap().insert(stored.record.key.clone(), stored.clone());
        Ok(())
    }

    fn barrier(&self) -> Result<(), StoreError> {
        self.barriers.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn record(&self, key: &RecordKey) -> Result<Option<StoredRecord>, StoreError> {
        Ok(self.records.lock().unwrap().get(key).cloned())
    }

    fn remove_record(&self, key: &RecordKey) -> Result<(), StoreError> {
        self.records.lock().unwrap().remove(key);
        Ok(())
    }

    fn compact(&self, before: i64) -> Result<Vec<StoredRecord>, StoreError> {
        let mut records = self.records.lock().unwrap();
        let old: Vec<RecordKey> = records
            .iter()
            .filter(|(_, r)| r.settled_at().is_some_and(|at| at < before))
            .map(|(key, _)| key.clone())
            .collect();
        Ok(old.iter().filter_map(|key| records.remove(key)).collect())
    }

    fn archive(&self, _hours_before: i64) -> Result<usize, StoreError> {
        self.turns.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }
}
