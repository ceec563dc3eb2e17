//! Closing an hour (the lease holder only): when every live host has shipped through it, or
//! `close_after` has passed since it ended, its partials are summed per record key and tag set
//! and written as frozen fleet records, and the hour is marked closed — one transaction, fenced
//! by the lease epoch. The records then go through the same submit loop as a single host's, with
//! their state in `records`.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::FleetSettings;
use super::db::{DbError, key_columns, key_of};
use crate::aggregate::{Allocation, SealedRecord};
use crate::model::{MAX_QUANTITY, RecordKey, TagSet};

/// Hours that may close now, oldest first, with the hosts still waited for (empty: close): every
/// live host that has not shipped through the hour, including one first seen after the hour
/// ended, which may hold events of it (stamped in it, acknowledged inside `seal_delay`).
pub async fn due_hours(
    client: &Client,
    settings: &FleetSettings,
    now: i64,
) -> Result<Vec<(i64, Vec<String>)>, DbError> {
    let hours: Vec<i64> = client
        .query("SELECT hour FROM hours WHERE state = 'open' AND hour + 3600 <= $1 ORDER BY hour", &[&now])
        .await?
        .into_iter()
        .map(|row| row.get(0))
        .collect();
    let mut out = Vec::new();
    for hour in hours {
        let waiting: Vec<String> = client
            .query(
                "SELECT host_id FROM hosts WHERE deregistered_at IS NULL AND heartbeat >= $1
                   AND coalesce(shipped_through, -1) < $2 ORDER BY host_id",
                &[&(now - settings.host_timeout), &hour],
            )
            .await?
            .into_iter()
            .map(|row| row.get(0))
            .collect();
        let overdue = now >= hour + 3600 + settings.close_after;
        out.push((hour, if overdue { Vec::new() } else { waiting }));
    }
    Ok(out)
}

/// Closes `hour` under `epoch`: sums its partials into records, marks it closed. Returns the new
/// records; `None` when the lease is no longer this epoch's or the hour was closed already.
pub async fn close(
    client: &mut Client,
    hour: i64,
    epoch: i64,
    now: i64,
) -> Result<Option<Vec<SealedRecord>>, DbError> {
    let tx = client.transaction().await?;
    let state = tx.query_opt("SELECT state FROM hours WHERE hour = $1 FOR UPDATE", &[&hour]).await?;
    let fenced = tx
        .query_opt("SELECT 1 FROM lease WHERE name = 'submitter' AND epoch = $1 FOR SHARE", &[&epoch])
        .await?
        .is_none();
    if fenced || state.is_none_or(|row| row.get::<_, String>(0) != "open") {
        return Ok(None);
    }
    let rows = tx
        .query(
            "SELECT scope_kind, scope, customer_kind, customer, dimension, tags, sum(quantity)::bigint
             FROM partials WHERE hour = $1 GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6",
            &[&hour],
        )
        .await?;
    let mut sums: BTreeMap<RecordKey, TagSums> = BTreeMap::new();
    for row in rows {
        let key = key_of(row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), hour);
        sums.entry(key).or_default().push((tag_set(row.get(5)), row.get(6)));
    }
    let mut records = Vec::with_capacity(sums.len());
    for (key, tags) in sums {
        match decide(key, tags) {
            Ok(record) => records.push(record),
            Err(dead) => dead_letter(&tx, &dead, epoch, now).await?,
        }
    }
    insert_records(&tx, &records, epoch, now).await?;
    tx.execute(
        "UPDATE hours SET state = 'closed', closed_at = $2, closed_epoch = $3 WHERE hour = $1",
        &[&hour, &now, &epoch],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(records))
}

