//! How records and the daemon's state look to an operator: stable short ids, flat JSON records
//! that also export as CSV rows, and the status report.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{Customer, DeadReason, RecordKey, Scope};
use crate::outbox::archive::ArchiveTotals;
use crate::outbox::{RecordState, Recovered, StoredRecord};

/// A record's id for the CLI: the first 12 hex digits of the SHA-256 of its key. Stable across
/// restarts and the same on every host, so a seller can quote it.
pub use crate::model::record_id;

/// Epoch seconds as RFC 3339 UTC text.
pub fn time_text(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// A sealed record, flat, as `dlq list`, `dlq export` and `receipts export` print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordView {
    pub id: String,
    /// Start of the UTC hour (the record's `Timestamp`).
    pub hour: String,
    pub product_code: Option<String>,
    pub license_arn: Option<String>,
    pub customer_aws_account_id: Option<String>,
    pub customer_identifier: Option<String>,
    pub dimension: String,
    pub quantity: u32,
    /// Tag set (as `k=v;k=v`, empty for untagged usage) → quantity.
    pub allocations: BTreeMap<String, u32>,
    /// `pending`, `accepted` or `dead_letter`.
    pub state: String,
    pub metering_record_id: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub sealed_at: String,
    /// When it was accepted or dead-lettered.
    pub settled_at: Option<String>,
}

impl RecordView {
    pub fn new(stored: &StoredRecord) -> Self {
        let key = &stored.record.key;
        let (product_code, license_arn) = match &key.scope {
            Scope::ProductCode(code) => (Some(code.clone()), None),
            Scope::LicenseArn(arn) => (None, Some(arn.clone())),
        };
        let (customer_aws_account_id, customer_identifier) = match &key.customer {
            Customer::AwsAccountId(id) => (Some(id.clone()), None),
            Customer::Identifier(id) => (None, Some(id.clone())),
            Customer::Caller => (None, None),
        };
        let allocations = stored
            .record
            .allocations
            .iter()
            .map(|a| {
                let tags: Vec<String> = a.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                (tags.join(";"), a.quantity)
            })
            .collect();
        let (state, metering_record_id, reason, message) = match &stored.state {
            RecordState::Pending => ("pending", None, None, None),
            RecordState::Accepted { metering_record_id, .. } => {
                ("accepted", Some(metering_record_id.clone()), None, None)
            }
            RecordState::DeadLetter { reason, message, .. } => {
                ("dead_letter", None, Some(reason.as_str().to_string()), Some(message.clone()))
            }
            RecordState::Shipped { .. } => ("shipped", None, None, None),
        };
        RecordView {
            id: record_id(key),
            hour: time_text(key.hour),
            product_code,
            license_arn,
            customer_aws_account_id,
            customer_identifier,
            dimension: key.dimension.clone(),
            quantity: stored.record.quantity,
            allocations,
            state: state.to_string(),
            metering_record_id,
            reason,
            message,
            sealed_at: time_text(stored.sealed_at),
            settled_at: stored.settled_at().map(time_text),
        }
    }

    pub const CSV_HEADER: &'static str = "id,hour,product_code,license_arn,customer_aws_account_id,customer_identifier,dimension,quantity,allocations,state,metering_record_id,reason,message,sealed_at,settled_at";

    /// One CSV row (RFC 4180 quoting); `allocations` is `tags:quantity` pairs joined by `|`.
    /// Written into one buffer: an export formats millions of rows.
    pub fn csv_row(&self) -> String {
        use std::fmt::Write;
        let mut allocations = String::new();
        for (i, (tags, q)) in self.allocations.iter().enumerate() {
            let sep = if i == 0 { "" } else { "|" };
            let _ = write!(allocations, "{sep}{tags}:{q}");
        }
        let none = String::new();
        let fields = [
            &self.id,
            &self.hour,
            self.product_code.as_ref().unwrap_or(&none),
            self.license_arn.as_ref().unwrap_or(&none),
            self.customer_aws_account_id.as_ref().unwrap_or(&none),
            self.customer_identifier.as_ref().unwrap_or(&none),
            &self.dimension,
            &self.quantity.to_string(),
            &allocations,
            &self.state,
            self.metering_record_id.as_ref().unwrap_or(&none),
            self.reason.as_ref().unwrap_or(&none),
            self.message.as_ref().unwrap_or(&none),
            &self.sealed_at,
            self.settled_at.as_ref().unwrap_or(&none),
        ];
        let mut row = String::with_capacity(256);
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                row.push(',');
            }
            push_csv_field(&mut row, field);
        }
        row
    }
}

