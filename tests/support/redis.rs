//! A real `redis-server` process on a free loopback port, one per test, and
//! a client to look at it from outside. `scripts/test` installs Debian's
//! redis-server when it is missing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// The data directory of a server with persistence on.
    aof_dir: Option<PathBuf>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: super::private_port(),
            aof_dir: None,
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
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let (appendonly, dir) = match &self.aof_dir {
            Some(dir) => ("yes", dir.clone()),
            None => ("no", std::env::temp_dir()),
        };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
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
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
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

    pub async fn client(&self) -> MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("url");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }
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
