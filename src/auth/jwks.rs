//! Loading the JWKS file (`AETHER_TOKEN_JWKS_FILE`, RFC 7517) into public
//! keys, each with the one algorithm it is for.
//!
//! Read once at start-up: a file that does not parse, a key without a
//! unique `kid`, or a key of a type or algorithm the hub does not verify
//! stops start-up with a message that names the variable and the key.

use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// A verifying key and the algorithm pinned to it.
pub struct PublicKey {
    pub key: DecodingKey,
    pub alg: Algorithm,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("AETHER_TOKEN_JWKS_FILE: cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("AETHER_TOKEN_JWKS_FILE: {path} is not a JWKS document ({reason})")]
    Parse { path: String, reason: String },
    #[error("AETHER_TOKEN_JWKS_FILE: key {index}: {reason}")]
    Key { index: usize, reason: String },
}

/// The keys of a JWKS file, by `kid`.
pub fn load(path: &Path) -> Result<HashMap<String, PublicKey>, JwksError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| JwksError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        JwksError::Parse { reason, .. } => JwksError::Parse {
            path: shown,
            reason,
        },
        other => other,
    })
}

/// The keys of a JWKS document, by `kid`.
pub fn parse(text: &str) -> Result<HashMap<String, PublicKey>, JwksError> {
    let parse_error = |reason: String| JwksError::Parse {
        path: String::new(),
        reason,
    };
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| parse_error(e.to_string()))?;
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| parse_error("no \"keys\" array".into()))?;
    if keys.is_empty() {
        return Err(parse_error("the \"keys\" array is empty".into()));
    }
    let mut out = HashMap::new();
    for (index, raw) in keys.iter().enumerate() {
        let bad = |reason: String| JwksError::Key { index, reason };
        let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| bad(e.to_string()))?;
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| bad("has no \"kid\"".into()))?;
        let key = public_key(&jwk).map_err(|reason| bad(format!("(kid {kid:?}) {reason}")))?;
        if out.insert(kid.clone(), key).is_some() {
            return Err(bad(format!("kid {kid:?} is used twice")));
        }
    }
    Ok(out)
}

/// The verifying key of one JWK and its algorithm: the key's `alg` when it
/// names one, else the one algorithm its type is for here.
fn public_key(jwk: &Jwk) -> Result<PublicKey, String> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err("is an encryption key (\"use\": \"enc\")".into());
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("is a symmetric key: put HMAC secrets in AETHER_TOKEN_SECRETS".into())
        }
        _ => {
            return Err(
                "has an unsupported type (RSA, EC P-256 and OKP Ed25519 are supported)".into(),
            )
        }
    };
    let alg = match jwk.common.key_algorithm {
        None => by_type,
        Some(named) => match (named, by_type) {
            (KeyAlgorithm::RS256, Algorithm::RS256)
            | (KeyAlgorithm::ES256, Algorithm::ES256)
            | (KeyAlgorithm::EdDSA, Algorithm::EdDSA) => by_type,
            (named, _) => {
                return Err(format!(
                    "has \"alg\" {named:?}, which is not {by_type:?} (the algorithm supported for its type)"
                ))
            }
        },
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("is not a valid key ({e})"))?;
    Ok(PublicKey { key, alg })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    // A valid P-256 public point and Ed25519 key (RFC 7515 A.3 and RFC 8037 A.2).
    const EC: &str = r#""kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0""#;
    const ED: &str =
        r#""kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo""#;

    #[test]
    fn keys_are_pinned_to_their_algorithm() {
        let keys = parse(&format!(
            r#"{{"keys":[{{{EC},"kid":"e"}},{{{ED},"kid":"d","alg":"EdDSA"}}]}}"#
        ))
        .unwrap();
        assert_eq!(keys["e"].alg, Algorithm::ES256);
        assert_eq!(keys["d"].alg, Algorithm::EdDSA);
    }

    #[test]
    fn bad_files_name_the_variable_and_the_key() {
        for (text, part) in [
            ("not json", "is not a JWKS document"),
            (r#"{"nokeys":1}"#, "no \"keys\" array"),
            (r#"{"keys":[]}"#, "empty"),
            (&format!(r#"{{"keys":[{{{EC}}}]}}"#), "no \"kid\""),
            (
                &format!(r#"{{"keys":[{{{EC},"kid":"a"}},{{{EC},"kid":"a"}}]}}"#),
                "used twice",
            ),
            (
                r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#,
                "symmetric",
            ),
            (
                &format!(r#"{{"keys":[{{{EC},"kid":"a","alg":"RS256"}}]}}"#),
                "not ES256",
            ),
            (
                &format!(r#"{{"keys":[{{{EC},"kid":"a","use":"enc"}}]}}"#),
                "encryption",
            ),
            (
                r#"{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA","kid":"p"}]}"#,
                "unsupported type",
            ),
            (r#"{"keys":[{"kty":"XYZ","kid":"p"}]}"#, "unsupported type"),
        ] {
            let e = error(text);
            assert!(e.starts_with("AETHER_TOKEN_JWKS_FILE"), "{e}");
            assert!(e.contains(part), "{text}: {e}");
        }
    }
}
