//! TLS in the hub itself (`AETHER_TLS_CERT_FILE` + `AETHER_TLS_KEY_FILE`):
//! rustls on aws-lc-rs (no OpenSSL), HTTP/1.1 only, for `wss://` and
//! `https://` on the same routes and the same accept loop as plain TCP.
//!
//! Owns loading the PEM certificate chain and key, the configuration new
//! handshakes use (swapped by [`Tls::reload`] on SIGHUP; open sockets keep
//! the session they negotiated), and each accepted connection's handshake.
//! Without these settings the server speaks plain TCP, for a load balancer
//! that terminates TLS in front of it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("AETHER_TLS_CERT_FILE {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("AETHER_TLS_KEY_FILE {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("AETHER_TLS_CERT_FILE and AETHER_TLS_KEY_FILE: {0}")]
    Pair(rustls::Error),
}

/// Why an accepted connection did not become a TLS stream. Only ever
/// logged at debug: scanners and plain clients cause these all day.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("plain HTTP on the TLS port; answered 400")]
    NotTls,
    #[error("TLS handshake timed out")]
    TimedOut,
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
}

/// The record type every TLS connection opens with (a ClientHello).
const HANDSHAKE_RECORD: u8 = 0x16;

const NOT_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Connection: close\r\n\
Content-Length: 45\r\n\r\n\
this port speaks TLS: use https:// or wss://\n";

pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Loads the certificate chain and key; an error names the setting.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let acceptor = acceptor(cert, key)?;
        Ok(Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(acceptor),
        })
    }

    /// Reads both files again; new handshakes use them from now on. On an
    /// error the current certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = acceptor(&self.cert, &self.key)?;
        match self.current.write() {
            Ok(mut current) => *current = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The server side of the handshake, within `deadline`. A client that
    /// speaks plain HTTP to this port gets a 400 saying so, rather than
    /// bytes it cannot read.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        deadline: Duration,
    ) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let acceptor = self.acceptor();
        let handshake = async move {
            let mut first = [0u8; 1];
            let peeked = stream.peek(&mut first).await;
            if matches!(peeked, Ok(1)) && first[0] != HANDSHAKE_RECORD {
                let mut stream = stream;
                let _ = stream.write_all(NOT_TLS).await;
                let _ = stream.shutdown().await;
                return Err(HandshakeError::NotTls);
            }
            acceptor
                .accept(stream)
                .await
                .map_err(HandshakeError::Failed)
        };
        tokio::time::timeout(deadline, handshake)
            .await
            .unwrap_or(Err(HandshakeError::TimedOut))
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates(cert)?;
    let key = private_key(key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Pair)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Pair)?;
    // The hub speaks HTTP/1.1 only (WebSocket upgrades need it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::Cert {
        path: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if chain.is_empty() {
        return Err(error("no PEM certificate in the file".into()));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The key's bytes never reach a message: only the path and what kind
    // of problem it is.
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.display().to_string(),
        reason: key_problem(&e),
    })
}

fn key_problem(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::NoItemsFound => "no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file".into(),
        Error::Io(e) => e.to_string(),
        _ => "the PEM private key does not parse".into(),
    }
}
