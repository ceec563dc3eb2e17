//! The error shape the SDKs parse: an HTTP status, the error name (sent as `__type` in the body
//! and as `X-Amzn-ErrorType`) and a message. Every refusal of an API request (body size, unknown
//! operation, SigV4, the wire format, the quota, the service's rules, an injected fault) is one of
//! these, so a client's SDK reads each of them as it reads the real service's errors. The control
//! API under `/_emulator/` answers in its own plain shape.

use std::borrow::Cow;

use serde_json::Value;

/// An error answer: HTTP status, the error name put in `__type` and `X-Amzn-ErrorType`, and the
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: Cow<'static, str>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, kind: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self { status, kind: kind.into(), message: message.into() }
    }

    /// A modelled client-side exception (HTTP 400).
    pub fn client(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, kind, message)
    }

    pub fn serialization(message: impl Into<String>) -> Self {
        Self::client("SerializationException", message)
    }

    pub fn throttling() -> Self {
        Self::client("ThrottlingException", "Rate exceeded")
    }

    pub fn internal() -> Self {
        Self::new(500, "InternalServiceErrorException", "An internal error has occurred")
    }

    /// Every constraint violation at once, worded as the service words them.
    pub fn validation(violations: &[String]) -> Self {
        let count = violations.len();
        let plural = if count == 1 { "" } else { "s" };
        Self::client(
            "ValidationException",
            format!("{count} validation error{plural} detected: {}", violations.join("; ")),
        )
    }

    /// The JSON body: `{"__type": kind, "message": …}`.
    pub fn body(&self) -> Value {
        serde_json::json!({ "__type": self.kind, "message": self.message })
    }
}
