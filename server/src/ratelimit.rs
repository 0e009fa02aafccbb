//! Fixed-window counters of failed enrollment exchanges. Time comes from the
//! injected clock.
//!
//! Failures count against the source address, and against an enrollment
//! token id only together with the source that failed on it: someone who
//! sees a token id (viewers and events carry it) cannot lock its holder out
//! from another address. A slot is taken *before* the work, atomically, and
//! given back when the exchange succeeds, so a burst of parallel failures
//! cannot run past the limit while earlier ones are still in flight. Slots
//! in flight are counted apart from failures: a key filled only by attempts
//! in flight (a fleet enrolling at once behind one address) is told to
//! retry in a second, one filled by failures to wait for the window's end.
//!
//! One process keeps its counters in memory ([`RateLimiter`]); replicas on
//! one PostgreSQL database keep them in the store ([`ExchangeLimiter::Shared`]),
//! so two replicas do not double an attacker's budget. Both decide with
//! [`take_slots`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::store::{Store, StoreResult};

/// Entries kept before expired windows are swept.
const SWEEP_THRESHOLD: usize = 65_536;

#[derive(Debug)]
pub struct RateLimiter {
    window: Duration,
    limit: u32,
    state: Mutex<HashMap<String, Window>>,
}

/// One key's current window: when it started, the failures counted in it
/// and the attempts still in flight that took a slot in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub failures: u32,
    pub in_flight: u32,
}

/// A slot taken on every key of one attempt; [`RateLimiter::settle`] keeps it
/// (a failure) or gives it back (a success).
#[derive(Debug)]
#[must_use = "settle the permit: a failure keeps the slot, a success returns it"]
pub struct Permit {
    keys: Vec<String>,
    window_starts: Vec<DateTime<Utc>>,
}

/// The keys one exchange attempt counts against.
pub fn exchange_keys(source: Option<IpAddr>, token_id: Option<Uuid>) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    if let Some(ip) = source {
        keys.push(format!("src:{ip}"));
        if let Some(id) = token_id {
            keys.push(format!("token:{id}@{ip}"));
        }
    } else if let Some(id) = token_id {
        // No source known (not over TCP): the token id alone.
        keys.push(format!("token:{id}"));
    }
    keys
}

impl RateLimiter {
    /// At most `limit` failures per key per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self { window, limit, state: Mutex::new(HashMap::new()) }
    }

    /// Takes one slot on every key, or none: `Err(seconds to wait)` when any
    /// key has no slot left in its current window (failures and attempts
    /// still in flight both hold slots).
    pub fn acquire(&self, keys: &[String], now: DateTime<Utc>) -> Result<Permit, u32> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.len() > SWEEP_THRESHOLD {
            // An ended window holds nothing: the next attempt starts a new
            // one, and a settle that finds no entry has nothing to give back
            // (an attempt whose request was dropped never settles).
            let window = self.window;
            state.retain(|_, w| w.start + window > now);
        }
        let current: Vec<_> = keys.iter().map(|k| state.get(k).copied()).collect();
        let taken = take_slots(&current, self.limit, self.window, now)?;
        for (key, entry) in keys.iter().zip(&taken) {
            state.insert(key.clone(), *entry);
        }
        Ok(Permit { keys: keys.to_vec(), window_starts: taken.iter().map(|w| w.start).collect() })
    }

    /// A failed attempt turns its slots into failures; a successful one
    /// gives them back (`settle_slot`).
    pub fn settle(&self, permit: Permit, failed: bool) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (key, start) in permit.keys.iter().zip(&permit.window_starts) {
            if let Some(entry) = state.get_mut(key) {
                *entry = settle_slot(*entry, *start, failed);
            }
        }
    }

    /// How many keys the limiter holds (expired windows included until swept).
    pub fn tracked_keys(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The rule, for one attempt: given each key's current window, either
/// every key's window after taking one slot on each, or the seconds to
/// wait when any key has no slot left (failures and attempts in flight both
/// hold slots). A key full of failures waits for its window's end; one
/// that is full only because attempts are still in flight, a second (a
/// slot frees as soon as one of them ends). A window that has ended starts
/// again at `now`.
pub fn take_slots(
    current: &[Option<Window>],
    limit: u32,
    window: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<Window>, u32> {
    let mut wait = 0i64;
    for w in current.iter().flatten() {
        let end = w.start + window;
        if now < end && w.failures.saturating_add(w.in_flight) >= limit {
            let until = if w.failures >= limit { (end - now).num_seconds().max(1) } else { 1 };
            wait = wait.max(until);
        }
    }
    if wait > 0 {
        return Err(u32::try_from(wait).unwrap_or(u32::MAX));
    }
    Ok(current
        .iter()
        .map(|entry| match entry {
            Some(w) if w.start + window > now => Window { in_flight: w.in_flight.saturating_add(1), ..*w },
            _ => Window { start: now, failures: 0, in_flight: 1 },
        })
        .collect())
}

/// A key's window once an attempt that took a slot in the window starting
/// at `taken_in` ended: the slot is given back, and counted as a failure if
/// the attempt failed. A later window is left as it is (it starts clean).
pub fn settle_slot(current: Window, taken_in: DateTime<Utc>, failed: bool) -> Window {
    if current.start != taken_in {
        return current;
    }
    Window {
        start: current.start,
        failures: current.failures.saturating_add(u32::from(failed)),
        in_flight: current.in_flight.saturating_sub(1),
    }
}

/// Where the counters live: in this process, or in the store every
/// replica shares.
pub enum ExchangeLimiter {
    Process(RateLimiter),
    Shared { store: Arc<dyn Store>, limit: u32, window: Duration },
}

impl std::fmt::Debug for ExchangeLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Process(_) => "ExchangeLimiter::Process",
            Self::Shared { .. } => "ExchangeLimiter::Shared",
        })
    }
}

