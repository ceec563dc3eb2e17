//! meterd's one source of wall-clock time. Hours, deadlines and event timestamps are all read
//! from here, so that tests can move meterd's "now" (together with the emulator's) across an hour
//! boundary without waiting for it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable with a signed offset in seconds added to the system clock. For tests and
/// rehearsals only; meterd logs a warning when it is set.
pub const OFFSET_ENV: &str = "METERD_TEST_CLOCK_OFFSET";

/// The wall clock, shifted by a fixed offset; or, for tests, a clock that runs with tokio's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    offset_secs: i64,
    /// [`Clock::driven`]: the epoch milliseconds it read at this instant of tokio's clock.
    anchor: Option<(i64, tokio::time::Instant)>,
}

impl Clock {
    pub fn with_offset(offset_secs: i64) -> Self {
        Self { offset_secs, anchor: None }
    }

    /// A clock that reads `epoch_secs` now and then moves with tokio's clock: under tokio's
    /// paused time (the tests of the submit loop), meterd's "now" moves only when the test's
    /// time does, and deadlines come without waiting for them.
    pub fn driven(epoch_secs: i64) -> Self {
        Self { offset_secs: 0, anchor: Some((epoch_secs * 1000, tokio::time::Instant::now())) }
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
        if let Some((millis, at)) = self.anchor {
            return millis + at.elapsed().as_millis() as i64 + self.offset_secs * 1000;
        }
        let since = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        since + self.offset_secs * 1000
    }

    /// Now, in whole seconds since the epoch.
    pub fn now(&self) -> i64 {
        self.now_millis().div_euclid(1000)
    }
}

/// When the service closes the billing month of `hour`: 06:00 UTC on the 1st of the next month.
/// No record of that month is accepted after it, whatever the operation's window says.
pub fn month_close(hour: i64) -> i64 {
    let date =
        time::OffsetDateTime::from_unix_timestamp(hour).map_or(time::OffsetDateTime::UNIX_EPOCH, |d| d);
    let (year, month) = match date.month() {
        time::Month::December => (date.year() + 1, time::Month::January),
        month => (date.year(), month.next()),
    };
    let first = time::Date::from_calendar_date(year, month, 1).expect("the 1st of a month exists");
    first.with_hms(6, 0, 0).expect("06:00 exists").assume_utc().unix_timestamp()
}

/// The last moment the service accepts a record for `hour`: `window` seconds after the hour
/// starts (24 hours for BatchMeterUsage, 6 for MeterUsage), and never after its month closes.
pub fn deadline(hour: i64, window: i64) -> i64 {
    (hour + window).min(month_close(hour))
}

/// Whether two instants fall in the same UTC calendar month (one billing month).
pub fn same_month(a: i64, b: i64) -> bool {
    let month = |secs| time::OffsetDateTime::from_unix_timestamp(secs).map(|d| (d.year(), d.month())).ok();
    month(a) == month(b)
}

/// The start of the UTC hour holding `secs`.
pub fn hour_of(secs: i64) -> i64 {
    secs - secs.rem_euclid(3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;
    /// 2026-11-30T23:00:00Z and 2026-12-01T00:00:00Z.
    const NOV_30_23H: i64 = 1_796_079_600;
    const DEC_1: i64 = NOV_30_23H + H;

    #[test]
    fn the_month_closes_at_six_on_the_first() {
        assert_eq!(month_close(NOV_30_23H), DEC_1 + 6 * H);
        assert_eq!(month_close(DEC_1), 1_798_761_600 + 6 * H, "2027-01-01T06:00Z");
        assert_eq!(month_close(1_798_758_000), 1_798_761_600 + 6 * H, "Dec 31 23:00 closes in January");
    }

    #[test]
    fn a_deadline_is_the_window_or_the_month_close_whichever_comes_first() {
        assert_eq!(deadline(NOV_30_23H, 24 * H), DEC_1 + 6 * H);
        assert_eq!(deadline(NOV_30_23H - 20 * H, 24 * H), DEC_1 + 3 * H, "the window, before the close");
        assert_eq!(deadline(NOV_30_23H - 20 * H, 6 * H), NOV_30_23H - 14 * H);
        assert_eq!(deadline(DEC_1, 24 * H), DEC_1 + 24 * H);
        assert!(same_month(NOV_30_23H, NOV_30_23H + 3599));
        assert!(!same_month(NOV_30_23H, DEC_1));
    }
}