fn push_csv_field(row: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        row.push('"');
        row.push_str(&field.replace('"', "\"\""));
        row.push('"');
    } else {
        row.push_str(field);
    }
}

/// Which dead letters a retry or drop applies to: these ids, or all (of one reason).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The dead letters among `records` that `selection` names; an error names ids that match none.
pub fn select(
    records: impl Iterator<Item = StoredRecord>,
    selection: &Selection,
) -> Result<Vec<StoredRecord>, String> {
    select_by(records, |stored| stored, selection)
}

/// [`select`] over any items that hold a record (`stored` finds it).
pub fn select_by<T>(
    items: impl Iterator<Item = T>,
    stored: impl Fn(&T) -> &StoredRecord,
    selection: &Selection,
) -> Result<Vec<T>, String> {
    if selection.all != selection.ids.is_empty() {
        return Err("name dead letters by id, or use --all (not both)".into());
    }
    if let Some(reason) = &selection.reason
        && !DeadReason::ALL.iter().any(|r| r.as_str() == reason)
    {
        let known: Vec<&str> = DeadReason::ALL.iter().map(|r| r.as_str()).collect();
        return Err(format!("unknown reason {reason:?} (known: {})", known.join(", ")));
    }
    let wanted: BTreeSet<&str> = selection.ids.iter().map(String::as_str).collect();
    let mut found = BTreeSet::new();
    let chosen: Vec<T> = items
        .filter(|item| match &stored(item).state {
            RecordState::DeadLetter { reason, .. } => {
                selection.reason.as_deref().is_none_or(|r| r == reason.as_str())
            }
            _ => false,
        })
        .filter(|item| {
            let id = record_id(&stored(item).record.key);
            let hit = selection.all || wanted.contains(id.as_str());
            if hit {
                found.insert(id);
            }
            hit
        })
        .collect();
    let missing: Vec<&str> = wanted.iter().filter(|id| !found.contains(**id)).copied().collect();
    if !missing.is_empty() {
        return Err(format!("no dead letter with id {}", missing.join(", ")));
    }
    Ok(chosen)
}

/// What `meterd status` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    /// Whether a daemon answered (otherwise the data dir was read directly).
    pub running: bool,
    pub data_dir: String,
    pub uptime_secs: Option<u64>,
    /// Records by state: open, pending, in_flight (running only), accepted, dead_letter.
    pub records: BTreeMap<String, u64>,
    pub dead_letters: BTreeMap<String, u64>,
    pub oldest_unsubmitted: Option<Oldest>,
    /// Outcome of the last Metering Service call and when (running only).
    pub last_submission: Option<(String, String)>,
    pub paused: Option<String>,
    /// Why `/readyz` fails; empty when ready (running only).
    pub not_ready: Vec<String>,
    /// What counts against `storage.max_bytes`: sled, the journal and the open-hours files.
    pub outbox_bytes: u64,
    /// The receipts archive (`<data_dir>/receipts/`), outside `storage.max_bytes`.
    #[serde(default)]
    pub archive_bytes: u64,
    /// RegisterUsage's answer when `aws.register_usage` is on (running only).
    pub registration: Option<crate::telemetry::health::RegistrationStatus>,
    /// Fleet mode: this host's id (running only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_host_id: Option<String>,
    /// Pending records by product code ([`Scope::product_label`]).
    #[serde(default)]
    pub pending_by_product: BTreeMap<String, u64>,
    /// The notification consumer, when it is on (running only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<crate::notifications::ConsumerReport>,
}

