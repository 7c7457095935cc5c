//! What the long scenarios' sockets (`soak`, `fleet`) wait on besides the
//! socket itself: a deadline or a pace that may not be set, and, at the
//! end of a run, their members' tasks.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval};

/// Sleeps until `when`; never completes when it is not set.
pub async fn at(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The next tick of `every`; never completes when it is not set.
pub async fn tick(every: &mut Option<Interval>) {
    match every {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Lets the members close their sockets (bounded), then aborts the rest.
pub async fn finish(members: Vec<JoinHandle<()>>) {
    let aborts: Vec<_> = members.iter().map(|m| m.abort_handle()).collect();
    let all = futures_util::future::join_all(members);
    if tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .is_err()
    {
        aborts.iter().for_each(|a| a.abort());
    }
}
