//! Signing HS256 development tokens: `aether-hub token` (so a newcomer can
//! try tokens without writing a backend), the load tool and the tests.
//! Production tokens come from the application's backend.

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

use super::token::unix_now;
use crate::protocol::VisionId;

/// `aether-hub token`: prints a development token signed with the first
/// of `AETHER_TOKEN_SECRETS`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "aether-hub token",
    about = "Sign a development identity token (HS256) with the first of AETHER_TOKEN_SECRETS"
)]
pub struct TokenCommand {
    /// The client_id the token is for (its `sub`).
    #[arg(long)]
    sub: String,
    /// A group the token admits (repeatable); `*` for any group.
    #[arg(long, required = true)]
    grp: Vec<String>,
    /// What the socket may send, comma-separated: msg, cmd, direct, group,
    /// broadcast. Unset: everything.
    #[arg(long, value_delimiter = ',')]
    cap: Option<Vec<String>>,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    #[arg(
        long,
        env = "AETHER_TOKEN_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    secret: Vec<String>,
    #[arg(long, env = "AETHER_TOKEN_AUDIENCE", default_value = "aether-hub")]
    audience: String,
    #[arg(long, env = "AETHER_TOKEN_ISSUER")]
    issuer: Option<String>,
}

impl TokenCommand {
    /// The signed token, or what is wrong with the request for one.
    pub fn run(self) -> Result<String, String> {
        let secret = self
            .secret
            .iter()
            .find(|s| !s.trim().is_empty())
            .ok_or("AETHER_TOKEN_SECRETS: set it (or --secret) to sign development tokens")?;
        VisionId::parse(&self.sub).map_err(|e| format!("--sub {e}"))?;
        for g in self.grp.iter().filter(|g| *g != "*") {
            VisionId::parse(g).map_err(|e| format!("--grp {g:?} {e}"))?;
        }
        if let Some(caps) = &self.cap {
            for c in caps {
                serde_json::from_value::<super::Capability>(json!(c)).map_err(|_| {
                    format!("--cap {c:?} is not one of msg, cmd, direct, group, broadcast")
                })?;
            }
        }
        let claims = Claims {
            sub: self.sub,
            grp: self.grp,
            cap: self.cap,
            ttl_secs: self.ttl,
            audience: self.audience,
            issuer: self.issuer,
        };
        sign_hs256(secret, &claims).map_err(|e| format!("cannot sign: {e}"))
    }
}

/// What a development token says.
#[derive(Debug, Clone)]
pub struct Claims {
    pub sub: String,
    /// `grp`: `"*"`, one group, or several (as given).
    pub grp: Vec<String>,
    /// `cap`: `None` for everything.
    pub cap: Option<Vec<String>>,
    pub ttl_secs: u64,
    pub audience: String,
    pub issuer: Option<String>,
}

impl Claims {
    fn to_json(&self) -> Value {
        let now = unix_now();
        let grp = match self.grp.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        let mut claims = json!({
            "sub": self.sub,
            "grp": grp,
            "aud": self.audience,
            "iat": now,
            "exp": now + self.ttl_secs,
        });
        if let Some(cap) = &self.cap {
            claims["cap"] = json!(cap);
        }
        if let Some(iss) = &self.issuer {
            claims["iss"] = json!(iss);
        }
        claims
    }
}

/// Signs `claims` with the HMAC `secret`.
pub fn sign_hs256(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    let key = EncodingKey::from_secret(secret.as_bytes())?;
    jsonwebtoken::encode(&Header::default(), &claims.to_json(), &key)
}
