//! Configuration: every setting is an environment variable with a matching
//! command-line flag (`aether-hub --help` lists them), checked at start-up.
//!
//! Knows nothing of the rest of the hub; [`Config::limits`] hands sessions
//! the part they need.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "aether-hub",
    version,
    about = "Real-time WebSocket fan-out hub (Aether V3)",
    after_help = "`aether-hub token --help`: sign a development identity token."
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "AETHER_BIND", default_value = "0.0.0.0:8080")]
    pub bind: SocketAddr,

    /// Redis URL (redis://[user:password@]host:port/db; rediss:// for
    /// TLS). Unset: one instance, in memory.
    #[arg(long, env = "AETHER_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Redis Cluster seed nodes, comma-separated `host:port` or URLs
    /// (rediss:// for TLS) (Redis 7, sharded pub/sub). Exclusive with
    /// `AETHER_REDIS_URL`.
    #[arg(
        long,
        env = "AETHER_REDIS_CLUSTER",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_cluster: Vec<String>,

    /// Redis Sentinels, comma-separated `host:port` or URLs (rediss://:
    /// TLS to the sentinels and the master). Needs
    /// `AETHER_REDIS_SENTINEL_MASTER`; exclusive with the two above.
    #[arg(
        long,
        env = "AETHER_REDIS_SENTINELS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_sentinels: Vec<String>,

    /// The name the sentinels know the master by.
    #[arg(long, env = "AETHER_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// The sentinels' ACL user, if they have one.
    #[arg(long, env = "AETHER_REDIS_SENTINEL_USERNAME")]
    pub redis_sentinel_username: Option<String>,

    /// The sentinels' password, if they have one.
    #[arg(long, env = "AETHER_REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_password: Option<String>,

    /// Redis ACL user; wins over a user in a URL.
    #[arg(long, env = "AETHER_REDIS_USERNAME")]
    pub redis_username: Option<String>,

    /// Redis password; wins over a password in a URL.
    #[arg(long, env = "AETHER_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// PEM certificate(s) that Redis's TLS certificate must chain to.
    /// Unset: the system's roots.
    #[arg(long, env = "AETHER_REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<std::path::PathBuf>,

    /// PEM client certificate for Redis (mutual TLS), with
    /// AETHER_REDIS_TLS_KEY_FILE.
    #[arg(long, env = "AETHER_REDIS_TLS_CERT_FILE")]
    pub redis_tls_cert_file: Option<std::path::PathBuf>,

    /// PEM private key of AETHER_REDIS_TLS_CERT_FILE.
    #[arg(long, env = "AETHER_REDIS_TLS_KEY_FILE")]
    pub redis_tls_key_file: Option<std::path::PathBuf>,

    /// Prefix of every Redis channel and key (the only isolation between
    /// environments that share a Redis server).
    #[arg(long, env = "AETHER_REDIS_PREFIX", default_value = "")]
    pub redis_prefix: String,

    /// Comma-separated API keys. Unset: every upgrade is accepted.
    #[arg(
        long,
        env = "AETHER_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Comma-separated admin API keys for the operators' routes
    /// (disconnect, revoke, info, history). Unset: those routes take any
    /// API key.
    #[arg(
        long,
        env = "AETHER_ADMIN_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_api_keys: Vec<String>,

    /// Comma-separated allowed `Origin` values. Unset: any origin.
    #[arg(long, env = "AETHER_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Comma-separated HMAC secrets for HS256 identity tokens; a token
    /// signed with any of them is accepted (rotation).
    #[arg(
        long,
        env = "AETHER_TOKEN_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub token_secrets: Vec<String>,

    /// A JWKS file of public keys (RS256, ES256, EdDSA) for identity
    /// tokens; a token's `kid` picks the key.
    #[arg(long, env = "AETHER_TOKEN_JWKS_FILE")]
    pub token_jwks_file: Option<std::path::PathBuf>,

    /// The `aud` every identity token must carry.
    #[arg(long, env = "AETHER_TOKEN_AUDIENCE", default_value = "aether-hub")]
    pub token_audience: String,

    /// The `iss` every identity token must carry. Unset: not checked.
    #[arg(long, env = "AETHER_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,

    /// Clock skew allowed on `exp`, `nbf` and `iat`, in whole seconds.
    #[arg(long, env = "AETHER_TOKEN_LEEWAY_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub token_leeway_secs: u64,

    /// PEM certificate chain: with AETHER_TLS_KEY_FILE, the hub serves
    /// `wss://` and `https://` itself. Unset: plain TCP (TLS ends at a
    /// load balancer). Reloaded on SIGHUP.
    #[arg(long, env = "AETHER_TLS_CERT_FILE")]
    pub tls_cert_file: Option<std::path::PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of AETHER_TLS_CERT_FILE.
    #[arg(long, env = "AETHER_TLS_KEY_FILE")]
    pub tls_key_file: Option<std::path::PathBuf>,

    /// Sockets this instance holds at most; an upgrade beyond it gets 503.
    /// Default: the open-file limit less 256 (listener, Redis, HTTP).
    #[arg(long, env = "AETHER_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// Sockets one client_id may hold on this instance (more: 429); 0 = no limit.
    #[arg(long, env = "AETHER_MAX_SOCKETS_PER_CLIENT", default_value_t = 16)]
    pub max_sockets_per_client: u32,

    /// WebSocket upgrades this instance admits per second, with a burst of
    /// as many; more get 503 with Retry-After before any other check
    /// (reconnect storms). 0 = no limit.
    #[arg(long, env = "AETHER_MAX_CONNECTS_PER_SEC", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_connects_per_sec: u32,

    /// Kept `msg`/`cmd` messages per route, for recovery on reconnect and
    /// gap repair (docs/protocol.md section 9); 0 turns history off.
    #[arg(long, env = "AETHER_HISTORY_SIZE", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub history_size: u32,

    /// Seconds a kept message stays in history at most.
    #[arg(long, env = "AETHER_HISTORY_TTL_SECS", default_value = "300", value_parser = seconds)]
    pub history_ttl: Duration,

    /// Whether clients may send `broadcast` messages.
    #[arg(long, env = "AETHER_ALLOW_CLIENT_BROADCAST", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_client_broadcast: bool,

    /// Whether the hub serves the web console at `/console` (and redirects
    /// `/` there).
    #[arg(long, env = "AETHER_CONSOLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub console: bool,

    /// Largest frame a client may send, in bytes (larger: close 1009).
    #[arg(long, env = "AETHER_MAX_MESSAGE_BYTES", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(64..=16 * 1024 * 1024))]
    pub max_message_bytes: u32,

    /// Messages queued per socket before it counts as too slow (close 4008).
    #[arg(long, env = "AETHER_OUTBOUND_QUEUE", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub outbound_queue: u32,

    /// Messages per second a socket may send, with a burst of as many; 0 = no limit.
    #[arg(long, env = "AETHER_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,

    /// Pings per second a client may send on one socket, with a burst of
    /// as many (more: close 4029); 0 = no limit. Apart from the rate limit,
    /// which counts messages: every ping costs the hub a pong.
    #[arg(long, env = "AETHER_PING_LIMIT", default_value_t = 100)]
    pub ping_limit: u32,

    /// Seconds without any frame (not even a pong) before close 4408.
    #[arg(long, env = "AETHER_IDLE_TIMEOUT_SECS", default_value = "120", value_parser = seconds)]
    pub idle_timeout: Duration,

    /// Seconds between the hub's pings to each socket.
    #[arg(long, env = "AETHER_PING_INTERVAL_SECS", default_value = "30", value_parser = seconds)]
    pub ping_interval: Duration,

    /// Seconds after which a dead instance's clients leave presence (Redis).
    #[arg(long, env = "AETHER_PRESENCE_TTL_SECS", default_value = "90", value_parser = seconds)]
    pub presence_ttl: Duration,

    /// This instance's id in logs and in Redis presence records (a Vision ID).
    /// Default: random, different for every start.
    #[arg(
        long,
        env = "AETHER_INSTANCE_ID",
        default_value = "",
        hide_default_value = true
    )]
    pub instance_id: String,

    /// Seconds to wait for sockets to close on SIGTERM/SIGINT before exiting.
    #[arg(long, env = "AETHER_SHUTDOWN_GRACE_SECS", default_value = "10", value_parser = seconds)]
    pub shutdown_grace: Duration,

    /// Log filter (tracing syntax: `info`, `warn`, `aether_hub=debug`, ...).
    #[arg(long, env = "AETHER_LOG", default_value = "info")]
    pub log: String,

    /// Log line format: `text` for people, `json` (one object a line) for
    /// log collectors.
    #[arg(long, env = "AETHER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where messages travel between instances, decided once from the
