//! The submitter lease: every fleet host can submit, exactly one at a time does. The lease is
//! one row (`lease`, name `submitter`) taken with a conditional UPDATE when it has expired (or is
//! this host's own, after a restart), renewed every `lease_ttl / 3`, and given up at shutdown.
//! Each take bumps the fencing epoch; every write the holder makes checks it in the same
//! statement, so a holder that lost the lease (paused, partitioned) can no longer change
//! anything, and stops by itself once its last renewal is `lease_ttl` old.

use tokio_postgres::Client;

use super::db::DbError;

/// A lease held: its epoch and until when (by this host's clock) it is certainly ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub epoch: i64,
    pub until: i64,
}

/// Takes the lease if it has expired, is free, or is already this host's. Renewing a lease this
/// host holds keeps its epoch.
pub async fn acquire(
    client: &Client,
    host: &str,
    now: i64,
    ttl: i64,
    held: Option<Held>,
) -> Result<Option<Held>, DbError> {
    if let Some(held) = held {
        let renewed = client
            .query_opt(
                "UPDATE lease SET expires_at = $3 WHERE name = 'submitter' AND holder = $1 AND epoch = $2
                 RETURNING epoch",
                &[&host, &held.epoch, &(now + ttl)],
            )
            .await?;
        if renewed.is_some() {
            return Ok(Some(Held { epoch: held.epoch, until: now + ttl }));
        }
    }
    let taken = client
        .query_opt(
            "UPDATE lease SET holder = $1, epoch = epoch + 1, expires_at = $3
             WHERE name = 'submitter' AND (expires_at <= $2 OR holder = '' OR holder = $1)
             RETURNING epoch",
            &[&host, &now, &(now + ttl)],
        )
        .await?;
    Ok(taken.map(|row| Held { epoch: row.get(0), until: now + ttl }))
}

/// Gives the lease up, so another host takes it at once.
pub async fn release(client: &Client, host: &str, held: Held) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE lease SET expires_at = 0 WHERE name = 'submitter' AND holder = $1 AND epoch = $2",
            &[&host, &held.epoch],
        )
        .await?;
    Ok(())
}

/// Who holds the lease: holder, epoch, expiry.
pub async fn holder(client: &Client) -> Result<(String, i64, i64), DbError> {
    let row =
        client.query_one("SELECT holder, epoch, expires_at FROM lease WHERE name = 'submitter'", &[]).await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}
