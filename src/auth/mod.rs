//! Who may connect and what they may do (docs/protocol.md sections 1 and 8).
//!
//! [`Credentials`] are what a request carries (an API key, a token), taken
//! from the request in one place. [`Auth`] checks them against what the hub
//! is configured with and answers an [`Access`]: open (nothing configured),
//! a trusted service (a valid API key, any client in any group), or a
//! [`Grant`] from a verified token. [`Access::admits`] then decides whether
//! that access may act as a given client in a given group. Failures are
//! [`AuthError`]s; `http` turns them into 401 and 403.
//!
//! Operators' routes (docs/protocol.md section 11) ask [`Auth::check_admin`]
//! instead: admin keys (`AETHER_ADMIN_API_KEYS`) when configured, else any
//! API key; never a token. An admin key also counts as a service's key on
//! the other HTTP routes (presence, publish), never for a socket. A
//! revoked token ([`Revocations`]) is refused wherever it is shown.
//!
//! A key or token is a credential: nothing here logs one, and no error
//! message quotes one.

mod grant;
pub mod issue;
mod jwks;
mod keys;
mod token;

use http::header::{HeaderMap, AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};

pub use grant::{Capability, Caps, Grant, Groups};
pub use jwks::JwksError;
pub use token::{unix_now, TokenError};

use std::sync::Arc;

use crate::config::Config;
use crate::protocol::Message;
use crate::revocation::Revocations;
use keys::ApiKeys;
use token::{Rules, TokenKeys};

/// The header a client may carry its API key in.
pub const API_KEY_HEADER: &str = "x-aether-api-key";
/// The query parameter browsers carry their API key in.
pub const API_KEY_PARAM: &str = "api_key";
/// The query parameter a token may come in (last resort: proxies log URLs).
pub const TOKEN_PARAM: &str = "token";
/// The subprotocol a V3 client offers, and the hub answers with.
pub const SUBPROTOCOL: &str = "aether.v3";
/// The subprotocol entry a browser carries its token in.
pub const TOKEN_SUBPROTOCOL: &str = "aether.token.";

/// Why a request may not do what it asks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential at all, or none of the kinds configured (401).
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("invalid API key")]
    InvalidKey,
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A valid credential that does not cover this client or group (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// A token cannot be checked yet: this instance has not loaded the
    /// kept revocations (503: it is starting, or Redis is down).
    #[error("revocations are not loaded yet: retry shortly")]
    NotReady,
}

impl AuthError {
    /// 403 for a credential that is valid but not enough; 401 otherwise.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::Forbidden(_))
    }
}

/// Where a request came in: the upgrade takes a token from three places,
/// the HTTP API only from `Authorization: Bearer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Upgrade,
    Http,
}

/// The credentials a request carries, borrowed from it.
pub struct Credentials<'a> {
    key: Option<&'a [u8]>,
    token: Option<&'a str>,
    surface: Surface,
}

impl<'a> Credentials<'a> {
    /// Takes the key from its header or query parameter, and the token, in
    /// order of preference, from the subprotocol, `Authorization: Bearer`
    /// and the `token` query parameter.
    pub fn of(
        headers: &'a HeaderMap,
        query: &'a std::collections::HashMap<String, String>,
        surface: Surface,
    ) -> Self {
        let key = headers
            .get(API_KEY_HEADER)
            .map(|v| v.as_bytes())
            .or_else(|| query.get(API_KEY_PARAM).map(|k| k.as_bytes()));
        let bearer = || bearer_token(headers);
        let token = match surface {
            Surface::Http => bearer(),
            Surface::Upgrade => subprotocol_token(headers)
                .or_else(bearer)
                .or_else(|| query.get(TOKEN_PARAM).map(String::as_str)),
        };
        Credentials {
            key,
            token,
            surface,
        }
    }
}

/// The entries of every `Sec-WebSocket-Protocol` header.
pub fn subprotocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn subprotocol_token(headers: &HeaderMap) -> Option<&str> {
    subprotocols(headers).find_map(|p| p.strip_prefix(TOKEN_SUBPROTOCOL))
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What a checked request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The hub is configured with no credentials (development).
    Open,
    /// A valid API key: a trusted service, any client in any group.
    Service,
    /// A verified token.
    Token(Grant),
}

impl Access {
    /// Whether this access may act as `client` in `group`.
    pub fn admits(&self, group: &str, client: &str) -> Result<(), AuthError> {
        let Access::Token(grant) = self else {
            return Ok(());
        };
        if grant.client.as_str() != client {
            return Err(AuthError::Forbidden("token is for another client_id"));
        }
        self.admits_group(group)
    }

    /// Whether this access covers `group`.
    pub fn admits_group(&self, group: &str) -> Result<(), AuthError> {
        match self {
            Access::Token(grant) if !grant.groups.admits(group) => {
                Err(AuthError::Forbidden("token does not admit this group"))
            }
            _ => Ok(()),
        }
    }

