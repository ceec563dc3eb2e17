//! The operations' semantics: what BatchMeterUsage, MeterUsage, RegisterUsage and ResolveCustomer
//! check beyond the wire format, in the order the service checks it, and what they answer. The
//! catalogue decides which products, licenses, dimensions, customers and callers exist; accepted
//! records go to the dedup store ([`super::dedup`]); injected unprocessed records come from the
//! faults. A refused call applies nothing: every check of a call comes before any of its records
//! is applied.
//!
//! | operation        | dedup key                                   | same quantity again | other quantity          |
//! |------------------|---------------------------------------------|---------------------|-------------------------|
//! | BatchMeterUsage  | product code or license ARN, customer, dimension, hour | `Success`, same id | `DuplicateRecord` |
//! | MeterUsage       | caller (access key), product, dimension, hour | same id            | `DuplicateRequestException` |

use std::collections::{BTreeMap, HashSet};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::State;
use super::dedup::{AcceptedRecord, Duplicate, RecordKey, hour_of};
use crate::emulator::config::EmulatorConfig;
use crate::emulator::sigv4::Caller;
use crate::emulator::wire::{self, Allocation, ApiError, Quantity};

/// The four operations, by their `X-Amz-Target` suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    BatchMeterUsage,
    MeterUsage,
    RegisterUsage,
    ResolveCustomer,
}

impl Operation {
    pub const TARGET_PREFIX: &'static str = "AWSMPMeteringService.";

    pub fn from_target(target: &str) -> Option<Self> {
        match target.strip_prefix(Self::TARGET_PREFIX)? {
            "BatchMeterUsage" => Some(Self::BatchMeterUsage),
            "MeterUsage" => Some(Self::MeterUsage),
            "RegisterUsage" => Some(Self::RegisterUsage),
            "ResolveCustomer" => Some(Self::ResolveCustomer),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::BatchMeterUsage => "BatchMeterUsage",
            Self::MeterUsage => "MeterUsage",
            Self::RegisterUsage => "RegisterUsage",
            Self::ResolveCustomer => "ResolveCustomer",
        }
    }
}

/// Whether a catalogue list accepts `item`: an absent list accepts anything.
fn contains(list: &Option<Vec<String>>, item: &str) -> bool {
    list.as_ref().is_none_or(|l| l.iter().any(|x| x == item))
}

impl State {
    pub(super) fn operation(
        &mut self,
        config: &EmulatorConfig,
        operation: Operation,
        caller: &Caller,
        body: &Map<String, Value>,
        now: i64,
    ) -> Result<Value, ApiError> {
        if self.catalogue.disabled_operations.iter().any(|o| o == operation.name()) {
            return Err(ApiError::client(
                "DisabledApiException",
                format!("The {} API is disabled", operation.name()),
            ));
        }
        let dry_run = operation == Operation::MeterUsage && body.get("DryRun") == Some(&Value::Bool(true));
        if !dry_run && !contains(&self.catalogue.authorized_callers, &caller.access_key_id) {
            return Err(ApiError::client(
                "AccessDeniedException",
                format!(
                    "User: {} is not authorized to perform: aws-marketplace:{}",
                    caller.access_key_id,
                    operation.name()
                ),
            ));
        }
        match operation {
            Operation::BatchMeterUsage => {
                self.batch_meter_usage(config, caller, wire::batch_meter_usage(body)?, now)
            }
            Operation::MeterUsage => self.meter_usage(config, caller, wire::meter_usage(body)?, now),
            Operation::RegisterUsage => self.register_usage(caller, wire::register_usage(body)?, now),
            Operation::ResolveCustomer => self.resolve_customer(wire::resolve_customer(body)?),
        }
    }

    fn check_product(&self, code: &str) -> Result<(), ApiError> {
        if contains(&self.catalogue.product_codes, code) {
            Ok(())
        } else {
            Err(ApiError::client("InvalidProductCodeException", format!("Product code {code} is invalid")))
        }
    }

    fn check_dimension(&self, dimension: &str, product: &str) -> Result<(), ApiError> {
        if contains(&self.catalogue.dimensions, dimension) {
            Ok(())
        } else {
            Err(ApiError::client(
                "InvalidUsageDimensionException",
                format!("Dimension {dimension} is not valid for product {product}"),
            ))
        }
    }

