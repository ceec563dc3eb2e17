//! Values an older meterd wrote that this one still reads: log chunks of format 1, whose events'
//! ids were neither scoped to a peer nor bound to a digest (they replay as legacy ids).

use serde::Deserialize;

use super::{LOG_FORMAT_VERSION, OutboxError};
use crate::aggregate::{Admitted, ClientId, IdKey};
use crate::model::RecordKey;

/// An event as a version-1 log chunk holds it: its id was neither scoped nor digested.
#[derive(Deserialize)]
struct AdmittedV1 {
    key: RecordKey,
    tags: crate::model::TagSet,
    quantity: u32,
    id: Option<String>,
    at: i64,
}

/// An open hour as an older meterd checkpointed it: one `o` key per record.
#[derive(Deserialize)]
pub(super) struct BucketV1 {
    quantity: u32,
    allocations: std::collections::BTreeMap<crate::model::TagSet, u32>,
}

impl BucketV1 {
    pub fn into_totals(self, key: RecordKey) -> crate::aggregate::SealedRecord {
        let allocations = self
            .allocations
            .into_iter()
            .map(|(tags, quantity)| crate::aggregate::Allocation { tags, quantity })
            .collect();
        crate::aggregate::SealedRecord { key, quantity: self.quantity, allocations }
    }
}

/// A log chunk of either version.
pub(super) fn decode_log(key: &[u8], value: &[u8]) -> Result<Vec<Admitted>, OutboxError> {
    let corrupt =
        |reason: String| OutboxError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason };
    match value.split_first() {
        Some((&LOG_FORMAT_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string())),
        Some((1, rest)) => {
            let old: Vec<AdmittedV1> = postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string()))?;
            Ok(old
                .into_iter()
                .map(|e| Admitted {
                    key: e.key,
                    tags: e.tags,
                    quantity: e.quantity,
                    id: e.id.map(|id| ClientId { key: IdKey { peer: None, id }, digest: None }),
                    at: e.at,
                })
                .collect())
        }
        Some((version, _)) => Err(corrupt(format!(
            "log format version {version}, this meterd reads 1 and {LOG_FORMAT_VERSION}"
        ))),
        None => Err(corrupt("empty value".into())),
    }
}
