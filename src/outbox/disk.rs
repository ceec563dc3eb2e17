//! The outbox's filesystem: how much room is left on it, and the unfinished snapshot files sled
//! can leave behind when a write is cut short.
//!
//! sled 0.34 writes a snapshot as `snap.<lsn>.generating`, syncs it and renames it to
//! `snap.<lsn>`; the rename is the commit, and the previous snapshot is removed only after it. But
//! on start sled reads the newest `snap.*` file, finished or not, and refuses to start ("Read
//! corrupted data") when that file does not end in its length and CRC. A snapshot write cut short
//! (ENOSPC when sled starts on a full disk, or a crash) leaves exactly such a file, empty or
//! partial, while the previous snapshot and the log are intact: every later start would fail
//! although nothing is damaged. [`remove_unfinished_snapshots`] removes those files before sled
//! opens; a complete one is left for sled to use, as it would.

use std::path::Path;

use super::OutboxError;

/// What sled appends to a snapshot: its uncompressed length (u64) and a CRC32 (u32, little endian).
const SNAPSHOT_TRAILER: usize = 12;

/// Room on the outbox's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// The outbox's size on disk, as sled counts it, with the journal and open-hours files.
    pub bytes: u64,
    /// The receipts archive's size on disk (not part of `bytes`: retention never fills the
    /// outbox).
    pub archive_bytes: u64,
    /// Bytes an unprivileged process may still write on the filesystem (`f_bavail`).
    pub free_bytes: u64,
    /// `storage.min_free_bytes`; 0 when free space is not checked (offline reads).
    pub min_free_bytes: u64,
}

/// Bytes an unprivileged process may still write on the filesystem that holds `path`. meterd runs
/// unprivileged, so the blocks reserved for root do not count.
pub fn free_bytes(path: &Path) -> Result<u64, OutboxError> {
    let stat = rustix::fs::statvfs(path)
        .map_err(|e| OutboxError::FreeSpace { path: path.to_path_buf(), source: e.into() })?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Refuses to go on when less than `min_free_bytes` (0: no check) is free where `data_dir` lives.
pub fn check_free(data_dir: &Path, min_free_bytes: u64) -> Result<(), OutboxError> {
    if min_free_bytes == 0 {
        return Ok(());
    }
    let free = free_bytes(data_dir)?;
    if free < min_free_bytes {
        return Err(OutboxError::NoSpace { path: data_dir.to_path_buf(), free, min_free: min_free_bytes });
    }
    Ok(())
}

/// Whether `bytes` is a snapshot sled would read: longer than its trailer, with a matching CRC.
fn is_complete_snapshot(bytes: &[u8]) -> bool {
    let Some(body_len) = bytes.len().checked_sub(SNAPSHOT_TRAILER).filter(|&n| n > 0) else {
        return false;
    };
    let crc = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes"));
    crc32fast::hash(&bytes[..body_len]) == crc
}

/// Removes every `snap.*.generating` in `outbox_dir` that sled would refuse (see the module
/// header), logging each; returns how many. A missing `outbox_dir` (a new data dir) has none.
pub fn remove_unfinished_snapshots(outbox_dir: &Path) -> Result<usize, OutboxError> {
    let open_err = |e: std::io::Error| OutboxError::Open { path: outbox_dir.to_path_buf(), source: e.into() };
    let entries = match std::fs::read_dir(outbox_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(open_err(err)),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry.map_err(open_err)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !(name.starts_with("snap.") && name.ends_with(".generating")) {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(open_err)?;
        if is_complete_snapshot(&bytes) {
            continue;
        }
        std::fs::remove_file(&path).map_err(open_err)?;
        tracing::warn!(
            file = %path.display(),
            bytes = bytes.len(),
            "removed an unfinished sled snapshot left by an interrupted write (a full disk or a \
             crash); sled starts from its previous snapshot and its log, which hold everything"
        );
        removed += 1;
    }
    if removed > 0 {
        std::fs::File::open(outbox_dir).and_then(|d| d.sync_all()).map_err(OutboxError::Sync)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(body: &[u8]) -> Vec<u8> {
        let mut bytes = body.to_vec();
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        bytes
    }

    #[test]
    fn only_snapshots_sled_would_refuse_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let complete = snapshot(b"a page table");
        let files = [
            ("snap.0000000000000010", complete.clone()),
            ("snap.0000000000000020.generating", Vec::new()),
            ("snap.0000000000000021.generating", complete[..complete.len() - 1].to_vec()),
            ("snap.0000000000000022.generating", complete[..SNAPSHOT_TRAILER].to_vec()),
            ("snap.0000000000000030.generating", complete.clone()),
            ("db", Vec::new()),
        ];
        for (name, bytes) in &files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        assert_eq!(remove_unfinished_snapshots(dir.path()).unwrap(), 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["db", "snap.0000000000000010", "snap.0000000000000030.generating"]);
        assert_eq!(remove_unfinished_snapshots(&dir.path().join("missing")).unwrap(), 0);
    }

    #[test]
    fn free_space_below_the_floor_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        check_free(dir.path(), 0).unwrap();
        check_free(dir.path(), 1).unwrap();
        let err = check_free(dir.path(), u64::MAX).unwrap_err();
        assert!(matches!(err, OutboxError::NoSpace { min_free: u64::MAX, .. }), "{err}");
    }
}