/// settings (validated by [`Config::validate`]) and handed to the broker
/// and presence: the one place the hub decides which Redis it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// One instance; routing, presence and history in this process.
    Memory,
    /// Many instances through Redis.
    Redis(Box<Redis>),
}

/// The Redis the instances meet on, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redis {
    pub servers: RedisServers,
    /// For every data node (`AETHER_REDIS_USERNAME` / `_PASSWORD`; they
    /// win over a URL's).
    pub credentials: Credentials,
    /// For the sentinels.
    pub sentinel_credentials: Credentials,
    pub tls: RedisTls,
}

/// Which Redis servers the instances meet on. Addresses are as configured
/// (`host:port` or URLs, which may hold a password: `Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub enum RedisServers {
    /// One Redis server (`AETHER_REDIS_URL`).
    Single { url: String },
    /// A Redis Cluster, found from its seed nodes.
    Cluster { seeds: Vec<String> },
    /// One master at a time, as Redis Sentinel names it.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

impl std::fmt::Debug for RedisServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all = |list: &[String]| list.iter().map(|a| redact(a)).collect::<Vec<_>>();
        match self {
            RedisServers::Single { url } => write!(f, "Single({})", redact(url)),
            RedisServers::Cluster { seeds } => write!(f, "Cluster({:?})", all(seeds)),
            RedisServers::Sentinel { sentinels, master } => {
                write!(f, "Sentinel({master}, {:?})", all(sentinels))
            }
        }
    }
}