/// The oldest sealed record not yet settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Oldest {
    pub id: String,
    pub hour: String,
    /// Seconds left before it becomes an `expired` dead letter (negative: overdue).
    pub deadline_in_secs: i64,
}

impl StatusReport {
    /// Counts and the oldest pending record from the outbox's sealed records.
    pub fn from_records(
        records: impl Iterator<Item = StoredRecord>,
        data_dir: &str,
        deadline: i64,
        now: i64,
    ) -> Self {
        let mut counts: BTreeMap<String, u64> = ["open", "pending", "accepted", "dead_letter", "shipped"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
        let mut dead: BTreeMap<String, u64> =
            DeadReason::ALL.iter().map(|r| (r.as_str().to_string(), 0)).collect();
        let mut oldest: Option<RecordKey> = None;
        let mut pending_by_product = BTreeMap::new();
        for stored in records {
            let state = match &stored.state {
                RecordState::Pending => {
                    *pending_by_product
                        .entry(stored.record.key.scope.product_label().to_string())
                        .or_default() += 1;
                    if oldest.as_ref().is_none_or(|o| stored.record.key.hour < o.hour) {
                        oldest = Some(stored.record.key.clone());
                    }
                    "pending"
                }
                RecordState::Accepted { .. } => "accepted",
                RecordState::Shipped { .. } => "shipped",
                RecordState::DeadLetter { reason, .. } => {
                    *dead.entry(reason.as_str().to_string()).or_default() += 1;
                    "dead_letter"
                }
            };
            *counts.entry(state.to_string()).or_default() += 1;
        }
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            running: false,
            data_dir: data_dir.to_string(),
            uptime_secs: None,
            records: counts,
            dead_letters: dead,
            oldest_unsubmitted: oldest.map(|key| Oldest {
                id: record_id(&key),
                hour: time_text(key.hour),
                deadline_in_secs: key.hour + deadline - now,
            }),
            last_submission: None,
            paused: None,
            not_ready: Vec::new(),
            outbox_bytes: 0,
            archive_bytes: 0,
            registration: None,
            fleet_host_id: None,
            pending_by_product,
            notifications: None,
        }
    }

    /// Counts the archived receipts and shipped partials with the records still in sled.
    pub fn add_archive(&mut self, archive: ArchiveTotals) {
        *self.records.entry("accepted".into()).or_default() += archive.accepted;
        *self.records.entry("shipped".into()).or_default() += archive.shipped;
        self.archive_bytes = archive.bytes;
    }