impl ExchangeLimiter {
    /// Shared counters when the store can keep them (PostgreSQL, where
    /// several replicas may run), this process's otherwise.
    pub fn for_store(store: &Arc<dyn Store>, limit: u32, window: Duration) -> Self {
        if store.shares_failure_counters() {
            Self::Shared { store: store.clone(), limit, window }
        } else {
            Self::Process(RateLimiter::new(limit, window))
        }
    }

    /// [`RateLimiter::acquire`], on whichever counters this limiter keeps.
    /// The store's failure fails the attempt closed.
    pub async fn acquire(&self, keys: &[String], now: DateTime<Utc>) -> StoreResult<Result<Permit, u32>> {
        match self {
            Self::Process(limiter) => Ok(limiter.acquire(keys, now)),
            Self::Shared { store, limit, window } => Ok(store
                .take_failure_slots(keys, *limit, *window, now)
                .await?
                .map(|window_starts| Permit { keys: keys.to_vec(), window_starts })),
        }
    }

    /// [`RateLimiter::settle`]. A slot the store could not settle stays in
    /// flight until its window ends: the error costs the caller budget,
    /// never the limit strength.
    pub async fn settle(&self, permit: Permit, failed: bool) {
        match self {
            Self::Process(limiter) => limiter.settle(permit, failed),
            Self::Shared { store, .. } => {
                let slots: Vec<_> = permit.keys.into_iter().zip(permit.window_starts).collect();
                if let Err(e) = store.settle_failure_slots(&slots, failed).await {
                    tracing::warn!(error = %e, "could not settle an exchange's rate-limit slot");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).expect("fixture time")
    }

    fn fail(l: &RateLimiter, keys: &[String], now: DateTime<Utc>) -> Result<(), u32> {
        l.acquire(keys, now).map(|p| l.settle(p, true))
    }

    #[test]
    fn past_the_sweep_threshold_expired_windows_are_dropped_and_live_ones_kept() {
        let limiter = RateLimiter::new(3, Duration::seconds(60));
        // An attempt whose request was dropped mid-exchange never settles.
        let abandoned = limiter.acquire(&["src:abandoned".to_owned()], t0()).expect("a slot");
        drop(abandoned);
        for i in 0..SWEEP_THRESHOLD {
            fail(&limiter, &[format!("src:old-{i}")], t0()).expect("under the limit");
        }
        let live = vec!["src:live".to_owned()];
        for _ in 0..3 {
            fail(&limiter, &live, t0() + Duration::seconds(59)).expect("under the limit");
        }
        assert_eq!(
            limiter.tracked_keys(),
            SWEEP_THRESHOLD + 2,
            "nothing is swept below the threshold's next write"
        );
        // Exactly one window after the old failures: they have expired,
        // and so has the abandoned attempt's slot.
        fail(&limiter, &["src:new".to_owned()], t0() + Duration::seconds(60)).expect("new key");
        assert_eq!(limiter.tracked_keys(), 2, "only the live key and the new one remain");
        assert_eq!(
            limiter.acquire(&live, t0() + Duration::seconds(61)).map(|_| ()),
            Err(58),
            "the live key kept its count"
        );
    }

    #[test]
    fn failures_past_the_limit_are_refused_until_the_window_ends() {
        let limiter = RateLimiter::new(3, Duration::seconds(60));
        let keys = vec!["src:127.0.0.1".to_owned()];
        for _ in 0..3 {
            fail(&limiter, &keys, t0()).expect("under the limit");
        }
        assert_eq!(limiter.acquire(&keys, t0() + Duration::seconds(10)).map(|_| ()), Err(50));
        assert!(limiter.acquire(&["src:127.0.0.2".to_owned()], t0()).is_ok(), "other keys are independent");
        assert!(limiter.acquire(&keys, t0() + Duration::seconds(60)).is_ok(), "a new window starts clean");
    }

    #[test]
    fn slots_are_taken_before_the_work_so_a_burst_in_flight_stops_at_the_limit() {
        let limiter = RateLimiter::new(20, Duration::seconds(60));
        let keys = exchange_keys(Some("198.51.100.7".parse().expect("ip")), Some(Uuid::nil()));
        // 100 attempts all in flight at once, none settled yet.
        let permits: Vec<_> = (0..100).filter_map(|_| limiter.acquire(&keys, t0()).ok()).collect();
        assert_eq!(permits.len(), 20, "exactly the limit is let through");
        for p in permits {
            limiter.settle(p, true);
        }
    }

    #[test]
    fn a_key_full_of_attempts_in_flight_is_retried_in_a_second_and_one_full_of_failures_at_the_window_end() {
        let limiter = RateLimiter::new(3, Duration::seconds(60));
        let keys = vec!["src:192.0.2.9".to_owned()];
        let in_flight: Vec<_> = (0..3).map(|_| limiter.acquire(&keys, t0()).expect("a slot")).collect();
        assert_eq!(limiter.acquire(&keys, t0()).map(|_| ()), Err(1), "three in flight: retry in a second");
        let mut in_flight = in_flight.into_iter();
        limiter.settle(in_flight.next().expect("permit"), false);
        assert!(
            limiter.acquire(&keys, t0()).map(|p| limiter.settle(p, false)).is_ok(),
            "a success frees a slot"
        );
        for p in in_flight {
            limiter.settle(p, true);
        }
        fail(&limiter, &keys, t0() + Duration::seconds(5)).expect("the third failure");
        assert_eq!(
            limiter.acquire(&keys, t0() + Duration::seconds(10)).map(|_| ()),
            Err(50),
            "three failures: wait for the window's end"
        );
    }

    #[test]
    fn a_success_gives_its_slot_back_and_a_failure_keeps_it() {
        let limiter = RateLimiter::new(2, Duration::seconds(60));
        let keys = vec!["src:192.0.2.1".to_owned()];
        for _ in 0..10 {
            let p = limiter.acquire(&keys, t0()).expect("successes never use up the budget");
            limiter.settle(p, false);
        }
        fail(&limiter, &keys, t0()).expect("first failure");
        fail(&limiter, &keys, t0()).expect("second failure");
        assert!(limiter.acquire(&keys, t0()).is_err(), "two failures spend a limit of two");
    }

    #[test]
    fn failures_on_a_token_id_from_other_sources_do_not_lock_out_its_holder() {
        let limiter = RateLimiter::new(20, Duration::seconds(60));
        let token = Some(Uuid::from_u128(7));
        // 21 sources fail once each naming the holder's token id, and one
        // source fails 20 times on it.
        for i in 0..21u8 {
            fail(&limiter, &exchange_keys(Some(format!("203.0.113.{i}").parse().expect("ip")), token), t0())
                .expect("one failure each");
        }
        let noisy = exchange_keys(Some("198.51.100.9".parse().expect("ip")), token);
        for _ in 0..20 {
            fail(&limiter, &noisy, t0()).expect("under the limit");
        }
        assert!(limiter.acquire(&noisy, t0()).is_err(), "the failing source is limited");
        let holder = exchange_keys(Some("192.0.2.50".parse().expect("ip")), token);
        assert!(limiter.acquire(&holder, t0()).is_ok(), "the holder, from its own address, is not");
    }

    #[test]
    fn the_keys_are_the_source_and_the_token_at_that_source() {
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let id = Uuid::from_u128(1);
        assert_eq!(exchange_keys(Some(ip), Some(id)), vec![format!("src:{ip}"), format!("token:{id}@{ip}")]);
        assert_eq!(exchange_keys(Some(ip), None), vec![format!("src:{ip}")]);
        assert_eq!(exchange_keys(None, Some(id)), vec![format!("token:{id}")]);
    }
}
