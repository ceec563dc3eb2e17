//! The fleet's dead letters, from any host: `meterd dlq list|show|export` read them, and
//! `meterd dlq retry|drop` change them, whichever host the command runs on.
//!
//! | dead letter | kept in | retry | drop |
//! |---|---|---|---|
//! | a fleet record the holder dead-lettered (`duplicate_record`, `invalid`, `expired`, …) | `records`, state `dead_letter` | `pending` again: the lease holder resends it byte-identical | the row is deleted |
//! | a partial that reached a closed hour and was not carried (`late_partial`) | `late_partials`, reason `late_partial` | carried into the fleet's hour open now (a derived partial `late:<id>`), if its billing month and deadline allow | reason `dropped`: listed no more, and a resend of it is still recognised |
//!
//! A change is one transaction for the whole selection, all or nothing. It holds the lease row
//! (`FOR SHARE`, so that no takeover commits in between) and writes one `dead_letter_actions`
//! row per dead letter: what was done, to what (its key, quantity, reason and message, the
//! record's bytes), by which host and which uid of the admin socket's peer, when, and under
//! which lease epoch. A record made pending again is not in the holder's submit loop: the holder
//! reads the retries after the last one it saw at every turn ([`retried_since`]), and a new
//! holder loads every pending record when it starts. A record that closing could not make
//! sendable (a sum above the service's maximum, unreadable tags) is refused: its bytes are not
//! the fleet's sum, and sending them would change the bill.

use tokio_postgres::{Client, Transaction};

use super::db::{DbError, Target, key_columns};
use super::ship::Rows;
use crate::aggregate::SealedRecord;
use crate::clock::{deadline, hour_of, same_month};
use crate::model::DeadReason;
use crate::outbox::{RecordState, StoredRecord};

/// A fleet dead letter as listed, and where it is kept.
#[derive(Debug, Clone)]
pub struct FleetDeadLetter {
    pub stored: StoredRecord,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A row of `records`.
    Record,
    /// A row of `late_partials`.
    LatePartial { host_id: String, partial_id: String },
}

/// Why a retry or drop of fleet dead letters did not happen; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Refused(String),
}

/// Who changes the dead letters, and when (this host's clock).
#[derive(Debug, Clone)]
pub struct Change {
    pub retry: bool,
    pub by_host: String,
    /// The uid of the admin socket's peer (the operator's command).
    pub by_uid: Option<u32>,
    pub now: i64,
    /// The operation's window (`submit.deadline`): a late partial is carried only within it.
    pub deadline: i64,
}

/// Every fleet dead letter: records the holder dead-lettered, and late partials that were not
/// carried (nor dropped).
pub async fn dead_letters(target: &Target) -> Result<Vec<FleetDeadLetter>, DbError> {
    let client = target.connect().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {} FROM records WHERE state = 'dead_letter' ORDER BY hour",
                super::store::COLUMNS
            ),
            &[],
        )
        .await?;
    let mut out: Vec<FleetDeadLetter> = rows
        .iter()
        .filter_map(super::store::stored_of)
        .map(|stored| FleetDeadLetter { stored, source: Source::Record })
        .collect();
    let late = client
        .query(
            "SELECT record, host_id, quantity, noted_at, partial_id FROM late_partials
             WHERE carried_to IS NULL AND reason = 'late_partial' ORDER BY hour, host_id, partial_id",
            &[],
        )
        .await?;
    for row in &late {
        let Ok(record) = postcard::from_bytes::<SealedRecord>(row.get::<_, &[u8]>(0)) else { continue };
        let (host_id, quantity, at): (String, i64, i64) = (row.get(1), row.get(2), row.get(3));
        let message =
            format!("late_partial: host {host_id} shipped {quantity} after the fleet closed the hour");
        let state = RecordState::DeadLetter { reason: DeadReason::LatePartial, message, at };
        let stored = StoredRecord { record, sealed_at: at, state, generation: 0 };
        out.push(FleetDeadLetter { stored, source: Source::LatePartial { host_id, partial_id: row.get(4) } });
    }
    Ok(out)
}

/// The advisory lock that makes dead-letter changes take turns ("meterdlq").
const DLQ_LOCK: i64 = 0x6d65_7465_7264_6c71;