    /// Plain text for a person.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let state = if self.running { "running" } else { "not running (read from the data dir)" };
        out.push_str(&format!("meterd {}: {state}\n", self.version));
        out.push_str(&format!(
            "data dir: {} ({} bytes; receipts archive {} bytes)\n",
            self.data_dir, self.outbox_bytes, self.archive_bytes
        ));
        if let Some(host) = &self.fleet_host_id {
            out.push_str(&format!("fleet host: {host} (meterd fleet status shows the fleet)\n"));
        }
        if let Some(uptime) = self.uptime_secs {
            out.push_str(&format!(
                "uptime: {}\n",
                crate::duration::format(std::time::Duration::from_secs(uptime))
            ));
        }
        let records: Vec<String> = self.records.iter().map(|(s, n)| format!("{s} {n}")).collect();
        out.push_str(&format!("records: {}\n", records.join(", ")));
        let dead: Vec<String> = self.dead_letters.iter().map(|(r, n)| format!("{r} {n}")).collect();
        out.push_str(&format!("dead letters: {}\n", dead.join(", ")));
        if !self.pending_by_product.is_empty() {
            let pending: Vec<String> =
                self.pending_by_product.iter().map(|(p, n)| format!("{p} {n}")).collect();
            out.push_str(&format!("pending by product: {}\n", pending.join(", ")));
        }
        match &self.oldest_unsubmitted {
            Some(o) => out.push_str(&format!(
                "oldest unsubmitted: {} (hour {}), deadline in {}\n",
                o.id,
                o.hour,
                signed_duration(o.deadline_in_secs)
            )),
            None => out.push_str("oldest unsubmitted: none\n"),
        }
        match &self.last_submission {
            Some((outcome, at)) => out.push_str(&format!("last submission: {outcome} at {at}\n")),
            None if self.running => out.push_str("last submission: none since start\n"),
            None => {}
        }
        if let Some(n) = &self.notifications {
            out.push_str(&notifications_text(n));
        }
        if self.running {
            match &self.paused {
                Some(reason) => out.push_str(&format!("submission: PAUSED: {reason}\n")),
                None => out.push_str("submission: active\n"),
            }
            if let Some(r) = &self.registration {
                match &r.signature {
                    Some(signature) => out.push_str(&format!(
                        "registration: registered at {} (public key version {}), signature {signature}\n",
                        r.registered_at.map(time_text).unwrap_or_default(),
                        r.public_key_version
                    )),
                    None => out.push_str("registration: in progress\n"),
                }
                if let Some(at) = r.public_key_rotation_timestamp {
                    out.push_str(&format!(
                        "public key rotation: {} (move aws.public_key_version to the new key)\n",
                        time_text(at)
                    ));
                }
            }
            if self.not_ready.is_empty() {
                out.push_str("ready: yes\n");
            } else {
                out.push_str(&format!("ready: no: {}\n", self.not_ready.join("; ")));
            }
        }
        out
    }
}

fn signed_duration(secs: i64) -> String {
    let text = crate::duration::format(std::time::Duration::from_secs(secs.unsigned_abs()));
    if secs < 0 { format!("-{text} (overdue)") } else { text }
}

/// Status from a data dir no daemon holds: sealed records as stored, open records from the
/// checkpoint and the log after it.
pub fn offline_status(
    recovered: &Recovered,
    data_dir: &str,
    outbox_bytes: u64,
    archive: ArchiveTotals,
    deadline: i64,
    now: i64,
) -> Result<StatusReport, crate::outbox::OutboxError> {
    let mut report = StatusReport::from_records(recovered.records.iter().cloned(), data_dir, deadline, now);
    let mut open: BTreeSet<RecordKey> = recovered.legacy_open.iter().map(|t| t.key.clone()).collect();
    recovered.open_chunks.for_each(|chunk| {
        if let Ok(totals) = crate::outbox::decode_open_chunk(chunk) {
            open.extend(totals.into_iter().map(|t| t.key));
        }
    })?;
    recovered.replay(|admitted| {
        if !open.contains(&admitted.key) {
            open.insert(admitted.key.clone());
        }
        true
    })?;
    report.records.insert("open".into(), open.len() as u64);
    report.outbox_bytes = outbox_bytes;
    report.add_archive(archive);
    Ok(report)
}

/// The notification consumer's lines of `meterd status`.
fn notifications_text(n: &crate::notifications::ConsumerReport) -> String {
    let mut out = match (n.state.as_str(), &n.last_error) {
        ("failing", Some(error)) => format!(
            "notifications: FAILING ({}): {error}
",
            n.queue_url
        ),
        (state, _) => format!(
            "notifications: {state} ({})
",
            n.queue_url
        ),
    };
    let last = match (&n.last_message, n.lag_secs) {
        (Some(at), Some(lag)) => format!("{at} (lag {lag}s)"),
        _ => "none since start".into(),
    };
    let counts: Vec<String> = n.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push_str(&format!("  last message: {last}; {}\n", counts.join(", ")));
    if let Some((id, why)) = &n.last_invalid {
        out.push_str(&format!("  last message not acted on: {id}: {why}\n"));
    }
    let customers: Vec<String> = n.customers.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push_str(&format!("  customers: {}\n", customers.join(", ")));
    out
}
