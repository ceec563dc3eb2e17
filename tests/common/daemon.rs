//! The real `meterd run` process against an in-process emulator: start it on a temp dir with its
//! own socket and port, talk to its socket as a client would, send it signals, read its metrics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meterd::emulator::{EmulatorConfig, RunningEmulator};
use serde_json::{Value, json};

pub const ACCESS_KEY: &str = "AKIDMETERDTEST";
pub const PRODUCT: &str = "prod-test";

/// An emulator on its own runtime, so that tests can be plain blocking code.
pub struct Emu {
    pub runtime: tokio::runtime::Runtime,
    pub emulator: RunningEmulator,
}

impl Emu {
    /// Signatures verified for [`ACCESS_KEY`]; the service's own windows (24 hours for
    /// BatchMeterUsage, 6 for MeterUsage), which hold [`Meterd::start`]'s deadlines.
    pub fn start(configure: impl FnOnce(&mut EmulatorConfig)) -> Emu {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let mut config = EmulatorConfig {
            credentials: vec![meterd::emulator::Credential {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: super::SECRET.into(),
            }],
            ..EmulatorConfig::default()
        };
        configure(&mut config);
        let emulator = runtime.block_on(super::start(config));
        Emu { runtime, emulator }
    }

    pub fn url(&self) -> String {
        self.emulator.endpoint_url()
    }

    pub fn control(&self, method: &str, path: &str, body: Value) -> Value {
        self.runtime.block_on(super::control(self.emulator.addr(), method, path, body))
    }

    pub fn records(&self) -> Vec<Value> {
        self.runtime.block_on(super::records(self.emulator.addr()))
    }

    pub fn requests(&self) -> Vec<Value> {
        self.runtime.block_on(super::requests(self.emulator.addr()))
    }

    pub fn faults(&self, faults: Value) {
        self.control("POST", "/_emulator/faults", faults);
    }

    pub fn clear_faults(&self) {
        self.control("DELETE", "/_emulator/faults", Value::Null);
    }

    pub fn set_clock_offset(&self, offset_secs: i64) {
        self.control("POST", "/_emulator/clock", json!({ "offset_seconds": offset_secs }));
    }