/// Retries or drops `chosen`, all in one transaction; returns how many were changed (a dead
/// letter settled meanwhile by someone else is skipped).
pub async fn apply(
    target: &Target,
    chosen: &[FleetDeadLetter],
    change: &Change,
) -> Result<usize, ChangeError> {
    let mut client = target.connect().await?;
    let tx = client.transaction().await?;
    // One change at a time across the fleet: action ids are handed out at insert and commit in
    // that order, so the holder, which reads the actions after the highest id it has seen,
    // never passes over one that commits late.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DLQ_LOCK]).await?;
    let epoch: i64 =
        tx.query_one("SELECT epoch FROM lease WHERE name = 'submitter' FOR SHARE", &[]).await?.get(0);
    let mut changed = 0;
    for dead in chosen {
        let done = match &dead.source {
            Source::Record => change_record(&tx, &dead.stored.record, change, epoch).await?,
            Source::LatePartial { host_id, partial_id } => {
                change_late(&tx, host_id, partial_id, change, epoch).await?
            }
        };
        changed += usize::from(done);
    }
    tx.commit().await?;
    let what = if change.retry { "retried" } else { "dropped" };
    tracing::warn!(changed, epoch, by_uid = change.by_uid, "fleet dead letters {what} by an operator");
    Ok(changed)
}

/// What `dead_letter_actions` keeps of one change.
struct Action<'a> {
    kind: &'static str,
    record: &'a SealedRecord,
    bytes: &'a [u8],
    quantity: i64,
    reason: &'a str,
    message: Option<&'a str>,
    partial: Option<(&'a str, &'a str)>,
    carried_to: Option<i64>,
}

async fn note(
    tx: &Transaction<'_>,
    action: Action<'_>,
    change: &Change,
    epoch: i64,
) -> Result<(), ChangeError> {
    let (scope_kind, scope, customer_kind, customer) = key_columns(&action.record.key);
    let (partial_host, partial_id) = action.partial.unzip();
    let verb = if change.retry { "retry" } else { "drop" };
    let uid = change.by_uid.map(i64::from);
    tx.execute(
        "INSERT INTO dead_letter_actions (action, kind, scope_kind, scope, customer_kind, customer, dimension, hour,
           quantity, reason, message, record, partial_host, partial_id, carried_to, by_host, by_uid, at, epoch)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        &[&verb, &action.kind, &scope_kind, &scope, &customer_kind, &customer, &action.record.key.dimension, &action.record.key.hour,
          &action.quantity, &action.reason, &action.message, &action.bytes, &partial_host, &partial_id, &action.carried_to,
          &change.by_host, &uid, &change.now, &epoch],
    )
    .await?;
    Ok(())
}

/// A fleet record: pending again, or deleted. `false`: it is no dead letter any more.
async fn change_record(
    tx: &Transaction<'_>,
    record: &SealedRecord,
    change: &Change,
    epoch: i64,
) -> Result<bool, ChangeError> {
    let key = &record.key;
    let (scope_kind, scope, customer_kind, customer) = key_columns(key);
    let columns: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&scope_kind, &scope, &customer_kind, &customer, &key.dimension, &key.hour];
    let Some(row) = tx
        .query_opt(
            "SELECT quantity, dead_reason, message, record FROM records WHERE scope_kind = $1 AND scope = $2
               AND customer_kind = $3 AND customer = $4 AND dimension = $5 AND hour = $6 AND state = 'dead_letter'
             FOR UPDATE",
            &columns,
        )
        .await?
    else {
        return Ok(false);
    };
    let (quantity, reason, message, bytes): (i64, Option<String>, Option<String>, Vec<u8>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let id = crate::model::record_id(key);
    if change.retry && message.as_deref().is_some_and(super::close::unsendable) {
        return Err(ChangeError::Refused(format!(
            "dead letter {id} cannot be retried: closing could not make a record of the fleet's sum ({}); drop it and bill it by hand",
            message.unwrap_or_default()
        )));
    }
    if change.retry {
        let mut params = columns.to_vec();
        params.push(&epoch);
        tx.execute(
            "UPDATE records SET state = 'pending', dead_reason = NULL, message = NULL, settled_at = NULL, epoch = $7
             WHERE scope_kind = $1 AND scope = $2 AND customer_kind = $3 AND customer = $4 AND dimension = $5 AND hour = $6",
            &params,
        )
        .await?;
    } else {
        tx.execute(
            "DELETE FROM records WHERE scope_kind = $1 AND scope = $2 AND customer_kind = $3 AND customer = $4
               AND dimension = $5 AND hour = $6",
            &columns,
        )
        .await?;
    }
    let reason = reason.unwrap_or_default();
    let action = Action {
        kind: "record",
        record,
        bytes: &bytes,
        quantity,
        reason: &reason,
        message: message.as_deref(),
        partial: None,
        carried_to: None,
    };
    note(tx, action, change, epoch).await?;
    Ok(true)
}

