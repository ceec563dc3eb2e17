//! RegisterUsage at start (`aws.register_usage`): a paid container product must not run until AWS
//! Marketplace confirms the buyer's entitlement. Transient failures are retried with backoff;
//! a refusal ends meterd with an exit code of its own, so the orchestrator never sees it ready.

use std::time::Duration;

use super::api::{ApiFailure, Disposition, MeteringApi, Registration, classify};
use crate::context::Context;
use crate::telemetry::health::RegistrationStatus;

/// What RegisterUsage needs, from `[aws]`.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    pub product_code: String,
    pub public_key_version: i32,
    pub nonce: Option<String>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// RegisterUsage refused the caller: meterd must not become ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RegisterUsage refused ({code}): {advice}. The service said: {message}")]
pub struct RegistrationRefused {
    pub code: String,
    pub message: String,
    pub advice: &'static str,
    /// The process's exit code for this refusal.
    pub exit_code: u8,
}

/// Exit codes of a refused RegisterUsage, one per cause an operator acts on differently.
pub const EXIT_NOT_ENTITLED: u8 = 10;
pub const EXIT_PLATFORM_NOT_SUPPORTED: u8 = 11;
pub const EXIT_INVALID_REGION: u8 = 12;
pub const EXIT_INVALID_PRODUCT: u8 = 13;
pub const EXIT_REGISTRATION_FAILED: u8 = 14;

impl RegistrationRefused {
    fn from_failure(failure: &ApiFailure) -> Self {
        let code = failure.code().unwrap_or("no answer from the service");
        let (advice, exit_code) = match code {
            "CustomerNotEntitledException" => (
                "this AWS account is not subscribed to the product; subscribe in AWS Marketplace before running it",
                EXIT_NOT_ENTITLED,
            ),
            "PlatformNotSupportedException" => (
                "RegisterUsage works only on Amazon ECS, Amazon EKS and AWS Fargate; turn aws.register_usage off elsewhere",
                EXIT_PLATFORM_NOT_SUPPORTED,
            ),
            "InvalidRegionException" => (
                "RegisterUsage is not offered in aws.region; set it to the region the task or pod runs in",
                EXIT_INVALID_REGION,
            ),
            "InvalidProductCodeException" | "InvalidPublicKeyVersionException" => {
                ("aws.product_code or aws.public_key_version is wrong for this product", EXIT_INVALID_PRODUCT)
            }
            _ => (
                "check the task role or service account's aws-marketplace:RegisterUsage permission and the credentials",
                EXIT_REGISTRATION_FAILED,
            ),
        };
        Self { code: code.to_string(), message: failure.message.clone(), advice, exit_code }
    }
}

/// Calls RegisterUsage until it succeeds or is refused; transient failures wait with full jitter.
pub async fn register<A: MeteringApi>(
    api: &A,
    request: &RegisterRequest,
    ctx: &Context,
) -> Result<Registration, RegistrationRefused> {
    let (health, metrics) = (&ctx.health, &ctx.metrics);
    let mut status = RegistrationStatus::pending(request.public_key_version);
    health.set_registration(status.clone());
    let mut attempt = 0u32;
    loop {
        let started = std::time::Instant::now();
        let result = api
            .register_usage(&request.product_code, request.public_key_version, request.nonce.as_deref())
            .await;
        metrics.api_duration.with_label_values(&["RegisterUsage"]).observe(started.elapsed().as_secs_f64());
        let failure = match result {
            Ok(registration) => {
                metrics.api_requests.with_label_values(&["RegisterUsage", "success"]).inc();
                status.signature = Some(registration.signature.clone());
                status.public_key_rotation_timestamp = registration.public_key_rotation_timestamp;
                status.registered_at = Some(ctx.clock.now());
                status.last_error = None;
                health.set_registration(status);
                tracing::info!(
                    product_code = %request.product_code,
                    public_key_version = request.public_key_version,
                    rotation = ?registration.public_key_rotation_timestamp,
                    "usage registered with AWS Marketplace"
                );
                return Ok(registration);
            }
            Err(failure) => failure,
        };
        metrics
            .api_requests
            .with_label_values(&["RegisterUsage", super::send::outcome_label(&failure)])
            .inc();
        if classify(&failure) != Disposition::Retry {
            let refused = RegistrationRefused::from_failure(&failure);
            tracing::error!(code = %refused.code, exit_code = refused.exit_code, "{refused}");
            return Err(refused);
        }
        attempt += 1;
        let delay = crate::backoff::delay(request.backoff_base, request.backoff_max, attempt);
        tracing::warn!(attempt, error = %failure, delay_ms = delay.as_millis() as u64, "RegisterUsage failed; retrying");
        status.last_error = Some(failure.to_string());
        health.set_registration(status.clone());
        tokio::time::sleep(delay).await;
    }
}
