//! Raising the open-file limit: every socket is a file descriptor, and the
//! usual soft limit of 1024 is far below what a hub or a load tool holds.

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
