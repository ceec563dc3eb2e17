//! The journal's recovery on any bytes: whatever a segment file holds (its header or records torn,
//! flipped or made up), reading it back gives the groups or `JournalError::Corrupt`, never a panic
//! or a hang. The first byte picks how the bytes are used: as the whole segment, or after a valid
//! header so that the fuzzer reaches the records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd::journal::{Journal, JournalError};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let dir = std::env::temp_dir().join(format!("meterd-fuzz-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut segment = Vec::new();
    if selector % 2 == 1 {
        // A valid header for segment 0 (see the layout table in src/journal/mod.rs).
        let mut header = [0u8; 32];
        header[..8].copy_from_slice(b"meterdJ\0");
        header[8] = 1;
        header[20..28].copy_from_slice(&(2u64 << 20).to_le_bytes());
        let crc = crc32c::crc32c(&header[..28]);
        header[28..].copy_from_slice(&crc.to_le_bytes());
        segment.extend_from_slice(&header);
    }
    segment.extend_from_slice(rest);
    std::fs::write(dir.join("0000000000000000.seg"), &segment).unwrap();
    match Journal::read(&dir, 0) {
        Ok(_) | Err(JournalError::Corrupt { .. }) => {}
        Err(other) => panic!("reading a segment reported a non-corruption error: {other}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
});
