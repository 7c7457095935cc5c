//! A real `redis-server` process on a free loopback port, one per test, and
//! a client to look at it from outside. `scripts/test` installs Debian's
//! redis-server when it is missing.
//!
//! A server may ask for what a production Redis asks for
//! ([`RedisOptions`]): a password (`requirepass`), TLS only (`--port 0
//! --tls-port`, Debian's redis-server is built with TLS) with certificates
//! of a CA made for it at run time ([`RedisTls`]), and a client certificate
//! (`tls-auth-clients yes`). The test's own client ([`RedisServer::client`])
//! then speaks TLS (tokio-rustls, trusting that CA only) and authenticates.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::RedisConnectionInfo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use super::tls::{CertFiles, TestCa};

/// What a test's `redis-server` asks of its clients.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// `--requirepass`: the password of Redis's `default` user. Letters
    /// and digits only: it goes into URLs as is.
    pub password: Option<String>,
    /// TLS only (`--port 0 --tls-port`), with a certificate for 127.0.0.1
    /// and `localhost` signed by a CA made for this server.
    pub tls: bool,
    /// `--tls-auth-clients yes`: a client must show a certificate of that
    /// CA (mutual TLS). Otherwise `no`: the server asks for none.
    pub client_certs: bool,
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// The data directory of a server with persistence on.
    aof_dir: Option<PathBuf>,
    password: Option<String>,
    tls: Option<RedisTls>,
    client_certs: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(RedisOptions::default())
    }

    /// A server with a password, TLS, or both (see [`RedisOptions`]).
    pub fn start_with(options: RedisOptions) -> RedisServer {
        assert!(
            options.tls || !options.client_certs,
            "client certificates need TLS"
        );
        let port = super::private_port();
        let tls = options.tls.then(|| {
            let dir = std::env::temp_dir()
                .join(format!("aether-redis-tls-{}-{port}", std::process::id()));
            RedisTls::new(dir)
        });
        let mut server = RedisServer {
            child: None,
            port,
            aof_dir: None,
            password: options.password,
            tls,
            client_certs: options.client_certs,
        };
        server.spawn();
        server
    }

    /// A server with persistence on (`appendonly yes`, every write synced
    /// before it is answered), in a directory of its own: a restart, even
    /// after SIGKILL, comes back with everything it answered.
    pub fn start_persistent() -> RedisServer {
        let port = super::private_port();
        let dir = std::env::temp_dir().join(format!("aether-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis data directory");
        let mut server = RedisServer {
            child: None,
            port,
            aof_dir: Some(dir),
            password: None,
            tls: None,
            client_certs: false,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let (appendonly, dir) = match &self.aof_dir {
            Some(dir) => ("yes", dir.clone()),
            None => ("no", std::env::temp_dir()),
        };
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            Some(tls) => {
                command.args(["--port", "0", "--tls-port", &self.port.to_string()]);
                command.args(tls.server_args(self.client_certs));
                command.args(["--logfile", &tls.dir.join("redis.log").to_string_lossy()]);
            }
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
        }
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args([
                "--save",
                "",
                "--appendonly",
                appendonly,
                "--daemonize",
                "no",
            ])
            .args(["--appendfsync", "always"])
            .args(["--dir", &dir.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (run scripts/test, which installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + super::TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start{}",
                self.tls
                    .as_ref()
                    .map(|t| format!(":\n{}", t.log_tail()))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL a hub is given: `rediss://` for a TLS server, with
    /// `:password@` when the server has one.
    pub fn url(&self) -> String {
        let credentials = match &self.password {
            Some(password) => format!(":{password}@"),
            None => String::new(),
        };
        format!("{}://{credentials}127.0.0.1:{}/", self.scheme(), self.port)
    }

    /// The same URL without the password (for a hub given it otherwise).
    pub fn url_without_password(&self) -> String {
        format!("{}://127.0.0.1:{}/", self.scheme(), self.port)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        }
    }

    /// The password of the `default` user, if the server has one.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// A TLS server's certificates and CA.
    pub fn tls(&self) -> Option<&RedisTls> {
        self.tls.as_ref()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port: empty, or with what it had when
    /// persistence is on.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Freezes the server (SIGSTOP): its sockets stay open but nothing
    /// answers, as with a half-open connection.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }

    /// A connection for the test's own commands: over TLS (with the
    /// client certificate when the server asks for one) and authenticated
    /// as needed.
    pub async fn client(&self) -> MultiplexedConnection {
        self.connect_as(None, self.password.as_deref())
            .await
            .expect("connect to test redis")
    }

    /// A connection as `username` (Redis's `default` user when `None`)
    /// with `password` (no `AUTH` when `None`), over TLS when the server
    /// speaks it: an `Err` says how the server refused.
    pub async fn connect_as(
        &self,
        username: Option<&str>,
        password: Option<&str>,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let info = RedisConnectionInfo {
            username: username.map(str::to_owned),
            password: password.map(str::to_owned),
            ..RedisConnectionInfo::default()
        };
        let connecting = async {
            match &self.tls {
                Some(tls) => {
                    let config = if self.client_certs {
                        tls.client_config_with_cert()
                    } else {
                        tls.ca.client_config()
                    };
                    connect_tls(self.port, config, &info).await
                }
                None => {
                    let mut target = redis::IntoConnectionInfo::into_connection_info(
                        self.url_without_password(),
                    )?;
                    target.redis = info;
                    redis::Client::open(target)?
                        .get_multiplexed_async_connection()
                        .await
                }
            }
        };
        tokio::time::timeout(super::TIMEOUT, connecting)
            .await
            .map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out"))
            })?
    }
}

/// A TLS Redis's certificates, as PEM files in a directory of its own:
/// what `--tls-*-file` and `AETHER_REDIS_TLS_*_FILE` name.
pub struct RedisTls {
    pub ca: TestCa,
    /// The authority's certificate (`AETHER_REDIS_TLS_CA_FILE`).
    pub ca_file: PathBuf,
    /// The server's certificate, for 127.0.0.1 and `localhost`.
    pub server: CertFiles,
    /// A client certificate the same CA signed (`AETHER_REDIS_TLS_CERT_FILE`
    /// and `_KEY_FILE`), for a server that asks for one.
    pub client: CertFiles,
    dir: PathBuf,
}

impl RedisTls {
    /// A new CA and its certificates, written to `dir` (made afresh,
    /// removed on drop).
    pub fn new(dir: PathBuf) -> RedisTls {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("TLS directory");
        let ca = TestCa::new("redis");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write a PEM file");
            path
        };
        let ca_file = write("ca.pem", &ca.ca_pem());
        let (cert, key) = ca.leaf();
        let server = CertFiles {
            cert: write("server.pem", &cert),
            key: write("server.key", &key),
        };
        let (cert, key) = ca.client_leaf("aether-hub");
        let client = CertFiles {
            cert: write("client.pem", &cert),
            key: write("client.key", &key),
        };
        RedisTls {
            ca,
            ca_file,
            server,
            client,
            dir,
        }
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `redis-server`'s TLS settings (certificates; whether clients must
    /// show one). The caller sets the ports.
    pub fn server_args(&self, client_certs: bool) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            "--tls-cert-file".into(),
            path(&self.server.cert),
            "--tls-key-file".into(),
            path(&self.server.key),
            "--tls-ca-cert-file".into(),
            path(&self.ca_file),
            "--tls-auth-clients".into(),
            if client_certs { "yes" } else { "no" }.into(),
        ]
    }

    /// `redis-cli`'s TLS flags, with the client certificate.
    pub fn cli_args(&self) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            "--tls".into(),
            "--cacert".into(),
            path(&self.ca_file),
            "--cert".into(),
            path(&self.client.cert),
            "--key".into(),
            path(&self.client.key),
        ]
    }

    /// Trusts this CA only and shows the client certificate.
    pub fn client_config_with_cert(&self) -> Arc<ClientConfig> {
        self.ca.client_config_with_cert(&self.client)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS connection to 127.0.0.1:`port` with `config` (the certificate
/// must name 127.0.0.1), then Redis's handshake (`AUTH` with `info`'s
/// credentials).
pub async fn connect_tls(
    port: u16,
    config: Arc<ClientConfig>,
    info: &RedisConnectionInfo,
) -> redis::RedisResult<MultiplexedConnection> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]));
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let (conn, driver) = MultiplexedConnection::new(info, tls).await?;
    tokio::spawn(driver);
    Ok(conn)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.resume();
        }
        self.kill();
        if let Some(dir) = &self.aof_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `PUBSUB NUMSUB channel`: how many connections are subscribed.
