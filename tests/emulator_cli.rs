//! `meterd emulator` as a process: the address on stdout's first line, `--config`, a clean exit on
//! SIGTERM, and exit code 64 for a bad configuration.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use aws_sdk_marketplacemetering::error::ProvideErrorMetadata;
use aws_sdk_marketplacemetering::primitives::DateTime;
use aws_sdk_marketplacemetering::types::{UsageRecord, UsageRecordResultStatus};
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_meterd");

fn spawn(args: &[&str]) -> (Child, String) {
    let mut child =
        Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line.trim().to_string())
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn serves_the_example_config_and_stops_on_sigterm() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/emulator.toml");
    let (mut child, url) = spawn(&["emulator", "--listen", "127.0.0.1:0", "--config", config]);
    assert!(url.starts_with("http://127.0.0.1:"), "first line is the URL: {url:?}");
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0);

    let hour = hour_start(1);
    let record = |dimension: &str| {
        UsageRecord::builder()
            .customer_aws_account_id("111122223333")
            .dimension(dimension)
            .quantity(2)
            .timestamp(DateTime::from_secs(hour))
            .build()
            .unwrap()
    };
    let signed = client_with(
        &url,
        "AKIDMETERDSANDBOX",
        "meterd-sandbox-secret",
        REGION,
        aws_sdk_marketplacemetering::config::retry::RetryConfig::disabled(),
    );
    let out = signed
        .batch_meter_usage()
        .product_code("prod-example")
        .usage_records(record("requests"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.results()[0].status(), Some(&UsageRecordResultStatus::Success));
    let err = signed
        .batch_meter_usage()
        .product_code("prod-example")
        .usage_records(record("cpu"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidUsageDimensionException"));
    let err = client(&url, "AKIDMETERDSANDBOX")
        .batch_meter_usage()
        .product_code("prod-example")
        .usage_records(record("requests"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidSignatureException"), "the file's credentials are verified");
    let token = signed.resolve_customer().registration_token("example-token").send().await.unwrap();
    assert_eq!(token.customer_aws_account_id(), Some("111122223333"));

    sigterm(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn an_invalid_config_exits_64_naming_the_problem() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "window = \"6 hours\"\nburst = 0").unwrap();
    let out = Command::new(BIN).args(["emulator", "--config"]).arg(file.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid duration \"6 hours\""), "{stderr}");

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "burst = 0\nrequests_per_second = -1.0").unwrap();
    let out = Command::new(BIN).args(["emulator", "--config"]).arg(file.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requests_per_second must be a positive number, got -1"), "{stderr}");
    assert!(stderr.contains("burst must be at least 1"), "{stderr}");

    let out =
        Command::new(BIN).args(["emulator", "--config", "/nonexistent/emulator.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/emulator.toml"));
}
