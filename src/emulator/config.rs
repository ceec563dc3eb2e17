//! The emulator's settings: what the service accepts (the catalogue), its windows and quota, and
//! how strictly it checks signatures. Read from a TOML file; the catalogue can also be replaced at
//! runtime through `PUT /_emulator/catalogue`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::{Deserialize, Serialize};

/// Everything `meterd emulator --config FILE` reads. Every field has a default, so an empty file
/// (or none) gives an emulator that accepts any product, dimension and customer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmulatorConfig {
    /// The region requests must be signed for (`<date>/<region>/aws-marketplace/aws4_request`).
    pub region: String,
    /// How far in the past a BatchMeterUsage timestamp may lie (AWS: 24 hours).
    #[serde(with = "crate::duration::serde")]
    pub batch_meter_usage_window: Duration,
    /// How far in the past a MeterUsage timestamp may lie (AWS: 6 hours).
    #[serde(with = "crate::duration::serde")]
    pub meter_usage_window: Duration,
    /// One window for both operations, overriding the two above (tests that move clocks).
    #[serde(with = "crate::duration::serde_opt", skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// How far in the future a usage timestamp may lie before it is refused (clock skew).
    #[serde(with = "crate::duration::serde")]
    pub future_tolerance: Duration,
    /// Requests per second per access key before `ThrottlingException`.
    pub requests_per_second: f64,
    /// Requests an idle access key may send at once (token bucket size).
    pub burst: u32,
    /// Largest request body accepted, in bytes (AWS: under 1 MiB); larger is HTTP 413.
    pub max_body_bytes: usize,
    /// Keys whose signatures are verified; when empty only the credential scope is checked.
    pub credentials: Vec<Credential>,
    /// What the service knows about products, customers and callers.
    pub catalogue: Catalogue,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            batch_meter_usage_window: Duration::from_secs(24 * 3600),
            meter_usage_window: Duration::from_secs(6 * 3600),
            window: None,
            future_tolerance: Duration::from_secs(5 * 60),
            requests_per_second: 10.0,
            burst: 10,
            max_body_bytes: 1024 * 1024 - 1,
            credentials: Vec::new(),
            catalogue: Catalogue::default(),
        }
    }
}

/// An access key whose SigV4 signatures the emulator verifies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// The service's view of the seller's listings. In every `Option<Vec<_>>` field, absent (or
/// `null` in JSON) means "accept any"; a list, even an empty one, accepts only what it names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Catalogue {
    /// Known product codes; anything else is `InvalidProductCodeException`.
    pub product_codes: Option<Vec<String>>,
    /// Known license ARNs and the product each belongs to; anything else is
    /// `InvalidLicenseException`. Absent: any well-formed ARN, each its own product.
    pub licenses: Option<BTreeMap<String, String>>,
    /// Known dimensions (across products); anything else is `InvalidUsageDimensionException`.
    pub dimensions: Option<Vec<String>>,
    /// Customers (AWS account ids or legacy customer identifiers) with an active subscription;
    /// records for anyone else get `CustomerNotSubscribed`.
    pub subscribed_customers: Option<Vec<String>>,
    /// Subscriptions over time, per customer: the instants (epoch seconds, the emulator's clock)
    /// its subscription starts or ends. A record sent at an instant is taken when the customer's
    /// last change at or before it is a start; before its first change, `subscribed_customers`
    /// decides. `POST /_emulator/subscriptions` adds one.
    pub subscription_changes: BTreeMap<String, Vec<SubscriptionChange>>,
    /// Access key ids allowed to call the API at all (IAM); others get `AccessDeniedException`,
    /// or `UnauthorizedException` for a MeterUsage `DryRun`.
    pub authorized_callers: Option<Vec<String>>,
    /// Access key ids of buyers entitled to the product (MeterUsage and RegisterUsage); others
    /// get `CustomerNotEntitledException`.
    pub entitled_callers: Option<Vec<String>>,
    /// Operations answered with `DisabledApiException`, e.g. `["BatchMeterUsage"]`.
    pub disabled_operations: Vec<String>,
    /// The newest public key version RegisterUsage accepts; higher is `InvalidPublicKeyVersionException`.
    pub public_key_version: i32,
    /// Public key versions below this one are answered with a `PublicKeyRotationTimestamp`.
    pub rotated_below_version: Option<i32>,
    /// Whether RegisterUsage runs on this platform; `false` gives `PlatformNotSupportedException`.
    pub platform_supported: bool,
    /// Regions RegisterUsage is offered in; a request signed for another gets `InvalidRegionException`.
    pub register_regions: Option<Vec<String>>,
    /// Registration tokens ResolveCustomer knows.
    pub registration_tokens: BTreeMap<String, RegistrationToken>,
}

