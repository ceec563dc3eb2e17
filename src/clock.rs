//! meterd's one source of wall-clock time. Hours, deadlines and event timestamps are all read
//! from here, so that tests can move meterd's "now" (together with the emulator's) across an hour
//! boundary without waiting for it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable with a signed offset in seconds added to the system clock. For tests and
/// rehearsals only; meterd logs a warning when it is set.
pub const OFFSET_ENV: &str = "METERD_TEST_CLOCK_OFFSET";

/// The wall clock, shifted by a fixed offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    offset_secs: i64,
}

impl Clock {
    pub fn with_offset(offset_secs: i64) -> Self {
        Self { offset_secs }
    }

    /// The system clock, shifted by [`OFFSET_ENV`] when that is set to a whole number of seconds.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(OFFSET_ENV) {
            Err(_) => Ok(Self::default()),
            Ok(text) => text
                .trim()
                .parse()
                .map(Self::with_offset)
                .map_err(|_| format!("{OFFSET_ENV}={text:?} is not a whole number of seconds")),
        }
    }

    pub fn offset_secs(&self) -> i64 {
        self.offset_secs
    }

    /// Now, in milliseconds since the epoch.
    pub fn now_millis(&self) -> i64 {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        since + self.offset_secs * 1000
    }

    /// Now, in whole seconds since the epoch.
    pub fn now(&self) -> i64 {
        self.now_millis().div_euclid(1000)
    }
}

/// The start of the UTC hour holding `secs`.
pub fn hour_of(secs: i64) -> i64 {
    secs - secs.rem_euclid(3600)
}
