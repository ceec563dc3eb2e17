//! Unix socket files: binding one safely (a stale file replaced, a live one or a non-socket left
//! alone, mode and group set), and resolving a group name. Used by ingest, admin and config.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

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
