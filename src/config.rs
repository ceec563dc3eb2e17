//! meterd's settings: built-in defaults ← a TOML file ← `METERD_<SECTION>__<KEY>` environment
//! variables (figment). Every key is read on its own, so that one run reports every invalid value,
//! unknown key and inconsistent combination at once; `main` turns that list into exit code 64.
//!
//! `config/meterd.toml` documents every key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Provider};
use serde::{Deserialize, Serialize};

use crate::model;

/// What happens to an event for an hour that is already sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateEvents {
    /// Count it into the hour that is open now.
    CarryForward,
    /// Refuse it with `out_of_window`.
    Reject,
}

/// Which API meterd reports usage with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// SaaS: BatchMeterUsage, records per customer.
    Batch,
    /// AMI and container products: MeterUsage with the buyer's instance, task or pod credentials;
    /// events name no customer.
    MeterUsage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AwsConfig {
    /// Product code sent with records of events that name no license ARN; empty = none.
    pub product_code: String,
    pub region: String,
    /// Endpoint override (the sandbox, a VPC endpoint); empty = the SDK's default endpoint.
    pub endpoint_url: String,
    /// Dimensions events may name; empty = any.
    pub dimensions: Vec<String>,
    pub mode: Mode,
    /// Call RegisterUsage at start (paid container products); meterd is not ready until it succeeds.
    pub register_usage: bool,
    /// The public key version RegisterUsage names.
    pub public_key_version: i32,
    /// The nonce RegisterUsage sends, to be found in the signature; empty = none.
    pub nonce: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestConfig {
    pub socket: PathBuf,
    /// Permission bits of the socket file, as octal text ("0660"). An integer is read as octal
    /// digits too, because the environment provider turns `0660` into the number 660.
    pub socket_mode: String,
    pub max_line_bytes: usize,
    #[serde(with = "crate::duration::serde")]
    pub future_tolerance: Duration,
    /// How long a connection waits for room in the commit queue before answering `overloaded`.
    #[serde(with = "crate::duration::serde")]
    pub overload_timeout: Duration,
    /// Group of the socket file (a name from /etc/group or a numeric gid); empty = meterd's own.
    pub socket_group: String,
    /// When not empty, only peers with these uids (checked with SO_PEERCRED) may send events.
    pub allowed_uids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// How often the in-memory hours and ids are written to the outbox so the log can be trimmed.
    #[serde(with = "crate::duration::serde")]
    pub checkpoint_interval: Duration,
    /// How long receipts and dead letters are kept after they settled.
    #[serde(with = "crate::duration::serde")]
    pub retention: Duration,
    /// The outbox's size on disk above which new events are refused with `overloaded`.
    pub max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminConfig {
    /// The admin socket `meterd status`, `dlq` and `receipts` talk to.
    pub socket: PathBuf,
    pub socket_mode: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubmitConfig {
    #[serde(with = "crate::duration::serde")]
    pub seal_delay: Duration,
    /// A record not accepted this long after its hour start becomes an `expired` dead letter.
    #[serde(with = "crate::duration::serde")]
    pub deadline: Duration,
    pub max_requests_per_second: f64,
    pub late_events: LateEvents,
    #[serde(with = "crate::duration::serde")]
    pub request_timeout: Duration,
    #[serde(with = "crate::duration::serde")]
    pub backoff_base: Duration,
    #[serde(with = "crate::duration::serde")]
    pub backoff_max: Duration,
    /// How long submission stays paused after a configuration error before it tries again.
    #[serde(with = "crate::duration::serde")]
    pub pause: Duration,
    /// `meter_usage` mode: dimensions that get a 0-quantity record for every hour without usage.
    pub heartbeat_dimensions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `meterd=debug`); `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShutdownConfig {
    #[serde(with = "crate::duration::serde")]
    pub grace: Duration,
}

/// Every setting of `meterd run`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub aws: AwsConfig,
    pub ingest: IngestConfig,
    pub storage: StorageConfig,
    pub admin: AdminConfig,
    pub submit: SubmitConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            aws: AwsConfig {
                product_code: String::new(),
                region: "us-east-1".into(),
                endpoint_url: String::new(),
                dimensions: Vec::new(),
                mode: Mode::Batch,
                register_usage: false,
                public_key_version: 1,
                nonce: String::new(),
            },
            ingest: IngestConfig {
                socket: "/run/meterd/meterd.sock".into(),
                socket_mode: "0660".into(),
                max_line_bytes: 64 * 1024,
                future_tolerance: Duration::from_secs(5 * 60),
                overload_timeout: Duration::from_secs(5),
                socket_group: String::new(),
                allowed_uids: Vec::new(),
            },
            storage: StorageConfig {
                data_dir: "/var/lib/meterd".into(),
                checkpoint_interval: Duration::from_secs(1),
                retention: Duration::from_secs(35 * 86_400),
                max_bytes: 1 << 30,
            },
            admin: AdminConfig { socket: "/run/meterd/admin.sock".into(), socket_mode: "0600".into() },
            submit: SubmitConfig {
                seal_delay: Duration::from_secs(5 * 60),
                deadline: Duration::from_secs(6 * 3600),
                max_requests_per_second: 5.0,
                late_events: LateEvents::CarryForward,
                request_timeout: Duration::from_secs(10),
                backoff_base: Duration::from_secs(1),
                backoff_max: Duration::from_secs(5 * 60),
                pause: Duration::from_secs(60),
                heartbeat_dimensions: Vec::new(),
            },
            metrics: MetricsConfig { listen: "0.0.0.0:9464".parse().expect("a valid address") },
            log: LogConfig { format: LogFormat::Text, level: "info".into() },
            shutdown: ShutdownConfig { grace: Duration::from_secs(10) },
        }
    }
}

/// Every problem found in one load, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .problems.join("\n  "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Text that the environment provider may have turned into a number: a socket mode (`0660` becomes
/// 660) or a numeric group id. The number is read back as its digits.
fn digits_as_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Number(u64),
    }
    Ok(match Value::deserialize(deserializer)? {
        Value::Text(text) => text,
        Value::Number(n) => n.to_string(),
    })
}

/// A duration in a config value ("5m", "6h", or whole seconds).
struct Human(Duration);

impl<'de> Deserialize<'de> for Human {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::duration::serde::deserialize(deserializer).map(Human)
    }
}

struct DigitsText(String);

impl<'de> Deserialize<'de> for DigitsText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        digits_as_text(deserializer).map(DigitsText)
    }
}

impl Config {
    /// Loads defaults ← `file` ← the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_over(Self::default(), file)
    }

    /// Like [`Config::load`], starting from `base` instead of the built-in defaults (the sandbox
    /// uses this for its own defaults).
    pub fn load_over(base: Config, file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(base));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        // Only `SECTION__KEY` variables are settings; other METERD_* variables are not ours to judge.
        figment =
            figment.merge(Env::prefixed("METERD_").filter(|key| key.as_str().contains("__")).split("__"));
        Self::extract(&figment)
    }

    fn extract(figment: &Figment) -> Result<Self, ConfigError> {
        let mut problems = unknown_keys(figment);
        let mut config = Config::default();
        macro_rules! read {
            ($($section:ident . $key:ident),* $(,)?) => {$(
                match figment.extract_inner(concat!(stringify!($section), ".", stringify!($key))) {
                    Ok(value) => config.$section.$key = value,
                    Err(err) => problems.push(err.to_string()),
                }
            )*};
        }
        macro_rules! read_duration {
            ($($section:ident . $key:ident),* $(,)?) => {$(
                match figment.extract_inner::<Human>(concat!(stringify!($section), ".", stringify!($key))) {
                    Ok(Human(value)) => config.$section.$key = value,
                    Err(err) => problems.push(err.to_string()),
                }
            )*};
        }
        read!(aws.product_code, aws.region, aws.endpoint_url, aws.dimensions, aws.mode);
        read!(aws.register_usage, aws.public_key_version, aws.nonce, submit.heartbeat_dimensions);
        read!(ingest.socket, ingest.max_line_bytes, ingest.allowed_uids);
        macro_rules! read_digits_text {
            ($($section:ident . $key:ident),* $(,)?) => {$(
                match figment.extract_inner::<DigitsText>(concat!(stringify!($section), ".", stringify!($key))) {
                    Ok(DigitsText(value)) => config.$section.$key = value,
                    Err(err) => problems.push(err.to_string()),
                }
            )*};
        }
        read_digits_text!(ingest.socket_mode, admin.socket_mode, ingest.socket_group);
        read!(admin.socket, storage.data_dir, storage.max_bytes);
        read!(submit.max_requests_per_second, submit.late_events);
        read!(metrics.listen, log.format, log.level);
        read_duration!(ingest.future_tolerance, ingest.overload_timeout, storage.checkpoint_interval);
        read_duration!(storage.retention);
        read_duration!(submit.seal_delay, submit.deadline, submit.request_timeout);
        read_duration!(submit.backoff_base, submit.backoff_max, submit.pause, shutdown.grace);
        problems.extend(config.problems());
        if problems.is_empty() { Ok(config) } else { Err(ConfigError { problems }) }
    }

    /// The socket file's permission bits.
    pub fn socket_mode(&self) -> u32 {
        u32::from_str_radix(&self.ingest.socket_mode, 8).unwrap_or(0o660)
    }

    /// The admin socket file's permission bits.
    pub fn admin_socket_mode(&self) -> u32 {
        u32::from_str_radix(&self.admin.socket_mode, 8).unwrap_or(0o600)
    }

    /// Problems in values that parsed but cannot work, alone or together.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let aws = &self.aws;
        if aws.product_code.chars().count() > model::MAX_NAME_CHARS
            || !model::is_product_code(&aws.product_code)
        {
            out.push(format!(
                "aws.product_code {:?} does not match {} (at most 255 characters)",
                aws.product_code,
                model::PRODUCT_CODE_PATTERN
            ));
        }
        if aws.region.is_empty() {
            out.push("aws.region must not be empty".into());
        }
        let url = &aws.endpoint_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            out.push(format!("aws.endpoint_url {:?} must start with http:// or https://", aws.endpoint_url));
        }
        for dimension in &aws.dimensions {
            if dimension.is_empty() || dimension.chars().count() > model::MAX_NAME_CHARS {
                out.push(format!("aws.dimensions: {dimension:?} must be 1 to 255 characters"));
            }
        }
        out.extend(self.mode_problems());
        if self.ingest.socket.as_os_str().is_empty() {
            out.push("ingest.socket must not be empty".into());
        }
        for (key, mode) in
            [("ingest.socket_mode", &self.ingest.socket_mode), ("admin.socket_mode", &self.admin.socket_mode)]
        {
            match u32::from_str_radix(mode, 8) {
                Ok(bits) if bits <= 0o777 => {}
                _ => out.push(format!("{key} {mode:?} must be octal permission bits such as \"0660\"")),
            }
        }
        if !self.ingest.socket_group.is_empty()
            && let Err(err) = crate::ingest::resolve_group(&self.ingest.socket_group)
        {
            out.push(format!("ingest.socket_group: {err}"));
        }
        if self.admin.socket.as_os_str().is_empty() {
            out.push("admin.socket must not be empty".into());
        }
        if self.admin.socket == self.ingest.socket {
            out.push("admin.socket must differ from ingest.socket".into());
        }
        if self.storage.retention < Duration::from_secs(86_400) {
            out.push("storage.retention must be at least 1d".into());
        }
        if self.storage.max_bytes < 1 << 20 {
            out.push(format!(
                "storage.max_bytes {} must be at least 1048576 (1 MiB)",
                self.storage.max_bytes
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.ingest.max_line_bytes) {
            out.push(format!(
                "ingest.max_line_bytes {} must be between 1024 and 16777216",
                self.ingest.max_line_bytes
            ));
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            out.push("storage.data_dir must not be empty".into());
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&self.storage.checkpoint_interval)
        {
            out.push("storage.checkpoint_interval must be between 10ms and 60s".into());
        }
        let submit = &self.submit;
        if submit.deadline > Duration::from_secs(24 * 3600) {
            out.push("submit.deadline must be at most 24h, the longest window the service allows".into());
        }
        if submit.seal_delay + Duration::from_secs(3600) >= submit.deadline {
            out.push(format!(
                "submit.deadline ({}) must be longer than one hour plus submit.seal_delay ({}), or no record could be sent in time",
                crate::duration::format(submit.deadline),
                crate::duration::format(submit.seal_delay)
            ));
        }
        if !(submit.max_requests_per_second > 0.0 && submit.max_requests_per_second <= 10.0) {
            out.push(format!(
                "submit.max_requests_per_second {} must be above 0 and at most 10 (the service's quota per account)",
                submit.max_requests_per_second
            ));
        }
        if submit.request_timeout.is_zero() {
            out.push("submit.request_timeout must be above 0".into());
        }
        if submit.backoff_base.is_zero() || submit.backoff_base > submit.backoff_max {
            out.push("submit.backoff_base must be above 0 and at most submit.backoff_max".into());
        }
        if submit.pause.is_zero() {
            out.push("submit.pause must be above 0".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            out.push(format!("log.level {:?} is not a valid filter", self.log.level));
        }
        if self.shutdown.grace < Duration::from_secs(1) {
            out.push("shutdown.grace must be at least 1s".into());
        }
        out
    }
}

impl Config {
    /// The settings of `meter_usage` mode, heartbeats and RegisterUsage, which depend on each other.
    fn mode_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let aws = &self.aws;
        let metered = aws.mode == Mode::MeterUsage;
        if metered && aws.product_code.is_empty() {
            out.push(
                "aws.product_code is required when aws.mode = \"meter_usage\" (MeterUsage names the product)"
                    .into(),
            );
        }
        if aws.register_usage && aws.product_code.is_empty() {
            out.push("aws.product_code is required when aws.register_usage = true".into());
        }
        if aws.public_key_version < 1 {
            out.push(format!("aws.public_key_version {} must be at least 1", aws.public_key_version));
        }
        if aws.nonce.chars().count() > model::MAX_NAME_CHARS {
            out.push("aws.nonce must be at most 255 characters".into());
        }
        let heartbeat = &self.submit.heartbeat_dimensions;
        if !heartbeat.is_empty() && !metered {
            out.push(
                "submit.heartbeat_dimensions needs aws.mode = \"meter_usage\": in batch mode a 0-quantity record would take the hour's only slot for a customer".into(),
            );
        }
        for dimension in heartbeat {
            if dimension.is_empty() || dimension.chars().count() > model::MAX_NAME_CHARS {
                out.push(format!("submit.heartbeat_dimensions: {dimension:?} must be 1 to 255 characters"));
            } else if !aws.dimensions.is_empty() && !aws.dimensions.contains(dimension) {
                out.push(format!("submit.heartbeat_dimensions: {dimension:?} is not in aws.dimensions"));
            }
        }
        out
    }
}

/// Every section and its keys, as the file and `METERD_<SECTION>__<KEY>` spell them.
pub const KEYS: &[(&str, &[&str])] = &[
    (
        "aws",
        &[
            "product_code",
            "region",
            "endpoint_url",
            "dimensions",
            "mode",
            "register_usage",
            "public_key_version",
            "nonce",
        ],
    ),
    (
        "ingest",
        &[
            "socket",
            "socket_mode",
            "max_line_bytes",
            "future_tolerance",
            "overload_timeout",
            "socket_group",
            "allowed_uids",
        ],
    ),
    ("storage", &["data_dir", "checkpoint_interval", "retention", "max_bytes"]),
    ("admin", &["socket", "socket_mode"]),
    (
        "submit",
        &[
            "seal_delay",
            "deadline",
            "max_requests_per_second",
            "late_events",
            "request_timeout",
            "backoff_base",
            "backoff_max",
            "pause",
            "heartbeat_dimensions",
        ],
    ),
    ("metrics", &["listen"]),
    ("log", &["format", "level"]),
    ("shutdown", &["grace"]),
];

/// Keys that no setting reads: most often a typo that would otherwise be ignored silently.
fn unknown_keys(figment: &Figment) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(data) = figment.data() else { return out };
    let Some(root) = data.get(&figment.profile().clone()) else { return out };
    let sections: BTreeSet<&str> = KEYS.iter().map(|(s, _)| *s).collect();
    for (section, value) in root.clone() {
        let Some(keys) = KEYS.iter().find(|(s, _)| *s == section.as_str()).map(|(_, k)| *k) else {
            out.push(format!("unknown section `{section}` (known: {})", join(&sections)));
            continue;
        };
        let Value::Dict(_, dict) = &value else {
            out.push(format!("`{section}` must be a table"));
            continue;
        };
        out.extend(unknown_in(&section, dict, keys));
    }
    out
}

fn unknown_in(section: &str, dict: &Dict, keys: &[&str]) -> Vec<String> {
    dict.keys()
        .filter(|key| !keys.contains(&key.as_str()))
        .map(|key| format!("unknown key `{section}.{key}` (known: {})", keys.join(", ")))
        .collect()
}

fn join(set: &BTreeSet<&str>) -> String {
    set.iter().copied().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_toml(text: &str) -> Result<Config, ConfigError> {
        let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
        Config::extract(&figment)
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(load_toml("").unwrap(), Config::default());
    }

    #[test]
    fn values_parse() {
        let config = load_toml(
            "[aws]\nproduct_code = \"prod-1\"\ndimensions = [\"requests\"]\n\
             [submit]\nseal_delay = \"90s\"\nlate_events = \"reject\"\n[log]\nformat = \"json\"",
        )
        .unwrap();
        assert_eq!(config.aws.product_code, "prod-1");
        assert_eq!(config.aws.dimensions, vec!["requests".to_string()]);
        assert_eq!(config.submit.seal_delay, Duration::from_secs(90));
        assert_eq!(config.submit.late_events, LateEvents::Reject);
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load_toml(
            "[aws]\nproduct_code = \"bad code!\"\nregion = 5\n\
             [ingest]\nsocket_mode = \"999\"\nmax_line_bytes = \"lots\"\nbogus = 1\n\
             [submit]\nseal_delay = \"5 minutes\"\nlate_events = \"drop\"\nmax_requests_per_second = 50\n\
             [metrics]\nlisten = \"nowhere\"\n[extra]\nx = 1",
        )
        .unwrap_err();
        let text = err.to_string();
        for expected in [
            "aws.product_code \"bad code!\"",
            "aws.region",
            "ingest.max_line_bytes",
            "unknown key `ingest.bogus`",
            "submit.seal_delay",
            "submit.late_events",
            "metrics.listen",
            "unknown section `extra`",
            "ingest.socket_mode \"999\"",
            "submit.max_requests_per_second 50",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(err.problems.len(), 10, "{text}");
    }

    #[test]
    fn meter_usage_settings_are_checked_together() {
        let err = load_toml(
            "[aws]\nmode = \"meter_usage\"\nregister_usage = true\npublic_key_version = 0\n\
             dimensions = [\"cpu\"]\n[submit]\nheartbeat_dimensions = [\"cpu\", \"gpu\"]",
        )
        .unwrap_err();
        assert_eq!(
            err.problems,
            [
                "aws.product_code is required when aws.mode = \"meter_usage\" (MeterUsage names the product)",
                "aws.product_code is required when aws.register_usage = true",
                "aws.public_key_version 0 must be at least 1",
                "submit.heartbeat_dimensions: \"gpu\" is not in aws.dimensions",
            ]
        );
        let err = load_toml("[submit]\nheartbeat_dimensions = [\"cpu\"]").unwrap_err();
        assert!(err.problems[0].starts_with("submit.heartbeat_dimensions needs aws.mode = \"meter_usage\""));
        let config = load_toml(
            "[aws]\nmode = \"meter_usage\"\nproduct_code = \"p\"\n[submit]\nheartbeat_dimensions = [\"cpu\"]",
        )
        .unwrap();
        assert_eq!(config.aws.mode, Mode::MeterUsage);
    }

    #[test]
    fn deadline_must_leave_time_to_submit() {
        let err = load_toml("[submit]\nseal_delay = \"30m\"\ndeadline = \"1h\"").unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(err.problems[0].contains("must be longer than one hour plus submit.seal_delay"));
    }
}
