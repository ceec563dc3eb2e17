//! The shipped config/meterd.toml is valid and spells out exactly the defaults, and every key a
//! file sets changes the loaded value of that key and of no other. (The defaults cannot bill:
//! `run` and `check-config` also want a product code or `aws.license_only`; tests/first_run.rs.)

use meterd::config::{Config, KEYS};

#[test]
fn shipped_config_is_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/meterd.toml");
    let loaded = meterd::config::Config::load_over(meterd::config::Config::default(), Some(&path)).unwrap();
    assert_eq!(loaded, meterd::config::Config::default());
}

/// A valid value other than the default for every key, as TOML.
const SAMPLES: &[(&str, &str, &str)] = &[
    ("aws", "product_code", r#""prod-x""#),
    ("aws", "license_only", "true"),
    ("aws", "region", r#""eu-west-1""#),
    ("aws", "endpoint_url", r#""http://127.0.0.1:1""#),
    ("aws", "dimensions", r#"["cpu"]"#),
    ("aws", "products", r#"[{ code = "prod-a", dimensions = ["cpu"] }, { code = "prod-b" }]"#),
    ("aws", "mode", r#""meter_usage""#),
    ("aws", "register_usage", "true"),
    ("aws", "public_key_version", "2"),
    ("aws", "nonce", r#""n-1""#),
    ("ingest", "socket", r#""/tmp/other.sock""#),
    ("ingest", "socket_mode", r#""0600""#),
    ("ingest", "max_line_bytes", "2048"),
    ("ingest", "future_tolerance", r#""1m""#),
    ("ingest", "overload_timeout", r#""2s""#),
    ("ingest", "socket_group", r#""0""#),
    ("ingest", "allowed_uids", "[0]"),
    ("ingest", "max_connections", "64"),
    ("ingest", "max_pending_reply_bytes", "262144"),
    ("ingest", "http_listen", r#""127.0.0.1:8471""#),
    ("ingest", "http_allow_non_loopback", "true"),
    ("ingest", "http_max_body_bytes", "2048"),
    ("ingest", "http_max_connections", "8"),
    ("ingest", "http_idle_timeout", r#""30s""#),
    ("storage", "data_dir", r#""/tmp/other-data""#),
    ("storage", "checkpoint_interval", r#""2s""#),
    ("storage", "retention", r#""2d""#),
    ("storage", "max_bytes", "2097152"),
    ("storage", "min_free_bytes", "0"),
    ("storage", "journal_segment_size", "8388608"),
    ("admin", "socket", r#""/tmp/other-admin.sock""#),
    ("admin", "socket_mode", r#""0660""#),
    ("admin", "max_connections", "4"),
    ("submit", "seal_delay", r#""10m""#),
    ("submit", "deadline", r#""5h""#),
    ("submit", "max_requests_per_second", "2.5"),
    ("submit", "late_events", r#""reject""#),
    ("submit", "request_timeout", r#""3s""#),
    ("submit", "backoff_base", r#""2s""#),
    ("submit", "backoff_max", r#""1m""#),
    ("submit", "pause", r#""30s""#),
    ("submit", "subscription_recheck", r#""30m""#),
    ("submit", "heartbeat_dimensions", r#"["cpu"]"#),
    ("metrics", "listen", r#""127.0.0.1:9999""#),
    ("metrics", "max_connections", "8"),
    ("metrics", "idle_timeout", r#""30s""#),
    ("log", "format", r#""json""#),
    ("log", "level", r#""debug""#),
    ("fleet", "database_url", r#""postgres://meterd@127.0.0.1:5432/metering""#),
    ("fleet", "password_file", r#""/tmp/password""#),
    ("fleet", "ca_file", r#""/tmp/ca.pem""#),
    ("fleet", "schema", r#""billing""#),
    ("fleet", "host_id", r#""host-1""#),
    ("fleet", "close_after", r#""15m""#),
    ("fleet", "host_timeout", r#""3m""#),
    ("fleet", "lease_ttl", r#""20s""#),
    ("notifications", "queue_url", r#""https://sqs.us-east-1.amazonaws.com/123456789012/meterd""#),
    ("notifications", "region", r#""eu-west-1""#),
    ("notifications", "endpoint_url", r#""https://sqs.vpce.example""#),
    ("notifications", "wait_time", r#""5s""#),
    ("notifications", "batch_size", "5"),
    ("notifications", "visibility_timeout", r#""2m""#),
    ("shutdown", "grace", r#""3s""#),
];

#[test]
fn every_key_set_in_a_file_changes_exactly_that_value() {
    let declared: Vec<String> =
        KEYS.iter().flat_map(|(section, keys)| keys.iter().map(move |k| format!("{section}.{k}"))).collect();
    let sampled: Vec<String> = SAMPLES.iter().map(|(s, k, _)| format!("{s}.{k}")).collect();
    assert_eq!(sampled, declared, "every key needs a sample here, in declaration order");
    // Keys that are only valid together with others, and what they need.
    let needs = |name: &str| match name {
        "aws.mode" | "aws.register_usage" => "[aws]\nproduct_code = \"prod-x\"\n",
        "submit.heartbeat_dimensions" => "[aws]\nproduct_code = \"prod-x\"\nmode = \"meter_usage\"\n",
        _ => "",
    };
    let dir = tempfile::tempdir().unwrap();
    for (section, key, value) in SAMPLES {
        let name = format!("{section}.{key}");
        let base_text = needs(&name);
        let base_file = dir.path().join("base.toml");
        std::fs::write(&base_file, base_text).unwrap();
        let base = Config::load_over(Config::default(), Some(&base_file)).unwrap();
        let text = if base_text.contains(&format!("[{section}]")) {
            format!("{base_text}{key} = {value}\n")
        } else {
            format!("{base_text}[{section}]\n{key} = {value}\n")
        };
        let file = dir.path().join("one.toml");
        std::fs::write(&file, &text).unwrap();
        let loaded = Config::load_over(Config::default(), Some(&file))
            .unwrap_or_else(|err| panic!("{name} = {value}: {err}"));
        assert_eq!(base.changed_keys(&loaded), [name.as_str()], "setting {name} = {value}");
    }
}
