//! The answer to one line of the socket protocol: an `ok` with the event's id, or an error code
//! with a message; and how the commit stage's outcomes and the aggregator's refusals become them.

use super::event::{LineError, Rejection};
use crate::aggregate::AdmitError;
use crate::commit::{AckId, Outcome};
use crate::model::ErrorCode;

/// The socket's error code for a refusal of the aggregator's.
pub fn rejection(error: &AdmitError) -> Rejection {
    let code = match error {
        AdmitError::FutureTimestamp { .. } => ErrorCode::FutureTimestamp,
        AdmitError::PastDeadline { .. } | AdmitError::MonthClosed { .. } | AdmitError::HourSealed { .. } => {
            ErrorCode::OutOfWindow
        }
        AdmitError::CarryAcrossMonth { .. } => ErrorCode::OutOfWindow,
        AdmitError::QuantityOverflow { .. } => ErrorCode::QuantityOverflow,
        AdmitError::TooManyTagSets | AdmitError::MixedScope { .. } => ErrorCode::InvalidField,
        AdmitError::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
        AdmitError::IdConflict { .. } => ErrorCode::IdConflict,
        AdmitError::IdsUnreadable { .. } => ErrorCode::StorageError,
    };
    Rejection::new(code, error.to_string())
}

/// The answer to one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok { id: AckId, duplicate: bool },
    Err(LineError),
}

impl Reply {
    /// The reply to an event the commit stage handled.
    pub fn from_outcome(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Counted(id) => Reply::Ok { id, duplicate: false },
            Outcome::Duplicate(id) => Reply::Ok { id: AckId::Client(id), duplicate: true },
            Outcome::Refused { id, error } => Reply::Err(LineError { id, rejection: rejection(&error) }),
            Outcome::NotStored { id } => Reply::rejected(
                id,
                ErrorCode::StorageError,
                "the outbox could not make the event durable; it was not counted",
            ),
        }
    }

    pub fn rejected(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Err(LineError { id, rejection: Rejection::new(code, message) })
    }

    /// Appends the reply and its newline to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        match self {
            Reply::Ok { id: AckId::Generated { commit, index }, duplicate: false } => {
                let _ = writeln!(out, "{{\"ok\":true,\"id\":\"{commit}-{index}\"}}");
            }
            Reply::Ok { id, duplicate } => {
                out.extend_from_slice(b"{\"ok\":true,\"id\":");
                match id {
                    AckId::Client(id) => write_json_string(out, id),
                    AckId::Generated { commit, index } => {
                        let _ = write!(out, "\"{commit}-{index}\"");
                    }
                }
                if *duplicate {
                    out.extend_from_slice(b",\"duplicate\":true");
                }
                out.extend_from_slice(b"}\n");
            }
            Reply::Err(LineError { id, rejection }) => {
                out.extend_from_slice(b"{\"ok\":false,");
                if let Some(id) = id {
                    out.extend_from_slice(b"\"id\":");
                    write_json_string(out, id);
                    out.push(b',');
                }
                out.extend_from_slice(b"\"error\":\"");
                out.extend_from_slice(rejection.code.as_str().as_bytes());
                out.extend_from_slice(b"\",\"message\":");
                write_json_string(out, &rejection.message);
                out.extend_from_slice(b"}\n");
            }
        }
    }
}

/// `text` as a JSON string, as serde_json writes it. Ids are nearly always plain (no quote,
/// backslash or control character: nothing to escape), and are then copied as they are.
fn write_json_string(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn replies_are_one_json_line() {
        let mut out = Vec::new();
        Reply::Ok { id: AckId::Generated { commit: 7, index: 3 }, duplicate: false }.write_to(&mut out);
        Reply::Ok { id: AckId::Client("a\"b".into()), duplicate: true }.write_to(&mut out);
        Reply::rejected(Some("x".into()), ErrorCode::OutOfWindow, "too \"old\"").write_to(&mut out);
        let lines: Vec<Value> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0], json!({"ok": true, "id": "7-3"}));
        assert_eq!(lines[1], json!({"ok": true, "id": "a\"b", "duplicate": true}));
        assert_eq!(
            lines[2],
            json!({"ok": false, "id": "x", "error": "out_of_window", "message": "too \"old\""})
        );
    }

    #[test]
    fn strings_are_written_byte_for_byte_as_serde_json_writes_them() {
        let texts = [
            "",
            "0f3c9a",
            "id with spaces ~\u{7f}",
            "é✓",
            "a\"b",
            "back\\slash",
            "tab\t",
            "\u{1}",
            "\u{1f}x",
        ];
        for text in texts {
            let mut ours = Vec::new();
            write_json_string(&mut ours, text);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(text).unwrap(), "{text:?}");
        }
    }
}
