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
use std::io::{BufWriter, Read, Write};
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

/// The chunks of generations `base..=last` in order (none when `last` is 0), and their bytes.
/// Unless `read_only`, files outside that range are removed.
pub fn read(dir: &Path, base: u64, last: u64, read_only: bool) -> Result<(Vec<Vec<u8>>, u64), OutboxError> {
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
    let mut chunks = Vec::new();
    let mut bytes = 0;
    for generation in (base.max(1)..=last).filter(|_| last > 0) {
        let path = path(dir, generation);
        let mut content = Vec::new();
        File::open(&path).and_then(|mut f| f.read_to_end(&mut content)).map_err(io(&path))?;
        bytes += content.len() as u64;
        let mut rest = &content[..];
        while !rest.is_empty() {
            let damaged = |reason: &str| OutboxError::OpenFile { path: path.clone(), reason: reason.into() };
            let header = rest.get(..8).ok_or_else(|| damaged("a chunk header cut short"))?;
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
            let chunk = rest.get(8..8 + len).ok_or_else(|| damaged("a chunk cut short"))?;
            if crc32c::crc32c(chunk) != crc {
                return Err(damaged("a chunk checksum mismatch"));
            }
            chunks.push(chunk.to_vec());
            rest = &rest[8 + len..];
        }
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
        assert_eq!(chunks, [b"base-a".to_vec(), b"base-b".to_vec(), b"delta".to_vec()]);
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
        assert_eq!(read(dir.path(), 0, 0, false).unwrap().0.len(), 0, "none named: none read, all removed");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
