//! Faults injected into API requests through `/_emulator/faults`: counted errors, throttling,
//! server errors, dropped answers, unprocessed records and latency. Each is taken by the request
//! it affects, so the emulator's request log shows exactly which requests were faulted.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::wire::ApiError;

/// Faults to inject into the next API requests, set through `POST /_emulator/faults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The next N requests get `ThrottlingException` (HTTP 400).
    pub throttle: u32,
    /// The next N requests get `InternalServiceErrorException` (HTTP 500).
    pub http_500: u32,
    /// The next N requests are applied, then the connection is closed without an answer.
    pub drop_after_apply: u32,
    /// This share (0.0..=1.0) of the records of each BatchMeterUsage call comes back in
    /// `UnprocessedRecords`, not applied; spread evenly and deterministically.
    pub unprocessed_share: f64,
    /// Added to every API request before it is answered.
    pub latency_ms: u64,
    /// The next `count` requests get this error.
    pub error: Option<InjectedError>,
    /// Records owed to `UnprocessedRecords`, carried between calls to keep the share exact.
    #[serde(skip)]
    unprocessed_credit: f64,
}

/// An arbitrary error to answer with, e.g. `DisabledApiException` or `InvalidEndpointRegionException`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InjectedError {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "default_injected_status")]
    pub status: u16,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default = "default_injected_count")]
    pub count: u32,
    /// Only requests with a usage record for this customer (`CustomerAWSAccountId` or
    /// `CustomerIdentifier`) get the error; others pass. Absent: every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
}

impl InjectedError {
    /// Whether this request (its body) is one the error is for.
    fn applies_to(&self, body: &Map<String, Value>) -> bool {
        let Some(customer) = &self.customer else { return true };
        let records = body.get("UsageRecords").and_then(Value::as_array);
        records.into_iter().flatten().any(|record| {
            ["CustomerAWSAccountId", "CustomerIdentifier"]
                .iter()
                .any(|field| record.get(*field).and_then(Value::as_str) == Some(customer.as_str()))
        })
    }
}

fn default_injected_status() -> u16 {
    400
}

fn default_injected_count() -> u32 {
    1
}

/// A partial update of [`Faults`]: only the fields present change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsUpdate {
    throttle: Option<u32>,
    http_500: Option<u32>,
    drop_after_apply: Option<u32>,
    unprocessed_share: Option<f64>,
    latency_ms: Option<u64>,
    error: Option<Option<InjectedError>>,
}

impl Faults {
    pub fn update(&mut self, update: FaultsUpdate) -> Result<(), String> {
        if let Some(share) = update.unprocessed_share.filter(|share| !(0.0..=1.0).contains(share)) {
            return Err(format!("unprocessed_share must be between 0 and 1, got {share}"));
        }
        if let Some(v) = update.throttle {
            self.throttle = v;
        }
        if let Some(v) = update.http_500 {
            self.http_500 = v;
        }
        if let Some(v) = update.drop_after_apply {
            self.drop_after_apply = v;
        }
        if let Some(v) = update.unprocessed_share {
            self.unprocessed_share = v;
        }
        if let Some(v) = update.latency_ms {
            self.latency_ms = v;
        }
        if let Some(v) = update.error {
            self.error = v;
        }
        Ok(())
    }

    /// The error the request with `body` gets, if any: an injected error (if it is for this
    /// request), then throttling, then a 500.
    pub fn take_error(&mut self, body: &Map<String, Value>) -> Option<ApiError> {
        if let Some(injected) = self.error.as_mut().filter(|e| e.count > 0 && e.applies_to(body)) {
            injected.count -= 1;
            let message = injected.message.clone().unwrap_or_else(|| format!("injected {}", injected.kind));
            let err = ApiError::new(injected.status, injected.kind.clone(), message);
            if injected.count == 0 {
                self.error = None;
            }
            return Some(err);
        }
        if self.throttle > 0 {
            self.throttle -= 1;
            return Some(ApiError::throttling());
        }
        if self.http_500 > 0 {
            self.http_500 -= 1;
            return Some(ApiError::internal());
        }
        None
    }

    /// Whether the answer to an applied request is to be dropped.
    pub fn take_drop(&mut self) -> bool {
        let drop = self.drop_after_apply > 0;
        self.drop_after_apply = self.drop_after_apply.saturating_sub(1);
        drop
    }

    /// Whether the next record goes to `UnprocessedRecords`: the share, spread evenly.
    pub fn take_unprocessed(&mut self) -> bool {
        self.unprocessed_credit += self.unprocessed_share;
        if self.unprocessed_credit >= 1.0 - 1e-9 {
            self.unprocessed_credit -= 1.0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprocessed_share_is_spread_evenly() {
        let mut faults = Faults { unprocessed_share: 0.25, ..Faults::default() };
        let taken: Vec<bool> = (0..8).map(|_| faults.take_unprocessed()).collect();
        assert_eq!(taken, [false, false, false, true, false, false, false, true]);
    }

    #[test]
    fn counted_faults_are_taken_in_order() {
        let mut faults = Faults { throttle: 1, http_500: 1, ..Faults::default() };
        faults.error = Some(InjectedError {
            kind: "DisabledApiException".into(),
            status: 400,
            message: None,
            count: 1,
            customer: None,
        });
        let kinds: Vec<String> = (0..4)
            .map(|_| faults.take_error(&Map::new()).map(|e| e.kind.to_string()).unwrap_or_default())
            .collect();
        assert_eq!(
            kinds,
            ["DisabledApiException", "ThrottlingException", "InternalServiceErrorException", ""]
        );
    }

    #[test]
    fn an_error_for_one_customer_spares_the_others() {
        let mut faults = Faults {
            error: Some(InjectedError {
                kind: "SomethingNewException".into(),
                status: 400,
                message: None,
                count: 2,
                customer: Some("111122223333".into()),
            }),
            ..Faults::default()
        };
        let body = |customer: &str| {
            serde_json::json!({"UsageRecords": [{"CustomerAWSAccountId": customer}]})
                .as_object()
                .unwrap()
                .clone()
        };
        assert!(faults.take_error(&body("444455556666")).is_none());
        assert_eq!(faults.take_error(&body("111122223333")).unwrap().kind, "SomethingNewException");
        assert_eq!(faults.error.as_ref().unwrap().count, 1);
    }
}
