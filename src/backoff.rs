//! The one backoff of meterd: full jitter under an exponential ceiling. Whatever retries — the
//! submit loop's calls, the fleet's shipments, a listener's accepts — waits anywhere between
//! nothing and the ceiling, so that many meterds (a fleet that lost its database, hosts throttled
//! together) spread their retries instead of retrying in lock-step.

use std::time::Duration;

/// The wait before attempt `attempts + 1` (`attempts` ≥ 1 failed so far): uniform between zero and
/// `base · 2^(attempts-1)`, at most `max`.
pub fn delay(base: Duration, max: Duration, attempts: u32) -> Duration {
    ceiling(base, max, attempts).mul_f64(fastrand::f64())
}

/// The ceiling [`delay`] draws under.
pub fn ceiling(base: Duration, max: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1u32.checked_shl(attempts.clamp(1, 20) - 1).unwrap_or(u32::MAX)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_spread_under_a_ceiling_that_doubles_to_its_max() {
        let (base, max) = (Duration::from_millis(10), Duration::from_secs(1));
        let ceilings: Vec<u128> = (1..=9).map(|n| ceiling(base, max, n).as_millis()).collect();
        assert_eq!(ceilings, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(ceiling(base, max, 0), base, "a first attempt waits as the first failure does");
        for attempts in 1..=9 {
            let delays: Vec<Duration> = (0..200).map(|_| delay(base, max, attempts)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling(base, max, attempts)), "{attempts}: {delays:?}");
            assert!(delays.iter().any(|d| *d != delays[0]), "jittered: {delays:?}");
        }
    }
}
