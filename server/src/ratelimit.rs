//! Fixed-window counters of failed attempts, keyed by source address and by
//! enrollment token id. Time comes from the injected clock.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

/// Entries kept before expired windows are swept.
const SWEEP_THRESHOLD: usize = 65_536;

#[derive(Debug)]
pub struct RateLimiter {
    window: Duration,
    limit: u32,
    state: Mutex<HashMap<String, (DateTime<Utc>, u32)>>,
}

impl RateLimiter {
    /// At most `limit` failures per key per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self { window, limit, state: Mutex::new(HashMap::new()) }
    }

    /// `Err(seconds)` when any key is over its limit in the current window.
    pub fn check(&self, keys: &[String], now: DateTime<Utc>) -> Result<(), u32> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = 0i64;
        for key in keys {
            if let Some((start, count)) = state.get(key) {
                let end = *start + self.window;
                if now < end && *count >= self.limit {
                    wait = wait.max((end - now).num_seconds().max(1));
                }
            }
        }
        if wait > 0 { Err(u32::try_from(wait).unwrap_or(u32::MAX)) } else { Ok(()) }
    }

    /// How many keys the limiter holds (expired windows included until swept).
    pub fn tracked_keys(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn record_failure(&self, keys: &[String], now: DateTime<Utc>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.len() > SWEEP_THRESHOLD {
            let window = self.window;
            state.retain(|_, (start, _)| *start + window > now);
        }
        for key in keys {
            let entry = state.entry(key.clone()).or_insert((now, 0));
            if entry.0 + self.window <= now {
                *entry = (now, 0);
            }
            entry.1 = entry.1.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).expect("fixture time")
    }

    #[test]
    fn past_the_sweep_threshold_expired_windows_are_dropped_and_live_ones_kept() {
        let limiter = RateLimiter::new(3, Duration::seconds(60));
        for i in 0..=SWEEP_THRESHOLD {
            limiter.record_failure(&[format!("ip:old-{i}")], t0());
        }
        let live = vec!["ip:live".to_owned()];
        for _ in 0..3 {
            limiter.record_failure(&live, t0() + Duration::seconds(59));
        }
        assert_eq!(limiter.tracked_keys(), SWEEP_THRESHOLD + 2, "nothing is swept below the threshold's next write");
        // Exactly one window after the old failures: they have expired.
        limiter.record_failure(&["ip:new".to_owned()], t0() + Duration::seconds(60));
        assert_eq!(limiter.tracked_keys(), 2, "only the live key and the new one remain");
        assert_eq!(limiter.check(&live, t0() + Duration::seconds(61)), Err(58), "the live key kept its count");
    }

    #[test]
    fn failures_past_the_limit_are_refused_until_the_window_ends() {
        let limiter = RateLimiter::new(3, Duration::seconds(60));
        let keys = vec!["ip:127.0.0.1".to_owned()];
        for _ in 0..3 {
            assert_eq!(limiter.check(&keys, t0()), Ok(()));
            limiter.record_failure(&keys, t0());
        }
        assert_eq!(limiter.check(&keys, t0() + Duration::seconds(10)), Err(50));
        assert_eq!(limiter.check(&["ip:127.0.0.2".to_owned()], t0()), Ok(()), "other keys are independent");
        assert_eq!(limiter.check(&keys, t0() + Duration::seconds(60)), Ok(()), "a new window starts clean");
    }
}
