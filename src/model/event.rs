//! A usage event as every stage sees it once it is well formed, and the error codes a client is
//! answered with.

use super::key::{Customer, Scope, TagSet};

/// A well-formed usage event, not yet checked against time or earlier events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub scope: Scope,
    pub customer: Customer,
    pub dimension: String,
    pub quantity: u32,
    /// Epoch seconds; `None` means "when it was received".
    pub timestamp: Option<i64>,
    pub tags: TagSet,
    /// The client's idempotency key.
    pub id: Option<String>,
    /// The uid of the process that sent it (`SO_PEERCRED`); ids are scoped to it.
    pub peer: u32,
    /// Its id's hash and its content's digest, computed where it was read (on the ingest
    /// threads, beside the parse) so that the one commit thread does not; `None` until then.
    pub id_print: Option<IdPrint>,
}

/// What remembering an event's id needs: the hash of (peer, id) and the digest of the event
/// (`crate::aggregate::id_print`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdPrint {
    pub hash: [u64; 2],
    pub digest: u64,
}

/// The error codes of the socket protocol (and the `reason` label of
/// `meterd_events_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    MissingField,
    InvalidField,
    UnknownDimension,
    OutOfWindow,
    FutureTimestamp,
    LineTooLong,
    QuantityOverflow,
    Overloaded,
    StorageError,
    /// The peer's uid is not in `ingest.allowed_uids`; the connection is closed after this line.
    PermissionDenied,
    /// The event's id was used for a different event.
    IdConflict,
    /// The event would grow its record past what one request can carry.
    RecordTooLarge,
    /// The event's `product_code` is not one of the configured products.
    UnknownProduct,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::InvalidJson,
        ErrorCode::MissingField,
        ErrorCode::InvalidField,
        ErrorCode::UnknownDimension,
        ErrorCode::OutOfWindow,
        ErrorCode::FutureTimestamp,
        ErrorCode::LineTooLong,
        ErrorCode::QuantityOverflow,
        ErrorCode::Overloaded,
        ErrorCode::StorageError,
        ErrorCode::PermissionDenied,
        ErrorCode::IdConflict,
        ErrorCode::RecordTooLarge,
        ErrorCode::UnknownProduct,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::UnknownDimension => "unknown_dimension",
            ErrorCode::OutOfWindow => "out_of_window",
            ErrorCode::FutureTimestamp => "future_timestamp",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::QuantityOverflow => "quantity_overflow",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::StorageError => "storage_error",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::IdConflict => "id_conflict",
            ErrorCode::RecordTooLarge => "record_too_large",
            ErrorCode::UnknownProduct => "unknown_product",
        }
    }
}
