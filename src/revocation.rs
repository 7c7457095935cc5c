//! Revoked tokens (docs/protocol.md section 11), as every instance holds
//! them: in memory, so that checking an upgrade or an HTTP call costs a
//! hash lookup and no Redis round trip; and the sockets each token opened,
//! so that a revocation finds the sockets it must close.
//!
//! [`Revocations`] is filled from the control channel and from Redis (at
//! start, after every reconnect and now and then: `operator/`); [`Auth`]
//! asks it about every verified token. [`TokenSockets`] is kept by the hub
//! as token sockets open and close.
//!
//! [`Auth`]: crate::auth::Auth

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;

use crate::outbox::Outbox;
use crate::protocol::VisionId;
use crate::router::SocketId;

/// What a revocation is checked against: who a token is for and which one
/// it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenId {
    pub client: VisionId,
    /// The `jti` claim, if the token has one.
    pub jti: Option<Box<str>>,
    /// The `iat` claim, if the token has one.
    pub issued_at: Option<u64>,
}

/// The longest `jti` a revocation names (a UUID is 36 bytes).
pub const MAX_JTI_BYTES: usize = 256;

/// One revocation, until `until` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The token whose `jti` is this.
    Token { jti: String, until: u64 },
    /// Every token of `sub` issued before `issued_before` (or with no
    /// `iat`).
    Client {
        sub: VisionId,
        issued_before: u64,
        until: u64,
    },
}

impl Revocation {
    pub fn until(&self) -> u64 {
        match self {
            Revocation::Token { until, .. } | Revocation::Client { until, .. } => *until,
        }
    }

    /// Whether this revocation covers the token `id` (its time aside).
    pub fn covers(&self, id: &TokenId) -> bool {
        match self {
            Revocation::Token { jti, .. } => id.jti.as_deref() == Some(jti.as_str()),
            Revocation::Client {
                sub, issued_before, ..
            } => id.client == *sub && id.issued_at.is_none_or(|iat| iat < *issued_before),
        }
    }
}

/// Every revocation still in force, as this instance knows them.
#[derive(Default)]
pub struct Revocations {
    lists: RwLock<Lists>,
    /// Set once the kept revocations were loaded (at once in memory):
    /// until then no token can be checked.
    loaded: AtomicBool,
}

#[derive(Default)]
struct Lists {
    /// `jti` -> until.
    tokens: HashMap<Box<str>, u64>,
    /// client -> (issued_before, until) of each revocation of it.
    clients: HashMap<VisionId, Vec<(u64, u64)>>,
    /// Entries, ended ones included, since the last pruning.
    entries: usize,
    /// How many entries pruning last left: the next prune waits until
    /// there are twice as many, so pruning costs O(1) per insert.
    kept: usize,
}

impl Revocations {
    pub fn new() -> Arc<Revocations> {
        Arc::default()
    }

    /// Whether every kept revocation is known here.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    /// Adds a revocation (again: the later `until` wins). `now` prunes
    /// the ended ones now and then.
    pub fn insert(&self, revocation: &Revocation, now: u64) {
        let mut lists = self.lists.write().unwrap_or_else(|p| p.into_inner());
        match revocation {
            Revocation::Token { jti, until } => {
                let end = lists.tokens.entry(jti.as_str().into()).or_insert(0);
                *end = (*end).max(*until);
            }
            Revocation::Client {
                sub,
                issued_before,
                until,
            } => {
                let list = lists.clients.entry(sub.clone()).or_default();
                match list.iter_mut().find(|(before, _)| before == issued_before) {
                    Some((_, end)) => *end = (*end).max(*until),
                    None => list.push((*issued_before, *until)),
                }
            }
        }
        lists.entries += 1;
        if lists.entries > 2 * lists.kept.max(512) {
            lists.prune(now);
        }
    }

    /// Whether the token `id` is revoked at `now`.
    pub fn covers(&self, id: &TokenId, now: u64) -> bool {
        let lists = self.lists.read().unwrap_or_else(|p| p.into_inner());
        let by_jti = id
            .jti
            .as_deref()
            .and_then(|jti| lists.tokens.get(jti))
            .is_some_and(|until| *until > now);
        by_jti
            || lists.clients.get(&id.client).is_some_and(|list| {
                list.iter().any(|(before, until)| {
                    *until > now && id.issued_at.is_none_or(|iat| iat < *before)
                })
            })
    }

