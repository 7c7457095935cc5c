//! The watch on the hub process during an attack: its [`Resources`]
//! from `/proc/<pid>` (memory, descriptors, threads) and its tasks alive
//! and sockets open from `/metrics`, sampled from before the attack to
//! after it, and the [`Bounds`] the attack must stay within. A
//! [`Scene`](super::Scene) starts one and ends it after the attack.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::super::process::Running;
use super::super::TIMEOUT;
use super::HealthyReport;

/// What the hub process holds, from `/proc/<pid>/` (its tasks are not
/// visible there; sockets are, as descriptors).
#[derive(Debug, Clone, Copy, Default)]
pub struct Resources {
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

impl Resources {
    pub fn of(pid: u32) -> Resources {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("the hub is running (/proc/<pid>/status)");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/<pid>/fd")
            .count() as u64;
        Resources {
            rss_kib: field("VmRSS:"),
            fds,
            threads: field("Threads:"),
        }
    }

    pub fn max(self, other: Resources) -> Resources {
        Resources {
            rss_kib: self.rss_kib.max(other.rss_kib),
            fds: self.fds.max(other.fds),
            threads: self.threads.max(other.threads),
        }
    }
}

/// What an attack may cost the hub while it lasts, and leave behind.
pub struct Bounds {
    /// Sockets the attack opens at once (each is one descriptor).
    pub attackers: u64,
    /// RSS growth over the baseline at the peak of the attack.
    pub peak_rss_mib: u64,
    /// RSS growth over the baseline once the attack is over. The allocator
    /// keeps some freed memory mapped, so this is not zero after a clean
    /// attack; what it catches is memory kept per frame (tens of thousands
    /// of frames per attack) or the bulk of the peak kept. A few KiB kept
    /// per socket do not show in RSS: they show in the descriptors and in
    /// `aether_connections_open`, checked exactly.
    pub after_rss_mib: u64,
}

/// Descriptors the hub may hold over its baseline once the attack is over
/// (an HTTP request in flight, a socket still in its close handshake): a
/// leaked socket per attacker breaks it from the 21st on.
pub const FD_SLACK: u64 = 20;

/// Threads the hub may add over its baseline: tokio's blocking pool, whose
/// idle threads stay 10 s. A thread per socket or per frame breaks it.
pub const THREAD_SLACK: u64 = 16;

/// Tasks the hub may hold over its baseline once the attack is over (a
/// request in flight, a socket still closing): a task leaked per attacker
/// breaks it from the 21st on.
pub const TASK_SLACK: f64 = 20.0;

const TASKS: &str = "aether_tokio_tasks_alive";

/// Samples the hub's resources from before an attack to after it.
pub struct Watch {
    pub pid: u32,
    pub baseline: Resources,
    /// The hub's tasks alive (`aether_tokio_tasks_alive`, from `/metrics`).
    pub tasks: f64,
    pub stop: Arc<AtomicBool>,
    pub sampler: JoinHandle<Resources>,
}

impl Watch {
    pub async fn start(hub: &Running) -> Watch {
        let pid = hub.child.id();
        let baseline = Resources::of(pid);
        let tasks = hub.metric(TASKS).await;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let sampler = tokio::spawn(async move {
            let mut peak = baseline;
            // Bounded: at most a minute of samples, every 20 ms.
            for _ in 0..3_000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                peak = peak.max(Resources::of(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        });
        Watch {
            pid,
            baseline,
            tasks,
            stop,
            sampler,
        }
    }

    /// Ends the watch once the attack is over and every attacker is gone:
    /// waits (bounded) for the hub to be back to `healthy` sockets, then
    /// asserts `bounds` and prints the figures.
    pub async fn end(self, hub: &Running, name: &str, healthy: &HealthyReport, bounds: Bounds) {
        let healthy = healthy.clients.len();
        self.stop.store(true, Ordering::Relaxed);
        let peak = self.sampler.await.expect("sampler");
        let base = self.baseline;
        // A closing socket may take the hub's 2 s close handshake to go.
        let deadline = Instant::now() + TIMEOUT;
        let (after, open, tasks) = loop {
            let after = Resources::of(self.pid);
            let open = hub.metric("aether_connections_open").await;
            let tasks = hub.metric(TASKS).await;
            let settled = open == healthy as f64
                && after.fds <= base.fds + FD_SLACK
                && tasks <= self.tasks + TASK_SLACK;
            if settled || Instant::now() > deadline {
                break (after, open, tasks);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mib = |kib: u64| kib as f64 / 1024.0;
        eprintln!(
            "[{name}] hub resources: baseline rss {:.1} MiB, fds {}, threads {} | \
             peak rss {:.1} MiB, fds {}, threads {} | after rss {:.1} MiB, fds {}, threads {} | \
             sockets open after: {open}, tasks {} before, {tasks} after",
            mib(base.rss_kib),
            base.fds,
            base.threads,
            mib(peak.rss_kib),
            peak.fds,
            peak.threads,
            mib(after.rss_kib),
            after.fds,
            after.threads,
            self.tasks,
        );
        assert!(self.tasks > 0.0, "the hub exports {TASKS}");
        assert!(
            tasks <= self.tasks + TASK_SLACK,
            "tasks leaked: {} before, {tasks} after",
            self.tasks
        );
        assert_eq!(
            open, healthy as f64,
            "aether_connections_open is back to the healthy sockets"
        );
        assert!(
            after.fds <= base.fds + FD_SLACK,
            "descriptors leaked: {} before, {} after",
            base.fds,
            after.fds
        );
        assert!(
            peak.fds <= base.fds + bounds.attackers + FD_SLACK,
            "more than one descriptor per attacker: {} before, {} at peak",
            base.fds,
            peak.fds
        );
        assert!(
            peak.threads <= base.threads + THREAD_SLACK,
            "threads grew with the attack: {} before, {} at peak",
            base.threads,
            peak.threads
        );
        assert!(
            peak.rss_kib <= base.rss_kib + bounds.peak_rss_mib * 1024,
            "the attack cost more than {} MiB at its peak",
            bounds.peak_rss_mib
        );
        assert!(
            after.rss_kib <= base.rss_kib + bounds.after_rss_mib * 1024,
            "the hub kept more than {} MiB after the attack",
            bounds.after_rss_mib
        );
        let healthz = hub.get("/healthz").await;
        assert_eq!(healthz.status, 200, "the hub is still serving");
    }
}
