//! meterd's settings: built-in defaults ← a TOML file ← `METERD_<SECTION>__<KEY>` environment
//! variables (figment). Every key is read on its own, so that one run reports every invalid value,
//! unknown key and inconsistent combination at once; `main` turns that list into exit code 64.
//!
//! Each key is declared once, in the [`settings!`] invocation below: its type, default, how it is
//! read, whether a reload (SIGHUP) applies it, and its doc. The structs, `Default`, [`KEYS`], the
//! unknown-key check, reading, and reload all derive from that one declaration.
//! `config/meterd.toml` and docs/configuration.md document every key (tests check both).

mod check;
mod read;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::model::{LateEvents, Mode};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// One product of `aws.products`: its code and the dimensions its events may name (empty: any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    pub code: String,
    #[serde(default)]
    pub dimensions: Vec<String>,
}

impl AwsConfig {
    /// The products meterd bills: `aws.products`, or the one product of the shorthand
    /// (`aws.product_code`, empty under `license_only`, with `aws.dimensions`). Never empty.
    pub fn products(&self) -> Vec<Product> {
        if self.products.is_empty() {
            vec![Product { code: self.product_code.clone(), dimensions: self.dimensions.clone() }]
        } else {
            self.products.clone()
        }
    }

    /// The product code of a one-product configuration (empty under `license_only`), which
    /// MeterUsage, RegisterUsage and the heartbeat name; `None` with several products.
    pub fn single_product(&self) -> Option<String> {
        match self.products.as_slice() {
            [] => Some(self.product_code.clone()),
            [one] => Some(one.code.clone()),
            _ => None,
        }
    }
}

/// One key of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub section: &'static str,
    pub key: &'static str,
    /// Whether SIGHUP applies a new value (otherwise it waits for a restart).
    pub reloadable: bool,
}

impl Setting {
    /// `section.key`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }
}

