//! Decoding `UsageAllocations` and their `Tags`, which MeterUsage and each BatchMeterUsage record
//! share: the list and tag-list lengths, each allocation's quantity pair and each tag's key and
//! value against the model's constraints. Violations go to the request's [`Checker`] like any
//! other member's.
//!
//! Only what the model says of one member is checked here. The rules that span allocations (the
//! sum equals the record's quantity, unique tag sets, no key twice in a tag set) are the service's
//! own and answered with its modelled exceptions, by the operations.

use crate::model::{TAG_PATTERN, is_tag_text};

use super::members::{Checker, Members, object};
use super::{Allocation, ApiError, quantity};

/// Most allocations one usage record may carry.
const MAX_ALLOCATIONS: usize = 2500;

/// Most tags one allocation may carry.
const MAX_TAGS: usize = 5;

/// Reads the `UsageAllocations` member of `members` (`path` is the record's path prefix).
pub(super) fn allocations(
    members: &Members<'_>,
    check: &mut Checker,
    path: &str,
) -> Result<Option<Vec<Allocation>>, ApiError> {
    let list_path = format!("{path}UsageAllocations");
    let Some(items) = members.list("UsageAllocations", &list_path)? else { return Ok(None) };
    list_length(check, &list_path, items.len(), MAX_ALLOCATIONS);
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{list_path}.{}.member.", i + 1);
        let alloc = object(item, &item_path)?;
        let (quantity, decimal) =
            quantity(&alloc, check, "AllocatedUsageQuantity", "AllocatedUsageQuantityAsDecimal", &item_path)?;
        let tags = tags(&alloc, check, &item_path)?;
        out.push(Allocation { quantity, decimal, tags });
    }
    Ok(Some(out))
}

/// Reads one allocation's `Tags` as (key, value) pairs in the order sent; absent is no tags.
fn tags(
    alloc: &Members<'_>,
    check: &mut Checker,
    item_path: &str,
) -> Result<Vec<(String, String)>, ApiError> {
    let tags_path = format!("{item_path}Tags");
    let mut tags = Vec::new();
    let Some(tag_items) = alloc.list("Tags", &tags_path)? else { return Ok(tags) };
    list_length(check, &tags_path, tag_items.len(), MAX_TAGS);
    for (j, tag) in tag_items.iter().enumerate() {
        let tag_path = format!("{tags_path}.{}.member.", j + 1);
        let tag = object(tag, &tag_path)?;
        let key = tag_text(&tag, check, &tag_path, "Key", 100)?;
        let value = tag_text(&tag, check, &tag_path, "Value", 256)?;
        tags.push((key, value));
    }
    Ok(tags)
}

/// A tag's `Key` or `Value`: required, 1 to `max` characters of the model's tag pattern.
fn tag_text(
    tag: &Members<'_>,
    check: &mut Checker,
    tag_path: &str,
    name: &str,
    max: usize,
) -> Result<String, ApiError> {
    let path = format!("{tag_path}{name}");
    match tag.string(name, &path)? {
        None => {
            check.required(&path);
            Ok(String::new())
        }
        Some(t) => {
            check.length(&path, t, 1, max);
            // An empty text is refused by its length alone.
            if !t.is_empty() {
                check.pattern(&path, t, is_tag_text(t), TAG_PATTERN);
            }
            Ok(t.to_string())
        }
    }
}

/// A list member must have 1 to `max` items.
fn list_length(check: &mut Checker, path: &str, len: usize, max: usize) {
    if len == 0 {
        check.violation(path, len, "Member must have length greater than or equal to 1");
    } else if len > max {
        check.violation(path, len, &format!("Member must have length less than or equal to {max}"));
    }
}
