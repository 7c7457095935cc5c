//! A member's life in the soak: connect with its positions, run a
//! [`Session`], and come back after a churn (a worker leaving) or a lost
//! connection, resuming from where it was, until the run ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::member::{Churn, End, Member};
use super::session::{Session, Traffic};
use super::tally::C;
use super::Shared;
use crate::client;
use crate::track::{Ended, Positions};

/// Connect attempts for one (re)connect, `RETRY` apart.
const CONNECT_ATTEMPTS: usize = 240;
const RETRY: Duration = Duration::from_millis(500);

/// One member's life: connect, run, and come back after a churn or a
/// lost connection, resuming from its positions, until the run ends.
pub(super) async fn member(shared: Arc<Shared>, me: Member) {
    // Ended epochs are remembered: a late message of one is out of order.
    let mut positions = Positions::new(Ended::Remember);
    let mut traffic = Traffic::new(&shared.args, me);
    let mut churn = Churn::new(&shared, me);
    let mut ready = false;
    let mut round = 0;
    while !shared.stop.is_cancelled() {
        let Some(ws) = connect(&shared, me, &positions, round).await else {
            break;
        };
        if round > 0 {
            shared.tally.add(C::Reconnects, 1);
        }
        round += 1;
        shared.tally.connected.fetch_add(1, Ordering::Relaxed);
        let session = Session::new(&shared, me, &mut positions, &mut ready);
        let end = session.run(ws, &mut traffic, &mut churn).await;
        shared.tally.connected.fetch_sub(1, Ordering::Relaxed);
        let pause = match end {
            End::Stop => break,
            End::Churn => Duration::from_millis(rand::random_range(200..3000)),
            End::Lost(why) => {
                shared.tally.add(C::UnexpectedCloses, 1);
                shared.tally.note(|| format!("{}: {why}", me.client_id()));
                RETRY
            }
        };
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Opens `me`'s socket with its positions, retrying (bounded) while the
/// hub refuses (503 while Redis is down).
async fn connect(
    shared: &Shared,
    me: Member,
    positions: &Positions,
    round: usize,
) -> Option<client::Ws> {
    let (group, client, query) = (me.group_id(), me.client_id(), positions.query(me.routes()));
    for attempt in 0..CONNECT_ATTEMPTS {
        let opened = {
            let _permit = shared.gate.acquire().await.ok()?;
            if shared.stop.is_cancelled() {
                return None;
            }
            shared
                .args
                .hubs
                .connect_with(me.hub(round + attempt), &group, &client, &query)
                .await
        };
        match opened {
            Ok(ws) => return Some(ws),
            Err(e) => {
                shared.tally.add(C::ConnectFailures, 1);
                shared.tally.note(|| format!("{client}: connect: {e}"));
            }
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return None,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
    shared
        .tally
        .note(|| format!("{client}: gave up after {CONNECT_ATTEMPTS} connect attempts"));
    None
}
