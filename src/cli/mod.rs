//! The `meterd` subcommands beyond the emulator: `run` (the daemon, or its sandbox) and `send`
//! (a client of the ingest socket).

pub mod admin;
pub mod fleet;
pub mod generate;
pub mod probe;
pub mod run;
pub mod send;

/// Exit code for a configuration error (sysexits' EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
