//! `<data_dir>/watermark`: how meterd notices that its files hold less than it acknowledged.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{FORMAT_VERSION, OutboxError};

/// The watermark file: [`WATERMARK_VERSION`], then the highest log sequence known durable and the
/// highest durable checkpoint's, each u64 big-endian. Version 1 (an older meterd's) has only the
/// first.
pub const WATERMARK_FILE: &str = "watermark";
const WATERMARK_VERSION: u8 = 2;

/// The watermark's two sequences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// Every group up to it was made durable (and may have been acknowledged).
    pub durable: u64,
    /// A checkpoint holding every group up to it was made durable, and the journal before it may
    /// be gone.
    pub checkpoint: u64,
}

impl Marks {
    pub fn bytes(&self) -> [u8; 17] {
        let mut bytes = [WATERMARK_VERSION; 17];
        bytes[1..9].copy_from_slice(&self.durable.to_be_bytes());
        bytes[9..].copy_from_slice(&self.checkpoint.to_be_bytes());
        bytes
    }
}

/// Opens the watermark and reads what it names (zeros for a new one); errors name `named`.
pub fn open_watermark(path: &Path, named: &Path) -> Result<(File, Marks), OutboxError> {
    let unreadable = |reason: String| OutboxError::Watermark { path: named.to_path_buf(), reason };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| unreadable(e.to_string()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| unreadable(e.to_string()))?;
    let be = |bytes: &[u8]| u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
    let marks = match bytes.as_slice() {
        [] => Marks::default(),
        [FORMAT_VERSION, seq @ ..] if seq.len() == 8 => Marks { durable: be(seq), checkpoint: 0 },
        [WATERMARK_VERSION, rest @ ..] if rest.len() == 16 => {
            Marks { durable: be(&rest[..8]), checkpoint: be(&rest[8..]) }
        }
        _ => return Err(unreadable(format!("{} bytes, not a meterd watermark", bytes.len()))),
    };
    Ok((file, marks))
}
