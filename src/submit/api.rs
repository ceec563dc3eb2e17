//! The Metering Service as the submitter sees it: a [`MeteringApi`] trait, its implementation on
//! the AWS SDK, and [`classify`], the one place that decides what a failed call means.
//!
//! meterd turns the SDK's own retries off and retries in its submit loop instead, so that every
//! request passes its rate limiter and every attempt is visible in its metrics.

use std::future::Future;
use std::time::Duration;

use aws_sdk_marketplacemetering as metering;
use metering::config::http::HttpResponse;
use metering::config::interceptors::BeforeTransmitInterceptorContextMut;
use metering::config::{ConfigBag, Intercept, RuntimeComponents};
use metering::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use metering::types::{Tag, UsageAllocation, UsageRecord, UsageRecordResult, UsageRecordResultStatus};

use crate::aggregate::SealedRecord;
use crate::model::{Customer, DeadReason, RecordKey, Scope};

/// How one record of a BatchMeterUsage call came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Billed; the id is the receipt.
    Accepted {
        metering_record_id: String,
    },
    CustomerNotSubscribed,
    /// Another quantity was billed for this key before.
    DuplicateRecord,
    /// In `UnprocessedRecords`, or absent from the answer: send it again unchanged.
    Unprocessed,
}

/// Why a call failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The service answered with an error.
    Service { status: u16, code: String },
    /// No answer in time.
    Timeout,
    /// The connection failed or closed before a whole answer arrived.
    Connection,
    /// The request could not be built or signed (e.g. no credentials).
    Local,
}

