//! How long a fleet socket waits before its next connect attempt: full
//! jitter over an exponential window ("Exponential Backoff and Jitter",
//! AWS Architecture Blog, 2015): attempt n waits a uniform draw in
//! [0, min(cap, base · 2ⁿ)]. Thousands of sockets dropped at the same
//! instant then come back spread over the window instead of in one wave,
//! and each failure (a refused TCP connect to a dead hub, an HTTP 503 from
//! a full or rate-limited one) widens the window.
//!
//! A 503 is one more failure: browsers cannot even see the status of a
//! refused upgrade, let alone its `Retry-After`, so by default the socket
//! backs off by the jitter alone, as they would. Told to honour the header
//! (a client that can read it), it waits what the hub said plus a draw in
//! [0, 1 s): the hub hands each refusal the next free slot of a queue that
//! runs at its accept rate, rounded up to whole seconds, so the draw
//! spreads those told the same second over that second.

use std::time::Duration;

/// The backoff of one socket's options.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub honour_retry_after: bool,
}

impl Backoff {
    /// The upper end of attempt `attempt`'s window (0: the first retry).
    pub fn window(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before attempt `attempt`, given the last refusal's
    /// `Retry-After` if any; `draw` is a uniform sample in [0, 1).
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>, draw: f64) -> Duration {
        let draw = draw.clamp(0.0, 1.0);
        match retry_after {
            Some(after) if self.honour_retry_after => after + Duration::from_secs(1).mul_f64(draw),
            _ => self.window(attempt).mul_f64(draw),
        }
    }

    /// [`Backoff::wait`] with a fresh random draw.
    pub fn draw(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.wait(attempt, retry_after, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_doubles_up_to_the_cap_and_jitter_stays_inside() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            honour_retry_after: true,
        };
        assert_eq!(b.window(0), Duration::from_millis(100));
        assert_eq!(b.window(3), Duration::from_millis(800));
        assert_eq!(b.window(5), Duration::from_secs(2));
        assert_eq!(b.window(200), Duration::from_secs(2));
        assert_eq!(b.wait(1, None, 0.5), Duration::from_millis(100));
        assert_eq!(b.wait(1, None, 0.0), Duration::ZERO);
        for _ in 0..100 {
            assert!(b.draw(2, None) <= Duration::from_millis(400));
        }
        let told = Some(Duration::from_secs(3));
        assert_eq!(b.wait(4, told, 0.5), Duration::from_millis(3500));
        let browser = Backoff {
            honour_retry_after: false,
            ..b
        };
        assert_eq!(browser.wait(0, told, 0.5), Duration::from_millis(50));
    }
}