    /// The operation's window back from `now` (a timestamp that old or older is refused), the
    /// clock-skew tolerance ahead, and the month close: no record of a billing month is accepted
    /// from 06:00 UTC on the 1st of the next month (for MeterUsage the 6-hour window ends first).
    fn check_window(
        config: &EmulatorConfig,
        operation: Operation,
        timestamp: i64,
        now: i64,
    ) -> Result<(), ApiError> {
        let earliest = now - config.window(operation.name()).as_secs() as i64;
        let latest = now + config.future_tolerance.as_secs() as i64;
        let refused = |message: String| Err(ApiError::client("TimestampOutOfBoundsException", message));
        if timestamp <= earliest || timestamp > latest {
            return refused(format!(
                "Timestamp {timestamp} is outside the accepted window ({earliest}, {latest}]"
            ));
        }
        let close = crate::clock::month_close(hour_of(timestamp));
        if now >= close {
            return refused(format!(
                "Timestamp {timestamp} is in a billing month that closed at {close} (06:00 UTC on the 1st of the next month)"
            ));
        }
        Ok(())
    }

    /// Which product (or license) a BatchMeterUsage call is for; all its records must agree.
    /// Returns whether the records name licenses, and the product they belong to.
    fn batch_scope(&self, input: &wire::BatchMeterUsageInput) -> Result<(bool, String), ApiError> {
        let licensed = input.records.iter().filter(|r| r.license_arn.is_some()).count();
        if licensed == 0 {
            let Some(code) = &input.product_code else {
                return Err(ApiError::client(
                    "InvalidProductCodeException",
                    "ProductCode is required when the usage records do not specify a LicenseArn",
                ));
            };
            self.check_product(code)?;
            return Ok((false, code.clone()));
        }
        if licensed != input.records.len() {
            return Err(ApiError::validation(&[
                "either every usage record of a call specifies a LicenseArn or none does".to_string(),
            ]));
        }
        if input.product_code.is_some() {
            return Err(ApiError::validation(&[
                "ProductCode must not be specified when the usage records specify a LicenseArn".to_string(),
            ]));
        }
        let mut product: Option<String> = None;
        for record in &input.records {
            let arn = record.license_arn.as_deref().unwrap_or_default();
            let owner = match &self.catalogue.licenses {
                None => arn.to_string(),
                Some(known) => known.get(arn).cloned().ok_or_else(|| {
                    ApiError::client("InvalidLicenseException", format!("License {arn} is not valid"))
                })?,
            };
            if record.customer_identifier.is_some() {
                return Err(ApiError::client(
                    "InvalidCustomerIdentifierException",
                    "CustomerIdentifier is not supported with LicenseArn; use CustomerAWSAccountId",
                ));
            }
            match &product {
                Some(p) if *p != owner => {
                    return Err(ApiError::client(
                        "InvalidLicenseException",
                        "All usage records of one call must belong to one product",
                    ));
                }
                _ => product = Some(owner),
            }
        }
        Ok((true, product.unwrap_or_default()))
    }

    /// Every refusal of a BatchMeterUsage call, before any record is applied: the scope, then each
    /// record's customer fields, dimension and allocations, then every record's timestamp.
    /// Returns whether the records name licenses, and the product they belong to.
    fn check_batch(
        &self,
        config: &EmulatorConfig,
        input: &wire::BatchMeterUsageInput,
        now: i64,
    ) -> Result<(bool, String), ApiError> {
        let (licensed, product) = if input.records.is_empty() {
            if let Some(code) = &input.product_code {
                self.check_product(code)?;
            }
            (false, input.product_code.clone().unwrap_or_default())
        } else {
            self.batch_scope(input)?
        };
        for record in &input.records {
            check_customer_fields(record)?;
            self.check_dimension(&record.dimension, &product)?;
            check_allocations(record.quantity, record.decimal, record.allocations.as_deref())?;
        }
        for record in &input.records {
            Self::check_window(config, Operation::BatchMeterUsage, record.timestamp, now)?;
        }
        Ok((licensed, product))
    }

