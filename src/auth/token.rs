//! Verifying identity tokens (docs/protocol.md section 8): JWTs signed by the
//! application's backend with an HMAC secret (HS256) or a private key whose
//! public half is in the JWKS file (RS256, ES256, EdDSA).
//!
//! The algorithm is pinned by the key, never taken on the token's word: an
//! HS256 token is only ever checked against the secrets, any other token
//! only against the JWKS key its `kid` names, and only with that key's own
//! algorithm. `jsonwebtoken` checks the signature and the registered claims
//! (`exp`, `nbf`, `aud`, `iss`); the hub's own claims (`sub`, `grp`, `cap`,
//! `iat`) are checked here, each for its JSON type. Error messages never
//! quote the token.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::grant::{Capability, Caps, Grant, Groups};
use super::jwks::PublicKey;
use crate::protocol::VisionId;

/// Why a token was refused (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token names no known key")]
    UnknownKey,
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is for another audience")]
    Audience,
    #[error("token is from another issuer")]
    Issuer,
    #[error("token claim {0} is missing")]
    Missing(String),
    #[error("token claim {0} has the wrong type or value")]
    Claim(&'static str),
    #[error("token has been revoked")]
    Revoked,
}

/// The keys and rules tokens are checked against.
pub struct TokenKeys {
    secrets: Vec<DecodingKey>,
    public: HashMap<String, PublicKey>,
    audience: String,
    issuer: Option<String>,
    leeway: u64,
}

/// What a token must say beyond its signature.
pub struct Rules {
    pub audience: String,
    pub issuer: Option<String>,
    pub leeway_secs: u64,
}

impl TokenKeys {
    /// `None` when neither secrets nor public keys are configured.
    pub fn new(
        secrets: &[String],
        public: HashMap<String, PublicKey>,
        rules: Rules,
    ) -> Option<TokenKeys> {
        let secrets: Vec<DecodingKey> = secrets
            .iter()
            .filter_map(|s| DecodingKey::from_secret(s.as_bytes()).ok())
            .collect();
        if secrets.is_empty() && public.is_empty() {
            return None;
        }
        Some(TokenKeys {
            secrets,
            public,
            audience: rules.audience,
            issuer: rules.issuer,
            leeway: rules.leeway_secs,
        })
    }

    /// Verifies `token` and turns its claims into a [`Grant`].
    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let claims = match header.alg {
            Algorithm::HS256 => self.verify_hmac(token)?,
            alg => {
                let key = self.public_key(header.kid.as_deref())?;
                if key.alg != alg {
                    return Err(TokenError::Algorithm(format!("{alg:?}")));
                }
                self.decode(token, &key.key, alg)?
            }
        };
        self.grant(claims)
    }

    /// Rotation: any configured secret may have signed it.
    fn verify_hmac(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        if self.secrets.is_empty() {
            return Err(TokenError::Algorithm("HS256".into()));
        }
        for secret in &self.secrets {
            match self.decode(token, secret, Algorithm::HS256) {
                Err(TokenError::Signature) => continue,
                other => return other,
            }
        }
        Err(TokenError::Signature)
    }

    /// The JWKS key a token's `kid` names; without a `kid`, the only key.
    fn public_key(&self, kid: Option<&str>) -> Result<&PublicKey, TokenError> {
        match kid {
            Some(kid) => self.public.get(kid),
            None if self.public.len() == 1 => self.public.values().next(),
            None => None,
        }
        .ok_or(TokenError::UnknownKey)
    }

    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        alg: Algorithm,
    ) -> Result<Map<String, Value>, TokenError> {
        let mut rules = Validation::new(alg);
        rules.leeway = self.leeway;
        rules.validate_nbf = true;
        rules.set_audience(&[&self.audience]);
        let mut required = vec!["exp", "sub", "aud"];
        if let Some(issuer) = &self.issuer {
            rules.set_issuer(&[issuer]);
            required.push("iss");
        }
        rules.set_required_spec_claims(&required);
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &rules)
            .map(|data| data.claims)
            .map_err(|e| refusal(e.into_kind()))
    }

    /// The hub's own claims, each checked for its JSON type.
    fn grant(&self, claims: Map<String, Value>) -> Result<Grant, TokenError> {
        let client = claims
            .get("sub")
            .and_then(Value::as_str)
            .and_then(|s| VisionId::parse(s).ok())
            .ok_or(TokenError::Claim("sub"))?;
        let groups = groups(claims.get("grp"))?;
        let caps = match claims.get("cap") {
            None => Caps::ALL,
            Some(cap) => Caps::of(
                &serde_json::from_value::<Vec<Capability>>(cap.clone())
                    .map_err(|_| TokenError::Claim("cap"))?,
            ),
        };
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(TokenError::Claim("exp"))?;
        let issued_at = match claims.get("iat") {
            None => None,
            Some(iat) => Some(iat.as_u64().ok_or(TokenError::Claim("iat"))?),
        };
        if issued_at.is_some_and(|iat| iat > unix_now().saturating_add(self.leeway)) {
            return Err(TokenError::NotYetValid);
        }
        let jti = match claims.get("jti") {
            None => None,
            Some(jti) => Some(jti.as_str().ok_or(TokenError::Claim("jti"))?.into()),
        };
        Ok(Grant {
            client,
            groups,
            caps,
            expires_at: exp.saturating_add(self.leeway),
            jti,
            issued_at,
        })
    }
}

/// `grp`: a group_id, an array of them, or `"*"`.
fn groups(grp: Option<&Value>) -> Result<Groups, TokenError> {
    let bad = TokenError::Claim("grp");
    match grp {
        None => Err(TokenError::Missing("grp".into())),
        Some(Value::String(s)) if s == "*" => Ok(Groups::Any),
        Some(Value::String(s)) => Ok(Groups::Listed(vec![VisionId::parse(s).map_err(|_| bad)?])),
        Some(Value::Array(list)) => list
            .iter()
            .map(|g| g.as_str().and_then(|s| VisionId::parse(s).ok()))
            .collect::<Option<Vec<_>>>()
            .map(Groups::Listed)
            .ok_or(bad),
        Some(_) => Err(bad),
    }
}

fn refusal(kind: ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::Missing(claim),
        ErrorKind::InvalidClaimFormat(claim) => TokenError::Claim(claim_name(&claim)),
        ErrorKind::InvalidAlgorithm => TokenError::Algorithm("of this key".into()),
        _ => TokenError::Malformed,
    }
}

/// A static name for a registered claim (the error type keeps no strings
/// from the token).
fn claim_name(claim: &str) -> &'static str {
    match claim {
        "exp" => "exp",
        "nbf" => "nbf",
        "aud" => "aud",
        "iss" => "iss",
        "sub" => "sub",
        _ => "of a registered name",
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
