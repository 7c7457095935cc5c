//! A per-socket token bucket: `rate` frames per second, with a burst of
//! `rate`. Zero means no limit. Each socket has two: its data frames
//! (`AETHER_RATE_LIMIT`, off by default) and its pings (`AETHER_PING_LIMIT`,
//! 100 by default), both closed with 4029 beyond it. Checked only when such
//! a frame arrives: no timer, nothing per message sent.

use std::time::Instant;

#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: u32, now: Instant) -> Self {
        RateLimit {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(5, t0);
        assert!((0..5).all(|_| limit.allow(t0)));
        assert!(!limit.allow(t0));
        // 200 ms at 5/s earns one frame back.
        assert!(limit.allow(t0 + Duration::from_millis(200)));
        assert!(!limit.allow(t0 + Duration::from_millis(200)));
        // Idle time never earns more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..5).all(|_| limit.allow(later)));
        assert!(!limit.allow(later));
    }

    /// The default ping limit (100) against a flood of 10,000 pings a
    /// second: cut at the burst, within about 10 ms.
    #[test]
    fn a_ping_flood_is_cut_at_the_burst() {
        let t0 = Instant::now();
        let mut pings = RateLimit::new(100, t0);
        let every = Duration::from_micros(100);
        let allowed = (0..10_000u32)
            .take_while(|&i| pings.allow(t0 + every * i))
            .count();
        // The burst of 100, and the 1 % of a token earned per ping meanwhile.
        assert!((100..=102).contains(&allowed), "{allowed}");
    }

    /// What real clients do stays far inside the ping limit: a ping a
    /// second for an hour, or 100 a second (the limit itself) for a minute
    /// after a burst of 100.
    #[test]
    fn ordinary_pinging_is_never_cut() {
        let t0 = Instant::now();
        let mut slow = RateLimit::new(100, t0);
        assert!((0..3_600u32).all(|i| slow.allow(t0 + Duration::from_secs(i.into()))));
        let mut busy = RateLimit::new(100, t0);
        assert!((0..100).all(|_| busy.allow(t0)));
        let at = |i: u32| t0 + Duration::from_millis(10) * (i + 1);
        assert!((0..6_000u32).all(|i| busy.allow(at(i))));
    }

    #[test]
    fn zero_means_unlimited() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(0, t0);
        assert!((0..10_000).all(|_| limit.allow(t0)));
    }
}
