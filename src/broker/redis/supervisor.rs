//! What every topology's supervisor is given: the link whose life it
//! owns, the router it subscribes for, the channel names, the history
//! settings and the subscription state it reconciles. The front door
//! (`mod.rs`) makes one [`Base`] and hands it, with the reader, to the
//! supervisor of the configured topology (`single.rs` or `cluster/`).

use std::sync::Arc;

use super::link::RedisLink;
use super::subscriptions::Subscriptions;
use crate::channels::{Names, Route};
use crate::history::Retention;
use crate::router::Router;

pub struct Base {
    pub link: Arc<RedisLink>,
    pub router: Arc<Router>,
    pub names: Names,
    pub retention: Retention,
    pub subs: Arc<Subscriptions>,
}

impl Base {
    /// The Redis channels of `routes`, in order.
    pub fn channels(&self, routes: &[Route]) -> Vec<String> {
        routes.iter().map(|r| self.names.channel(r)).collect()
    }
}
