//! The request log: every API request and how it was answered, as `GET /_emulator/requests` lists
//! it. The records show what was billed; this log shows how a client got there: which requests
//! were refused, throttled, faulted or dropped, and the per-record statuses of each
//! BatchMeterUsage answer. It is bounded; the oldest entries are forgotten first.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use serde_json::Value;

/// How many requests the inspection log keeps (the oldest are forgotten first).
const REQUEST_LOG_CAPACITY: usize = 100_000;

/// One API request and how it was answered, as `GET /_emulator/requests` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestLog {
    pub seq: u64,
    /// When it was answered, by the emulator's clock: epoch seconds, and milliseconds.
    pub at: i64,
    pub at_ms: i64,
    pub operation: Option<&'static str>,
    pub caller: Option<String>,
    pub status: u16,
    /// `"ok"`, the error's name, or `"dropped"` when the connection was closed after applying.
    pub outcome: String,
    pub records: usize,
    /// The request body's length.
    pub bytes: usize,
    /// A MeterUsage request's `ClientToken`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    /// The request's `ProductCode` (every record of a BatchMeterUsage call is of one product).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_code: Option<String>,
    /// Per-record statuses of a BatchMeterUsage call, plus `Unprocessed`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub statuses: BTreeMap<&'static str, usize>,
}

/// What the log keeps of a request itself.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    pub records: usize,
    pub bytes: usize,
    pub client_token: Option<String>,
    pub product_code: Option<String>,
}

impl Sent {
    /// A request whose body could not be read as an operation's input.
    pub fn unread(bytes: usize) -> Self {
        Self { bytes, ..Self::default() }
    }

    /// A request with this body.
    pub fn of(bytes: usize, body: &serde_json::Map<String, Value>) -> Self {
        Self {
            records: body.get("UsageRecords").and_then(Value::as_array).map_or(0, Vec::len),
            bytes,
            client_token: body.get("ClientToken").and_then(Value::as_str).map(str::to_string),
            product_code: body.get("ProductCode").and_then(Value::as_str).map(str::to_string),
        }
    }
}

/// The log itself.
pub(super) struct RequestLogBook {
    entries: VecDeque<RequestLog>,
    next_seq: u64,
}

impl RequestLogBook {
    pub(super) fn new() -> Self {
        Self { entries: VecDeque::new(), next_seq: 1 }
    }

    /// Appends an entry, numbering it (the `seq` given is replaced).
    pub(super) fn push(&mut self, mut entry: RequestLog) {
        entry.seq = self.next_seq;
        self.next_seq += 1;
        if self.entries.len() == REQUEST_LOG_CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    pub(super) fn entries(&self) -> Vec<RequestLog> {
        self.entries.iter().cloned().collect()
    }

    /// Forgets the entries. Numbering goes on from where it was, so a number never names two
    /// requests.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Counts the per-record statuses of a BatchMeterUsage answer body, and its unprocessed records;
/// empty for any other answer.
pub(super) fn statuses(body: Option<&Value>) -> BTreeMap<&'static str, usize> {
    let mut statuses = BTreeMap::new();
    let Some(body) = body else { return statuses };
    for result in body.get("Results").and_then(Value::as_array).into_iter().flatten() {
        let status = match result.get("Status").and_then(Value::as_str) {
            Some("Success") => "Success",
            Some("CustomerNotSubscribed") => "CustomerNotSubscribed",
            Some("DuplicateRecord") => "DuplicateRecord",
            _ => "Unknown",
        };
        *statuses.entry(status).or_default() += 1;
    }
    let unprocessed = body.get("UnprocessedRecords").and_then(Value::as_array).map_or(0, Vec::len);
    if unprocessed > 0 {
        statuses.insert("Unprocessed", unprocessed);
    }
    statuses
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(outcome: &str) -> RequestLog {
        RequestLog {
            seq: 0,
            at: 0,
            at_ms: 0,
            operation: None,
            caller: None,
            status: 200,
            outcome: outcome.into(),
            records: 0,
            bytes: 0,
            client_token: None,
            product_code: None,
            statuses: BTreeMap::new(),
        }
    }

    #[test]
    fn numbering_goes_on_across_a_reset() {
        let mut log = RequestLogBook::new();
        log.push(entry("a"));
        log.push(entry("b"));
        log.clear();
        log.push(entry("c"));
        let entries = log.entries();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].seq, entries[0].outcome.as_str()), (3, "c"));
    }

    #[test]
    fn batch_answers_are_counted_by_status() {
        let body = json!({
            "Results": [{"Status": "Success"}, {"Status": "Success"}, {"Status": "DuplicateRecord"}],
            "UnprocessedRecords": [{}],
        });
        let counted = statuses(Some(&body));
        assert_eq!(counted, BTreeMap::from([("DuplicateRecord", 1), ("Success", 2), ("Unprocessed", 1)]));
        assert!(statuses(Some(&json!({"MeteringRecordId": "x"}))).is_empty());
        assert!(statuses(None).is_empty());
    }
}