pub async fn numsub(conn: &mut MultiplexedConnection, channel: &str) -> i64 {
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .expect("PUBSUB NUMSUB");
    count
}

/// `CLIENT LIST TYPE pubsub`: one line per pub/sub connection.
async fn pubsub_list(conn: &mut MultiplexedConnection) -> String {
    redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(conn)
        .await
        .expect("CLIENT LIST")
}

/// How many pub/sub connections the server has.
pub async fn pubsub_connections(conn: &mut MultiplexedConnection) -> usize {
    let list = pubsub_list(conn).await;
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

pub async fn smembers(conn: &mut MultiplexedConnection, key: &str) -> Vec<String> {
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(key)
        .query_async(conn)
        .await
        .expect("SMEMBERS");
    members.sort();
    members
}

pub async fn publish(conn: &mut MultiplexedConnection, channel: &str, text: &str) {
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(text)
        .query_async(conn)
        .await
        .expect("PUBLISH");
}

/// Closes the pub/sub connections subscribed to exactly `subs` channels
/// (`CLIENT KILL ID`), as a network blip would; returns how many.
pub async fn kill_pubsub_with(conn: &mut MultiplexedConnection, subs: usize) -> usize {
    let list = pubsub_list(conn).await;
    let subs = subs.to_string();
    kill_listed(conn, &list, |line| field(line, "sub") == Some(&subs)).await
}

/// One `field=value` of a `CLIENT LIST` line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
}

