//! Choices that change what several stages do, and why a record ended as a dead letter.

use serde::{Deserialize, Serialize};

/// Which API meterd reports usage with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// SaaS: BatchMeterUsage, records per customer.
    Batch,
    /// AMI and container products: MeterUsage with the buyer's instance, task or pod credentials;
    /// events name no customer.
    MeterUsage,
}

/// What happens to an event for an hour that is already sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateEvents {
    /// Count it into the hour that is open now.
    CarryForward,
    /// Refuse it with `out_of_window`.
    Reject,
}

/// Why a record became a dead letter. The label of `meterd_dead_letters{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeadReason {
    CustomerNotSubscribed,
    DuplicateRecord,
    /// Not accepted before `submit.deadline`.
    Expired,
    /// Refused on its own by a validation error (the message names the service's error).
    Invalid,
    /// Fleet mode: a host's partial that reached the fleet database after its hour closed.
    LatePartial,
}

impl DeadReason {
    pub const ALL: [DeadReason; 5] = [
        DeadReason::CustomerNotSubscribed,
        DeadReason::DuplicateRecord,
        DeadReason::Expired,
        DeadReason::Invalid,
        DeadReason::LatePartial,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::CustomerNotSubscribed => "customer_not_subscribed",
            DeadReason::DuplicateRecord => "duplicate_record",
            DeadReason::Expired => "expired",
            DeadReason::Invalid => "invalid",
            DeadReason::LatePartial => "late_partial",
        }
    }
}
