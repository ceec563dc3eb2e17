//! The admin socket: what `meterd status`, `meterd dlq …` and `meterd receipts export` ask a
//! running daemon, and the same reads straight from a data dir when the daemon is stopped.
//!
//! Protocol: one JSON request line (`{"command":"status"}`, `{"command":"dlq_list"}`, …); the
//! answer is zero or more `{"record":{…}}` lines, then one closing line: `{"ok":true,"count":N}`,
//! `{"ok":true,"status":{…}}` or `{"ok":false,"error":"…"}`. Changes to records (retry, drop) go
//! through the submit loop, which owns their states; a flush goes to the commit stage, which owns
//! the open hours; reads scan the outbox.

mod customer;
mod server;
mod view;

pub use customer::{CustomerView, OpenView};
pub use server::{AdminServer, serve};
pub use view::{
    RecordView, Selection, StatusReport, offline_status, record_id, select, select_by, time_text,
};

use serde::{Deserialize, Serialize};

/// One admin request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    DlqList,
    DlqShow {
        id: String,
    },
    DlqRetry {
        selection: Selection,
    },
    DlqDrop {
        selection: Selection,
    },
    /// Accepted records whose hour starts in `[since, until)`, epoch seconds.
    Receipts {
        since: i64,
        until: i64,
    },
    /// Seals a customer's open hours now, the current one included, so they are submitted at
    /// once (an unsubscribe window). `None`: every open hour, which only the sandbox allows.
    /// `product_code`: that product's records only (and the customer's license records).
    Flush {
        customer: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product_code: Option<String>,
    },
    /// One customer's lifecycle, open hours and sealed records (`meterd customer`).
    Customer {
        id: String,
    },
}

impl Request {
    /// Whether a listing request answers with `stored` (the same rule for the daemon and for
    /// offline reads); requests that list nothing select nothing.
    pub fn lists(&self, stored: &crate::outbox::StoredRecord) -> bool {
        use crate::outbox::RecordState;
        match self {
            Request::DlqList => matches!(stored.state, RecordState::DeadLetter { .. }),
            Request::DlqShow { id } => {
                matches!(stored.state, RecordState::DeadLetter { .. }) && record_id(&stored.record.key) == *id
            }
            Request::Receipts { since, until } => {
                matches!(stored.state, RecordState::Accepted { .. })
                    && (*since..*until).contains(&stored.record.key.hour)
            }
            Request::Status
            | Request::DlqRetry { .. }
            | Request::DlqDrop { .. }
            | Request::Flush { .. }
            | Request::Customer { .. } => false,
        }
    }
}

/// One answer line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Record { record: Box<RecordView> },
    Status { ok: bool, status: Box<StatusReport> },
    Customer { ok: bool, customer: Box<CustomerView> },
    Count { ok: bool, count: usize },
    Error { ok: bool, error: String },
}

impl Line {
    pub fn error(message: impl Into<String>) -> Self {
        Line::Error { ok: false, error: message.into() }
    }

    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string(self).expect("admin lines always encode");
        text.push('\n');
        text
    }
}
