//! Reading one SQS message body: which envelope it came in, which notification it carries, whom
//! it is about, and what it means for meterd ([`Change`]). Three envelopes are read as they come:
//!
//! | envelope | how it is told | its id |
//! |---|---|---|
//! | SNS notification | an object with `Type` and `Message` (the payload as a JSON string) | `MessageId` |
//! | raw SNS payload (raw message delivery on) | an object with `action` | the SQS message id only |
//! | EventBridge event | an object with `source`, `detail-type` and `detail` | `id` |
//!
//! | payload | change |
//! |---|---|
//! | `subscribe-success` | subscribed |
//! | `unsubscribe-pending` | ending |
//! | `unsubscribe-success` | ended |
//! | `subscribe-fail`, `entitlement-updated` | ignored (logged, counted) |
//! | `Purchase Agreement Created - …` with intent NEW, RENEW or REPLACE | subscribed |
//! | `Purchase Agreement Ended - …` unless its status is RENEWED or REPLACED | ending |
//! | `License Deprovisioned - …` | ending |
//! | any other `Purchase Agreement …`, `License …` or `Agreement …` detail type of `aws.agreement-marketplace` | ignored |
//!
//! The customer: a legacy payload's `customer-identifier` and (newer) `customer-aws-account-id`,
//! an EventBridge detail's `acceptor.accountId`; the product: `product-code`, `detail.product.code`;
//! the license: `licenseArn`, `detail.license.arn`. Anything else (not JSON, no known envelope, an
//! unknown action, an effect without a customer) is [`Invalid`].

use serde_json::{Map, Value};

use crate::model::Subscriber;

/// What a notification means for a customer's subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Metering may start (again): records waiting for a re-check are sent now.
    Subscribed,
    /// The final hour began: open hours are sealed and submitted now.
    Ending,
    /// Records are refused from now on: refused ones become dead letters at once.
    Ended,
    /// Nothing for meterd to do; why.
    Ignored(String),
}

/// One notification, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The envelope's own ids (`sns:<MessageId>`, `eventbridge:<id>`); the consumer adds the SQS
    /// message id.
    pub ids: Vec<String>,
    /// The action or detail type, as it came (`unsubscribe-pending`).
    pub kind: String,
    pub change: Change,
    /// Whom it is about; `None` only for an ignored notification that names nobody.
    pub subscriber: Option<Subscriber>,
}

/// A message meterd cannot act on: it stays in the queue for its redrive policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("no known envelope (neither an SNS notification, a raw SNS payload nor an EventBridge event)")]
    UnknownEnvelope,
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    #[error(
        "{0:?} names no customer meterd can match (customer-identifier, customer-aws-account-id, acceptor.accountId)"
    )]
    NoCustomer(String),
}

/// Reads one message body.
pub fn parse(body: &str) -> Result<Notice, Invalid> {
    let value: Value = serde_json::from_str(body).map_err(|err| Invalid::NotJson(err.to_string()))?;
    let Value::Object(object) = value else { return Err(Invalid::UnknownEnvelope) };
    if let (Some(kind), Some(message)) = (text(&object, &["Type"]), object.get("Message")) {
        return sns(&object, kind, message);
    }
    if object.contains_key("source") && object.contains_key("detail-type") {
        return eventbridge(&object);
    }
    if text(&object, &["action", "Action"]).is_some() {
        return legacy(&object, Vec::new());
    }
    Err(Invalid::UnknownEnvelope)
}

/// The first of `names` that `object` holds as non-empty text, trimmed (AWS's own examples pad
/// customer identifiers with a space).
fn text<'a>(object: &'a Map<String, Value>, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|name| object.get(*name)?.as_str()).map(str::trim).filter(|s| !s.is_empty())
}

fn sns(envelope: &Map<String, Value>, kind: &str, message: &Value) -> Result<Notice, Invalid> {
    let ids: Vec<String> = text(envelope, &["MessageId"]).map(|id| format!("sns:{id}")).into_iter().collect();
    if kind != "Notification" {
        let why = format!("an SNS {kind} message (confirm a subscription at its SubscribeURL)");
        return Ok(Notice { ids, kind: kind.into(), change: Change::Ignored(why), subscriber: None });
    }
    let payload = match message {
        Value::String(text) => {
            serde_json::from_str(text).map_err(|err| Invalid::NotJson(format!("Message: {err}")))?
        }
        other => other.clone(),
    };
    match payload {
        Value::Object(payload) if text(&payload, &["action", "Action"]).is_some() => legacy(&payload, ids),
        _ => Err(Invalid::UnknownEnvelope),
    }
}