    /// Waits until the emulator holds `count` records.
    pub fn wait_records(&self, count: usize, within: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let records = self.records();
            if records.len() >= count || start.elapsed() > within {
                return records;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Per-record statuses summed over every BatchMeterUsage request.
    pub fn statuses(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for request in self.requests() {
            if let Some(statuses) = request["statuses"].as_object() {
                for (status, n) in statuses {
                    *out.entry(status.clone()).or_default() += n.as_u64().unwrap();
                }
            }
        }
        out
    }
}

/// One `meterd run` process.
pub struct Meterd {
    child: Option<Child>,
    pub socket: PathBuf,
    pub metrics: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

/// How to start meterd: the settings every test shares, plus its own.
pub struct Launch<'a> {
    pub dir: &'a Path,
    pub endpoint: String,
    pub clock_offset: i64,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// A listening socket to pass as fd 3 with LISTEN_FDS/LISTEN_PID, as systemd does.
    pub activated: Option<std::os::fd::OwnedFd>,
    /// A program (with its arguments) that runs meterd, such as strace.
    pub wrapper: Vec<String>,
}

impl<'a> Launch<'a> {
    pub fn new(dir: &'a Path, emu: &Emu) -> Self {
        Self::with_endpoint(dir, &emu.url())
    }

    pub fn with_endpoint(dir: &'a Path, endpoint: &str) -> Self {
        Launch {
            dir,
            endpoint: endpoint.into(),
            clock_offset: 0,
            env: Vec::new(),
            args: Vec::new(),
            activated: None,
            wrapper: Vec::new(),
        }
    }

    pub fn offset(mut self, secs: i64) -> Self {
        self.clock_offset = secs;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// An extra argument of `meterd run`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Runs meterd under `wrapper` (its program and arguments; meterd's path and arguments follow).
    pub fn under(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|w| w.to_string()).collect();
        self
    }

    /// Passes `listener` as systemd's socket activation would.
    pub fn activated(mut self, listener: &std::os::unix::net::UnixListener) -> Self {
        self.activated = Some(listener.try_clone().unwrap().into());
        self
    }

    pub fn start(self) -> Meterd {
        Meterd::start(self)
    }
}

impl Meterd {
    fn command(launch: &Launch) -> Command {
        let mut args = vec!["run"];
        args.extend(launch.args.iter().map(String::as_str));
        Self::command_with(launch, &args)
    }

    /// `meterd <args>` with the launch's environment.
    pub fn command_with(launch: &Launch, args: &[&str]) -> Command {
        let dir = launch.dir;
        let mut command = match &launch.activated {
            // The shell moves the socket from stdin to fd 3 and names its own pid, which `exec`
            // hands to meterd: LISTEN_PID must be meterd's pid.
            Some(fd) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg("exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
                    .arg(env!("CARGO_BIN_EXE_meterd"))
                    .stdin(Stdio::from(fd.try_clone().unwrap()));
                sh
            }
            None if !launch.wrapper.is_empty() => {
                let mut wrapped = Command::new(&launch.wrapper[0]);
                wrapped.args(&launch.wrapper[1..]).arg(env!("CARGO_BIN_EXE_meterd"));
                wrapped
            }
            None => Command::new(env!("CARGO_BIN_EXE_meterd")),
        };
        command.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        let settings = [
            ("METERD_STORAGE__DATA_DIR", dir.join("data").display().to_string()),
            ("METERD_INGEST__SOCKET", dir.join("meterd.sock").display().to_string()),
            ("METERD_ADMIN__SOCKET", dir.join("admin.sock").display().to_string()),
            ("METERD_METRICS__LISTEN", "127.0.0.1:0".into()),
            ("METERD_AWS__ENDPOINT_URL", launch.endpoint.clone()),
            ("METERD_AWS__PRODUCT_CODE", PRODUCT.into()),
            ("METERD_LOG__FORMAT", "json".into()),
            ("METERD_STORAGE__CHECKPOINT_INTERVAL", "100ms".into()),
            // Small journal segments: tests roll and trim them often, and write less.
            ("METERD_STORAGE__JOURNAL_SEGMENT_SIZE", "4194304".into()),
            ("METERD_SUBMIT__SEAL_DELAY", "3h".into()),
            ("METERD_SUBMIT__DEADLINE", "12h".into()),
            ("METERD_SUBMIT__MAX_REQUESTS_PER_SECOND", "10".into()),
            ("METERD_SUBMIT__BACKOFF_BASE", "50ms".into()),
            ("METERD_SUBMIT__BACKOFF_MAX", "400ms".into()),
            ("METERD_SUBMIT__PAUSE", "300ms".into()),
            ("METERD_SUBMIT__REQUEST_TIMEOUT", "2s".into()),
            ("METERD_TEST_CLOCK_OFFSET", launch.clock_offset.to_string()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", super::SECRET.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", dir.join("no-aws-config").display().to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-aws-credentials").display().to_string()),
        ];
        for (key, value) in settings {
            command.env(key, value);
        }
        for (key, value) in &launch.env {
            command.env(key, value);
        }
        if launch.activated.is_none() {
            command.stdin(Stdio::null());
        }
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        command
    }

    /// Starts meterd and waits until it accepts events.
    pub fn start(launch: Launch) -> Meterd {
        let mut meterd = Self::spawn(launch);
        let ready = meterd.wait_log("meterd ready", Duration::from_secs(30));
        meterd.metrics = ready["metrics"].as_str().unwrap().parse().unwrap();
        meterd
    }

    /// Starts meterd and waits only until its metrics listener (with `/readyz`) answers.
    pub fn spawn(launch: Launch) -> Meterd {
        let mut child = Self::command(&launch).spawn().expect("meterd starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut meterd = Meterd {
            child: Some(child),
            socket: launch.dir.join("meterd.sock"),
            metrics: "127.0.0.1:1".parse().unwrap(),
            logs,
        };
        let listening = meterd.wait_log("serving metrics", Duration::from_secs(30));
        meterd.metrics = listening["metrics"].as_str().unwrap().parse().unwrap();
        meterd
    }

    /// Runs `meterd <args>` (an operator command) with the launch's environment; returns the exit
    /// code, stdout and stderr.
    pub fn cli(launch: &Launch, args: &[&str]) -> (i32, String, String) {
        let output =
            Self::command_with(launch, args).stdin(Stdio::null()).stdout(Stdio::piped()).output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs meterd to its end; for start-up failures. Returns the exit status and stderr.
    pub fn run_to_end(launch: Launch) -> (ExitStatus, String) {
        let output = Self::command(&launch).output().expect("meterd runs");
        (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits for a JSON log line whose message contains `needle`, and returns it.
    pub fn wait_log(&self, needle: &str, within: Duration) -> Value {
        let start = Instant::now();
        loop {
            for line in self.logs() {
                if let Ok(value) = serde_json::from_str::<Value>(&line)
                    && value["message"].as_str().is_some_and(|m| m.contains(needle))
                {
                    return value;
                }
            }
            if start.elapsed() > within {
                panic!("no log line with {needle:?} within {within:?}; logs:\n{}", self.logs().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends raw bytes, closes the write side, returns every reply line.
    pub fn send_raw(&self, bytes: &[u8]) -> Vec<Value> {
        let mut stream = UnixStream::connect(&self.socket).expect("connect to the ingest socket");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let writer = {
            let mut stream = stream.try_clone().unwrap();
            let bytes = bytes.to_vec();
            std::thread::spawn(move || {
                let _ = stream.write_all(&bytes);
                let _ = stream.shutdown(std::net::Shutdown::Write);
            })
        };
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("replies");
        writer.join().unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("reply is JSON: {l}")))
            .collect()
    }

    /// Sends events, one line each; returns their replies.
    pub fn send(&self, events: &[Value]) -> Vec<Value> {
        let mut bytes = Vec::new();
        for event in events {
            bytes.extend_from_slice(event.to_string().as_bytes());
            bytes.push(b'\n');
        }
        self.send_raw(&bytes)
    }

    /// `GET path` on the metrics listener: the status code and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(self.metrics).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    /// The value of one sample of `/metrics`, e.g. `meterd_records{state="open"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        let mut stream = std::net::TcpStream::connect(self.metrics).unwrap();
        write!(stream, "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
            .parse()
            .unwrap()
    }

    /// Waits until `sample` reaches `value`.
    pub fn wait_metric(&self, sample: &str, value: f64, within: Duration) {
        let start = Instant::now();
        while self.metric(sample) != value {
            if start.elapsed() > within {
                panic!("{sample} is {} after {within:?}, expected {value}", self.metric(sample));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `Some(exit code)` once meterd has exited (`Some(None)`: killed by a signal).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.child.as_mut().unwrap().try_wait().unwrap().map(|status| status.code())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// meterd's own accounting of its memory: `VmRSS` and `VmHWM` (the peak) of
    /// `/proc/<pid>/status`, in bytes.
    pub fn memory(&self) -> (f64, f64) {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> f64 {
            let kib: f64 = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"));
            kib * 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Waits for meterd to exit on its own.
    pub fn wait_exit(mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > within {
                let _ = child.kill();
                panic!("meterd did not exit within {within:?}; logs:\n{}", self.logs().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no final checkpoint.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends `signal` and keeps running (SIGHUP).
    pub fn signal_only(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
        assert!(status.success());
    }

    /// Sends `signal` and waits for the exit.
    pub fn signal(mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let status =
            Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }
}

impl Drop for Meterd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An event for customer `customer` of [`PRODUCT`].
pub fn event(customer: &str, dimension: &str, quantity: u64) -> Value {
    json!({ "customer_aws_account_id": customer, "dimension": dimension, "quantity": quantity })
}

/// The record for (customer, dimension, hour) among the emulator's records.
pub fn find<'r>(records: &'r [Value], customer: &str, dimension: &str, hour: i64) -> Option<&'r Value> {
    records.iter().find(|r| {
        r["customer_aws_account_id"] == customer && r["dimension"] == dimension && r["hour"] == hour
    })
}

/// A billed record's allocations as (tags as JSON, quantity), sorted.
pub fn allocations(record: &Value) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = record["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["tags"].to_string(), a["quantity"].as_u64().unwrap()))
        .collect();
    out.sort();
    out
}
