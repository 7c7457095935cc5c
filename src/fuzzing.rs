//! The fuzz targets' bodies: every parser that sees bytes from outside the
//! hub, driven the way the hub drives it, with the invariants its callers
//! rely on checked by assertion.
//!
//! `fuzz/` (cargo fuzz, nightly) calls these with libFuzzer's inputs;
//! `tests/fuzz_regressions.rs` (stable, part of the suite) replays every
//! input kept under `fuzz/regressions/` and the seed corpora through the
//! same functions, so an input that once crashed stays fixed. A panic here
//! is a bug the fuzzer found: either in the parser or in an invariant.

use std::collections::HashMap;
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::auth::{Access, Auth, Credentials, Surface};
use crate::channels::Names;
use crate::config::Config;
use crate::history::{self, Epoch, Resume};
use crate::http::SocketPath;
use crate::protocol::{self, Origin, VisionId};

/// A fuzz target's body: one input, any bytes.
pub type Target = fn(&[u8]);

/// The targets, by the name of their `fuzz/fuzz_targets/` file and corpus
/// folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("client_frame", client_frame),
    ("upgrade_request", upgrade_request),
    ("token", token),
    ("publish_body", publish_body),
    ("redis_message", redis_message),
];

/// A text frame from a socket (tungstenite hands over valid UTF-8 only):
/// parsed, validated and normalised for a socket of group `g1`, client
/// `c1`; what it accepts encodes to a JSON object that history can number
/// and read the position back from.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (group, client) = (VisionId::parse("g1"), VisionId::parse("c1"));
    let (Ok(group), Ok(client)) = (group, client) else {
        unreachable!("fixed ids are valid");
    };
    for allow_broadcast in [false, true] {
        let origin = Origin::Socket {
            group: &group,
            client: &client,
            allow_broadcast,
        };
        if let Ok(msg) = protocol::parse(text, origin) {
            assert_eq!(msg.from_id, "c1", "a socket speaks as itself");
            check_encoding(&msg);
        }
    }
}

/// `POST /v3/publish`'s body, as the handler takes it.
pub fn publish_body(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = protocol::parse(text, Origin::Service) {
        assert!(VisionId::parse(&msg.from_id).is_ok(), "from_id is checked");
        check_encoding(&msg);
    }
}

fn check_encoding(msg: &protocol::Message<'_>) {
    let encoded = msg.encode();
    let value: serde_json::Value = match serde_json::from_str(encoded.as_str()) {
        Ok(value) => value,
        Err(e) => panic!("the hub encoded invalid JSON ({e}): {}", encoded.as_str()),
    };
    assert!(value.is_object(), "a message is an object");
    assert!(
        protocol::sent_at_of(encoded.as_str()).is_some(),
        "sent_at is RFC 3339"
    );
    let epoch = Epoch::random();
    let numbered = history::number(encoded.as_str(), 42, &epoch);
    assert_eq!(
        history::position_of(numbered.as_str()),
        Some((42, epoch.as_str())),
        "history reads back the position it wrote"
    );
    let numbered: Result<serde_json::Value, _> = serde_json::from_str(numbered.as_str());
    assert!(numbered.is_ok(), "a numbered message is still JSON");
}

/// The upgrade request's target, `path?query`: the socket path's Vision
/// IDs and the `since_*` parameters, the query decoded as warp decodes it.
pub fn upgrade_request(data: &[u8]) {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Some(socket) = SocketPath::parse(path) {
        assert!(!socket.group.contains('/') && !socket.client.contains('/'));
        let _ = VisionId::parse(&socket.group);
        let _ = VisionId::parse(&socket.client);
    }
    let Ok(query) = serde_urlencoded::from_str::<HashMap<String, String>>(query) else {
        return;
    };
    if let Ok(resume) = Resume::from_query(&query) {
        assert!(resume.iter().count() <= query.len());
    }
}

/// Credentials as an upgrade carries them: the first byte picks where the
/// rest goes (subprotocol, `Authorization`, query, or claims to sign with
/// the hub's secret so the claim checks behind the signature are reached).
pub fn token(data: &[u8]) {
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    let auth = fuzz_auth();
    match how % 4 {
        0 => with_header(auth, "sec-websocket-protocol", rest),
        1 => with_header(auth, AUTHORIZATION.as_str(), rest),
        2 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let query = HashMap::from([("token".to_owned(), text.to_owned())]);
            check_access(auth, &HeaderMap::new(), &query);
        }
        _ => signed_claims(auth, rest),
    }
}

const FUZZ_SECRET: &str = "fuzzing-secret";

fn fuzz_auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let mut config = Config::for_tests();
        config.token_secrets = vec![FUZZ_SECRET.to_owned()];
        match Auth::from_config(&config) {
            Ok(auth) => {
                // No operator runs here: no revocation to wait for.
                auth.revocations().set_loaded();
                auth
            }
            Err(e) => panic!("a secret alone is a valid configuration: {e}"),
        }
    })
}

fn with_header(auth: &Auth, name: &str, value: &[u8]) {
    let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_bytes(value),
    ) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(name, value);
    check_access(auth, &headers, &HashMap::new());
}

fn check_access(auth: &Auth, headers: &HeaderMap, query: &HashMap<String, String>) {
    let credentials = Credentials::of(headers, query, Surface::Upgrade);
    if let Ok(access) = auth.check(&credentials) {
        // Only a token signed with the secret gets in: the fuzzer cannot
        // forge one, and a hub with a secret is never open.
        panic!("unsigned credentials were accepted: {access:?}");
    }
}

fn signed_claims(auth: &Auth, claims: &[u8]) {
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(claims) else {
        return;
    };
    let Ok(key) = jsonwebtoken::EncodingKey::from_secret(FUZZ_SECRET.as_bytes()) else {
        unreachable!("any bytes are an HMAC secret");
    };
    let Ok(signed) = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key) else {
        return;
    };
    let query = HashMap::from([("token".to_owned(), signed)]);
    let headers = HeaderMap::new();
    let credentials = Credentials::of(&headers, &query, Surface::Upgrade);
    if let Ok(Access::Token(grant)) = auth.check(&credentials) {
        assert_eq!(
            Some(grant.client.as_str()),
            claims["sub"].as_str(),
            "a grant is for the client its token names"
        );
    }
}

/// What Redis hands the hub: the first byte picks a pub/sub message
/// (`channel NUL payload`, as the reader routes and positions it) or a
/// RESP reply to the history scripts (as `numbered` and the replay read
/// parse it).
pub fn redis_message(data: &[u8]) {
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    if how % 2 == 0 {
        pubsub_message(rest);
    } else {
        script_reply(rest);
    }
}

fn pubsub_message(data: &[u8]) {
    let (channel, payload) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(channel) = std::str::from_utf8(channel) else {
        return;
    };
    let names = Names::new("p:");
    if let Some(route) = names.route(channel) {
        assert_eq!(names.channel(&route), channel, "a route names its channel");
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        return;
    };
    let _ = protocol::sent_at_of(text);
    if let Some((_, epoch)) = history::position_of(text) {
        let _ = Epoch::parse(epoch);
    }
}

fn script_reply(data: &[u8]) {
    let Ok(value) = redis::parse_redis_value(data) else {
        return;
    };
    let _ = crate::broker::redis::numbering::numbered(&value, ["a", "b", "a"].into_iter());
    if let Some(batch) = crate::broker::redis::history::parse_batch(value) {
        assert!(
            batch.kept.len() <= data.len(),
            "entries come from the reply"
        );
    }
}
