//! Every on-disk record type of the outbox: whatever bytes a key and value hold, decoding them
//! must give a value or `OutboxError::Corrupt`, never a panic or a hang. The first byte picks the
//! kind of key (checkpoint, log, open hour, client id, sealed record, or anything else), so the
//! fuzzer reaches every decoder; the rest is split into key and value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd::outbox::{OutboxError, Recovered};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let Some((&key_len, rest)) = rest.split_first() else { return };
    let (key_tail, value) = rest.split_at(usize::from(key_len).min(rest.len()));
    let key: Vec<u8> = match selector % 6 {
        0 => b"mcheckpoint".to_vec(),
        1 => [b"l".as_slice(), key_tail].concat(),
        2 => [b"o".as_slice(), key_tail].concat(),
        3 => [b"i".as_slice(), key_tail].concat(),
        4 => [b"r".as_slice(), key_tail].concat(),
        _ => key_tail.to_vec(),
    };
    let mut recovered = Recovered::default();
    match recovered.absorb(&key, value) {
        Ok(()) | Err(OutboxError::Corrupt { .. }) => {}
        Err(other) => panic!("decoding reported a non-corruption error: {other}"),
    }
});
