//! Signing HS256 development tokens: for `aether-hub token`, the load tool
//! and the tests. Production tokens come from the application's backend.

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

use super::token::unix_now;

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
