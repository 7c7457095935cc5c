//! A per-socket token bucket: `rate` frames per second, with a burst of
//! `rate`. Zero means no limit.

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

    #[test]
    fn zero_means_unlimited() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(0, t0);
        assert!((0..10_000).all(|_| limit.allow(t0)));
    }
}