/// A failed call: what kind of failure, a short description fit to store and show, and the SDK's
/// full description for the log.
///
/// It displays as `<summary>: <message> [<detail>]`, the form `telemetry::health` expects of a
/// pause reason: `/readyz` shows only the summary (the service's error code), the ERROR log and
/// `meterd status` all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub kind: FailureKind,
    /// Short and safe to store: the service's own message (its code is in `kind`), or what failed
    /// on the way. A dead letter keeps `<code>: <message>`.
    pub message: String,
    /// The SDK's full description: request id, headers and the raw answer. For the log and the
    /// admin socket only; empty when meterd made the failure up itself.
    pub detail: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.summary(), self.message)?;
        if !self.detail.is_empty() {
            write!(f, " [{}]", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

impl ApiFailure {
    /// The service's error name, if the service answered.
    pub fn code(&self) -> Option<&str> {
        match &self.kind {
            FailureKind::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A few words that say what failed and reveal nothing of the account: the service's error
    /// code, or the kind of failure.
    pub fn summary(&self) -> &str {
        match &self.kind {
            FailureKind::Service { code, .. } => code,
            FailureKind::Timeout => "timeout",
            FailureKind::Connection => "connection failed",
            FailureKind::Local => "request not sent",
        }
    }
}

/// What the submitter does with the records of a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: resend the same records unchanged after a backoff.
    Retry,
    /// One record spoils the batch: split it until the bad records stand alone; one refused alone
    /// is an `invalid` dead letter, unless every record of the batch was refused alone with the
    /// same error, which is a configuration problem (a pause).
    Isolate,
    /// The record can never be accepted: a dead letter for this reason (a batch is split first,
    /// so that only the refused record goes).
    DeadLetter(DeadReason),
    /// Not billable yet, perhaps later (a subscription that has not started): keep the record,
    /// ask again every `submit.subscription_recheck`, and make it a dead letter for this reason
    /// if its deadline comes first.
    Recheck(DeadReason),
    /// An error no model names: back off this batch only (split once, to see whether one record
    /// is the cause) while the others go on.
    BackOff,
    /// The account, credentials or configuration are refused, for every record alike: stop
    /// submitting, keep everything, alert.
    Pause,
}

/// Decides what a failed call means for its records: the one place that reads service errors.
pub fn classify(failure: &ApiFailure) -> Disposition {
    let (status, code) = match &failure.kind {
        FailureKind::Timeout | FailureKind::Connection => return Disposition::Retry,
        // No credentials, or a request that cannot be signed: nothing would go anywhere.
        FailureKind::Local => return Disposition::Pause,
        FailureKind::Service { status, code } => (*status, code.as_str()),
    };
    match code {
        "ThrottlingException"
        | "InternalServiceErrorException"
        | "ServiceUnavailableException"
        | "RequestTimeoutException" => Disposition::Retry,
        "TimestampOutOfBoundsException"
        | "InvalidUsageDimensionException"
        | "InvalidTagException"
        | "InvalidUsageAllocationsException"
        | "InvalidCustomerIdentifierException"
        | "InvalidLicenseException"
        | "ValidationException"
        | "SerializationException" => Disposition::Isolate,
        // MeterUsage: this caller already reported another quantity for this dimension and hour.
        "DuplicateRequestException" => Disposition::DeadLetter(DeadReason::DuplicateRecord),
        // MeterUsage's CustomerNotSubscribed: the buyer's subscription may start a little later.
        "CustomerNotEntitledException" => Disposition::Recheck(DeadReason::CustomerNotSubscribed),
        // About the account, the credentials or meterd's configuration, never one record's content.
        "InvalidProductCodeException"
        | "DisabledApiException"
        | "InvalidEndpointRegionException"
        | "AccessDeniedException"
        | "UnauthorizedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "MissingAuthenticationTokenException"
        | "InvalidClientTokenId"
        | "ExpiredTokenException" => Disposition::Pause,
        _ if status >= 500 || status == 429 => Disposition::Retry,
        // 401 and 403 say who is calling is refused, whatever the request holds.
        _ if status == 401 || status == 403 => Disposition::Pause,
        // Any other client error: unknown, so it may be about one record; it must not hold back
        // the others.
        _ => Disposition::BackOff,
    }
}

/// What RegisterUsage answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    /// The JWT the product can verify with AWS Marketplace's public key.
    pub signature: String,
    /// Set when the named public key version is being rotated out: epoch seconds.
    pub public_key_rotation_timestamp: Option<i64>,
}

/// The calls the daemon makes.
pub trait MeteringApi: Send + Sync {
    /// Sends up to 25 records of one product in one BatchMeterUsage call. `product_code` is `None`
    /// when the records name license ARNs. The outcomes are in the order of `records`.
    fn batch_meter_usage(
        &self,
        product_code: Option<&str>,
        records: &[SealedRecord],
    ) -> impl Future<Output = Result<Vec<RecordOutcome>, ApiFailure>> + Send;

    /// Sends one record of the caller's own usage with MeterUsage; the answer is the receipt.
    fn meter_usage(
        &self,
        product_code: &str,
        record: &SealedRecord,
    ) -> impl Future<Output = Result<String, ApiFailure>> + Send;

    /// RegisterUsage: checks the caller's entitlement to a paid container product.
    fn register_usage(
        &self,
        product_code: &str,
        public_key_version: i32,
        nonce: Option<&str>,
    ) -> impl Future<Output = Result<Registration, ApiFailure>> + Send;
}

/// [`MeteringApi`] on `aws-sdk-marketplacemetering`.
#[derive(Clone, Debug)]
pub struct SdkMeteringApi {
    client: metering::Client,
}

impl SdkMeteringApi {
    /// Wraps `client`, adding [`StripEmptyFields`] to its interceptors.
    pub fn new(client: metering::Client) -> Self {
        let config = client.config().to_builder().interceptor(StripEmptyFields).build();
        Self { client: metering::Client::from_conf(config) }
    }

    /// A client with aws-config's default credential chain (environment, profile, EC2 IMDSv2, ECS
    /// task role, EKS IRSA), SDK retries off and `attempt_timeout` per request.
    pub async fn from_default_chain(
        region: &str,
        endpoint_url: Option<&str>,
        attempt_timeout: Duration,
    ) -> Self {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .load()
            .await;
        let mut builder = one_attempt(metering::config::Builder::from(&shared), attempt_timeout);
        if let Some(url) = endpoint_url {
            builder = builder.endpoint_url(url);
        }
        Self::new(metering::Client::from_conf(builder.build()))
    }
}

impl SdkMeteringApi {
    /// A client with fixed credentials (the sandbox's emulator keys), SDK retries off.
    pub fn with_static_credentials(
        region: &str,
        endpoint_url: &str,
        access_key_id: &str,
        secret_access_key: &str,
        attempt_timeout: Duration,
    ) -> Self {
        let credentials =
            metering::config::Credentials::new(access_key_id, secret_access_key, None, None, "meterd-static");
        let builder = metering::Config::builder()
            .behavior_version(metering::config::BehaviorVersion::latest())
            .region(metering::config::Region::new(region.to_string()))
            .credentials_provider(credentials)
            .endpoint_url(endpoint_url);
        Self::new(metering::Client::from_conf(one_attempt(builder, attempt_timeout).build()))
    }
}

/// What ResolveCustomer returns for a registration token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResolvedCustomer {
    pub customer_aws_account_id: Option<String>,
    pub customer_identifier: Option<String>,
    pub license_arn: Option<String>,
    pub product_code: Option<String>,
}

impl SdkMeteringApi {
    /// ResolveCustomer: the SaaS sign-up token a buyer's browser brought, to the customer it names.
    pub async fn resolve_customer(&self, token: &str) -> Result<ResolvedCustomer, ApiFailure> {
        let out = self.client.resolve_customer().registration_token(token).send().await.map_err(failure)?;
        Ok(ResolvedCustomer {
            customer_aws_account_id: out.customer_aws_account_id().map(str::to_string),
            customer_identifier: out.customer_identifier().map(str::to_string),
            license_arn: out.license_arn().map(str::to_string),
            product_code: out.product_code().map(str::to_string),
        })
    }
}

impl SdkMeteringApi {
    /// A MeterUsage `DryRun` for `dimension`: whether these credentials may call MeterUsage. The
    /// service answers `DryRunOperation` when they may, so that error is the success here.
    pub async fn meter_usage_dry_run(
        &self,
        product_code: &str,
        dimension: &str,
        timestamp: i64,
    ) -> Result<(), ApiFailure> {
        let answer = self
            .client
            .meter_usage()
            .product_code(product_code)
            .usage_dimension(dimension)
            .usage_quantity(0)
            .timestamp(metering::primitives::DateTime::from_secs(timestamp))
            .dry_run(true)
            .send()
            .await;
        match answer.map_err(failure) {
            Err(failure) if failure.code() == Some("DryRunOperation") => Ok(()),
            Err(failure) => Err(failure),
            Ok(_) => Err(local("the service metered a DryRun request instead of refusing it".into())),
        }
    }
}

/// Removes every member whose value is `""` from a request body before it is signed.
///
/// The Rust SDK serialises `UsageRecord.CustomerIdentifier` as `""` on every record, also next to
/// `CustomerAWSAccountId`, which BatchMeterUsage must not get together with it (and new SaaS
/// products must not send at all). The service does not document what it makes of the empty
/// string; a body without it is unambiguous. No member of the model means anything as `""`
/// (meterd leaves optional fields unset rather than empty), so every empty string goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct StripEmptyFields;

impl Intercept for StripEmptyFields {
    fn name(&self) -> &'static str {
        "StripEmptyFields"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _config: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let request = context.request_mut();
        let Some(stripped) = request.body().bytes().and_then(strip_empty_strings) else {
            return Ok(());
        };
        request.headers_mut().insert("content-length", stripped.len().to_string());
        *request.body_mut() = stripped.into();
        Ok(())
    }
}

