//! How long to wait before trying Redis again: doubling from
//! [`BACKOFF_MIN`] to [`BACKOFF_MAX`], each wait ± 50 % so that instances
//! that lost Redis together do not come back in lockstep. Every
//! supervisor's reconnect loop uses it.

use std::time::Duration;

/// Reconnect backoff bounds (before jitter).
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One reconnect loop's backoff.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// A connection worked: the next failure waits the least again.
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// Whether the waits have reached their longest (failures are logged
    /// on the first and then only at the longest wait, not every try).
    pub fn at_max(&self) -> bool {
        self.next == BACKOFF_MAX
    }

    /// Waits, then doubles the next wait.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.step()).await;
    }

    /// This wait (with jitter); doubles the next.
    fn step(&mut self) -> Duration {
        let wait = jitter(self.next);
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }
}

/// `base` ± 50 %.
fn jitter(base: Duration) -> Duration {
    base.mul_f64(rand::random_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_either_way() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(150));
        }
    }

    #[test]
    fn waits_double_up_to_the_bound_and_reset() {
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..8).map(|_| backoff.step()).collect();
        // 100 ms doubled up to 5 s (each ± 50 %): 100, 200, ..., 3200, 5000.
        let bases = [100, 200, 400, 800, 1600, 3200, 5000, 5000];
        for (wait, base) in waits.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *wait >= base / 2 && *wait <= base * 3 / 2,
                "{wait:?} for {base:?}"
            );
        }
        assert!(backoff.at_max());
        backoff.reset();
        assert!(!backoff.at_max());
    }
}