    /// Revocations in force at `now`.
    pub fn len(&self, now: u64) -> usize {
        let lists = self.lists.read().unwrap_or_else(|p| p.into_inner());
        let tokens = lists.tokens.values().filter(|u| **u > now).count();
        let clients = lists.clients.values().flatten();
        tokens + clients.filter(|(_, u)| *u > now).count()
    }

    pub fn is_empty(&self, now: u64) -> bool {
        self.len(now) == 0
    }
}

impl Lists {
    fn prune(&mut self, now: u64) {
        self.tokens.retain(|_, until| *until > now);
        self.clients.retain(|_, list| {
            list.retain(|(_, until)| *until > now);
            !list.is_empty()
        });
        self.kept = self.tokens.len() + self.clients.values().map(Vec::len).sum::<usize>();
        self.entries = self.kept;
    }
}

/// The open sockets that were authenticated with a token, and which.
#[derive(Default)]
pub struct TokenSockets(DashMap<SocketId, (TokenId, Arc<Outbox>), foldhash::fast::RandomState>);

impl TokenSockets {
    pub fn hold(&self, socket: SocketId, id: TokenId, outbox: Arc<Outbox>) {
        self.0.insert(socket, (id, outbox));
    }

    pub fn release(&self, socket: SocketId) {
        self.0.remove(&socket);
    }

    /// The queues of the sockets whose token `revocation` covers. A scan:
    /// revocations are rare, and an index by `jti` would cost every token
    /// socket memory for them.
    pub fn covered_by(&self, revocation: &Revocation) -> Vec<Arc<Outbox>> {
        self.0
            .iter()
            .filter(|held| revocation.covers(&held.value().0))
            .map(|held| Arc::clone(&held.value().1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::id;

    fn token(client: &str, jti: Option<&str>, iat: Option<u64>) -> TokenId {
        TokenId {
            client: id(client),
            jti: jti.map(Into::into),
            issued_at: iat,
        }
    }

    #[test]
    fn a_jti_revocation_covers_that_token_until_its_end() {
        let list = Revocations::new();
        let revoked = Revocation::Token {
            jti: "t1".into(),
            until: 100,
        };
        list.insert(&revoked, 10);
        assert!(list.covers(&token("a", Some("t1"), None), 99));
        assert!(!list.covers(&token("a", Some("t1"), None), 100), "ended");
        assert!(!list.covers(&token("a", Some("t2"), None), 50));
        assert!(!list.covers(&token("a", None, None), 50));
        // Revoked again for longer: the later end wins.
        list.insert(
            &Revocation::Token {
                jti: "t1".into(),
                until: 200,
            },
            10,
        );
        assert!(list.covers(&token("b", Some("t1"), None), 150));
    }

    #[test]
    fn a_client_revocation_covers_tokens_issued_before_or_without_iat() {
        let list = Revocations::new();
        list.insert(
            &Revocation::Client {
                sub: id("a"),
                issued_before: 50,
                until: 100,
            },
            10,
        );
        assert!(list.covers(&token("a", None, Some(49)), 60));
        assert!(list.covers(&token("a", Some("x"), None), 60), "no iat");
        assert!(!list.covers(&token("a", None, Some(50)), 60), "issued at");
        assert!(!list.covers(&token("b", None, Some(1)), 60), "other client");
        assert!(!list.covers(&token("a", None, Some(1)), 100), "ended");
        assert_eq!(list.len(60), 1);
        assert!(list.is_empty(100));
    }

    #[test]
    fn ended_revocations_are_pruned_as_more_come() {
        let list = Revocations::new();
        for n in 0..5_000u64 {
            let jti = format!("t{n}");
            list.insert(&Revocation::Token { jti, until: n + 1 }, n);
        }
        let lists = list.lists.read().unwrap();
        assert!(lists.tokens.len() < 2_000, "{} kept", lists.tokens.len());
        drop(lists);
        assert!(list.covers(&token("a", Some("t4999"), None), 4_999));
    }
}
