//! One line of the socket protocol, in both modes: the parser must answer every input with an
//! event or a rejection (never panic or hang), and a reply must always be one JSON line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd::config::Mode;
use meterd::ingest::EventParser;

fuzz_target!(|line: &[u8]| {
    let dimensions = ["requests".to_string(), "storage_gb".to_string()];
    for parser in [
        EventParser::new("prod-fuzz", &[], Mode::Batch),
        EventParser::new("", &dimensions, Mode::Batch),
        EventParser::new("prod-fuzz", &dimensions, Mode::MeterUsage),
    ] {
        match parser.parse(line) {
            Ok(event) => {
                assert!(!event.dimension.is_empty() && event.quantity <= i32::MAX as u32);
                assert!(event.tags.windows(2).all(|w| w[0].0 < w[1].0), "tags sorted by key");
            }
            Err(err) => assert!(!err.rejection.message.is_empty()),
        }
    }
});
