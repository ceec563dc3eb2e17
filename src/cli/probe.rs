//! `meterd probe live|ready`: asks a running meterd's `/healthz` or `/readyz` and exits 0 only on
//! 200. Container health checks use it, so the image needs no HTTP client of its own.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::telemetry::metrics::{HEALTHZ_PATH, READYZ_PATH};

const TIMEOUT: Duration = Duration::from_secs(3);

/// Which endpoint to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    /// `/healthz`: the process serves.
    Live,
    /// `/readyz`: it accepts events and nothing blocks it.
    Ready,
}

/// Where to reach the listener `metrics.listen` names: a wildcard address means loopback.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// GETs the probe's path; the status code and body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.trim_end().to_string()).unwrap_or_default();
    Ok((status, body))
}

pub fn probe(config: &Config, which: Probe) -> ExitCode {
    let path = match which {
        Probe::Live => HEALTHZ_PATH,
        Probe::Ready => READYZ_PATH,
    };
    let addr = target(config.metrics.listen);
    match get(addr, path) {
        Ok((200, body)) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("meterd: {path} answered {status}: {body}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("meterd: no answer from http://{addr}{path}: {err}");
            ExitCode::FAILURE
        }
    }
}