/// `body` without its `""` members (at any depth), if it is JSON that had any.
pub fn strip_empty_strings(body: &[u8]) -> Option<Vec<u8>> {
    // Every member is visited (no short cut): each may hold empty strings of its own.
    fn strip(value: &mut serde_json::Value) -> bool {
        let mut changed = false;
        match value {
            serde_json::Value::Object(members) => {
                let before = members.len();
                members.retain(|_, v| v.as_str() != Some(""));
                changed = members.len() != before;
                for member in members.values_mut() {
                    changed |= strip(member);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    changed |= strip(item);
                }
            }
            _ => {}
        }
        changed
    }
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    if !strip(&mut value) {
        return None;
    }
    serde_json::to_vec(&value).ok()
}

/// SDK retries off (the submit loop retries, through its rate limiter) and a per-attempt timeout.
fn one_attempt(builder: metering::config::Builder, attempt_timeout: Duration) -> metering::config::Builder {
    builder.retry_config(metering::config::retry::RetryConfig::disabled()).timeout_config(
        metering::config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(attempt_timeout)
            .build(),
    )
}

/// Reads an SDK error: its kind, the service's own message (or the error's chain of causes) to
/// store and show, and `DisplayErrorContext`'s dump, with the raw answer, as the detail.
fn failure<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: SdkError<E, HttpResponse>,
) -> ApiFailure {
    let kind = match &err {
        SdkError::TimeoutError(_) => FailureKind::Timeout,
        SdkError::DispatchFailure(dispatch) if dispatch.is_timeout() => FailureKind::Timeout,
        SdkError::DispatchFailure(dispatch) if dispatch.is_user() => FailureKind::Local,
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => FailureKind::Connection,
        SdkError::ServiceError(service) => FailureKind::Service {
            status: service.raw().status().as_u16(),
            code: err.code().unwrap_or("Unknown").to_string(),
        },
        _ => FailureKind::Local,
    };
    let message = match (&kind, err.message()) {
        (FailureKind::Service { .. }, Some(message)) if !message.is_empty() => message.to_string(),
        (FailureKind::Service { status, .. }, _) => format!("HTTP {status}, without a message"),
        _ => causes(&err),
    };
    ApiFailure { kind, message, detail: DisplayErrorContext(&err).to_string() }
}