    fn batch_meter_usage(
        &mut self,
        config: &EmulatorConfig,
        caller: &Caller,
        input: wire::BatchMeterUsageInput,
        now: i64,
    ) -> Result<Value, ApiError> {
        let (licensed, product) = self.check_batch(config, &input, now)?;
        let mut results = Vec::new();
        let mut unprocessed = Vec::new();
        for record in input.records {
            if self.faults.take_unprocessed() {
                unprocessed.push(record.raw);
                continue;
            }
            let customer = record.customer().unwrap_or_default();
            if !self.catalogue.subscribed(customer, now) {
                results.push(json!({"UsageRecord": record.raw, "Status": "CustomerNotSubscribed"}));
                continue;
            }
            let key = RecordKey::batch(&record, &product);
            let accepted = AcceptedRecord {
                metering_record_id: String::new(),
                operation: Operation::BatchMeterUsage.name(),
                product_code: (!licensed).then(|| product.clone()),
                license_arn: record.license_arn.clone(),
                customer_aws_account_id: record.customer_aws_account_id.clone(),
                customer_identifier: record.customer_identifier.clone(),
                caller: caller.access_key_id.clone(),
                dimension: record.dimension.clone(),
                hour: hour_of(record.timestamp),
                timestamp: record.timestamp,
                quantity: record.quantity.to_json(),
                allocations: allocations_json(record.allocations.as_deref()),
                accepted_at: now,
                exact_quantity: record.quantity,
                client_token: None,
            };
            match self.accepted.accept(key, accepted) {
                Ok(id) => results
                    .push(json!({"UsageRecord": record.raw, "MeteringRecordId": id, "Status": "Success"})),
                Err(Duplicate) => {
                    results.push(json!({"UsageRecord": record.raw, "Status": "DuplicateRecord"}))
                }
            }
        }
        Ok(json!({"Results": results, "UnprocessedRecords": unprocessed}))
    }

    /// A MeterUsage `DryRun` applies nothing and checks only that the caller may call it.
    fn dry_run(&self, caller: &Caller) -> ApiError {
        if contains(&self.catalogue.authorized_callers, &caller.access_key_id) {
            ApiError::new(
                412,
                "DryRunOperation",
                "Request would have succeeded, but the DryRun parameter was set.",
            )
        } else {
            ApiError::new(
                403,
                "UnauthorizedException",
                format!(
                    "User: {} is not authorized to perform: aws-marketplace:MeterUsage",
                    caller.access_key_id
                ),
            )
        }
    }

    fn meter_usage(
        &mut self,
        config: &EmulatorConfig,
        caller: &Caller,
        input: wire::MeterUsageInput,
        now: i64,
    ) -> Result<Value, ApiError> {
        if input.dry_run {
            return Err(self.dry_run(caller));
        }
        // A token seen before: the same parameters get the first answer, others are a conflict.
        let token = input.client_token.as_ref().map(|t| (caller.access_key_id.clone(), t.clone()));
        if let Some((parameters, answer)) = token.as_ref().and_then(|t| self.client_tokens.get(t)) {
            if *parameters == input.parameters() {
                return Ok(answer.clone());
            }
            return Err(ApiError::client(
                "IdempotencyConflictException",
                "The ClientToken is being used for multiple requests with different parameters",
            ));
        }
        let answer = self.meter_usage_applied(config, caller, &input, now)?;
        if let Some(token) = token {
            self.client_tokens.insert(token, (input.parameters(), answer.clone()));
        }
        Ok(answer)
    }

