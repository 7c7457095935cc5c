//! How every connection to one kind of Redis node proves who it is and
//! encrypts: credentials, TLS, the database. One [`Access`] serves every
//! node of a topology (a cluster's nodes found after start-up too), so
//! that no connection of the hub can be made without them.
//!
//! Addresses come in as configured (`host:port` or `redis://` /
//! `rediss://` URLs, with `user:password@`); credentials from the
//! environment win over those in a URL. Nothing here is ever printed:
//! [`Access`] has no `Debug`, and its errors name the setting, not its
//! value.

use std::path::{Path, PathBuf};

use redis::{
    Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion,
    RedisConnectionInfo, RedisResult, TlsCertificates,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::NodeAddr;
use crate::config::redact;

/// A configured address that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{0:?} is neither host:port nor a redis:// or rediss:// URL")]
    Address(String),
    #[error("entries disagree on {0} (one setting for every node)")]
    Mixed(&'static str),
    #[error("{var}: {why}")]
    TlsFile { var: &'static str, why: String },
}

/// One configured address, taken apart.
pub struct Entry {
    pub addr: NodeAddr,
    tls: bool,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl Entry {
    /// An address without credentials of its own.
    pub fn bare(addr: NodeAddr, tls: bool) -> Entry {
        Entry {
            addr,
            tls,
            username: None,
            password: None,
            db: 0,
        }
    }

    /// `host:port`, or a `redis://` / `rediss://` URL.
    pub fn parse(text: &str) -> Result<Entry, AccessError> {
        let text = text.trim();
        let bad = || AccessError::Address(redact(text));
        if !text.contains("://") {
            return Ok(Entry::bare(NodeAddr::parse(text).ok_or_else(bad)?, false));
        }
        if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
            return Err(bad());
        }
        let info = text.into_connection_info().map_err(|_| bad())?;
        let (host, port, tls) = match info.addr {
            ConnectionAddr::Tcp(host, port) => (host, port, false),
            ConnectionAddr::TcpTls { host, port, .. } => (host, port, true),
            _ => return Err(bad()),
        };
        let host = host.trim_matches(['[', ']']).to_owned();
        Ok(Entry {
            addr: NodeAddr { host, port },
            tls,
            username: info.redis.username.filter(|u| !u.is_empty()),
            password: info.redis.password.filter(|p| !p.is_empty()),
            db: info.redis.db,
        })
    }
}

/// The TLS files, as configured.
#[derive(Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files once at start-up, so that one that does not load
    /// stops the hub with its variable's name rather than failing every
    /// connection later.
    fn load(&self) -> Result<TlsCertificates, AccessError> {
        let root_cert = match &self.ca {
            Some(path) => Some(read_certs("AETHER_REDIS_TLS_CA_FILE", path)?),
            None => None,
        };
        let client_tls = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_certs("AETHER_REDIS_TLS_CERT_FILE", cert)?,
                client_key: read_key("AETHER_REDIS_TLS_KEY_FILE", key)?,
            }),
            _ => None,
        };
        Ok(TlsCertificates {
            client_tls,
            root_cert,
        })
    }
}

fn read(var: &'static str, path: &Path) -> Result<Vec<u8>, AccessError> {
    std::fs::read(path).map_err(|e| AccessError::TlsFile {
        var,
        why: format!("{}: {e}", path.display()),
    })
}

/// A PEM file of one certificate at least, each one that rustls takes.
fn read_certs(var: &'static str, path: &Path) -> Result<Vec<u8>, AccessError> {
    let pem = read(var, path)?;
    let bad = |why: String| AccessError::TlsFile {
        var,
        why: format!("{}: {why}", path.display()),
    };
    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("not PEM ({e})")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".to_owned()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("a certificate does not parse ({e})")))?;
    }
    Ok(pem)
}

/// A PEM file holding a private key (PKCS#8, PKCS#1 or SEC1).
fn read_key(var: &'static str, path: &Path) -> Result<Vec<u8>, AccessError> {
    let pem = read(var, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| AccessError::TlsFile {
        var,
        why: format!("{}: no private key in it ({e})", path.display()),
    })?;
    Ok(pem)
}

/// Who the hub is to one kind of node, and how it encrypts.
#[derive(Clone)]
pub struct Access {
    username: Option<String>,
    password: Option<String>,
    /// `None`: plain TCP.
    tls: Option<TlsCertificates>,
    db: i64,
}

