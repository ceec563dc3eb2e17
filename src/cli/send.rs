//! `meterd send`: one event from flags, or NDJSON from a file or stdin, over the ingest socket.
//! Replies are printed as they arrive; the exit code is 1 if any event was refused.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Map, Value, json};

/// One event described by flags.
#[derive(Debug, Default, Clone)]
pub struct EventFlags {
    pub customer_aws_account_id: Option<String>,
    pub customer_identifier: Option<String>,
    pub license_arn: Option<String>,
    pub product_code: Option<String>,
    pub dimension: Option<String>,
    /// As typed: a JSON number when it reads as one, else a string (meterd refuses either form
    /// it does not take, with its own error code).
    pub quantity: Option<String>,
    pub timestamp: Option<String>,
    pub tags: Vec<String>,
    pub id: Option<String>,
}

impl EventFlags {
    pub fn is_empty(&self) -> bool {
        self.customer_aws_account_id.is_none()
            && self.customer_identifier.is_none()
            && self.dimension.is_none()
            && self.quantity.is_none()
    }

    /// The event as one JSON line. Mistakes are left for meterd to answer with its error codes.
    pub fn to_line(&self) -> Result<String, String> {
        let mut event = Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                event.insert(key.to_string(), value);
            }
        };
        put("customer_aws_account_id", self.customer_aws_account_id.clone().map(Value::String));
        put("customer_identifier", self.customer_identifier.clone().map(Value::String));
        put("license_arn", self.license_arn.clone().map(Value::String));
        put("product_code", self.product_code.clone().map(Value::String));
        put("dimension", self.dimension.clone().map(Value::String));
        put("quantity", self.quantity.as_deref().map(number_or_string));
        put(
            "timestamp",
            self.timestamp.clone().map(|t| t.parse::<i64>().map(|n| json!(n)).unwrap_or(Value::String(t))),
        );
        put("id", self.id.clone().map(Value::String));
        if !self.tags.is_empty() {
            let mut tags = Map::new();
            for tag in &self.tags {
                let (k, v) = tag.split_once('=').ok_or_else(|| format!("--tag {tag:?} must be KEY=VALUE"))?;
                tags.insert(k.to_string(), Value::String(v.to_string()));
            }
            event.insert("tags".into(), Value::Object(tags));
        }
        Ok(Value::Object(event).to_string())
    }
}

/// `text` as a JSON number if it is one (`-1`, `2.5`, `1e3`), else as a string.
fn number_or_string(text: &str) -> Value {
    serde_json::from_str::<serde_json::Number>(text)
        .map_or_else(|_| Value::String(text.into()), Value::Number)
}

/// Sends and prints; returns the exit code.
pub fn send(socket: &Path, flags: &EventFlags, file: Option<&PathBuf>) -> ExitCode {
    let input: Box<dyn Read + Send> = if !flags.is_empty() {
        match flags.to_line() {
            Ok(line) => Box::new(std::io::Cursor::new(format!("{line}\n").into_bytes())),
            Err(err) => {
                eprintln!("meterd send: {err}");
                return ExitCode::from(2);
            }
        }
    } else {
        match file.filter(|f| f.as_os_str() != "-") {
            Some(path) => match std::fs::File::open(path) {
                Ok(f) => Box::new(f),
                Err(err) => {
                    eprintln!("meterd send: cannot read {}: {err}", path.display());
                    return ExitCode::from(2);
                }
            },
            None => {
                if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    eprintln!(
                        "meterd send: reading events from the terminal, one JSON object per line, Ctrl-D to end. \
                         For one event give flags instead: --customer-aws-account-id ID --dimension NAME \
                         --quantity N (see meterd send --help)"
                    );
                }
                Box::new(std::io::stdin())
            }
        }
    };
    match exchange(socket, input) {
        Ok((_, 0)) => ExitCode::SUCCESS,
        Ok((_, refused)) => {
            eprintln!("meterd send: {refused} event(s) refused");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("meterd send: {err}");
            ExitCode::from(2)
        }
    }
}

/// Streams `input` to the socket while printing replies; returns (accepted, refused).
fn exchange(socket: &Path, input: Box<dyn Read + Send>) -> Result<(u64, u64), String> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                "; is meterd running? For the sandbox, start it in another terminal with \
                 `meterd run --sandbox` (`cargo run -- run --sandbox` in the source tree) and send with --sandbox"
            }
            _ => "",
        };
        format!("cannot connect to {}: {e}{hint}", socket.display())
    })?;
    let write_half = stream.try_clone().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut out = BufWriter::new(&write_half);
        for line in BufReader::new(input).split(b'\n') {
            let line = line?;
            out.write_all(&line)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        drop(out);
        write_half.shutdown(std::net::Shutdown::Write)
    });
    let (mut accepted, mut refused) = (0, 0);
    let stdout = std::io::stdout();
    let mut printed = stdout.lock();
    for reply in BufReader::new(&stream).lines() {
        let reply = reply.map_err(|e| format!("reading replies: {e}"))?;
        if reply.starts_with("{\"ok\":true") {
            accepted += 1
        } else {
            refused += 1
        }
        let _ = writeln!(printed, "{reply}");
    }
    match writer.join() {
        Ok(Ok(())) => Ok((accepted, refused)),
        Ok(Err(err)) => Err(format!("sending events: {err}")),
        Err(_) => Err("the sending thread panicked".into()),
    }
}
