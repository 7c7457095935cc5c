//! Least privilege (docs/redis-production.md, "Least privilege"): the ACL
//! rules a hub's Redis user needs, read from that page itself, so that
//! what the tests prove is what the page tells operators to type; and
//! what Redis says about them: `ACL LOG` (every command, key or channel
//! refused, scripts' calls included), `INFO commandstats` (every command
//! run), `ACL GETUSER`.
//!
//! Each rule is the one `ACL SETUSER` line in the fenced block after an
//! HTML comment `<!-- acl:NAME -->`, written for user [`DOC_USER`], password
//! [`DOC_PASSWORD`] and prefix [`DOC_PREFIX`]; [`rule`] gives it for any
//! prefix and password.

use std::collections::HashMap;
use std::io::Read;
use std::process::Child;
use std::sync::{Arc, Mutex};

use redis::aio::MultiplexedConnection;
use redis::Value;

/// The page the rules come from.
pub const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/redis-production.md");
/// The user, password and prefix the page's rules are written for.
pub const DOC_USER: &str = "aether-hub";
pub const DOC_PASSWORD: &str = "PASSWORD";
pub const DOC_PREFIX: &str = "acme:";

/// The page's rules, by the name in their `<!-- acl:NAME -->` marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The hub's user on one Redis server (`AETHER_REDIS_URL`).
    Single,
    /// The hub's user on every node of a Redis Cluster.
    Cluster,
    /// The hub's user on the master and replicas that sentinels watch.
    Sentinel,
    /// The hub's user on the sentinels themselves.
    SentinelUser,
}

impl Rule {
    pub fn marker(self) -> &'static str {
        match self {
            Rule::Single => "acl:single",
            Rule::Cluster => "acl:cluster",
            Rule::Sentinel => "acl:sentinel",
            Rule::SentinelUser => "acl:sentinel-user",
        }
    }
}

/// The page's text.
pub fn page() -> String {
    std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("{DOC}: {e}"))
}

/// The body of the fenced block after `<!-- {marker} -->`.
pub fn block(marker: &str) -> String {
    let page = page();
    let tag = format!("<!-- {marker} -->");
    let mut found = page.matches(&tag);
    assert!(found.next().is_some(), "{DOC} has no {tag}");
    assert!(found.next().is_none(), "{DOC} has {tag} twice");
    let after = &page[page.find(&tag).expect("marker") + tag.len()..];
    let open = after.find("```").expect("a fenced block after the marker");
    assert!(
        after[..open].trim().is_empty(),
        "{tag}: the block must follow it"
    );
    let body = &after[open + 3..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    body[..body.find("```").expect("closing fence")].to_owned()
}

/// The words of the documented rule after `ACL SETUSER <user>`, as the
/// page writes them.
pub fn documented(which: Rule) -> Vec<String> {
    let body = block(which.marker());
    let lines: Vec<&str> = body.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}: one ACL SETUSER line", which.marker());
    let words: Vec<String> = lines[0].split_whitespace().map(str::to_owned).collect();
    assert_eq!(
        words[..3],
        ["ACL", "SETUSER", DOC_USER],
        "{}",
        which.marker()
    );
    words[3..].to_vec()
}

/// The documented rule for `prefix` and `password`: the page's words with
/// its password and prefix replaced (the prefix escaped for ACL patterns).
pub fn rule(which: Rule, prefix: &str, password: &str) -> Vec<String> {
    let escaped = glob_escape(prefix);
    documented(which)
        .into_iter()
        .map(|word| {
            if word == format!(">{DOC_PASSWORD}") {
                return format!(">{password}");
            }
            match word.chars().next() {
                Some('~' | '&') if which != Rule::SentinelUser => {
                    assert!(
                        word.contains(DOC_PREFIX),
                        "{word}: a pattern not under the prefix"
                    );
                    word.replacen(DOC_PREFIX, &escaped, 1)
                }
                _ => word,
            }
        })
        .collect()
}

/// `text` as a literal in an ACL glob pattern.
pub fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `words` without `word` (which must be there).
pub fn without(words: &[String], word: &str) -> Vec<String> {
    assert!(words.iter().any(|w| w == word), "{word} is not in the rule");
    words.iter().filter(|w| *w != word).cloned().collect()
}

/// The commands a rule allows (`+name`, `+name|sub`), lower case.
pub fn allowed(words: &[String]) -> Vec<String> {
    words
        .iter()
        .filter_map(|w| w.strip_prefix('+'))
        .map(str::to_lowercase)
        .collect()
}

/// `ACL SETUSER user words…`; panics if Redis refuses it.
pub async fn set_user(conn: &mut MultiplexedConnection, user: &str, words: &[String]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(user).arg(words);
    let answer: redis::RedisResult<()> = cmd.query_async(conn).await;
    if let Err(e) = answer {
        panic!("ACL SETUSER {user} {words:?}: {e}");
    }
}