impl Access {
    /// The access every entry of `entries` shares; `username` and
    /// `password` (from the environment) win over the URLs'.
    pub fn of(
        entries: &[Entry],
        username: Option<&str>,
        password: Option<&str>,
        files: &TlsFiles,
    ) -> Result<Access, AccessError> {
        let first = entries.first();
        let same = |what: &'static str, f: &dyn Fn(&Entry) -> String| {
            let mut values = entries.iter().map(f);
            let one = values.next();
            match values.all(|v| Some(v) == one) {
                true => Ok(()),
                false => Err(AccessError::Mixed(what)),
            }
        };
        same("TLS (rediss:// or not)", &|e| e.tls.to_string())?;
        if username.is_none() {
            same("the user", &|e| e.username.clone().unwrap_or_default())?;
        }
        if password.is_none() {
            same("the password", &|e| e.password.clone().unwrap_or_default())?;
        }
        let tls = match first.is_some_and(|e| e.tls) {
            true => Some(files.load()?),
            false => None,
        };
        let pick =
            |env: Option<&str>, url: Option<&String>| env.map(str::to_owned).or(url.cloned());
        Ok(Access {
            username: pick(username, first.and_then(|e| e.username.as_ref())),
            password: pick(password, first.and_then(|e| e.password.as_ref())),
            tls,
            db: first.map_or(0, |e| e.db),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn certificates(&self) -> Option<TlsCertificates> {
        self.tls.clone()
    }

    #[cfg(test)]
    pub fn username(&self) -> Option<String> {
        self.username.clone()
    }

    #[cfg(test)]
    pub fn password(&self) -> Option<String> {
        self.password.clone()
    }

    /// How to connect to `addr`, in `protocol`.
    pub fn info(&self, addr: &NodeAddr, protocol: ProtocolVersion) -> ConnectionInfo {
        let addr = match self.tls {
            Some(_) => ConnectionAddr::TcpTls {
                host: addr.host.clone(),
                port: addr.port,
                insecure: false,
                tls_params: None,
            },
            None => ConnectionAddr::Tcp(addr.host.clone(), addr.port),
        };
        ConnectionInfo {
            addr,
            redis: RedisConnectionInfo {
                db: self.db,
                username: self.username.clone(),
                password: self.password.clone(),
                protocol,
            },
        }
    }

    /// A client for `addr` (the host name is resolved again on every
    /// connect: a managed service fails over by moving a DNS name).
    pub fn client(&self, addr: &NodeAddr, protocol: ProtocolVersion) -> RedisResult<Client> {
        let info = self.info(addr, protocol);
        match &self.tls {
            Some(certs) => Client::build_with_tls(info, certs.clone()),
            None => Client::open(info),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_take_urls_and_bare_addresses() {
        let e = Entry::parse("rediss://hub:s3cret@10.0.0.1:6380/2").expect("url");
        assert_eq!(e.addr.to_string(), "10.0.0.1:6380");
        assert!(e.tls);
        assert_eq!(e.username.as_deref(), Some("hub"));
        assert_eq!(e.password.as_deref(), Some("s3cret"));
        assert_eq!(e.db, 2);
        let e = Entry::parse("redis://:pw@h:1").expect("password only");
        assert_eq!((e.username, e.password.as_deref()), (None, Some("pw")));
        let e = Entry::parse(" h:7000 ").expect("bare");
        assert!(!e.tls && e.password.is_none());
        for bad in ["h", "http://h:1", "redis+unix:///tmp/r.sock"] {
            assert!(Entry::parse(bad).is_err(), "{bad}");
        }
        let err = Entry::parse("http://u:s3cret@h:1").err().expect("refused");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn the_environment_wins_and_entries_must_agree() {
        let files = TlsFiles::default();
        let entries = [Entry::parse("redis://u:url-pw@a:1").expect("a")];
        let access = Access::of(&entries, None, Some("env-pw"), &files).expect("access");
        assert_eq!(access.password().as_deref(), Some("env-pw"));
        assert_eq!(access.username().as_deref(), Some("u"));
        let mixed = [
            Entry::parse("rediss://a:1").expect("a"),
            Entry::parse("b:2").expect("b"),
        ];
        assert!(Access::of(&mixed, None, None, &files).is_err());
        let two = [
            Entry::parse("redis://:one@a:1").expect("a"),
            Entry::parse("redis://:two@b:1").expect("b"),
        ];
        assert!(Access::of(&two, None, None, &files).is_err());
        assert!(Access::of(&two, None, Some("env"), &files).is_ok());
    }

    #[test]
    fn tls_files_that_do_not_load_name_their_variable() {
        let dir = std::env::temp_dir().join(format!("aether-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a PEM file").expect("write");
        let entries = [Entry::parse("rediss://a:1").expect("a")];
        for (files, var) in [
            (
                TlsFiles {
                    ca: Some(junk.clone()),
                    ..TlsFiles::default()
                },
                "AETHER_REDIS_TLS_CA_FILE",
            ),
            (
                TlsFiles {
                    cert: Some(junk.clone()),
                    key: Some(junk.clone()),
                    ..TlsFiles::default()
                },
                "AETHER_REDIS_TLS_CERT_FILE",
            ),
        ] {
            let err = Access::of(&entries, None, None, &files)
                .err()
                .expect("refused");
            assert!(err.to_string().starts_with(var), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_tls_file_names_its_variable() {
        let files = TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let entries = [Entry::parse("rediss://a:1").expect("a")];
        let err = Access::of(&entries, None, None, &files)
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains("AETHER_REDIS_TLS_CA_FILE"),
            "{err}"
        );
    }
}