impl Default for Catalogue {
    /// Accepts any product, license, dimension, customer and caller.
    fn default() -> Self {
        Self {
            product_codes: None,
            licenses: None,
            dimensions: None,
            subscribed_customers: None,
            subscription_changes: BTreeMap::new(),
            authorized_callers: None,
            entitled_callers: None,
            disabled_operations: Vec::new(),
            public_key_version: 1,
            rotated_below_version: None,
            platform_supported: true,
            register_regions: None,
            registration_tokens: BTreeMap::new(),
        }
    }
}

/// A customer's subscription starting (`subscribed: true`) or ending at `at`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionChange {
    pub at: i64,
    pub subscribed: bool,
}

impl Catalogue {
    /// Whether `customer` is subscribed at `now`: its last change at or before `now`, else
    /// `subscribed_customers`.
    pub fn subscribed(&self, customer: &str, now: i64) -> bool {
        let last = self.subscription_changes.get(customer).and_then(|changes| {
            changes.iter().filter(|c| c.at <= now).max_by_key(|c| c.at).map(|c| c.subscribed)
        });
        last.unwrap_or_else(|| {
            self.subscribed_customers.as_ref().is_none_or(|list| list.iter().any(|c| c == customer))
        })
    }
}

/// What ResolveCustomer answers for one registration token.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationToken {
    pub customer_aws_account_id: String,
    pub product_code: String,
    pub license_arn: Option<String>,
    pub customer_identifier: Option<String>,
    pub agreement_id: Option<String>,
    /// An expired token gets `ExpiredTokenException`.
    pub expired: bool,
}

/// Why the emulator's configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read emulator config {path}: {source}")]
    Read { path: String, source: Box<figment::Error> },
    #[error("invalid emulator config: {0}")]
    Invalid(String),
}

impl EmulatorConfig {
    /// How far back `operation`'s timestamps may lie (`BatchMeterUsage` or `MeterUsage`).
    pub fn window(&self, operation: &str) -> Duration {
        self.window.unwrap_or(match operation {
            "MeterUsage" => self.meter_usage_window,
            _ => self.batch_meter_usage_window,
        })
    }

    /// Reads a TOML file over the defaults and checks the values.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(figment::providers::Serialized::defaults(Self::default()));
        if let Some(path) = path {
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Self = figment.extract().map_err(|source| ConfigError::Read {
            path: path.map(|p| p.display().to_string()).unwrap_or_default(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.region.is_empty() {
            problems.push("region must not be empty".to_string());
        }
        if !(self.requests_per_second > 0.0 && self.requests_per_second.is_finite()) {
            problems.push(format!(
                "requests_per_second must be a positive number, got {}",
                self.requests_per_second
            ));
        }
        if self.burst == 0 {
            problems.push("burst must be at least 1".to_string());
        }
        if self.catalogue.public_key_version < 1 {
            problems.push("catalogue.public_key_version must be at least 1".to_string());
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems.join("; "))) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_ends_and_starts_again_at_given_instants() {
        let mut catalogue =
            Catalogue { subscribed_customers: Some(vec!["a".into()]), ..Catalogue::default() };
        let change = |at, subscribed| SubscriptionChange { at, subscribed };
        catalogue.subscription_changes.insert("a".into(), vec![change(100, false), change(200, true)]);
        catalogue.subscription_changes.insert("b".into(), vec![change(50, true)]);
        assert!(catalogue.subscribed("a", 99));
        assert!(!catalogue.subscribed("a", 100) && !catalogue.subscribed("a", 199));
        assert!(catalogue.subscribed("a", 200));
        assert!(!catalogue.subscribed("b", 49), "before its first change, subscribed_customers decides");
        assert!(catalogue.subscribed("b", 50));
        assert!(!catalogue.subscribed("c", 1000));
    }
}
