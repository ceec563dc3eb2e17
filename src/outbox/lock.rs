//! `<data_dir>/meterd.lock`: one meterd per data dir.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use super::{LOCK_FILE, OutboxError};

/// Takes the data dir's lock and writes our pid into it, so a second meterd can say who holds it.
pub(super) fn lock(data_dir: &Path) -> Result<File, OutboxError> {
    let path = data_dir.join(LOCK_FILE);
    let lock_err = |source| OutboxError::Lock { path: path.clone(), source };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(OutboxError::Locked { path: data_dir.to_path_buf(), pid: pid.trim().to_string() });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(lock_err(source)),
    }
    file.set_len(0).map_err(lock_err)?;
    file.rewind().map_err(lock_err)?;
    write!(file, "{}", std::process::id()).map_err(lock_err)?;
    Ok(file)
}
