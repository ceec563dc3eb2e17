//! The open hours' checkpoint files, `<data_dir>/open/<generation as 16 hex digits>.open`, kept
//! out of sled so that a million open records cost sled nothing: each checkpoint that changed an
//! open record streams the changed totals (or, for a full write, all of them) into a new
//! generation's file, synced before the sled checkpoint that names it.
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | chunk length, u32 LE |
//! | 4 | 4 | CRC32C of the chunk |
//! | 8 | len | a chunk: [`super::FORMAT_VERSION`], then postcard `Vec<SealedRecord>` of totals |
//! | … | | the next chunk, to the end of the file |
//!
//! The sled checkpoint ([`super::Meta`]) names the live generations, `open_base..=open_last`:
//! replay applies them in order, a later total replacing an earlier one for the same key. A file
//! past `open_last` was written for a checkpoint that never became durable, and one before
//! `open_base` was replaced by a full write: both are removed on open. A live file that does not
//! read back whole is damage, and meterd refuses to start.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::OutboxError;

pub fn path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{generation:016x}.open"))
}

/// One generation's file being written.
pub struct OpenFile {
    path: PathBuf,
    out: BufWriter<File>,
    pub bytes: u64,
}

impl OpenFile {
    pub fn create(dir: &Path, generation: u64) -> std::io::Result<OpenFile> {
        std::fs::create_dir_all(dir)?;
        let path = path(dir, generation);
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path)?;
        Ok(OpenFile { path, out: BufWriter::with_capacity(1 << 20, file), bytes: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn chunk(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(chunk.len()).expect("a chunk is at most 64 KiB");
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&crc32c::crc32c(chunk).to_le_bytes())?;
        self.out.write_all(chunk)?;
        self.bytes += 8 + chunk.len() as u64;
        Ok(())
    }

    /// Flushes and syncs the file and its directory: after this, a checkpoint may name it.
    pub fn finish(self) -> std::io::Result<u64> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(self.bytes)
    }
}

/// The live generations' files, checked on open and read again, a chunk at a time, when the open
/// hours are restored: a restart never holds them whole (a full write of a million open records
/// is tens of MiB).
#[derive(Debug, Default)]
pub struct OpenChunks {
    files: Vec<PathBuf>,
}

impl OpenChunks {
    /// Calls `each` with every chunk, in order, one at a time.
    pub fn for_each(&self, mut each: impl FnMut(&[u8])) -> Result<(), OutboxError> {
        let mut chunk = Vec::new();
        for path in &self.files {
            read_file(path, &mut chunk, &mut each)?;
        }
        Ok(())
    }
}

/// Reads the chunks of the file at `path` into `chunk`, one after the other, and calls `each`
/// with each; returns the file's length. Anything but whole chunks to the end is damage.
fn read_file(path: &Path, chunk: &mut Vec<u8>, each: &mut impl FnMut(&[u8])) -> Result<u64, OutboxError> {
    let damaged = |reason: &str| OutboxError::OpenFile { path: path.to_path_buf(), reason: reason.into() };
    let io = |source: std::io::Error| OutboxError::OpenFile {
        path: path.to_path_buf(),
        reason: source.to_string(),
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut file = BufReader::with_capacity(256 * 1024, file);
    let mut at = 0;
    while at < len {
        let mut header = [0u8; 8];
        if len - at < 8 {
            return Err(damaged("a chunk header cut short"));
        }
        file.read_exact(&mut header).map_err(io)?;
        let size = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if size > len - at - 8 {
            return Err(damaged("a chunk cut short"));
        }
        chunk.resize(size as usize, 0);
        file.read_exact(chunk).map_err(io)?;
        if crc32c::crc32c(chunk) != crc {
            return Err(damaged("a chunk checksum mismatch"));
        }
        each(chunk);
        at += 8 + size;
    }
    Ok(len)
}

/// The chunks of generations `base..=last` in order (none when `last` is 0), checked, and their
/// bytes. Unless `read_only`, files outside that range are removed.
pub fn read(dir: &Path, base: u64, last: u64, read_only: bool) -> Result<(OpenChunks, u64), OutboxError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| OutboxError::OpenFile { path, reason: source.to_string() }
    };
    if !read_only && dir.exists() {
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let generation = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".open"))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
            if generation.is_none_or(|g| last == 0 || g < base || g > last) {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
    }
    let mut chunks = OpenChunks::default();
    let mut bytes = 0;
    let mut buffer = Vec::new();
    for generation in (base.max(1)..=last).filter(|_| last > 0) {
        let path = path(dir, generation);
        bytes += read_file(&path, &mut buffer, &mut |_| {})?;
        chunks.files.push(path);
    }
    Ok((chunks, bytes))
}

/// Removes the files of generations before `base` (replaced by a full write made durable).
pub fn remove_before(dir: &Path, base: u64) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let generation = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".open"))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok());
        if generation.is_some_and(|g| g < base) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &OpenChunks) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        chunks.for_each(|chunk| out.push(chunk.to_vec())).unwrap();
        out
    }

    fn write(dir: &Path, generation: u64, chunks: &[&[u8]]) {
        let mut file = OpenFile::create(dir, generation).unwrap();
        for chunk in chunks {
            file.chunk(chunk).unwrap();
        }
        file.finish().unwrap();
    }

    #[test]
    fn live_generations_read_back_in_order_and_the_rest_is_removed_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 1, &[b"old"]);
        write(dir.path(), 2, &[b"base-a", b"base-b"]);
        write(dir.path(), 3, &[b"delta"]);
        write(dir.path(), 4, &[b"never named"]);
        let (chunks, bytes) = read(dir.path(), 2, 3, true).unwrap();
        assert_eq!(all(&chunks), [b"base-a".to_vec(), b"base-b".to_vec(), b"delta".to_vec()]);
        assert_eq!(bytes, 3 * 8 + 6 + 6 + 5);
        assert!(path(dir.path(), 1).exists(), "a read-only read removes nothing");
        read(dir.path(), 2, 3, false).unwrap();
        assert!(!path(dir.path(), 1).exists() && !path(dir.path(), 4).exists());
        assert!(path(dir.path(), 2).exists() && path(dir.path(), 3).exists());
        let mut damaged = std::fs::read(path(dir.path(), 3)).unwrap();
        damaged[9] ^= 1;
        std::fs::write(path(dir.path(), 3), &damaged).unwrap();
        assert!(matches!(read(dir.path(), 2, 3, true), Err(OutboxError::OpenFile { .. })));
        std::fs::write(path(dir.path(), 3), &damaged[..10]).unwrap();
        assert!(matches!(read(dir.path(), 2, 3, true), Err(OutboxError::OpenFile { .. })));
        assert!(
            all(&read(dir.path(), 0, 0, false).unwrap().0).is_empty(),
            "none named: none read, all removed"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