/// The fleet record of a key's summed tag sets, with the true total when the sum is above the
/// largest quantity the service takes (each host's partial is below it; their sum may not be).
fn record(key: RecordKey, tags: Vec<(TagSet, i64)>) -> (SealedRecord, Option<i64>) {
    let clamp = |q: i64| q.clamp(0, i64::from(MAX_QUANTITY)) as u32;
    let total: i64 = tags.iter().map(|(_, q)| *q).sum();
    let tagged = tags.iter().any(|(t, _)| !t.is_empty());
    let allocations = if tagged {
        tags.into_iter().map(|(tags, q)| Allocation { tags, quantity: clamp(q) }).collect()
    } else {
        Vec::new()
    };
    let record = SealedRecord { key, quantity: clamp(total), allocations };
    (record, (total > i64::from(MAX_QUANTITY)).then_some(total))
}

/// Whether a dead letter's message is one closing wrote for a record it could not make
/// sendable: its stored bytes are not the fleet's sum, so it must never be sent.
pub fn unsendable(message: &str) -> bool {
    message.starts_with(UNREADABLE) || message.starts_with(OVER_MAXIMUM)
}

/// How closing's dead letters begin (see [`decide`]).
const UNREADABLE: &str = "unreadable tags ";
const OVER_MAXIMUM: &str = "the fleet's sum ";

/// A partial's tag set as stored (JSON), or why it cannot be read.
fn tag_set(text: &str) -> Result<TagSet, String> {
    serde_json::from_str(text).map_err(|err| format!("unreadable tags {text:?} in a partial: {err}"))
}

/// A key's quantities per tag set, each tag set as read from its partials (or why it cannot be).
type TagSums = Vec<(Result<TagSet, String>, i64)>;

/// A fleet record that cannot be sent: what is known of it, its true sum and why.
struct Dead {
    record: SealedRecord,
    total: i64,
    message: String,
}

/// The fleet record of a key's summed tag sets, or why it cannot be sent: a sum above the
/// largest quantity the service takes, or a tag set this meterd cannot read (its allocations
/// are unknown, and sending the sum untagged would re-shape the bill).
fn decide(key: RecordKey, tags: TagSums) -> Result<SealedRecord, Box<Dead>> {
    let total: i64 = tags.iter().map(|(_, q)| *q).sum();
    let hour = key.hour;
    let readable: Result<Vec<(TagSet, i64)>, String> =
        tags.into_iter().map(|(tags, q)| tags.map(|tags| (tags, q))).collect();
    let readable = match readable {
        Ok(readable) => readable,
        Err(reason) => {
            tracing::error!(hour, total, %reason, "a fleet record's partials have unreadable tags; dead-lettered");
            let message = format!(
                "{reason}; the fleet's sum {total} for this customer, dimension and hour is not sent"
            );
            return Err(Box::new(Dead { record: record(key, vec![(Vec::new(), total)]).0, total, message }));
        }
    };
    match record(key, readable) {
        (record, None) => Ok(record),
        (record, Some(total)) => {
            tracing::error!(
                hour,
                total,
                "a fleet record's sum is above the service's largest quantity; dead-lettered"
            );
            let message = format!(
                "the fleet's sum {total} for this customer, dimension and hour is above 2147483647, the largest quantity the service takes"
            );
            Err(Box::new(Dead { record, total, message }))
        }
    }
}

/// A fleet record that cannot be sent: a dead letter that names the true sum and why, never a
/// silently changed bill.
async fn dead_letter(
    tx: &tokio_postgres::Transaction<'_>,
    dead: &Dead,
    epoch: i64,
    now: i64,
) -> Result<(), DbError> {
    let Dead { record, total, message } = dead;
    let (scope_kind, scope, customer_kind, customer) = key_columns(&record.key);
    let bytes = postcard::to_allocvec(record).expect("a record always encodes");
    tx.execute(
        "INSERT INTO records (scope_kind, scope, customer_kind, customer, dimension, hour, quantity, record, state,
           dead_reason, message, sealed_at, settled_at, epoch)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'dead_letter', 'invalid', $9, $10, $10, $11) ON CONFLICT DO NOTHING",
        &[&scope_kind, &scope, &customer_kind, &customer, &record.key.dimension, &record.key.hour, total, &bytes, message, &now, &epoch],
    )
    .await?;
    Ok(())
}