/// A user and password; `Debug` never shows the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = self.password.as_ref().map(|_| "***");
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &password)
            .finish()
    }
}

/// The TLS files for Redis (TLS itself is a `rediss://` address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

/// `address` with any password in it replaced by `***`.
pub fn redact(address: &str) -> String {
    let Some((scheme, rest)) = address.split_once("://") else {
        return address.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => address.to_owned(),
    }
}

impl Backend {
    /// The mode as `GET /v3/info` and the start-up log line name it.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis(redis) => match redis.servers {
                RedisServers::Single { .. } => "redis",
                RedisServers::Cluster { .. } => "cluster",
                RedisServers::Sentinel { .. } => "sentinel",
            },
        }
    }
}

/// What a session needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub outbound_queue: usize,
    pub rate_limit: u32,
    /// The client's pings per second (0: no limit).
    pub ping_limit: u32,
    pub idle_timeout: Duration,
    pub ping_interval: Duration,
    pub allow_client_broadcast: bool,
    /// 0: no limit.
    pub max_sockets_per_client: usize,
    pub max_connections: usize,
    /// Upgrades admitted per second (0: no limit).
    pub max_connects_per_sec: u32,
    pub history: crate::history::Retention,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("AETHER_INSTANCE_ID: {0}")]
    InstanceId(crate::protocol::VisionIdError),
    #[error("AETHER_REDIS_URL: must start with redis:// or rediss://")]
    RedisUrl,
    #[error("AETHER_REDIS_URL, AETHER_REDIS_CLUSTER and AETHER_REDIS_SENTINELS: set one of them at most")]
    RedisModes,
    #[error("{0}: entry {1} is neither host:port nor a redis:// or rediss:// URL")]
    RedisAddress(&'static str, usize),
    #[error("AETHER_REDIS_SENTINELS and AETHER_REDIS_SENTINEL_MASTER: set both or neither")]
    SentinelPair,
    #[error("AETHER_REDIS_TLS_CERT_FILE and AETHER_REDIS_TLS_KEY_FILE: set both or neither")]
    RedisTlsPair,
    #[error("AETHER_REDIS_TLS_*: set, but no Redis address is rediss:// (TLS)")]
    RedisTlsUnused,
    #[error("AETHER_REDIS_PREFIX: no braces on a Redis Cluster (a hash tag would put every channel in one slot)")]
    ClusterPrefix,
    #[error("AETHER_PRESENCE_TTL_SECS: must be at least 1 second")]
    PresenceTtl,
    #[error("AETHER_TOKEN_AUDIENCE: must not be empty")]
    TokenAudience,
    #[error("AETHER_TLS_CERT_FILE and AETHER_TLS_KEY_FILE: set both or neither")]
    TlsPair,
}

