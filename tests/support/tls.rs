//! TLS for tests: a certificate authority made at run time (rcgen; nothing
//! secret is committed), a leaf certificate for `localhost` and 127.0.0.1
//! in PEM files the hub loads, a client certificate (mutual TLS, as a
//! Redis with `tls-auth-clients yes` asks for), and clients that trust one
//! authority only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{tungstenite, Connector};

use super::{parse_response, tokens::write_temp, Client, HttpResponse, TIMEOUT};

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate chain and its key, as the hub's two PEM files.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("aether test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// A leaf for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
    pub fn leaf(&self) -> (String, String) {
        let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf's files in the system temp dir.
    pub fn files(&self) -> CertFiles {
        let (cert, key) = self.leaf();
        CertFiles {
            cert: write_temp("cert.pem", &cert),
            key: write_temp("key.pem", &key),
        }
    }

    /// The authority's own certificate, PEM: what a CA file holds.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate named `name` (extended key usage: client
    /// authentication only): (certificate PEM, key PEM).
    pub fn client_leaf(&self, name: &str) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("client key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("client certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A client configuration that trusts this authority and no other.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::new(self.config_builder().with_no_client_auth())
    }

    /// The same, showing the client certificate in `client` (PEM files).
    pub fn client_config_with_cert(&self, client: &CertFiles) -> Arc<ClientConfig> {
        let chain = CertificateDer::pem_file_iter(&client.cert)
            .expect("client certificate file")
            .collect::<Result<Vec<_>, _>>()
            .expect("client certificate PEM");
        let key = PrivateKeyDer::from_pem_file(&client.key).expect("client key PEM");
        let config = self
            .config_builder()
            .with_client_auth_cert(chain, key)
            .expect("client certificate and key");
        Arc::new(config)
    }

    fn config_builder(
        &self,
    ) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("CA root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
    }
}

impl CertFiles {
    /// Replaces both files with `other`'s contents (what an operator's
    /// certificate renewal does before SIGHUP).
    pub fn overwrite_with(&self, other: &CertFiles) {
        std::fs::copy(&other.cert, &self.cert).expect("copy cert");
        std::fs::copy(&other.key, &self.key).expect("copy key");
    }
}

/// A `wss://` client of the hub at `addr`, trusting `ca` only.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    ca: &TestCa,
    headers: &[(&str, &str)],
) -> Result<Client, tungstenite::Error> {
    let mut request = format!("wss://localhost:{}{path}", addr.port()).into_client_request()?;
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
        let value = http::HeaderValue::from_str(value).expect("header value");
        request.headers_mut().insert(name, value);
    }
    let connect = async {
        let stream = TcpStream::connect(addr).await?;
        tokio_tungstenite::client_async_tls_with_config(
            request,
            stream,
            None,
            Some(Connector::Rustls(ca.client_config())),
        )
        .await
    };
    let (ws, _) = tokio::time::timeout(TIMEOUT, connect)
        .await
        .map_err(|_| tungstenite::Error::ConnectionClosed)??;
    Ok(Client { ws })
}

/// One HTTPS request (HTTP/1.1 over TLS, trusting `ca` only).
pub async fn https_get(addr: SocketAddr, path: &str, ca: &TestCa) -> std::io::Result<HttpResponse> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("server name");
        let mut tls = tokio_rustls::TlsConnector::from(ca.client_config())
            .connect(name, stream)
            .await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        // A peer that closes without close_notify is still a full answer.
        match tls.read_to_end(&mut raw).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(e),
        }
        Ok(raw)
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTPS request"))??;
    Ok(parse_response(&raw))
}