async fn insert_records(
    tx: &tokio_postgres::Transaction<'_>,
    records: &[SealedRecord],
    epoch: i64,
    now: i64,
) -> Result<(), DbError> {
    for chunk in records.chunks(1000) {
        let mut columns: [Vec<String>; 5] = Default::default();
        let (mut hours, mut quantities, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
        for record in chunk {
            let (scope_kind, scope, customer_kind, customer) = key_columns(&record.key);
            for (column, value) in
                columns.iter_mut().zip([scope_kind, scope, customer_kind, customer, &record.key.dimension])
            {
                column.push(value.to_string());
            }
            hours.push(record.key.hour);
            quantities.push(i64::from(record.quantity));
            bytes.push(postcard::to_allocvec(record).expect("a record always encodes"));
        }
        let [scope_kind, scope, customer_kind, customer, dimension] = &columns;
        tx.execute(
            "INSERT INTO records (scope_kind, scope, customer_kind, customer, dimension, hour, quantity, record, state, sealed_at, epoch)
             SELECT *, 'pending', $9, $10 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bytea[])
             ON CONFLICT DO NOTHING",
            &[scope_kind, scope, customer_kind, customer, dimension, &hours, &quantities, &bytes, &now, &epoch],
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Customer, Scope};

    fn key() -> RecordKey {
        RecordKey {
            scope: Scope::ProductCode("p".into()),
            customer: Customer::AwsAccountId("1".into()),
            dimension: "d".into(),
            hour: 3600,
        }
    }

    #[test]
    fn sums_are_exact_and_a_sum_above_the_services_maximum_is_refused_whole() {
        let tags = vec![(vec![("team".to_string(), "a".to_string())], 5), (Vec::new(), 7)];
        let (record, over) = record(key(), tags);
        assert_eq!(over, None);
        assert_eq!(record.quantity, 12);
        assert_eq!(record.allocations.iter().map(|a| a.quantity).sum::<u32>(), 12);
        let (untagged, _) = super::record(key(), vec![(Vec::new(), 3)]);
        assert!(untagged.allocations.is_empty());
        let max = i64::from(MAX_QUANTITY);
        let (_, over) = super::record(key(), vec![(Vec::new(), max), (Vec::new(), 2)]);
        assert_eq!(over, Some(max + 2));
        let Err(dead) = decide(key(), vec![(Ok(Vec::new()), max), (Ok(Vec::new()), 2)]) else { panic!() };
        assert!(unsendable(&dead.message), "{}", dead.message);
        assert!(!unsendable("DuplicateRecord: a different quantity was billed"));
    }

    #[test]
    fn a_tag_set_that_cannot_be_read_stops_the_record_instead_of_billing_it_untagged() {
        let team = vec![("team".to_string(), "a".to_string())];
        let tags = vec![(Ok(team), 5), (tag_set("{not json"), 7)];
        let Err(dead) = decide(key(), tags) else { panic!("sent with unreadable tags") };
        assert_eq!(dead.total, 12);
        assert!(dead.message.starts_with("unreadable tags \"{not json\" in a partial: "), "{}", dead.message);
        assert!(
            dead.message.ends_with("; the fleet's sum 12 for this customer, dimension and hour is not sent")
        );
        assert_eq!(dead.record.quantity, 12);
        assert!(unsendable(&dead.message), "never retried as it is");
        let Ok(sent) = decide(key(), vec![(tag_set("[]"), 3), (tag_set(r#"[["team","a"]]"#), 4)]) else {
            panic!("readable tags are sent")
        };
        assert_eq!((sent.quantity, sent.allocations.len()), (7, 2));
    }
}