impl Config {
    /// Reads flags and environment. On a bad value, the error names the
    /// environment variable as well as the flag, since most deployments
    /// set the former.
    pub fn load() -> Result<Config, String> {
        let parsed = Config::try_parse().map_err(|e| {
            use clap::error::{ContextKind, ContextValue, ErrorKind};
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            let env = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(arg)) => env_of(arg),
                _ => None,
            };
            let text = e.to_string();
            let text = text.trim_start_matches("error: ").trim_end();
            match env {
                Some(env) => format!("{env}: {text}"),
                None => text.to_owned(),
            }
        })?;
        parsed.validate().map_err(|e| e.to_string())
    }

    /// A configuration with every default, listening on an ephemeral
    /// loopback port: the starting point for tests and tools.
    pub fn for_tests() -> Self {
        let mut config = Config::parse_from(["aether-hub"]);
        config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        config.instance_id = random_instance_id();
        config
    }

    /// Checks what clap's per-value parsers cannot.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        if self.instance_id.is_empty() {
            self.instance_id = random_instance_id();
        }
        crate::protocol::VisionId::parse(&self.instance_id).map_err(ConfigError::InstanceId)?;
        // An empty entry ("AETHER_API_KEYS=" or "a,,b") is no key at all.
        self.api_keys.retain(|k| !k.trim().is_empty());
        self.admin_api_keys.retain(|k| !k.trim().is_empty());
        self.allowed_origins.retain(|o| !o.trim().is_empty());
        self.token_secrets.retain(|k| !k.trim().is_empty());
        if self.token_audience.trim().is_empty() {
            return Err(ConfigError::TokenAudience);
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConfigError::TlsPair);
        }
        if self.presence_ttl < Duration::from_secs(1) {
            return Err(ConfigError::PresenceTtl);
        }
        self.check_redis()?;
        // A route's history keys take its channel's whole name as their hash
        // tag, which only lands in the channel's slot when the name has no
        // tag of its own.
        if !self.redis_cluster.is_empty() && self.redis_prefix.contains(['{', '}']) {
            return Err(ConfigError::ClusterPrefix);
        }
        Ok(self)
    }

    /// The Redis settings, each on its own: one mode at most, addresses
    /// that parse (the link takes URLs apart), TLS files in pairs and used.
    fn check_redis(&mut self) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::RedisUrl);
            }
        }
        for list in [&mut self.redis_cluster, &mut self.redis_sentinels] {
            list.retain(|s| !s.trim().is_empty());
            list.iter_mut().for_each(|s| *s = s.trim().to_owned());
        }
        let modes = [
            self.redis_url.is_some(),
            !self.redis_cluster.is_empty(),
            !self.redis_sentinels.is_empty(),
        ];
        if modes.iter().filter(|m| **m).count() > 1 {
            return Err(ConfigError::RedisModes);
        }
        for (var, list) in [
            ("AETHER_REDIS_CLUSTER", &self.redis_cluster),
            ("AETHER_REDIS_SENTINELS", &self.redis_sentinels),
        ] {
            if let Some(n) = list.iter().position(|a| !is_address(a)) {
                return Err(ConfigError::RedisAddress(var, n + 1));
            }
        }
        if self.redis_sentinels.is_empty() != self.redis_sentinel_master.is_none() {
            return Err(ConfigError::SentinelPair);
        }
        if self.redis_tls_cert_file.is_some() != self.redis_tls_key_file.is_some() {
            return Err(ConfigError::RedisTlsPair);
        }
        let tls_files = self.redis_tls_ca_file.is_some() || self.redis_tls_cert_file.is_some();
        let rediss = |a: &String| a.starts_with("rediss://");
        let any_tls = self.redis_url.iter().any(rediss)
            || self.redis_cluster.iter().any(rediss)
            || self.redis_sentinels.iter().any(rediss);
        if tls_files && !any_tls {
            return Err(ConfigError::RedisTlsUnused);
        }
        Ok(())
    }

    /// Where messages travel between instances (after [`Config::validate`]).
    pub fn backend(&self) -> Backend {
        let servers = match (&self.redis_url, &self.redis_sentinel_master) {
            (Some(url), _) => RedisServers::Single { url: url.clone() },
            (None, Some(master)) => RedisServers::Sentinel {
                sentinels: self.redis_sentinels.clone(),
                master: master.clone(),
            },
            (None, None) if !self.redis_cluster.is_empty() => RedisServers::Cluster {
                seeds: self.redis_cluster.clone(),
            },
            (None, None) => return Backend::Memory,
        };
        Backend::Redis(Box::new(Redis {
            servers,
            credentials: Credentials {
                username: self.redis_username.clone(),
                password: self.redis_password.clone(),
            },
            sentinel_credentials: Credentials {
                username: self.redis_sentinel_username.clone(),
                password: self.redis_sentinel_password.clone(),
            },
            tls: RedisTls {
                ca_file: self.redis_tls_ca_file.clone(),
                cert_file: self.redis_tls_cert_file.clone(),
                key_file: self.redis_tls_key_file.clone(),
            },
        }))
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes as usize,
            outbound_queue: self.outbound_queue as usize,
            rate_limit: self.rate_limit,
            ping_limit: self.ping_limit,
            idle_timeout: self.idle_timeout,
            ping_interval: self.ping_interval,
            allow_client_broadcast: self.allow_client_broadcast,
            max_sockets_per_client: self.max_sockets_per_client as usize,
            max_connections: self
                .max_connections
                .map_or_else(crate::fdlimit::default_max_connections, |n| n as usize),
            max_connects_per_sec: self.max_connects_per_sec,
            history: crate::history::Retention {
                size: self.history_size as usize,
                ttl: self.history_ttl,
            },
        }
    }
}

