//! The instance's accept-rate limit (`AETHER_MAX_CONNECTS_PER_SEC`, issue
//! 22): owns the token bucket that every WebSocket upgrade request passes
//! first, and what a refused one is told to wait (`Retry-After`).
//!
//! When an instance dies, its sockets reconnect to the survivors at once;
//! each upgrade costs a survivor a credential check, three route joins and
//! (Redis modes) subscriptions and presence writes. The upgrade route
//! asks [`ConnectRate::admit`] before anything else (`upgrade.rs`), so an
//! upgrade over the rate costs an HTTP parse and a 503, nothing more; the
//! refusal itself is a [`super::Refusal`] like any other. Off (the default)
//! there is no `ConnectRate` at all: the route checks an `Option`.
//!
//! The bucket is GCRA, the "virtual scheduling" form of a token bucket: one
//! atomic holds the time at which the bucket would be full again if
//! nothing more came (the theoretical arrival time, TAT); an upgrade is
//! admitted when moving that time one interval on keeps it at most a
//! second ahead of now (a burst of one second's worth), with a
//! compare-and-swap. Refusals move a second atomic, the queue of
//! [`Refused::retry_after`]: see there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest `Retry-After` the hub gives: beyond it, a client's own
/// backoff knows better than a queue estimate that may be inflated by
/// clients that never read the header (browsers cannot).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The highest rate the setting accepts: an interval of 1 µs between
/// admissions, still exact in whole nanoseconds.
pub const MAX_RATE: u32 = 1_000_000;

const NANOS_PER_SEC: u64 = 1_000_000_000;

#[derive(Debug)]
pub struct ConnectRate {
    /// Every time here is nanoseconds since this instant.
    epoch: Instant,
    /// Nanoseconds between two admissions at the steady rate.
    interval: u64,
    /// How far ahead of now the TAT may run: `rate` intervals, so the
    /// burst is exactly `rate` upgrades.
    burst: u64,
    /// The theoretical arrival time. 0 at the start: a full bucket.
    tat: AtomicU64,
    /// The last slot handed to a refused upgrade.
    queue: AtomicU64,
}

/// Why an upgrade was not admitted, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Whole seconds, at least 1, at most [`MAX_RETRY_AFTER`].
    ///
    /// Each refusal takes the next free slot of a queue that runs at the
    /// limit's rate from the moment the bucket has room again, and is
    /// told the time to its slot, rounded up: the n-th refusal of a storm
    /// hears about n / rate seconds. Clients that come back when told
    /// then arrive spread at the rate the bucket admits, rather than all
    /// together one second later (which "the time until the bucket has
    /// room", always under a second, would tell every one of them).
    pub retry_after: u32,
}

impl ConnectRate {
    /// `None` for a rate of 0 (off).
    pub fn new(rate: u32) -> Option<ConnectRate> {
        Self::starting(rate, Instant::now())
    }

    fn starting(rate: u32, epoch: Instant) -> Option<ConnectRate> {
        if rate == 0 {
            return None;
        }
        let rate = u64::from(rate.min(MAX_RATE));
        let interval = NANOS_PER_SEC / rate;
        Some(ConnectRate {
            epoch,
            interval,
            burst: interval * rate,
            tat: AtomicU64::new(0),
            queue: AtomicU64::new(0),
        })
    }

    /// Takes one upgrade's token, or says when to come back.
    pub fn admit(&self) -> Result<(), Refused> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Result<(), Refused> {
        let now = self.nanos(now);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now) + self.interval;
            if next - now > self.burst {
                return Err(self.refuse(now, next - self.burst));
            }
            // Relaxed: the TAT guards nothing but itself.
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// `room` is when the bucket would next admit one upgrade: the first
    /// slot of the queue, each later one an interval after the last given.
    fn refuse(&self, now: u64, room: u64) -> Refused {
        let cap = now + duration_nanos(MAX_RETRY_AFTER);
        let take = |last: u64| Some((last + self.interval).max(room).min(cap));
        // `take` always gives a slot, so this is always `Ok(last)`.
        let (Ok(last) | Err(last)) =
            self.queue
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, take);
        let slot = take(last).unwrap_or(cap);
        let wait = slot.saturating_sub(now).div_ceil(NANOS_PER_SEC);
        let most = MAX_RETRY_AFTER.as_secs();
        Refused {
            retry_after: u32::try_from(wait.clamp(1, most)).unwrap_or(u32::MAX),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        duration_nanos(at.saturating_duration_since(self.epoch))
    }
}

