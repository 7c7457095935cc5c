//! Identity tokens for tests: HMAC secrets and RSA, P-256 and Ed25519 key
//! pairs made at run time (nothing secret is committed), their JWKS file,
//! and a signer for any claims, well-formed or not.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A fresh random HMAC secret.
pub fn secret() -> String {
    format!("test-{:032x}", rand_u128())
}

fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("random bytes");
    u128::from_le_bytes(bytes)
}

pub fn now() -> u64 {
    aether_hub::auth::unix_now()
}

/// The claims of a valid token for `sub` in `grp`, one hour long.
pub fn claims(sub: &str, grp: Value) -> Value {
    json!({"sub": sub, "grp": grp, "aud": "aether-hub", "iat": now(), "exp": now() + 3600})
}

/// `base` with `changes` merged in; a `null` removes the claim.
pub fn with(mut base: Value, changes: Value) -> Value {
    if let (Some(map), Value::Object(changes)) = (base.as_object_mut(), changes) {
        for (k, v) in changes {
            if v.is_null() {
                map.remove(&k);
            } else {
                map.insert(k, v);
            }
        }
    }
    base
}

pub fn hs256(secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).expect("HMAC key");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("sign")
}

/// A token with `alg: none` and no signature.
pub fn unsigned(claims: &Value) -> String {
    let header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = B64.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// A private key, the algorithm it signs with, and its `kid`.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
    /// The public half as a JWK.
    pub jwk: Value,
    /// The public half's bytes, as an attacker would use them as an HMAC
    /// secret (RS→HS confusion).
    pub public_bytes: Vec<u8>,
}

impl SigningKey {
    pub fn rsa(kid: &str) -> SigningKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).expect("RSA key");
        let pkcs8 = pair.as_der().expect("PKCS#8");
        let public = pair.public_key();
        let jwk = json!({
            "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
            "e": B64.encode(public.exponent().big_endian_without_leading_zero()),
        });
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_der(pkcs1_of(pkcs8.as_ref())),
            jwk,
            public_bytes: public.modulus().big_endian_without_leading_zero().to_vec(),
        }
    }

    pub fn es256(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("P-256 key");
        let point = pair.public_key().as_ref().to_vec();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid,
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
        });
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
            public_bytes: point,
        }
    }

    pub fn ed25519(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key");
        let public = pair.public_key().as_ref().to_vec();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": B64.encode(&public)});
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk,
            public_bytes: public,
        }
    }

    /// Signs with this key, its own algorithm and `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, Some(&self.kid), claims)
    }

    /// Signs with this key, claiming `alg` and `kid` in the header.
    pub fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }
}

/// The RSAPrivateKey (PKCS#1) inside a PKCS#8 PrivateKeyInfo: the OCTET
/// STRING after the version and the algorithm identifier.
fn pkcs1_of(pkcs8: &[u8]) -> &[u8] {
    let (_, info) = der_element(pkcs8); // SEQUENCE
    let (rest, _version) = der_element(info);
    let (rest, _algorithm) = der_element(rest);
    let (_, key) = der_element(rest); // OCTET STRING
    key
}

/// (what follows, contents) of the DER element at the start of `der`.
fn der_element(der: &[u8]) -> (&[u8], &[u8]) {
    let (len, at) = match der[1] {
        n if n < 0x80 => (n as usize, 2),
        n => {
            let bytes = (n & 0x7f) as usize;
            let len = der[2..2 + bytes]
                .iter()
                .fold(0usize, |acc, b| acc << 8 | *b as usize);
            (len, 2 + bytes)
        }
    };
    (&der[at + len..], &der[at..at + len])
}

/// A JWKS file (in the system temp dir) holding `keys`' public halves.
pub fn jwks_file(keys: &[&SigningKey]) -> std::path::PathBuf {
    let doc = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    write_temp("jwks.json", &doc.to_string())
}

/// Writes `text` to a fresh file in the system temp dir.
pub fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "aether-{}-{:x}-{name}",
        std::process::id(),
        rand_u128()
    ));
    std::fs::write(&path, text).expect("write temp file");
    path
}