/// An error and its sources by their `Display`, without the `Debug` dump (and so without the raw
/// answer) that `DisplayErrorContext` appends.
fn causes(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(source) = next {
        out.push_str(": ");
        out.push_str(&source.to_string());
        next = source.source();
    }
    out
}

/// The MeterUsage `ClientToken` of the record with `key`: 64 hex digits of SHA-256 over its
/// postcard-encoded key. The same for every attempt, on every start, so that a retry after a
/// lost answer can only ever repeat the first call (the service answers a token it saw with the
/// same parameters with its first answer).
pub fn client_token(key: &RecordKey) -> String {
    use sha2::{Digest, Sha256};
    let encoded = postcard::to_allocvec(key).expect("a record key always encodes");
    let mut hash = Sha256::new();
    hash.update(b"meterd MeterUsage ClientToken v1\0");
    hash.update(&encoded);
    format!("{:x}", hash.finalize())
}

fn local(message: String) -> ApiFailure {
    ApiFailure { kind: FailureKind::Local, message, detail: String::new() }
}

/// The wire form of a sealed record: `Timestamp` is the hour start, allocations only when some
/// usage was tagged (an untagged-only record is sent without them).
fn usage_record(record: &SealedRecord) -> Result<UsageRecord, ApiFailure> {
    let key = &record.key;
    let mut builder = UsageRecord::builder()
        .timestamp(metering::primitives::DateTime::from_secs(key.hour))
        .dimension(&key.dimension)
        .quantity(record.quantity as i32);
    builder = match &key.customer {
        Customer::AwsAccountId(id) => builder.customer_aws_account_id(id),
        Customer::Identifier(id) => builder.customer_identifier(id),
        Customer::Caller => {
            return Err(local("a MeterUsage record cannot go in a BatchMeterUsage call".into()));
        }
    };
    if let Scope::LicenseArn(arn) = &key.scope {
        builder = builder.license_arn(arn);
    }
    builder.set_usage_allocations(usage_allocations(record)?).build().map_err(|e| local(e.to_string()))
}