/// A late partial: carried into the fleet's hour open now, or dropped. `false`: it was carried
/// or dropped already.
async fn change_late(
    tx: &Transaction<'_>,
    host_id: &str,
    partial_id: &str,
    change: &Change,
    epoch: i64,
) -> Result<bool, ChangeError> {
    let Some(row) = tx
        .query_opt(
            "SELECT hour, quantity, digest, generation, record FROM late_partials WHERE host_id = $1 AND partial_id = $2
               AND carried_to IS NULL AND reason = 'late_partial' FOR UPDATE",
            &[&host_id, &partial_id],
        )
        .await?
    else {
        return Ok(false);
    };
    let (hour, quantity, digest, generation, bytes): (i64, i64, i64, i32, Vec<u8>) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let record: SealedRecord = postcard::from_bytes(&bytes)
        .map_err(|e| ChangeError::Refused(format!("late partial {partial_id} cannot be read: {e}")))?;
    let carried_to = if change.retry {
        let to = carry_to(hour, change).map_err(|why| {
            ChangeError::Refused(format!("late partial {partial_id} cannot be carried: {why}"))
        })?;
        tx.execute("INSERT INTO hours (hour) VALUES ($1) ON CONFLICT DO NOTHING", &[&to]).await?;
        let state: String =
            tx.query_one("SELECT state FROM hours WHERE hour = $1 FOR SHARE", &[&to]).await?.get(0);
        if state != "open" {
            return Err(ChangeError::Refused(format!(
                "late partial {partial_id} cannot be carried: the fleet already closed the hour open now"
            )));
        }
        let mut moved = record.clone();
        moved.key.hour = to;
        let mut rows = Rows::default();
        rows.add(&format!("late:{partial_id}"), &moved, generation as u32, digest);
        rows.insert(tx, host_id).await?;
        tx.execute(
            "UPDATE late_partials SET carried_to = $3, reason = NULL WHERE host_id = $1 AND partial_id = $2",
            &[&host_id, &partial_id, &to],
        )
        .await?;
        Some(to)
    } else {
        tx.execute(
            "UPDATE late_partials SET reason = 'dropped' WHERE host_id = $1 AND partial_id = $2",
            &[&host_id, &partial_id],
        )
        .await?;
        None
    };
    let action = Action {
        kind: "late_partial",
        record: &record,
        bytes: &bytes,
        quantity,
        reason: DeadReason::LatePartial.as_str(),
        message: None,
        partial: Some((host_id, partial_id)),
        carried_to,
    };
    note(tx, action, change, epoch).await?;
    Ok(true)
}

/// The hour a late partial of `hour` is carried into when an operator retries it: the hour open
/// now, in the same billing month, with an hour left before its deadline.
fn carry_to(hour: i64, change: &Change) -> Result<i64, String> {
    let to = hour_of(change.now);
    if to <= hour {
        return Err("its own hour is the hour open now".into());
    }
    if !same_month(hour, to) {
        return Err("its billing month has ended; the service refuses it in another month".into());
    }
    if deadline(to, change.deadline) <= change.now + 3600 {
        return Err("the hour open now is too close to its billing month's close".into());
    }
    Ok(to)
}

/// The id of the last dead-letter change (0: none): a holder starting its submit loop reads it
/// before it loads the pending records, then hands over the retries after it.
pub async fn last_action(client: &Client) -> Result<i64, DbError> {
    Ok(client.query_one("SELECT coalesce(max(id), 0) FROM dead_letter_actions", &[]).await?.get(0))
}

/// The fleet records retried after the change `after` that are still pending, and the id of
/// the last change read.
pub async fn retried_since(client: &Client, after: i64) -> Result<(i64, Vec<StoredRecord>), DbError> {
    let rows = client
        .query(
            "SELECT r.record, r.state, r.metering_record_id, r.dead_reason, r.message, r.sealed_at, r.settled_at, a.id
             FROM dead_letter_actions a JOIN records r USING (scope_kind, scope, customer_kind, customer, dimension, hour)
             WHERE a.id > $1 AND a.action = 'retry' AND a.kind = 'record' ORDER BY a.id",
            &[&after],
        )
        .await?;
    let last = rows.iter().map(|row| row.get::<_, i64>(7)).max().unwrap_or(after);
    let pending = rows
        .iter()
        .filter_map(super::store::stored_of)
        .filter(|stored| stored.state == RecordState::Pending)
        .collect();
    Ok((last, pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(now: i64) -> Change {
        Change { retry: true, by_host: "h".into(), by_uid: None, now, deadline: 24 * 3600 }
    }

    #[test]
    fn a_late_partial_is_carried_into_the_hour_open_now_of_its_own_billing_month_only() {
        // 2026-11-30T22:00:00Z.
        let nov_30_22h = 1_796_076_000;
        assert_eq!(carry_to(nov_30_22h - 3600, &change(nov_30_22h + 60)), Ok(nov_30_22h));
        assert!(carry_to(nov_30_22h, &change(nov_30_22h + 60)).is_err(), "its own hour");
        assert!(carry_to(nov_30_22h, &change(nov_30_22h + 2 * 3600 + 60)).is_err(), "December");
    }
}
