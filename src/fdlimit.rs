//! Raising the open-file limit: every socket is a file descriptor, and the
//! usual soft limit of 1024 is far below what a hub or a load tool holds.
//! The limit also decides how many sockets the hub admits by default.

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft
/// limit, or `None` if the system refused.
pub fn raise() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return None;
        }
    }
    Some(limit.rlim_cur)
}

/// The current soft RLIMIT_NOFILE.
pub fn soft() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some(limit.rlim_cur)
}

/// Descriptors kept back from sockets: the listener, the Redis
/// connections, HTTP requests in flight, stdio and the runtime's own.
pub const HEADROOM: u64 = 256;

/// The default `AETHER_MAX_CONNECTIONS`: the soft limit less [`HEADROOM`],
/// so that at the limit the hub still answers a 503 (and `/readyz`)
/// rather than failing to accept.
pub fn default_max_connections() -> usize {
    let limit = soft().unwrap_or(1024);
    limit.saturating_sub(HEADROOM).clamp(1, usize::MAX as u64) as usize
}