    /// MeterUsage's checks and its record, once the `ClientToken` is new.
    fn meter_usage_applied(
        &mut self,
        config: &EmulatorConfig,
        caller: &Caller,
        input: &wire::MeterUsageInput,
        now: i64,
    ) -> Result<Value, ApiError> {
        self.check_product(&input.product_code)?;
        self.check_dimension(&input.dimension, &input.product_code)?;
        check_allocations(input.quantity, input.decimal, input.allocations.as_deref())?;
        if !contains(&self.catalogue.entitled_callers, &caller.access_key_id) {
            return Err(ApiError::client(
                "CustomerNotEntitledException",
                "Exception thrown when the customer does not have a valid subscription for the product",
            ));
        }
        Self::check_window(config, Operation::MeterUsage, input.timestamp, now)?;
        let hour = hour_of(input.timestamp);
        let key = RecordKey::meter(&caller.access_key_id, &input.product_code, &input.dimension, hour);
        let record = AcceptedRecord {
            metering_record_id: String::new(),
            operation: Operation::MeterUsage.name(),
            product_code: Some(input.product_code.clone()),
            license_arn: None,
            customer_aws_account_id: None,
            customer_identifier: None,
            caller: caller.access_key_id.clone(),
            dimension: input.dimension.clone(),
            hour,
            timestamp: input.timestamp,
            quantity: input.quantity.to_json(),
            allocations: allocations_json(input.allocations.as_deref()),
            accepted_at: now,
            exact_quantity: input.quantity,
            client_token: input.client_token.clone(),
        };
        match self.accepted.accept(key, record) {
            Ok(id) => Ok(json!({"MeteringRecordId": id})),
            Err(Duplicate) => Err(ApiError::client(
                "DuplicateRequestException",
                format!(
                    "A metering record for dimension {} and hour {hour} was already recorded with a different quantity",
                    input.dimension
                ),
            )),
        }
    }

    fn register_usage(
        &mut self,
        caller: &Caller,
        input: wire::RegisterUsageInput,
        now: i64,
    ) -> Result<Value, ApiError> {
        self.check_product(&input.product_code)?;
        if !contains(&self.catalogue.register_regions, &caller.region) {
            return Err(ApiError::client(
                "InvalidRegionException",
                format!("RegisterUsage is not available in region {}", caller.region),
            ));
        }
        if !self.catalogue.platform_supported {
            return Err(ApiError::client(
                "PlatformNotSupportedException",
                "RegisterUsage must be called from Amazon ECS or Amazon EKS",
            ));
        }
        if input.public_key_version > i64::from(self.catalogue.public_key_version) {
            return Err(ApiError::client(
                "InvalidPublicKeyVersionException",
                format!("Public key version {} is invalid", input.public_key_version),
            ));
        }
        // AWS checks entitlement only on a task's first call; later calls succeed regardless.
        let registration = (caller.access_key_id.clone(), input.product_code.clone());
        if !self.registrations.contains(&registration)
            && !contains(&self.catalogue.entitled_callers, &caller.access_key_id)
        {
            return Err(ApiError::client(
                "CustomerNotEntitledException",
                "Exception thrown when the customer does not have a valid subscription for the product",
            ));
        }
        self.registrations.insert(registration);
        let signature = registration_signature(&input, &caller.access_key_id, now);
        let mut answer = json!({ "Signature": signature });
        if self.catalogue.rotated_below_version.is_some_and(|v| input.public_key_version < i64::from(v)) {
            answer["PublicKeyRotationTimestamp"] = json!(now);
        }
        Ok(answer)
    }

    fn resolve_customer(&self, input: wire::ResolveCustomerInput) -> Result<Value, ApiError> {
        let Some(token) = self.catalogue.registration_tokens.get(&input.registration_token) else {
            return Err(ApiError::client("InvalidTokenException", "Registration token is invalid"));
        };
        if token.expired {
            return Err(ApiError::client("ExpiredTokenException", "Registration token has expired"));
        }
        let mut answer = json!({
            "CustomerAWSAccountId": token.customer_aws_account_id,
            "ProductCode": token.product_code,
        });
        if let Some(arn) = &token.license_arn {
            answer["LicenseArn"] = json!(arn);
        }
        if let Some(id) = &token.customer_identifier {
            answer["CustomerIdentifier"] = json!(id);
        }
        if let Some(agreement) = &token.agreement_id {
            answer["Metadata"] = json!({ "AgreementId": agreement });
        }
        Ok(answer)
    }
}

/// A BatchMeterUsage record names its customer by exactly one of its two fields. A field sent
/// as `""` is present: the service does not say what it does with an empty `CustomerIdentifier`
/// next to `CustomerAWSAccountId` (the Rust SDK sends one unless it is stripped), so the
/// emulator refuses it rather than let a sender rely on it.
fn check_customer_fields(record: &wire::UsageRecord) -> Result<(), ApiError> {
    match (&record.customer_identifier, &record.customer_aws_account_id) {
        (Some(id), None) if id.is_empty() => Err(ApiError::client(
            "InvalidCustomerIdentifierException",
            "CustomerIdentifier must not be empty",
        )),
        (Some(_), Some(_)) => Err(ApiError::client(
            "InvalidCustomerIdentifierException",
            "A usage record can specify CustomerIdentifier or CustomerAWSAccountId, not both",
        )),
        (None, None) => Err(ApiError::client(
            "InvalidCustomerIdentifierException",
            "A usage record must specify CustomerIdentifier or CustomerAWSAccountId",
        )),
        _ => Ok(()),
    }
}