/// A u64 of nanoseconds lasts 584 years: saturating is only a formality.
fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn limit(rate: u32, t0: Instant) -> ConnectRate {
        ConnectRate::starting(rate, t0).expect("on")
    }

    #[test]
    fn zero_is_off() {
        assert!(ConnectRate::new(0).is_none());
    }

    #[test]
    fn a_burst_of_one_seconds_worth_then_the_rate() {
        let t0 = Instant::now();
        let l = limit(5, t0);
        assert!((0..5).all(|_| l.admit_at(t0).is_ok()));
        assert!(l.admit_at(t0).is_err());
        // 200 ms at 5/s earns one upgrade back, and only one.
        let later = t0 + Duration::from_millis(200);
        assert!(l.admit_at(later).is_ok());
        assert!(l.admit_at(later).is_err());
        // Idle time never earns more than the burst.
        let much_later = t0 + Duration::from_secs(60);
        assert!((0..5).all(|_| l.admit_at(much_later).is_ok()));
        assert!(l.admit_at(much_later).is_err());
    }

    #[test]
    fn a_rate_that_does_not_divide_a_second_keeps_its_burst() {
        let t0 = Instant::now();
        for rate in [3, 7, 2_000, 300_000, MAX_RATE] {
            let l = limit(rate, t0);
            let admitted = (0..rate + 10).filter(|_| l.admit_at(t0).is_ok()).count();
            assert_eq!(admitted, rate as usize, "rate {rate}");
        }
    }

    /// A storm against 2,000/s: the refusals are told 1, 2, 3 … seconds,
    /// about 2,000 of each, so that clients that wait as told come back
    /// at the rate the bucket admits.
    #[test]
    fn retry_after_spreads_a_storm_at_the_rate() {
        let t0 = Instant::now();
        let l = limit(2_000, t0);
        let told: Vec<u32> = (0..17_000)
            .filter_map(|_| l.admit_at(t0).err())
            .map(|r| r.retry_after)
            .collect();
        assert_eq!(told.len(), 15_000);
        assert_eq!(told.first(), Some(&1));
        assert_eq!(told.last(), Some(&8));
        for second in 1..=7 {
            let n = told.iter().filter(|&&s| s == second).count();
            assert!((1_999..=2_001).contains(&n), "{second} s: {n}");
        }
        assert!(told.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_lone_refusal_is_told_one_second_and_the_queue_drains() {
        let t0 = Instant::now();
        let l = limit(10, t0);
        (0..10).for_each(|_| assert!(l.admit_at(t0).is_ok()));
        let told = |at| l.admit_at(at).err().map(|r| r.retry_after);
        assert_eq!(told(t0), Some(1));
        for _ in 0..30 {
            told(t0);
        }
        assert_eq!(told(t0), Some(4));
        // Ten seconds on, the queue is in the past: one second again.
        let later = t0 + Duration::from_secs(10);
        (0..10).for_each(|_| assert!(l.admit_at(later).is_ok()));
        assert_eq!(told(later), Some(1));
    }

    #[test]
    fn retry_after_is_capped() {
        let t0 = Instant::now();
        let l = limit(1, t0);
        assert!(l.admit_at(t0).is_ok());
        let last = (0..500).filter_map(|_| l.admit_at(t0).err()).last();
        let cap = MAX_RETRY_AFTER.as_secs() as u32;
        assert_eq!(last, Some(Refused { retry_after: cap }));
    }

    /// Threads racing on the one atomic admit exactly the burst between
    /// them, and then exactly what the elapsed time earns.
    #[test]
    fn racing_threads_never_admit_more_than_the_bucket_holds() {
        let t0 = Instant::now();
        let l = Arc::new(limit(1_000, t0));
        let admitted = |at: Instant| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let l = Arc::clone(&l);
                    std::thread::spawn(move || {
                        (0..1_000).filter(|_| l.admit_at(at).is_ok()).count()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .sum::<usize>()
        };
        assert_eq!(admitted(t0), 1_000);
        assert_eq!(admitted(t0 + Duration::from_millis(250)), 250);
    }
}
