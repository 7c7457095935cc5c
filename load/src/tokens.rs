//! Identity tokens for the load tool: one per socket (`sub` its client id,
//! `grp` its group, an hour long), signed HS256 with a secret or ES256 with
//! a P-256 key, carried the way the hub accepts them. Secrets and keys are
//! never printed.

use std::sync::Arc;

use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};

/// How long every token is valid.
const TTL_SECS: u64 = 3600;

#[derive(clap::Args, Clone)]
pub struct Tokens {
    /// Give each socket an HS256 token signed with this secret (one of the
    /// hub's AETHER_TOKEN_SECRETS). Never printed.
    #[arg(long, value_name = "SECRET", value_parser = hmac_key, conflicts_with = "token_key")]
    token_secret: Option<SigningKey>,
    /// Give each socket an ES256 token signed with this P-256 private key
    /// (PKCS#8 PEM, as `aether-load keys` writes it).
    #[arg(long, value_name = "FILE", value_parser = p256_key)]
    token_key: Option<SigningKey>,
    /// The `kid` of ES256 tokens: the key's in the hub's JWKS file.
    #[arg(long, value_name = "KID", default_value = "load")]
    token_kid: String,
    /// The `aud` of every token (the hub's AETHER_TOKEN_AUDIENCE).
    #[arg(long, value_name = "AUD", default_value = "aether-hub")]
    token_audience: String,
    /// Where a socket carries its token.
    #[arg(long, value_enum, default_value_t = Via::Subprotocol)]
    token_via: Via,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Via {
    /// `Sec-WebSocket-Protocol: aether.v3, aether.token.<JWT>`
    Subprotocol,
    /// `Authorization: Bearer <JWT>`
    Bearer,
    /// `?token=<JWT>`
    Query,
}

/// A private key or secret, shared by every clone of the options. Neither
/// `Debug` nor `Display`: it cannot end up in a message.
#[derive(Clone)]
struct SigningKey {
    key: Arc<EncodingKey>,
    alg: Algorithm,
}

/// `--token-secret`: checked only for being non-empty, so that a refusal
/// never quotes it.
fn hmac_key(secret: &str) -> Result<SigningKey, String> {
    let key = EncodingKey::from_secret(secret.as_bytes()).map_err(|_| "must not be empty")?;
    Ok(SigningKey {
        key: Arc::new(key),
        alg: Algorithm::HS256,
    })
}

/// `--token-key FILE`: a P-256 private key in a PKCS#8 PEM file.
fn p256_key(path: &str) -> Result<SigningKey, String> {
    let der = PrivatePkcs8KeyDer::from_pem_file(path)
        .map_err(|e| format!("no PKCS#8 PRIVATE KEY in it: {e}"))?;
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der())
        .map_err(|_| "not a P-256 private key")?;
    Ok(SigningKey {
        key: Arc::new(EncodingKey::from_ec_der(der.secret_pkcs8_der())),
        alg: Algorithm::ES256,
    })
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    grp: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    /// As most issuers give one: the hub looks it up among revocations.
    jti: String,
}

impl Tokens {
    fn key(&self) -> Option<&SigningKey> {
        self.token_secret.as_ref().or(self.token_key.as_ref())
    }

    /// `hs256`, `es256`, or `None` without tokens.
    pub fn kind(&self) -> Option<&'static str> {
        self.key().map(|k| match k.alg {
            Algorithm::HS256 => "hs256",
            _ => "es256",
        })
    }

    /// The token for `client` in `group`, or `None` without tokens.
    pub fn sign(&self, client: &str, group: &str) -> Result<Option<String>, String> {
        let Some(SigningKey { key, alg }) = self.key() else {
            return Ok(None);
        };
        let mut header = Header::new(*alg);
        if *alg != Algorithm::HS256 {
            header.kid = Some(self.token_kid.clone());
        }
        let now = aether_hub::auth::unix_now();
        let claims = Claims {
            sub: client,
            grp: group,
            aud: &self.token_audience,
            iat: now,
            exp: now + TTL_SECS,
            jti: format!("{client}.{now}"),
        };
        jsonwebtoken::encode(&header, &claims, key)
            .map(Some)
            .map_err(|e| format!("cannot sign a token: {e}"))
    }

    /// The upgrade request for `url`, carrying `token` as `--token-via`
    /// says.
    pub fn request(&self, url: String, token: Option<String>) -> Result<Request, String> {
        let bad = |e: tokio_tungstenite::tungstenite::Error| format!("bad upgrade request: {e}");
        let Some(token) = token else {
            return url.into_client_request().map_err(bad);
        };
        let (name, value) = match self.token_via {
            Via::Query => {
                let join = if url.contains('?') { '&' } else { '?' };
                return format!("{url}{join}token={token}")
                    .into_client_request()
                    .map_err(bad);
            }
            Via::Subprotocol => (
                header::SEC_WEBSOCKET_PROTOCOL,
                format!("aether.v3, aether.token.{token}"),
            ),
            Via::Bearer => (header::AUTHORIZATION, format!("Bearer {token}")),
        };
        let mut request = url.into_client_request().map_err(bad)?;
        let value = HeaderValue::try_from(value).map_err(|_| "a token is not a header value")?;
        request.headers_mut().insert(name, value);
        Ok(request)
    }
}