/// `host:port` with a port, or a `redis://` / `rediss://` URL.
fn is_address(text: &str) -> bool {
    if text.starts_with("redis://") || text.starts_with("rediss://") {
        return true;
    }
    let port = text.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
    matches!(port, Some((h, Ok(p))) if !h.is_empty() && p > 0)
}

/// The environment variable behind a flag as clap names it (`--bind <BIND>`).
fn env_of(arg: &str) -> Option<String> {
    use clap::CommandFactory;
    let long = arg.trim_start_matches('-').split([' ', '=']).next()?;
    let command = Config::command();
    let found = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?;
    found.get_env().map(|e| e.to_string_lossy().into_owned())
}

/// Seconds as a positive decimal number ("120", "0.5").
fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0 * 365.0) {
        return Err(format!(
            "{s:?} must be more than 0 seconds and at most a year"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn random_instance_id() -> String {
    format!("hub-{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["aether-hub"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map_err(|e| e.to_string()))
    }

    #[test]
    fn defaults_match_the_documentation() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.bind, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.max_message_bytes, 65536);
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        assert_eq!(c.rate_limit, 0);
        assert_eq!(c.ping_limit, 100);
        assert_eq!(c.max_connects_per_sec, 0);
        assert_eq!(c.presence_ttl, Duration::from_secs(90));
        assert!(c.allow_client_broadcast);
        assert!(c.api_keys.is_empty());
        assert!(c.redis_url.is_none());
        assert!(c.instance_id.starts_with("hub-"));
        assert_eq!(c.history_size, 100);
        assert_eq!(c.history_ttl, Duration::from_secs(300));
        assert!(c.console);
    }

    #[test]
    fn lists_and_values_parse() {
        let c = parse(&[
            "--api-keys",
            "k1,k2",
            "--allowed-origins",
            "https://a.example,https://b.example",
            "--allow-client-broadcast",
            "false",
            "--idle-timeout",
            "0.5",
        ])
        .unwrap();
        assert_eq!(c.api_keys, vec!["k1", "k2"]);
        assert_eq!(c.allowed_origins.len(), 2);
        assert!(!c.allow_client_broadcast);
        assert_eq!(c.idle_timeout, Duration::from_millis(500));
    }

    fn servers(c: &Config) -> Option<RedisServers> {
        match c.backend() {
            Backend::Redis(redis) => Some(redis.servers),
            Backend::Memory => None,
        }
    }

    #[test]
    fn cluster_seeds_are_a_comma_list() {
        let c = parse(&[
            "--redis-cluster",
            "10.0.0.1:7000, rediss://:pw@10.0.0.2:7001,",
        ])
        .unwrap();
        assert_eq!(
            c.redis_cluster,
            vec!["10.0.0.1:7000", "rediss://:pw@10.0.0.2:7001"]
        );
        assert!(c.redis_url.is_none());
        assert!(parse(&[]).unwrap().redis_cluster.is_empty());
        let seeds = vec![
            "10.0.0.1:7000".to_owned(),
            "rediss://:pw@10.0.0.2:7001".to_owned(),
        ];
        assert_eq!(servers(&c), Some(RedisServers::Cluster { seeds }));
    }

    #[test]
    fn the_backend_follows_the_redis_settings() {
        assert_eq!(parse(&[]).unwrap().backend(), Backend::Memory);
        let c = parse(&["--redis-url", "redis://h:1/"]).unwrap();
        let url = "redis://h:1/".to_owned();
        assert_eq!(servers(&c), Some(RedisServers::Single { url }));
        let c = parse(&[
            "--redis-sentinels",
            "s1:26379,s2:26379",
            "--redis-sentinel-master",
            "main",
            "--redis-password",
            "pw",
        ])
        .unwrap();
        let sentinels = vec!["s1:26379".to_owned(), "s2:26379".to_owned()];
        let master = "main".to_owned();
        assert_eq!(
            servers(&c),
            Some(RedisServers::Sentinel { sentinels, master })
        );
        let Backend::Redis(redis) = c.backend() else {
            panic!("redis")
        };
        assert_eq!(redis.credentials.password.as_deref(), Some("pw"));
    }

    #[test]
    fn passwords_never_show_in_debug_output() {
        let c = parse(&[
            "--redis-url",
            "rediss://hub:url-s3cret@h:1/",
            "--redis-password",
            "env-s3cret",
        ])
        .unwrap();
        let shown = format!("{:?}", c.backend());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("rediss://hub:***@h:1/"), "{shown}");
        assert_eq!(redact("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact("h:1"), "h:1");
    }

    #[test]
    fn bad_values_stop_start_up_with_a_reason() {
        for (args, part) in [
            (&["--bind", "nowhere"][..], "invalid socket address"),
            (&["--idle-timeout", "0"][..], "more than 0"),
            (&["--ping-interval", "soon"][..], "not a number"),
            (&["--max-message-bytes", "10"][..], "not in 64"),
            (&["--outbound-queue", "0"][..], "not in 1"),
            (&["--rate-limit=-1"][..], "invalid"),
            (&["--ping-limit", "many"][..], "invalid"),
            (&["--max-connects-per-sec=-1"][..], "invalid value"),
            (&["--max-connects-per-sec", "lots"][..], "invalid digit"),
            (&["--max-connects-per-sec", "2.5"][..], "invalid digit"),
            (
                &["--max-connects-per-sec", "2000000"][..],
                "not in 0..=1000000",
            ),
            (&["--instance-id", "a b"][..], "AETHER_INSTANCE_ID"),
            (&["--redis-url", "localhost"][..], "AETHER_REDIS_URL"),
            (
                &["--redis-url", "redis://a", "--redis-cluster", "a:1"][..],
                "AETHER_REDIS_CLUSTER",
            ),
            (
                &["--redis-cluster", "a:1", "--redis-sentinels", "s:1"][..],
                "AETHER_REDIS_SENTINELS",
            ),
            (
                &["--redis-cluster", "a:1,nowhere"][..],
                "entry 2 is neither",
            ),
            (
                &["--redis-sentinels", "s:1"][..],
                "AETHER_REDIS_SENTINEL_MASTER",
            ),
            (&["--redis-sentinel-master", "m"][..], "set both or neither"),
            (
                &["--redis-url", "rediss://h", "--redis-tls-cert-file", "c"][..],
                "AETHER_REDIS_TLS_KEY_FILE",
            ),
            (
                &["--redis-url", "redis://h", "--redis-tls-ca-file", "ca.pem"][..],
                "no Redis address is rediss://",
            ),
            (
                &["--redis-cluster", "a:1", "--redis-prefix", "{env}:"][..],
                "AETHER_REDIS_PREFIX",
            ),
            (&["--presence-ttl", "0.5"][..], "AETHER_PRESENCE_TTL_SECS"),
            (&["--allow-client-broadcast", "maybe"][..], "invalid value"),
            (&["--console", "perhaps"][..], "invalid value"),
            (&["--tls-cert-file", "c.pem"][..], "set both or neither"),
            (&["--tls-key-file", "k.pem"][..], "set both or neither"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(part), "{args:?}: {err}");
        }
    }
}