/// Declares every setting once. Per key: `name: Type = default, reader, reload|restart;` with its
/// doc comment (and serde attributes) above it. `reader` is a function of [`read`]: `value`
/// (serde), `duration` ("5m"), or `digits` (text the environment may have turned into a number).
macro_rules! settings {
    ($(
        $(#[$section_meta:meta])*
        [$section:ident] $Section:ident {
            $(
                $(#[$meta:meta])*
                $key:ident: $ty:ty = $default:expr, $read:ident, $reload:ident;
            )*
        }
    )*) => {
        $(
            $(#[$section_meta])*
            #[derive(Debug, Clone, PartialEq, Serialize)]
            pub struct $Section {
                $( $(#[$meta])* pub $key: $ty, )*
            }

            impl Default for $Section {
                fn default() -> Self {
                    Self { $( $key: $default, )* }
                }
            }
        )*

        /// Every setting of `meterd run`.
        #[derive(Debug, Clone, PartialEq, Serialize, Default)]
        pub struct Config {
            $( pub $section: $Section, )*
        }

        /// Every section and its keys, as the file and `METERD_<SECTION>__<KEY>` spell them.
        pub const KEYS: &[(&str, &[&str])] = &[
            $( (stringify!($section), &[ $( stringify!($key), )* ]), )*
        ];

        /// Every key, with whether a reload applies it.
        pub const SETTINGS: &[Setting] = &[
            $( $( Setting {
                section: stringify!($section),
                key: stringify!($key),
                reloadable: reloadable!($reload),
            }, )* )*
        ];

        /// Reads every key from `figment` over the defaults; each failure is one problem.
        fn read_all(figment: &Figment, problems: &mut Vec<String>) -> Config {
            let mut config = Config::default();
            $( $(
                match read::$read(figment, concat!(stringify!($section), ".", stringify!($key))) {
                    Ok(value) => config.$section.$key = value,
                    Err(problem) => problems.push(problem),
                }
            )* )*
            config
        }

        /// Names of the keys whose values differ between `a` and `b`.
        fn differing(a: &Config, b: &Config) -> Vec<&'static str> {
            let mut out = Vec::new();
            $( $(
                if a.$section.$key != b.$section.$key {
                    out.push(concat!(stringify!($section), ".", stringify!($key)));
                }
            )* )*
            out
        }

        /// Copies the reloadable keys of `from` into `into`; returns the names of those that changed.
        fn copy_reloadable(into: &mut Config, from: &Config) -> Vec<&'static str> {
            let mut out = Vec::new();
            $( $(
                copy_if_reloadable!($reload, into.$section.$key, from.$section.$key,
                    concat!(stringify!($section), ".", stringify!($key)), out);
            )* )*
            out
        }
    };
}

macro_rules! reloadable {
    (reload) => {
        true
    };
    (restart) => {
        false
    };
}

macro_rules! copy_if_reloadable {
    (reload, $into:expr, $from:expr, $name:expr, $out:ident) => {
        if $into != $from {
            $into = $from.clone();
            $out.push($name);
        }
    };
    (restart, $into:expr, $from:expr, $name:expr, $out:ident) => {};
}

settings! {
    [aws] AwsConfig {
        /// Product code sent with records of events that name no license ARN; empty = none.
        product_code: String = String::new(), value, restart;
        /// Declares that every event names its `license_arn`, so an empty `product_code` is
        /// meant: `run` and `check-config` refuse an empty product code without it.
        license_only: bool = false, value, restart;
        region: String = "us-east-1".into(), value, restart;
        /// Endpoint override (the sandbox, a VPC endpoint); empty = the SDK's default endpoint.
        endpoint_url: String = String::new(), value, restart;
        /// Dimensions events may name; empty = any.
        dimensions: Vec<String> = Vec::new(), value, reload;
        /// Several products, each with its code and its dimensions; empty = the one product of
        /// `product_code` and `dimensions` (the shorthand), which must then be unset.
        products: Vec<Product> = Vec::new(), value, reload;
        mode: Mode = Mode::Batch, value, restart;
        /// Call RegisterUsage at start (paid container products); meterd is not ready until it
        /// succeeds.
        register_usage: bool = false, value, restart;
        /// The public key version RegisterUsage names.
        public_key_version: i32 = 1, value, restart;
        /// The nonce RegisterUsage sends, to be found in the signature; empty = none.
        nonce: String = String::new(), value, restart;
    }
    [ingest] IngestConfig {
        socket: PathBuf = "/run/meterd/meterd.sock".into(), value, restart;
        /// Permission bits of the socket file, as octal text ("0660"). An integer is read as octal
        /// digits too, because the environment provider turns `0660` into the number 660.
        socket_mode: String = "0660".into(), digits, restart;
        max_line_bytes: usize = 64 * 1024, value, restart;
        #[serde(with = "crate::duration::serde")]
        future_tolerance: Duration = Duration::from_secs(5 * 60), duration, restart;
        /// How long a connection waits for room in the commit queue before answering `overloaded`.
        #[serde(with = "crate::duration::serde")]
        overload_timeout: Duration = Duration::from_secs(5), duration, restart;
        /// Group of the socket file (a name from /etc/group or a numeric gid); empty = meterd's own.
        socket_group: String = String::new(), digits, restart;
        /// When not empty, only peers with these uids (checked with SO_PEERCRED) may send events.
        allowed_uids: Vec<u32> = Vec::new(), value, restart;
        /// Connections served at once; one more gets one `overloaded` line and is closed.
        max_connections: usize = 512, value, restart;
        /// Reply bytes a connection may have unsent (its client not reading) before meterd stops
        /// reading from it.
        max_pending_reply_bytes: usize = 1 << 20, value, restart;
        /// HTTP ingest (`POST /v1/events`) on this address, such as "127.0.0.1:8471"; empty = off.
        http_listen: String = String::new(), value, restart;
        /// Whether `http_listen` may be other than a loopback address.
        http_allow_non_loopback: bool = false, value, restart;
        /// The largest request body HTTP ingest reads; a larger one is answered 413.
        http_max_body_bytes: usize = 1 << 20, value, restart;
        /// HTTP connections served at once; more are accepted and closed at once.
        http_max_connections: usize = 64, value, restart;
        /// An HTTP connection on which no request starts, or whose body stalls, this long is closed.
        #[serde(with = "crate::duration::serde")]
        http_idle_timeout: Duration = Duration::from_secs(10), duration, restart;
    }
    [storage] StorageConfig {
        data_dir: PathBuf = "/var/lib/meterd".into(), value, restart;
        /// How often the in-memory hours and ids are written to the outbox so the log can be
        /// trimmed.
        #[serde(with = "crate::duration::serde")]
        checkpoint_interval: Duration = Duration::from_secs(1), duration, restart;
        /// How long receipts and dead letters are kept after they settled.
        #[serde(with = "crate::duration::serde")]
        retention: Duration = Duration::from_secs(35 * 86_400), duration, restart;
        /// The outbox's size on disk above which new events are refused with `overloaded`.
        max_bytes: u64 = 1 << 30, value, restart;
        /// Free space the data dir's filesystem must keep: below it the outbox is full like over
        /// `max_bytes`, and meterd does not start (sled would write on a full disk); 0 = no check.
        min_free_bytes: u64 = 64 << 20, value, restart;
        /// Size of each event journal segment file, preallocated and zero-filled ahead of use;
        /// the journal holds the events since the last checkpoint, in two segments or more.
        journal_segment_size: u64 = crate::journal::DEFAULT_SEGMENT_BYTES, value, restart;
    }
    [admin] AdminConfig {
        /// The admin socket `meterd status`, `dlq` and `receipts` talk to.
        socket: PathBuf = "/run/meterd/admin.sock".into(), value, restart;
        socket_mode: String = "0600".into(), digits, restart;
        /// Connections served at once; one more gets an error line and is closed.
        max_connections: usize = 16, value, restart;
    }
    [submit] SubmitConfig {
        #[serde(with = "crate::duration::serde")]
        seal_delay: Duration = Duration::from_secs(5 * 60), duration, reload;
        /// A record not accepted this long after its hour start (or by the month-end close)
        /// becomes an `expired` dead letter. Unset: what the operation allows, see
        /// [`Config::deadline`].
        #[serde(with = "crate::duration::serde_opt", skip_serializing_if = "Option::is_none")]
        deadline: Option<Duration> = None, optional_duration, restart;
        max_requests_per_second: f64 = 5.0, value, reload;
        late_events: LateEvents = LateEvents::CarryForward, value, restart;
        #[serde(with = "crate::duration::serde")]
        request_timeout: Duration = Duration::from_secs(10), duration, restart;
        #[serde(with = "crate::duration::serde")]
        backoff_base: Duration = Duration::from_secs(1), duration, restart;
        #[serde(with = "crate::duration::serde")]
        backoff_max: Duration = Duration::from_secs(5 * 60), duration, restart;
        /// How long submission stays paused after a configuration error before it tries again.
        #[serde(with = "crate::duration::serde")]
        pause: Duration = Duration::from_secs(60), duration, restart;
        /// How often a record whose customer is not subscribed (yet) is offered again, until its
        /// deadline makes it a `customer_not_subscribed` dead letter.
        #[serde(with = "crate::duration::serde")]
        subscription_recheck: Duration = Duration::from_secs(10 * 60), duration, restart;
        /// `meter_usage` mode: dimensions that get a 0-quantity record for every hour without usage.
        heartbeat_dimensions: Vec<String> = Vec::new(), value, restart;
    }
    [metrics] MetricsConfig {
        listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 9464)), value, restart;
        /// Connections served at once; more are accepted and closed at once.
        max_connections: usize = 32, value, restart;
        /// A connection on which no request starts for this long is closed.
        #[serde(with = "crate::duration::serde")]
        idle_timeout: Duration = Duration::from_secs(10), duration, restart;
    }
    [log] LogConfig {
        format: LogFormat = LogFormat::Text, value, restart;
        /// A tracing filter (`info`, `meterd=debug`); `RUST_LOG` overrides it.
        level: String = "info".into(), value, reload;
    }
    [fleet] FleetConfig {
        /// PostgreSQL connection string (`postgres://user@host:5432/db?sslmode=verify-full`);
        /// fleet mode is on when it is set.
        database_url: String = String::new(), value, restart;
        /// A file holding the database password, so that it is in neither the URL nor the unit;
        /// `PGPASSWORD` works too.
        password_file: PathBuf = PathBuf::new(), value, restart;
        /// PEM file with the CA that signs the server's certificate (`sslmode=verify-ca` or
        /// `verify-full`; RDS: the region's bundle); empty: the system's roots.
        ca_file: PathBuf = PathBuf::new(), value, restart;
        /// The schema meterd creates and migrates its tables in.
        schema: String = "meterd".into(), value, restart;
        /// This host's id, stable across restarts and unique in the fleet; empty: derived (ECS
        /// task ARN, pod name, machine id).
        host_id: String = String::new(), value, restart;
        /// How long after an hour ends the fleet waits for every live host's partials.
        #[serde(with = "crate::duration::serde")]
        close_after: Duration = Duration::from_secs(10 * 60), duration, restart;
        /// A host that has not beaten its heart this long is not waited for.
        #[serde(with = "crate::duration::serde")]
        host_timeout: Duration = Duration::from_secs(2 * 60), duration, restart;
        /// The submitter lease's lifetime; it is renewed every third of it.
        #[serde(with = "crate::duration::serde")]
        lease_ttl: Duration = Duration::from_secs(30), duration, restart;
    }
    [notifications] NotificationsConfig {
        /// The SQS queue that receives AWS Marketplace's subscription and agreement notifications
        /// (the SNS topics subscribed to it, or an EventBridge rule targeting it); the consumer is
        /// on when it is set. docs/notifications.md.
        queue_url: String = String::new(), value, restart;
        /// The queue's region; empty = `aws.region`.
        region: String = String::new(), value, restart;
        /// Endpoint override for SQS (a VPC endpoint, tests); empty = the SDK's default endpoint.
        endpoint_url: String = String::new(), value, restart;
        /// How long one ReceiveMessage long-polls (0 to 20 seconds).
        #[serde(with = "crate::duration::serde")]
        wait_time: Duration = Duration::from_secs(20), duration, restart;
        /// Messages asked for per ReceiveMessage (1 to 10).
        batch_size: i32 = 10, value, restart;
        /// How long a received message stays hidden from other consumers while meterd applies
        /// it; one not deleted by then (its effect failed, or meterd stopped) is delivered again.
        #[serde(with = "crate::duration::serde")]
        visibility_timeout: Duration = Duration::from_secs(60), duration, restart;
    }
    [shutdown] ShutdownConfig {
        #[serde(with = "crate::duration::serde")]
        grace: Duration = Duration::from_secs(10), duration, restart;
    }
}

/// Every problem found in one load, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .problems.join("\n  "))]
pub struct ConfigError {
    pub problems: Vec<String>,
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
        let mut problems = read::unknown_keys(figment);
        let config = read_all(figment, &mut problems);
        problems.extend(config.problems());
        if problems.is_empty() { Ok(config) } else { Err(ConfigError { problems }) }
    }

    /// Every problem of this configuration, as a load reports them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() { Ok(()) } else { Err(ConfigError { problems }) }
    }

    /// Names (`section.key`) of the keys whose values differ from `other`'s.
    pub fn changed_keys(&self, other: &Config) -> Vec<&'static str> {
        differing(self, other)
    }

    /// Takes the reloadable keys' values from `from` (a reloaded file); returns the names of those
    /// that changed. Every other key keeps its running value.
    pub fn apply_reloadable(&mut self, from: &Config) -> Vec<&'static str> {
        copy_reloadable(self, from)
    }

    /// The longest window the service accepts a record in: 24 hours after its hour for
    /// BatchMeterUsage, 6 for MeterUsage (a month's records also close at 06:00 UTC on the 1st).
    pub fn max_deadline(&self) -> Duration {
        match self.aws.mode {
            Mode::Batch => Duration::from_secs(24 * 3600),
            Mode::MeterUsage => Duration::from_secs(6 * 3600),
        }
    }

    /// `submit.deadline`, or the operation's own window when it is unset.
    pub fn deadline(&self) -> Duration {
        self.submit.deadline.unwrap_or_else(|| self.max_deadline())
    }

    /// Whether the notification consumer is on (`notifications.queue_url` set).
    pub fn notifications(&self) -> bool {
        !self.notifications.queue_url.is_empty()
    }

    /// Whether fleet mode is on.
    pub fn fleet(&self) -> bool {
        !self.fleet.database_url.is_empty()
    }

    /// The HTTP ingest address, when `ingest.http_listen` is set (and valid).
    pub fn http_listen(&self) -> Option<SocketAddr> {
        self.ingest.http_listen.parse().ok()
    }

    /// The connections every listener together may keep open (the open-file budget).
    pub fn connection_caps(&self) -> usize {
        let http = if self.http_listen().is_some() { self.ingest.http_max_connections } else { 0 };
        self.ingest.max_connections + self.admin.max_connections + self.metrics.max_connections + http
    }

    /// The socket file's permission bits.
    pub fn socket_mode(&self) -> u32 {
        u32::from_str_radix(&self.ingest.socket_mode, 8).unwrap_or(0o660)
    }

    /// The admin socket file's permission bits.
    pub fn admin_socket_mode(&self) -> u32 {
        u32::from_str_radix(&self.admin.socket_mode, 8).unwrap_or(0o600)
    }
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
    fn several_products_each_with_its_dimensions() {
        let config = load_toml(
            "[aws]\nproducts = [{ code = \"prod-a\", dimensions = [\"requests\"] }, { code = \"prod-b\" }]",
        )
        .unwrap()
        .check_billing()
        .unwrap();
        let products = config.aws.products();
        assert_eq!(
            products,
            [
                Product { code: "prod-a".into(), dimensions: vec!["requests".into()] },
                Product { code: "prod-b".into(), dimensions: vec![] },
            ]
        );
        assert_eq!(config.aws.single_product(), None);
        let shorthand = load_toml("[aws]\nproduct_code = \"p\"\ndimensions = [\"gb\"]").unwrap();
        assert_eq!(shorthand.aws.products(), [Product { code: "p".into(), dimensions: vec!["gb".into()] }]);
        assert_eq!(shorthand.aws.single_product().as_deref(), Some("p"));
    }

    #[test]
    fn products_are_checked_one_by_one_and_never_beside_the_shorthand() {
        let err = load_toml(
            "[aws]\nproduct_code = \"p\"\nproducts = [{ code = \"\" }, { code = \"bad code!\" }, \
             { code = \"a\", dimensions = [\"\"] }, { code = \"a\" }]",
        )
        .unwrap_err();
        assert_eq!(
            err.problems,
            [
                "aws.products and aws.product_code/aws.dimensions are both set: aws.product_code with aws.dimensions is the one-product form of aws.products; set one form only (each entry of aws.products has its own code and dimensions)",
                "aws.products[0].code must not be empty",
                "aws.products[1].code \"bad code!\" does not match ^[-a-zA-Z0-9/=:_.@]*$ (at most 255 characters)",
                "aws.products[2].dimensions: \"\" must be 1 to 255 characters",
                "aws.products[3].code \"a\" is listed twice",
            ]
        );
        let err = load_toml("[aws]\nproducts = [{ code = \"a\", dimension = [\"x\"] }]").unwrap_err();
        assert!(err.problems[0].contains("unknown field: found `dimension`"), "{:?}", err.problems);
    }

    #[test]
    fn meter_usage_and_register_usage_keep_one_product() {
        let two = "products = [{ code = \"a\" }, { code = \"b\" }]";
        let err =
            load_toml(&format!("[aws]\nmode = \"meter_usage\"\nregister_usage = true\n{two}")).unwrap_err();
        assert_eq!(
            err.problems,
            [
                "aws.mode = \"meter_usage\" bills one product (MeterUsage names the product of this instance, task or pod), but aws.products lists 2: run one meterd per product",
                "aws.register_usage = true needs one product (RegisterUsage names one product code), but aws.products lists 2",
            ]
        );
        let one = load_toml("[aws]\nmode = \"meter_usage\"\nproducts = [{ code = \"a\" }]").unwrap();
        assert_eq!(one.aws.single_product().as_deref(), Some("a"));
        let err = load_toml(&format!("[aws]\nlicense_only = true\n{two}")).unwrap_err();
        assert_eq!(
            err.problems,
            [
                "aws.license_only = true needs an empty aws.product_code and no aws.products (every event names its license_arn)"
            ]
        );
    }

    #[test]
    fn names_are_measured_in_utf16_units_as_the_service_does() {
        let emoji = "\u{1F600}".repeat(128);
        let err = load_toml(&format!("[aws]\nproduct_code = \"p\"\ndimensions = [\"{emoji}\"]")).unwrap_err();
        assert_eq!(err.problems, [format!("aws.dimensions: {emoji:?} must be 1 to 255 characters")]);
        let fits = "\u{1F600}".repeat(127);
        assert!(load_toml(&format!("[aws]\nproduct_code = \"p\"\ndimensions = [\"{fits}\"]")).is_ok());
    }

    #[test]
    fn settings_counted_in_seconds_refuse_a_fraction() {
        let err = load_toml(
            "[ingest]\nfuture_tolerance = \"1500ms\"\n[fleet]\nlease_ttl = \"10s\"\nhost_timeout = \"2500ms\"",
        )
        .unwrap_err();
        assert_eq!(
            err.problems,
            [
                "ingest.future_tolerance (1s500ms) must be a whole number of seconds: meterd counts it in seconds",
                "fleet.host_timeout (2s500ms) must be a whole number of seconds: meterd counts it in seconds",
            ]
        );
    }

    #[test]
    fn notifications_are_checked_against_sqs_limits_and_the_modes_they_serve() {
        let config =
            load_toml("[notifications]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\"").unwrap();
        assert!(config.notifications());
        assert_eq!(config.notifications.wait_time, Duration::from_secs(20));
        let err = load_toml(
            "[aws]\nmode = \"meter_usage\"\nproduct_code = \"p\"\n[fleet]\ndatabase_url = \"postgres://h/db\"\n\
             [notifications]\nqueue_url = \"q\"\nwait_time = \"30s\"\nbatch_size = 11\nvisibility_timeout = \"1500ms\"",
        )
        .unwrap_err();
        let text = err.to_string();
        for expected in [
            "notifications.queue_url \"q\" must be the queue's URL",
            "notifications.wait_time (30s) must be at most 20s",
            "notifications.batch_size 11 must be 1 to 10",
            "notifications.visibility_timeout (1s500ms) must be 10s to 12h",
            "notifications.queue_url needs aws.mode = \"batch\"",
            "notifications.queue_url is not supported in fleet mode yet",
            "notifications.visibility_timeout (1s500ms) must be a whole number of seconds",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn deadline_must_leave_time_to_submit() {
        let err = load_toml("[submit]\nseal_delay = \"30m\"\ndeadline = \"1h\"").unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(err.problems[0].contains("must be longer than one hour plus submit.seal_delay"));
    }
}
