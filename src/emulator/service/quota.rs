//! The quota: a token bucket per access key, as the service throttles each caller on its own. A
//! key's bucket starts full (`burst` tokens) and refills at `requests_per_second`; a request that
//! finds it empty is answered with `ThrottlingException` before the operation runs, so a throttled
//! request never changes the records.

use std::collections::HashMap;
use std::time::Instant;

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// The buckets of every access key seen since the last reset.
pub(super) struct Quota {
    requests_per_second: f64,
    burst: f64,
    buckets: HashMap<String, Bucket>,
}

impl Quota {
    pub(super) fn new(requests_per_second: f64, burst: u32) -> Self {
        Self { requests_per_second, burst: f64::from(burst), buckets: HashMap::new() }
    }

    /// Takes a token from the caller's bucket; `false` means throttled.
    pub(super) fn admit(&mut self, access_key_id: &str) -> bool {
        self.admit_at(access_key_id, Instant::now())
    }

    fn admit_at(&mut self, access_key_id: &str, now: Instant) -> bool {
        let burst = self.burst;
        let bucket =
            self.buckets.entry(access_key_id.to_string()).or_insert(Bucket { tokens: burst, refilled: now });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.requests_per_second).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets every bucket: each key starts full again.
    pub(super) fn clear(&mut self) {
        self.buckets.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_key_has_its_own_bucket_that_refills() {
        let mut quota = Quota::new(2.0, 3);
        let start = Instant::now();
        let admitted: Vec<bool> = (0..4).map(|_| quota.admit_at("A", start)).collect();
        assert_eq!(admitted, [true, true, true, false]);
        assert!(quota.admit_at("B", start), "another key is not throttled by A's calls");
        let half_second = start + Duration::from_millis(500);
        assert!(quota.admit_at("A", half_second), "2 per second: one token after 0.5 s");
        assert!(!quota.admit_at("A", half_second));
        quota.clear();
        assert!(quota.admit_at("A", half_second), "a reset fills every bucket");
    }
}
