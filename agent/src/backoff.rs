//! Exponential backoff with full jitter, honouring `Retry-After`.

use std::time::Duration;

use rand::Rng;

pub const BASE: Duration = Duration::from_secs(1);
pub const CAP: Duration = Duration::from_secs(300);
/// The longest `Retry-After` the agent will honour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    base: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BASE, CAP)
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { attempt: 0, base, cap }
    }

    /// The ceiling of the next delay: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay: uniform in `[0, ceiling]`, or the server's
    /// `Retry-After` (bounded) when it gave one.
    pub fn next_delay(&mut self, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        match retry_after {
            Some(ra) => ra.min(MAX_RETRY_AFTER),
            None => Duration::from_millis(rng.random_range(0..=ceiling.as_millis() as u64)),
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// `Retry-After` as delta-seconds (HTTP dates are treated as absent).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A heartbeat interval with ±10% random splay, so a fleet does not beat in step.
pub fn splayed(interval: Duration, rng: &mut impl Rng) -> Duration {
    let ms = interval.as_millis() as f64;
    Duration::from_millis((ms * rng.random_range(0.9..=1.1)) as u64)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn ceilings_double_from_one_second_up_to_five_minutes() {
        let mut b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(b.ceiling().as_secs());
            b.next_delay(None, &mut rng);
        }
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        b.reset();
        assert_eq!(b.ceiling(), BASE);
    }

    #[test]
    fn delays_stay_within_bounds_and_are_spread_by_full_jitter() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut delays = Vec::new();
        for _ in 0..2000 {
            let mut b = Backoff::default();
            for _ in 0..4 {
                b.next_delay(None, &mut rng);
            }
            let ceiling = b.ceiling();
            let d = b.next_delay(None, &mut rng);
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            delays.push(d.as_millis() as f64 / ceiling.as_millis() as f64);
        }
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        let low = delays.iter().filter(|d| **d < 0.25).count();
        let high = delays.iter().filter(|d| **d > 0.75).count();
        assert!((0.45..0.55).contains(&mean), "full jitter is uniform: mean {mean}");
        assert!(low > 400 && high > 400, "both ends of the range are used: {low} {high}");
    }

    #[test]
    fn retry_after_is_honoured_and_bounded() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(parse_retry_after(Some("17")), &mut rng), Duration::from_secs(17));
        assert_eq!(b.next_delay(parse_retry_after(Some("999999")), &mut rng), MAX_RETRY_AFTER);
        assert_eq!(parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(parse_retry_after(None), None);
    }

    #[test]
    fn splay_is_within_ten_percent() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..1000 {
            let d = splayed(Duration::from_secs(60), &mut rng).as_millis();
            assert!((54_000..=66_000).contains(&d), "{d}");
        }
    }
}
