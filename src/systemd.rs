//! The two systemd protocols meterd speaks, both optional and inert outside systemd:
//!
//! - **Readiness and watchdog** (`sd_notify`): with `NOTIFY_SOCKET` set, meterd sends `READY=1`
//!   once replay is done and the socket accepts events, `STOPPING=1` when shutdown starts, and
//!   `WATCHDOG=1` from `READY=1` on (systemd arms the watchdog when start-up completes) at half
//!   the `WATCHDOG_USEC` interval while the commit thread keeps turning.
//! - **Socket activation** (`LISTEN_FDS`/`LISTEN_PID`): systemd binds the ingest socket and passes
//!   it as fd 3, so clients' connections wait in the kernel's backlog while meterd restarts.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends state lines to systemd's notification socket, if there is one.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&path),
            };
            match (addr, UnixDatagram::unbound()) {
                (Ok(addr), Ok(socket)) => Some((socket, addr)),
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!(%err, notify_socket = %path, "cannot use NOTIFY_SOCKET");
                    None
                }
            }
        });
        Self { socket }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self { socket: None }
    }

    /// Sends one state line, such as `READY=1`. Failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(err) = socket.send_to_addr(state.as_bytes(), addr)
        {
            tracing::warn!(%err, state, "sd_notify failed");
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when it is set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// The ingest socket systemd passed (fd 3, `LISTEN_FDS=1`, `LISTEN_PID` = this process), if any.
/// Must run before any other thread starts: it clears the two variables, as `sd_listen_fds` does.
pub fn take_activated_socket() -> Result<Option<std::os::unix::net::UnixListener>, String> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    if fds.len() > 1 {
        return Err(format!("systemd passed {} sockets; meterd.socket must declare exactly one", fds.len()));
    }
    fds.take_unix_listener(0)
        .map_err(|err| format!("the socket systemd passed is not a listening Unix stream socket: {err}"))
}