/// `CLIENT KILL ID`s the connections of `list` (`CLIENT LIST`'s answer)
/// whose line `pick` chooses; returns how many closed.
async fn kill_listed(
    conn: &mut MultiplexedConnection,
    list: &str,
    pick: impl Fn(&str) -> bool,
) -> usize {
    let mut killed = 0;
    for id in list
        .lines()
        .filter(|l| pick(l))
        .filter_map(|l| field(l, "id"))
    {
        let n: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(conn)
            .await
            .expect("CLIENT KILL");
        killed += n as usize;
    }
    killed
}

/// How many pub/sub connections are subscribed to exactly `subs` channels.
pub async fn pubsub_with(conn: &mut MultiplexedConnection, subs: usize) -> usize {
    let list = pubsub_list(conn).await;
    let wanted = format!(" sub={subs} ");
    list.lines().filter(|l| l.contains(&wanted)).count()
}

/// Closes every connection whose `CLIENT SETNAME` is `name` (`CLIENT KILL
/// ID`), as a network blip would; returns how many.
pub async fn kill_named(conn: &mut MultiplexedConnection, name: &str) -> usize {
    let list = client_list(conn).await;
    kill_listed(conn, &list, |line| field(line, "name") == Some(name)).await
}

/// Waits (bounded) until a connection named `name` is open, then closes
/// it: one blip after another, each on a live connection. Returns how
/// many closed.
pub async fn kill_named_when_open(mut conn: MultiplexedConnection, name: &str) -> usize {
    let conn = &mut conn;
    let mut open = false;
    for _ in 0..100 {
        if client_names(conn).await.iter().any(|n| n == name) {
            open = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(open, "no connection named {name} came back");
    kill_named(conn, name).await
}

async fn client_list(conn: &mut MultiplexedConnection) -> String {
    redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .expect("CLIENT LIST")
}

/// The names (`CLIENT SETNAME`) of the connections open now.
pub async fn client_names(conn: &mut MultiplexedConnection) -> Vec<String> {
    let list = client_list(conn).await;
    list.lines()
        .filter_map(|l| field(l, "name"))
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}
