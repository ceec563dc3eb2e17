//! Helpers shared by the integration tests: an emulator on a free loopback port, an SDK client
//! pointed at it, and a small HTTP client for the `/_emulator/` control API.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_marketplacemetering::Client;
use aws_sdk_marketplacemetering::config::retry::RetryConfig;
use aws_sdk_marketplacemetering::config::timeout::TimeoutConfig;
use aws_sdk_marketplacemetering::config::{BehaviorVersion, Credentials, Region};
use meterd::emulator::{Emulator, EmulatorConfig, RunningEmulator};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod daemon;
pub mod fleet;
pub mod pg;
pub mod proxy;
pub mod sqs;

pub const REGION: &str = "us-east-1";
pub const SECRET: &str = "emulator-test-secret";

/// Starts an emulator with `config` on 127.0.0.1, port 0.
pub async fn start(config: EmulatorConfig) -> RunningEmulator {
    Emulator::new(config).start("127.0.0.1:0".parse().unwrap()).await.expect("emulator starts")
}

/// An SDK client for `url`, signing as `access_key` in [`REGION`], with SDK retries off so that
/// each call is exactly one request, and meterd's [`StripEmptyFields`] interceptor: without it
/// the Rust SDK sends `"CustomerIdentifier": ""`, which the emulator refuses next to
/// `CustomerAWSAccountId` (see [`raw_client`]).
///
/// [`StripEmptyFields`]: meterd::submit::StripEmptyFields
pub fn client(url: &str, access_key: &str) -> Client {
    client_with(url, access_key, SECRET, REGION, RetryConfig::disabled())
}

/// Like [`client`], without the interceptor: the SDK's body exactly as it serialises it.
pub fn raw_client(url: &str, access_key: &str) -> Client {
    let config = config_builder(url, access_key, SECRET, REGION).retry_config(RetryConfig::disabled());
    Client::from_conf(config.build())
}

pub fn client_with(url: &str, access_key: &str, secret: &str, region: &str, retry: RetryConfig) -> Client {
    Client::from_conf(config_builder_stripping(url, access_key, secret, region).retry_config(retry).build())
}

/// Like [`client`], giving up on each attempt after `attempt_timeout`.
pub fn client_with_timeout(url: &str, access_key: &str, attempt_timeout: Duration) -> Client {
    let timeouts = TimeoutConfig::builder().operation_attempt_timeout(attempt_timeout).build();
    let config = config_builder_stripping(url, access_key, SECRET, REGION)
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts)
        .build();
    Client::from_conf(config)
}

fn config_builder(
    url: &str,
    access_key: &str,
    secret: &str,
    region: &str,
) -> aws_sdk_marketplacemetering::config::Builder {
    aws_sdk_marketplacemetering::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(url)
        .credentials_provider(Credentials::new(access_key, secret, None, None, "test"))
}

fn config_builder_stripping(
    url: &str,
    access_key: &str,
    secret: &str,
    region: &str,
) -> aws_sdk_marketplacemetering::config::Builder {
    config_builder(url, access_key, secret, region).interceptor(meterd::submit::StripEmptyFields)
}

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The start of the UTC hour this test process began in, minus `hours_ago` hours, epoch seconds.
/// Fixed once per process, so a test that runs across the top of an hour still names the hour its
/// events went into.
pub fn hour_start(hours_ago: i64) -> i64 {
    static FIRST_HOUR: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    (*FIRST_HOUR.get_or_init(|| now_secs() / 3600) - hours_ago) * 3600
}

/// One plain HTTP/1.1 request; returns the status and the body parsed as JSON (`Null` if empty).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to emulator");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("emulator answers within 10 s")
        .unwrap();
    let text = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response head");
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body =
        if body.trim().is_empty() { Value::Null } else { serde_json::from_str(body).expect("JSON body") };
    (status, body)
}

/// A control API call that must succeed; returns its JSON.
pub async fn control(addr: SocketAddr, method: &str, path: &str, body: Value) -> Value {
    let payload = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    let (status, value) = http(addr, method, path, &[("content-type", "application/json")], &payload).await;
    assert_eq!(status, 200, "{method} {path} answered {status}: {value}");
    value
}

/// The records the emulator accepted.
pub async fn records(addr: SocketAddr) -> Vec<Value> {
    control(addr, "GET", "/_emulator/records", Value::Null).await["records"].as_array().unwrap().clone()
}

/// The requests the emulator saw.
pub async fn requests(addr: SocketAddr) -> Vec<Value> {
    control(addr, "GET", "/_emulator/requests", Value::Null).await["requests"].as_array().unwrap().clone()
}

/// Waits until `done` holds, looking every 20 ms; fails naming `what` after `within`. Tests wait
/// for conditions, never for a time in which something should have happened.
pub fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
