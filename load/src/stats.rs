//! What every scenario measures: a shared clock, latency histograms, the
//! once-a-second progress line, and the percentiles of the summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Nanoseconds since the tool started: the send time messages carry, read
/// back by receivers in the same process.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A latency histogram from 1 µs to 60 s, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!("valid bounds")))
}

/// One latency histogram shared by every task. Tasks record through their
/// own [`Recorder`], which hands samples over in batches: thousands of
/// sockets must not each carry a histogram nor fight over one lock.
#[derive(Clone)]
pub struct Latencies(Arc<std::sync::Mutex<Histogram<u64>>>);

impl Latencies {
    pub fn new() -> Latencies {
        Latencies(Arc::new(std::sync::Mutex::new(histogram())))
    }

    pub fn recorder(&self) -> Recorder {
        Recorder {
            shared: self.clone(),
            samples: Vec::new(),
        }
    }

    /// Everything recorded so far (recorders flush when dropped).
    pub fn snapshot(&self) -> Histogram<u64> {
        self.0
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| histogram())
    }
}

pub struct Recorder {
    shared: Latencies,
    samples: Vec<u64>,
}

impl Recorder {
    /// Records one latency in nanoseconds.
    pub fn record(&mut self, ns: u64) {
        self.samples.push(ns.max(1));
        if self.samples.len() >= 256 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if let Ok(mut h) = self.shared.0.lock() {
            for ns in self.samples.drain(..) {
                let _ = h.record(ns);
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// `{p50, p90, p99, p999, max}` in milliseconds.
pub fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |ns: u64| ns as f64 / 1e6;
    serde_json::json!({
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "samples": h.len(),
    })
}

pub fn describe(h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
    format!(
        "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1e6
    )
}

/// Counters the tasks bump and the progress line reads.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// Prints one progress line a second until dropped.
pub struct Progress(tokio::task::JoinHandle<()>);

impl Progress {
    pub fn start(label: &'static str, counters: Arc<Counters>) -> Progress {
        Progress(tokio::spawn(async move {
            let started = Instant::now();
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            let (mut sent, mut received) = (0, 0);
            loop {
                every.tick().await;
                let s = counters.sent.load(Ordering::Relaxed);
                let r = counters.received.load(Ordering::Relaxed);
                eprintln!(
                    "[{:6.1}s] {label}: sent {}/s, received {}/s",
                    started.elapsed().as_secs_f64(),
                    s - sent,
                    r - received
                );
                (sent, received) = (s, r);
            }
        }))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads a number written as `"key":123` in `text`, without parsing the
/// whole message (the load tool must stay cheaper than the hub).
pub fn field_u64(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = text[at..].trim_start_matches([':', ' ']);
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Message size and measuring window, shared by the scenarios that measure
/// a steady flow after a warm-up.
#[derive(clap::Args, Clone)]
pub struct Measure {
    /// Bytes of padding in each message's payload.
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
}

impl Measure {
    pub fn warmup(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.warmup)
    }

    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.duration)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_are_read_in_place() {
        let text = r#"{"payload":{"seq":42,"t":1234567,"pad":"x"},"from_id":"p"}"#;
        assert_eq!(super::field_u64(text, "\"seq\""), Some(42));
        assert_eq!(super::field_u64(text, "\"t\""), Some(1234567));
        assert_eq!(super::field_u64(text, "\"nope\""), None);
    }
}
