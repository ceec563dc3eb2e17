//! The sealed hourly record: one (product or license, customer, dimension, UTC hour) with its
//! frozen total and allocations. Once sealed it never changes, so every attempt to submit it sends
//! the same content; it is self-contained so that fleet mode can ship it instead of submitting it.

use serde::{Deserialize, Serialize};

use crate::model::{RecordKey, TagSet};

/// The usage of one tag set within a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub tags: TagSet,
    pub quantity: u32,
}

/// A frozen hourly record. Its allocations are sorted by tag set and sum to `quantity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRecord {
    pub key: RecordKey,
    pub quantity: u32,
    pub allocations: Vec<Allocation>,
}

impl SealedRecord {
    /// Whether the record must be sent with `UsageAllocations`: only when some usage was tagged.
    pub fn has_tags(&self) -> bool {
        self.allocations.iter().any(|a| !a.tags.is_empty())
    }
}