/// The service's own allocation rules (beyond shape constraints): same quantity type as the
/// record, quantities summing to the record's, unique tag sets, at most one untagged bucket, no
/// key twice within a tag set.
fn check_allocations(
    total: Quantity,
    decimal: bool,
    allocations: Option<&[Allocation]>,
) -> Result<(), ApiError> {
    let Some(allocations) = allocations else { return Ok(()) };
    let invalid = |message: String| Err(ApiError::client("InvalidUsageAllocationsException", message));
    let mut sum: u64 = 0;
    let mut seen: HashSet<Vec<(String, String)>> = HashSet::new();
    for allocation in allocations {
        if allocation.decimal != decimal {
            return invalid("Allocations must use the same type of quantity as the usage record".into());
        }
        let mut keys: Vec<&str> = allocation.tags.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(ApiError::client(
                "InvalidTagException",
                "A tag key appears twice in one usage allocation",
            ));
        }
        let mut tag_set = allocation.tags.clone();
        tag_set.sort();
        if !seen.insert(tag_set) {
            return invalid(if allocation.tags.is_empty() {
                "At most one usage allocation may have no tags".into()
            } else {
                "Each usage allocation must have a unique set of tags".into()
            });
        }
        sum = sum.saturating_add(allocation.quantity.0);
    }
    if sum != total.0 {
        return invalid(format!(
            "The sum of allocated quantities ({}) does not equal the usage quantity ({})",
            Quantity(sum).to_json(),
            total.to_json()
        ));
    }
    Ok(())
}

fn allocations_json(allocations: Option<&[Allocation]>) -> Vec<Value> {
    allocations
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let tags: BTreeMap<&str, &str> = a.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            json!({"tags": tags, "quantity": a.quantity.to_json()})
        })
        .collect()
}

/// A JWT in the shape RegisterUsage returns. The real one is signed with AWS's private key; the
/// emulator signs with HS256 and a fixed key, which is enough to check that a caller stores and
/// reports it, not to test signature verification.
fn registration_signature(input: &wire::RegisterUsageInput, caller: &str, now: i64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64.encode(
        json!({
            "productCode": input.product_code,
            "publicKeyVersion": input.public_key_version,
            "nonce": input.nonce,
            "customerIdentifier": caller,
            "timestamp": now,
        })
        .to_string(),
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(b"meterd-emulator").expect("HMAC takes a key of any length");
    mac.update(format!("{header}.{payload}").as_bytes());
    format!("{header}.{payload}.{}", b64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocation(quantity: u64, tags: &[(&str, &str)]) -> Allocation {
        Allocation {
            quantity: Quantity::from_units(quantity),
            decimal: false,
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn allocations_must_sum_and_be_unique() {
        let total = Quantity::from_units(10);
        assert!(
            check_allocations(total, false, Some(&[allocation(4, &[("t", "a")]), allocation(6, &[])]))
                .is_ok()
        );
        let err = check_allocations(total, false, Some(&[allocation(4, &[("t", "a")])])).unwrap_err();
        assert_eq!(err.kind, "InvalidUsageAllocationsException");
        assert!(err.message.contains("(4) does not equal the usage quantity (10)"));
        let err = check_allocations(
            total,
            false,
            Some(&[allocation(5, &[("t", "a"), ("u", "b")]), allocation(5, &[("u", "b"), ("t", "a")])]),
        )
        .unwrap_err();
        assert_eq!(err.message, "Each usage allocation must have a unique set of tags");
        let err =
            check_allocations(total, false, Some(&[allocation(5, &[]), allocation(5, &[])])).unwrap_err();
        assert_eq!(err.message, "At most one usage allocation may have no tags");
        let err =
            check_allocations(total, false, Some(&[allocation(10, &[("t", "a"), ("t", "b")])])).unwrap_err();
        assert_eq!(err.kind, "InvalidTagException");
    }
}