/// The legacy topics' payload (`aws-mp-subscription-notification`, `aws-mp-entitlement-notification`).
fn legacy(payload: &Map<String, Value>, ids: Vec<String>) -> Result<Notice, Invalid> {
    let action = text(payload, &["action", "Action"]).unwrap_or_default().to_string();
    let change = match action.as_str() {
        "subscribe-success" => Change::Subscribed,
        "unsubscribe-pending" => Change::Ending,
        "unsubscribe-success" => Change::Ended,
        "subscribe-fail" => Change::Ignored("the subscription failed: nothing was billable".into()),
        "entitlement-updated" => {
            Change::Ignored("a contract's entitlements changed (GetEntitlements tells what)".into())
        }
        _ => return Err(Invalid::UnknownAction(action)),
    };
    let customers: Vec<String> = [
        text(payload, &["customer-identifier", "CustomerIdentifier", "customerIdentifier"]),
        text(payload, &["customer-aws-account-id", "CustomerAWSAccountId", "customerAWSAccountId"]),
    ]
    .into_iter()
    .flatten()
    .map(String::from)
    .collect();
    let subscriber = (!customers.is_empty()).then(|| Subscriber {
        customers,
        product: text(payload, &["product-code", "ProductCode", "productCode"]).map(String::from),
        license: text(payload, &["licenseArn", "license-arn", "LicenseArn"]).map(String::from),
    });
    finish(ids, action, change, subscriber)
}

/// An effect needs someone to act on; an ignored notification does not.
fn finish(
    ids: Vec<String>,
    kind: String,
    change: Change,
    subscriber: Option<Subscriber>,
) -> Result<Notice, Invalid> {
    if subscriber.is_none() && !matches!(change, Change::Ignored(_)) {
        return Err(Invalid::NoCustomer(kind));
    }
    Ok(Notice { ids, kind, change, subscriber })
}

fn field<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, name| v.get(*name))?.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// An `aws.agreement-marketplace` event.
fn eventbridge(event: &Map<String, Value>) -> Result<Notice, Invalid> {
    let ids: Vec<String> = text(event, &["id"]).map(|id| format!("eventbridge:{id}")).into_iter().collect();
    let kind = text(event, &["detail-type"]).unwrap_or_default().to_string();
    let source = text(event, &["source"]).unwrap_or_default();
    let detail = event.get("detail").cloned().unwrap_or(Value::Null);
    if source != "aws.agreement-marketplace" {
        let why = format!("an EventBridge event from {source:?}, not aws.agreement-marketplace");
        return Ok(Notice { ids, kind, change: Change::Ignored(why), subscriber: None });
    }
    let (name, role) = kind.rsplit_once(" - ").unwrap_or((kind.as_str(), ""));
    if !["Manufacturer", "Proposer", "Acceptor"].contains(&role) {
        return Err(Invalid::UnknownAction(kind));
    }
    let change = match name {
        "Purchase Agreement Created" => match field(&detail, &["agreement", "intent"]) {
            Some("NEW" | "RENEW" | "REPLACE") | None => Change::Subscribed,
            Some(intent) => Change::Ignored(format!("an agreement created with intent {intent}")),
        },
        "Purchase Agreement Ended" => match field(&detail, &["agreement", "status"]) {
            Some(status @ ("RENEWED" | "REPLACED")) => {
                Change::Ignored(format!("the agreement was {status}: not a cancellation"))
            }
            _ => Change::Ending,
        },
        "License Deprovisioned" => Change::Ending,
        other if ["Purchase Agreement ", "License ", "Agreement "].iter().any(|p| other.starts_with(p)) => {
            Change::Ignored(format!("{kind} changes no subscription"))
        }
        _ => return Err(Invalid::UnknownAction(kind)),
    };
    let subscriber = field(&detail, &["acceptor", "accountId"]).map(|account| Subscriber {
        customers: vec![account.to_string()],
        product: field(&detail, &["product", "code"]).map(String::from),
        license: field(&detail, &["license", "arn"]).map(String::from),
    });
    finish(ids, kind, change, subscriber)
}

#[cfg(test)]
#[path = "envelope_tests.rs"]
mod tests;
