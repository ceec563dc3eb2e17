//! Unix socket files: binding one safely (a stale file replaced, a live one or a non-socket left
//! alone, mode and group set), watching that the file at the path is still the one bound, and
//! resolving a group name. Used by ingest, admin and config.
//!
//! A socket file is known by its device and inode. Each second a [`Watched`] listener compares
//! the file at its path with the one it bound: a file removed (by hand, by a cleaner of /run) is
//! bound again; a file replaced by another (another process's socket) is reported and left alone,
//! and bound again once the path is free. A socket systemd passed is only reported, never bound
//! nor removed. At shutdown only the file meterd bound, still the same inode, is removed.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

/// How often a [`Watched`] listener looks at its socket file.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The gid of `group`: a numeric gid, or a name looked up in /etc/group.
pub fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").map_err(|e| format!("cannot read /etc/group: {e}"))?;
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            Some((fields.next()?, fields.nth(1)?))
        })
        .find(|(name, _)| *name == group)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| format!("no group {group:?} in /etc/group (a numeric gid works too)"))
}

/// Binds `path` for ingest: replaces a stale socket file left by a crash, refuses to touch a live
/// one or anything that is not a socket, and sets the file's permission bits to `mode` (and its
/// group to `group`).
pub fn bind_socket(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener, String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("failed to create socket directory {}: {e}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(format!("socket {} is in use by another process", path.display())),
            Err(_) => {
                tracing::warn!(socket = %path.display(), "replacing stale socket file");
                std::fs::remove_file(path)
                    .map_err(|e| format!("failed to remove stale socket {}: {e}", path.display()))?;
            }
        },
        Ok(_) => {
            return Err(format!("{} exists and is not a socket; refusing to replace it", path.display()));
        }
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(format!("failed to inspect {}: {err}", path.display())),
    }
    let listener =
        UnixListener::bind(path).map_err(|e| format!("failed to bind socket {}: {e}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| format!("failed to set group {gid} on {}: {e}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("failed to set mode {mode:o} on {}: {e}", path.display()))?;
    Ok(listener)
}

/// A socket file: its path, the (device, inode) it had when meterd bound it or was given it, and
/// how to bind it again.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: Option<(u64, u64)>,
    /// Mode and group to bind it again with; `None` for a socket systemd passed, which belongs to
    /// systemd: never bound again nor removed by meterd.
    rebind: Option<(u32, Option<u32>)>,
}

/// What is at a [`SocketFile`]'s path now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// The file bound (or passed) at start.
    Ours,
    Missing,
    /// Another file: another process's socket, or anything else.
    Replaced,
}

fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    std::fs::symlink_metadata(path).map(|meta| (meta.dev(), meta.ino()))
}

impl SocketFile {
    /// Binds `path` as [`bind_socket`] does and remembers the file it created.
    pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<(UnixListener, SocketFile), String> {
        let listener = bind_socket(path, mode, group)?;
        let identity = identity(path).map_err(|e| format!("failed to inspect {}: {e}", path.display()))?;
        let file =
            SocketFile { path: path.to_path_buf(), identity: Some(identity), rebind: Some((mode, group)) };
        Ok((listener, file))
    }

    /// The file of a socket systemd passed (socket activation): the path it is bound to, as it
    /// is now. A socket without a path, or whose file meterd cannot see, is not watched.
    pub fn passed(listener: &std::os::unix::net::UnixListener) -> SocketFile {
        let address = listener.local_addr().ok();
        let path = address.as_ref().and_then(|a| a.as_pathname()).map(Path::to_path_buf).unwrap_or_default();
        let identity = identity(&path).ok();
        SocketFile { path, identity, rebind: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state(&self) -> FileState {
        if self.identity.is_none() {
            // Not watched (see `passed`).
            return FileState::Ours;
        }
        match identity(&self.path) {
            Ok(now) if Some(now) == self.identity => FileState::Ours,
            Ok(_) => FileState::Replaced,
            Err(err) if err.kind() == ErrorKind::NotFound => FileState::Missing,
            // Unreadable (a directory meterd may no longer search): clients cannot reach it either.
            Err(_) => FileState::Replaced,
        }
    }

    /// Binds the path again, if meterd bound it in the first place.
    fn bind_again(&mut self) -> Option<Result<UnixListener, String>> {
        let (mode, group) = self.rebind?;
        Some(SocketFile::bind(&self.path, mode, group).map(|(listener, file)| {
            self.identity = file.identity;
            listener
        }))
    }

    /// Removes the file if meterd bound it and it is still that file; another process's socket
    /// at the same path is left alone.
    pub fn remove(&self) {
        if self.rebind.is_none() {
            return;
        }
        match self.state() {
            FileState::Ours => {
                if let Err(err) = std::fs::remove_file(&self.path) {
                    tracing::warn!(%err, socket = %self.path.display(), "failed to remove socket file");
                }
            }
            FileState::Missing => {}
            FileState::Replaced => tracing::warn!(
                socket = %self.path.display(),
                "not removing the socket file: it is no longer the one meterd bound"
            ),
        }
    }
}

/// A listener and its socket file, watched (see the module header).
pub struct Watched {
    listener: UnixListener,
    file: SocketFile,
    /// `ingest` or `admin`, for log lines.
    name: &'static str,
    /// Why clients cannot reach this listener through its path, while they cannot.
    trouble: Option<String>,
    tick: tokio::time::Interval,
}

/// What [`Watched::next`] saw.
pub enum Accepted {
    Connection(std::io::Result<UnixStream>),
    /// Clients can no longer reach the listener through its path (`Some`, why), or can again.
    Trouble(Option<String>),
}

impl Watched {
    pub fn new(listener: UnixListener, file: SocketFile, name: &'static str) -> Self {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + WATCH_EVERY, WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { listener, file, name, trouble: None, tick }
    }

    /// The next connection, or a change in whether clients can reach this listener.
    pub async fn next(&mut self) -> Accepted {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => return Accepted::Connection(accepted.map(|(s, _)| s)),
                _ = self.tick.tick() => {
                    let trouble = self.check();
                    if trouble != self.trouble {
                        match &trouble {
                            Some(why) => tracing::error!(socket = %self.file.path().display(), "{why}"),
                            None => tracing::info!(socket = %self.file.path().display(), "the {} socket file is this meterd's again; clients reach it", self.name),
                        }
                        self.trouble = trouble.clone();
                        return Accepted::Trouble(trouble);
                    }
                }
            }
        }
    }

    /// Why clients cannot reach the listener now, after binding a missing file again.
    fn check(&mut self) -> Option<String> {
        let (name, path) = (self.name, self.file.path().display().to_string());
        match self.file.state() {
            FileState::Ours => None,
            FileState::Replaced => Some(format!(
                "the {name} socket file {path} was replaced by another file (another meterd?); clients reach that one, not this meterd"
            )),
            FileState::Missing => match self.file.bind_again() {
                Some(Ok(listener)) => {
                    self.listener = listener;
                    // After a replacement, the path came free again: `next` logs the recovery.
                    if self.trouble.is_none() {
                        tracing::error!(socket = %path, "the {name} socket file {path} was removed; bound it again");
                    }
                    None
                }
                Some(Err(err)) => {
                    Some(format!("the {name} socket file {path} is gone and could not be bound again: {err}"))
                }
                None => Some(format!(
                    "the {name} socket file {path} was removed; it belongs to systemd (socket activation): restart meterd.socket and meterd"
                )),
            },
        }
    }

    /// Stops listening and removes the socket file if it is still the one meterd bound.
    pub fn close(self) {
        drop(self.listener);
        self.file.remove();
    }
}