/// The allocations of a record that has tagged usage, for either call.
fn usage_allocations(record: &SealedRecord) -> Result<Option<Vec<UsageAllocation>>, ApiFailure> {
    if !record.has_tags() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(record.allocations.len());
    for allocation in &record.allocations {
        let mut alloc = UsageAllocation::builder().allocated_usage_quantity(allocation.quantity as i32);
        for (k, v) in &allocation.tags {
            alloc = alloc.tags(Tag::builder().key(k).value(v).build().map_err(|e| local(e.to_string()))?);
        }
        out.push(alloc.build().map_err(|e| local(e.to_string()))?);
    }
    Ok(Some(out))
}

/// Finds which of `records` an echoed usage record is (the service does not promise order).
fn position(records: &[SealedRecord], echoed: &UsageRecord) -> Option<usize> {
    let customer = match (echoed.customer_aws_account_id(), echoed.customer_identifier()) {
        (Some(id), _) => Customer::AwsAccountId(id.to_string()),
        (None, id) if !id.is_empty() => Customer::Identifier(id.to_string()),
        _ => return None,
    };
    let hour = echoed.timestamp().secs().div_euclid(3600) * 3600;
    records.iter().position(|r| {
        r.key.customer == customer
            && r.key.dimension == echoed.dimension()
            && r.key.hour == hour
            && match &r.key.scope {
                Scope::LicenseArn(arn) => echoed.license_arn() == Some(arn.as_str()),
                Scope::ProductCode(_) => echoed.license_arn().is_none(),
            }
    })
}

fn outcome(result: &UsageRecordResult) -> RecordOutcome {
    match (result.status(), result.metering_record_id()) {
        (Some(UsageRecordResultStatus::Success), Some(id)) => {
            RecordOutcome::Accepted { metering_record_id: id.to_string() }
        }
        (Some(UsageRecordResultStatus::CustomerNotSubscribed), _) => RecordOutcome::CustomerNotSubscribed,
        (Some(UsageRecordResultStatus::DuplicateRecord), _) => RecordOutcome::DuplicateRecord,
        // A status this version does not know, or a success without a receipt: ask again.
        _ => RecordOutcome::Unprocessed,
    }
}

impl MeteringApi for SdkMeteringApi {
    async fn batch_meter_usage(
        &self,
        product_code: Option<&str>,
        records: &[SealedRecord],
    ) -> Result<Vec<RecordOutcome>, ApiFailure> {
        let usage = records.iter().map(usage_record).collect::<Result<Vec<_>, _>>()?;
        let answer = self
            .client
            .batch_meter_usage()
            .set_product_code(product_code.map(str::to_string))
            .set_usage_records(Some(usage))
            .send()
            .await
            .map_err(failure)?;
        let mut outcomes = vec![RecordOutcome::Unprocessed; records.len()];
        for result in answer.results() {
            if let Some(at) = result.usage_record().and_then(|echoed| position(records, echoed)) {
                outcomes[at] = outcome(result);
            }
        }
        Ok(outcomes)
    }

    async fn meter_usage(&self, product_code: &str, record: &SealedRecord) -> Result<String, ApiFailure> {
        let answer = self
            .client
            .meter_usage()
            .product_code(product_code)
            .usage_dimension(&record.key.dimension)
            .usage_quantity(record.quantity as i32)
            .timestamp(metering::primitives::DateTime::from_secs(record.key.hour))
            .set_usage_allocations(usage_allocations(record)?)
            .client_token(client_token(&record.key))
            .send()
            .await
            .map_err(failure)?;
        match answer.metering_record_id() {
            Some(id) => Ok(id.to_string()),
            None => Err(ApiFailure {
                kind: FailureKind::Connection,
                message: "MeterUsage answered without a MeteringRecordId".into(),
                detail: String::new(),
            }),
        }
    }