/// `ACL GETUSER user`, as field → value text (passwords are hashes).
pub async fn get_user(conn: &mut MultiplexedConnection, user: &str) -> HashMap<String, String> {
    let answer: Value = redis::cmd("ACL")
        .arg("GETUSER")
        .arg(user)
        .query_async(conn)
        .await
        .expect("ACL GETUSER");
    pairs(&answer)
        .into_iter()
        .map(|(k, v)| (k, format!("{v:?}")))
        .collect()
}

/// One `ACL LOG` entry: a command, key or channel refused.
#[derive(Debug, Clone)]
pub struct Denial {
    /// `command`, `key`, `channel` or `auth`.
    pub reason: String,
    /// `toplevel`, `lua`, `multi`.
    pub context: String,
    /// The command, key or channel refused.
    pub object: String,
    pub username: String,
    pub count: i64,
}

/// Every entry of `ACL LOG` (newest first).
pub async fn denials(conn: &mut MultiplexedConnection) -> Vec<Denial> {
    let answer: Value = redis::cmd("ACL")
        .arg("LOG")
        .arg(1000)
        .query_async(conn)
        .await
        .expect("ACL LOG");
    let Value::Array(entries) = answer else {
        panic!("ACL LOG answered {answer:?}");
    };
    entries
        .iter()
        .map(|entry| {
            let fields: HashMap<String, Value> = pairs(entry).into_iter().collect();
            let text = |name: &str| fields.get(name).and_then(text).unwrap_or_default();
            Denial {
                reason: text("reason"),
                context: text("context"),
                object: text("object"),
                username: text("username"),
                count: match fields.get("count") {
                    Some(Value::Int(n)) => *n,
                    _ => 0,
                },
            }
        })
        .collect()
}

/// Empties `ACL LOG` (a sentinel's too).
pub async fn reset_log(conn: &mut MultiplexedConnection) {
    let _: () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query_async(conn)
        .await
        .expect("ACL LOG RESET");
}

/// Empties `ACL LOG` and zeroes `INFO commandstats` (a data node).
pub async fn reset(conn: &mut MultiplexedConnection) {
    reset_log(conn).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .expect("CONFIG RESETSTAT");
}

/// `INFO commandstats`: calls per command (`client|setname`, lower case),
/// counting those made from scripts.
pub async fn calls(conn: &mut MultiplexedConnection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_lowercase(), calls))
        })
        .collect()
}

/// `CLIENT LIST`: (name, user) of every connection that has a name.
pub async fn named_users(conn: &mut MultiplexedConnection) -> Vec<(String, String)> {
    clients(conn)
        .await
        .into_iter()
        .filter(|c| !c.name.is_empty())
        .map(|c| (c.name, c.user))
        .collect()
}

/// One line of `CLIENT LIST`.
#[derive(Debug, Clone)]
pub struct ClientLine {
    pub name: String,
    pub user: String,
    /// The last command it ran (`subscribe`, `client|setname`, …).
    pub cmd: String,
    /// Channels it is subscribed to.
    pub subscriptions: u32,
}

/// `CLIENT LIST`.
pub async fn clients(conn: &mut MultiplexedConnection) -> Vec<ClientLine> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                    .unwrap_or_default()
                    .to_owned()
            };
            ClientLine {
                name: field("name"),
                user: field("user"),
                cmd: field("cmd"),
                subscriptions: field("sub").parse().unwrap_or(0),
            }
        })
        .collect()
}

/// `KEYS *` (a test's own server: small).
pub async fn keys(conn: &mut MultiplexedConnection) -> Vec<String> {
    redis::cmd("KEYS")
        .arg("*")
        .query_async(conn)
        .await
        .expect("KEYS")
}

fn pairs(value: &Value) -> Vec<(String, Value)> {
    match value {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|pair| match pair {
                [k, v] => Some((text(k)?, v.clone())),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, v.clone())))
            .collect(),
        other => panic!("expected field/value pairs, got {other:?}"),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A child's stderr, read as it comes by a thread of its own (so that a
/// chatty process never blocks on a full pipe), kept whole.
#[derive(Clone)]
pub struct Stderr {
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Stderr {
    /// Takes over `child`'s piped stderr.
    pub fn drain(child: &mut Child) -> Stderr {
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&bytes);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut bytes) = into.lock() {
                    bytes.extend_from_slice(&chunk[..n]);
                }
            }
        });
        Stderr { bytes }
    }

    /// What the process wrote so far.
    pub fn text(&self) -> String {
        self.bytes
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The lines that contain `word`.
    pub fn lines_with(&self, word: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(word))
            .map(str::to_owned)
            .collect()
    }
}