    /// Whether this access may publish `msg` over the HTTP API, as the
    /// message's `from_id` could send it from a socket.
    pub fn admits_publish(&self, msg: &Message<'_>) -> Result<(), AuthError> {
        let Access::Token(grant) = self else {
            return Ok(());
        };
        if grant.client.as_str() != msg.from_id {
            return Err(AuthError::Forbidden("token is for another from_id"));
        }
        if let Some(group) = &msg.group_id {
            self.admits_group(group)?;
        }
        grant
            .caps
            .check(msg.msg_type, msg.target)
            .map_err(|_| AuthError::Forbidden("token does not allow this message"))
    }

    /// What a socket with this access may send.
    pub fn caps(&self) -> Caps {
        match self {
            Access::Token(grant) => grant.caps,
            _ => Caps::ALL,
        }
    }

    /// Unix seconds after which a socket with this access is closed (4001).
    pub fn expires_at(&self) -> Option<u64> {
        match self {
            Access::Token(grant) => Some(grant.expires_at),
            _ => None,
        }
    }
}

/// The hub's credentials: API keys, token keys, both or neither; and
/// the operators' admin keys.
pub struct Auth {
    keys: ApiKeys,
    admin: ApiKeys,
    tokens: Option<TokenKeys>,
    revocations: Arc<Revocations>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

impl Auth {
    pub fn from_config(config: &Config) -> Result<Auth, AuthConfigError> {
        let public = match &config.token_jwks_file {
            Some(path) => jwks::load(path)?,
            None => Default::default(),
        };
        let rules = Rules {
            audience: config.token_audience.clone(),
            issuer: config.token_issuer.clone(),
            leeway_secs: config.token_leeway_secs,
        };
        Ok(Auth {
            keys: ApiKeys::new(&config.api_keys),
            admin: ApiKeys::new(&config.admin_api_keys),
            tokens: TokenKeys::new(&config.token_secrets, public, rules),
            revocations: Revocations::new(),
        })
    }

    /// The revocations every token is checked against (filled by the
    /// operator module).
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// No credentials configured: every request is admitted.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty() && self.tokens.is_none()
    }

    pub fn has_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Checks what a request carries (docs/protocol.md section 8, "Which
    /// credential is needed"): a valid key or a valid token, of the kinds
    /// configured.
    pub fn check(&self, given: &Credentials<'_>) -> Result<Access, AuthError> {
        if self.is_open() {
            return Ok(Access::Open);
        }
        let key = given.key.filter(|_| !self.keys.is_empty());
        if key.is_some_and(|k| self.keys.admits(k)) {
            return Ok(Access::Service);
        }
        let admin = given.surface == Surface::Http && !self.admin.is_empty();
        if admin && given.key.is_some_and(|k| self.admin.admits(k)) {
            return Ok(Access::Service);
        }
        if let (Some(tokens), Some(token)) = (&self.tokens, given.token) {
            return Ok(Access::Token(self.unrevoked(tokens.verify(token)?)?));
        }
        Err(match (key, self.tokens.is_some(), self.keys.is_empty()) {
            (Some(_), _, _) => AuthError::InvalidKey,
            (None, true, true) => AuthError::Missing("token"),
            (None, true, false) => AuthError::Missing("token or API key"),
            (None, false, _) => AuthError::Missing("API key"),
        })
    }

    fn unrevoked(&self, grant: Grant) -> Result<Grant, AuthError> {
        if !self.revocations.is_loaded() {
            return Err(AuthError::NotReady);
        }
        match self.revocations.covers(&grant.token_id(), unix_now()) {
            true => Err(TokenError::Revoked.into()),
            false => Ok(grant),
        }
    }

    /// Checks the credentials of an operators' route (docs/protocol.md
    /// section 11): an admin key when admin keys are configured (a client
    /// key or a valid token is 403), else any API key; with no keys and no
    /// token keys, nothing. A token never grants these routes.
    pub fn check_admin(&self, given: &Credentials<'_>) -> Result<(), AuthError> {
        const NOT_ADMIN: AuthError = AuthError::Forbidden("an admin API key is needed");
        if !self.admin.is_empty() {
            return match given.key {
                Some(k) if self.admin.admits(k) => Ok(()),
                Some(k) if self.keys.admits(k) => Err(NOT_ADMIN),
                Some(_) => Err(AuthError::InvalidKey),
                None => self.refuse_token(given, NOT_ADMIN, "admin API key"),
            };
        }
        if self.is_open() {
            return Ok(());
        }
        if self.keys.is_empty() {
            return Err(AuthError::Missing(
                "API key (tokens do not grant this route)",
            ));
        }
        match given.key {
            Some(k) if self.keys.admits(k) => Ok(()),
            Some(_) => Err(AuthError::InvalidKey),
            None => self.refuse_token(
                given,
                AuthError::Forbidden("an API key is needed"),
                "API key",
            ),
        }
    }

    /// A request with no key: 403 when it shows a valid token (a valid
    /// credential, not enough), else 401.
    fn refuse_token(
        &self,
        given: &Credentials<'_>,
        forbidden: AuthError,
        missing: &'static str,
    ) -> Result<(), AuthError> {
        let valid = match (&self.tokens, given.token) {
            (Some(tokens), Some(token)) => tokens.verify(token).is_ok(),
            _ => false,
        };
        Err(if valid {
            forbidden
        } else {
            AuthError::Missing(missing)
        })
    }
}