    async fn register_usage(
        &self,
        product_code: &str,
        public_key_version: i32,
        nonce: Option<&str>,
    ) -> Result<Registration, ApiFailure> {
        let answer = self
            .client
            .register_usage()
            .product_code(product_code)
            .public_key_version(public_key_version)
            .set_nonce(nonce.map(str::to_string))
            .send()
            .await
            .map_err(failure)?;
        Ok(Registration {
            signature: answer.signature().unwrap_or_default().to_string(),
            public_key_rotation_timestamp: answer.public_key_rotation_timestamp().map(|t| t.secs()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: u16, code: &str) -> ApiFailure {
        ApiFailure {
            kind: FailureKind::Service { status, code: code.into() },
            message: String::new(),
            detail: String::new(),
        }
    }

    #[test]
    fn empty_strings_are_stripped_at_any_depth() {
        let body = br#"{"ProductCode":"p","UsageRecords":[{"CustomerIdentifier":"","CustomerAWSAccountId":"1","Dimension":"d"}]}"#;
        let stripped: serde_json::Value =
            serde_json::from_slice(&strip_empty_strings(body).unwrap()).unwrap();
        assert_eq!(
            stripped,
            serde_json::json!({"ProductCode": "p", "UsageRecords": [{"CustomerAWSAccountId": "1", "Dimension": "d"}]})
        );
        assert_eq!(
            strip_empty_strings(br#"{"ProductCode":"p","Nested":[{"a":1}]}"#),
            None,
            "nothing to strip"
        );
        assert_eq!(strip_empty_strings(b""), None);
    }

    #[test]
    fn classification_follows_the_service_rules() {
        use Disposition::*;
        let cases = [
            (service(400, "ThrottlingException"), Retry),
            (service(500, "InternalServiceErrorException"), Retry),
            (service(503, "SomethingNew"), Retry),
            (service(429, "TooManyRequests"), Retry),
            (service(400, "TimestampOutOfBoundsException"), Isolate),
            (service(400, "InvalidUsageDimensionException"), Isolate),
            (service(400, "InvalidTagException"), Isolate),
            (service(400, "InvalidUsageAllocationsException"), Isolate),
            (service(400, "InvalidCustomerIdentifierException"), Isolate),
            (service(400, "InvalidLicenseException"), Isolate),
            (service(413, "ValidationException"), Isolate),
            (service(400, "DuplicateRequestException"), DeadLetter(DeadReason::DuplicateRecord)),
            (service(400, "CustomerNotEntitledException"), Recheck(DeadReason::CustomerNotSubscribed)),
            (service(400, "InvalidProductCodeException"), Pause),
            (service(400, "DisabledApiException"), Pause),
            (service(400, "InvalidEndpointRegionException"), Pause),
            (service(400, "AccessDeniedException"), Pause),
            (service(403, "InvalidSignatureException"), Pause),
            (service(403, "SomethingNew"), Pause),
            (service(400, "SomethingNew"), BackOff),
            (service(413, "Unknown"), BackOff),
            (ApiFailure { kind: FailureKind::Timeout, ..local(String::new()) }, Retry),
            (ApiFailure { kind: FailureKind::Connection, ..local(String::new()) }, Retry),
            (local(String::new()), Pause),
        ];
        for (failure, expected) in cases {
            assert_eq!(classify(&failure), expected, "{:?}", failure.kind);
        }
    }

    #[test]
    fn a_failure_shows_its_code_and_message_and_logs_the_detail() {
        let failure = ApiFailure {
            kind: FailureKind::Service { status: 400, code: "AccessDeniedException".into() },
            message: "User: arn:aws:sts::123456789012:assumed-role/r/i is not authorized".into(),
            detail: "service error: … x-amzn-requestid: 1f2e …".into(),
        };
        assert_eq!(failure.summary(), "AccessDeniedException");
        assert_eq!(
            failure.to_string(),
            "AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/r/i is not authorized \
             [service error: … x-amzn-requestid: 1f2e …]"
        );
        assert_eq!(local("no region".into()).to_string(), "request not sent: no region");
    }
}
