//! Numbering kept messages in Redis: the [`NUMBER`] script, which numbers,
//! keeps and publishes a whole batch of messages in one call, and the
//! batches the publisher (`publish/`) builds for it.
//!
//! One script call is one atomic step, so Redis decides one order for
//! every instance (docs/protocol.md section 9). A call carries a run of
//! consecutive kept messages rather than one: Redis pays a script call's
//! fixed cost (arguments turned into Lua strings, the call itself) and each
//! route's bookkeeping (its position read and written, its expiries) once
//! per batch instead of once per message, which is most of what a kept
//! message used to cost (docs/benchmarks/history.md, issue 22).
//!
//! Keys (`channels.rs` documents them): `{<channel>}:position`, a hash of
//! the route's epoch (`e`), last offset (`n`), master lineage (`l`) and
//! when its expiries were last refreshed (`x`, ms); `{<channel>}:history`,
//! a stream whose entry IDs are `<offset>-1`. The stream is trimmed with
//! `MAXLEN ~` (whole nodes, the cheap way): it may hold a few more than the
//! history size, and `READ` (`history.rs`) never returns those, so what a
//! client can recover is exactly what an exact trim would have left.

use std::collections::HashMap;
use std::time::Duration;

use redis::{Cmd, Value};

use super::link::Publish;
use super::scripts::{int, millis, position_ttl, string, Invoke, Keys, Script};
use crate::history::{Epoch, Position, Retention};

/// Numbers, keeps and publishes a batch of messages, in order.
///
/// KEYS: each route's position and history, in pairs (each route once).
/// ARGV: history size, TTL in ms, position TTL in ms, refresh slack in ms
/// (see below), a fresh epoch for a route that has none, the publishing
/// command (`PUBLISH`, or `SPUBLISH` on Redis Cluster, where a call's
/// routes share a slot), the master's lineage (`""`: not checked); then
/// each route's channel, in KEYS order; then each route's number of
/// messages in the batch, in the same order; then per message its route (1-based
/// index into the routes), its encoded text without the closing `}`, and
/// its sender. Returns `{epoch1, first1, epoch2, first2, …}`, per route
/// its epoch and the offset of its first message in the batch (the next
/// ones follow on): a short answer, whatever the batch's size, which the
/// hub's Redis client reads at a cost per element.
///
/// A new epoch starts with an empty stream (`DEL`), so a stream never mixes
/// two numberings. Each text gets `,"offset":N,"epoch":"E"}` appended.
///
/// The lineage (Sentinel, or a cluster master: the master's replication
/// ID, new at each promotion) is kept in the position (`l`). A position
/// numbered under another master may have lost its last offsets in the
/// failover (replication is asynchronous): numbering on from it would hand
/// those offsets out a second time, so that readers drop new messages as
/// duplicates and a resuming client is told `recovered: true` across a
/// gap. It starts a new epoch instead.
///
/// Expiries are refreshed at most once per slack (`x` says when they last
/// were), each to its TTL plus the slack: a key still outlives its route's
/// last message by at least its TTL, and a busy route costs two `PEXPIRE`s
/// per slack instead of two per message.
///
/// Every position is written before any message is published, so that a
/// refusal (an ACL without a command, a demoted master, out of memory)
/// comes before anything went out; an error later can only leave an offset
/// unused, never hand one out twice. The stream's expiry is set after its
/// entries: a new epoch's stream only exists once its first entry does.
/// The caller counts each route's messages, so that the positions'
/// final offsets are known first.
pub static NUMBER: Script = Script::new(
    r#"
local size, slack, fresh, publish, lineage = ARGV[1], tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local routes = #KEYS / 2
local first = 8 + 2 * routes
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = string.format('%d', now)
local epochs, counts, refresh = {}, {}, {}
for r = 1, routes do
  local state = redis.call('HMGET', KEYS[2 * r - 1], 'e', 'n', 'l', 'x')
  local epoch, set = state[1], {}
  if epoch and lineage ~= '' and state[3] ~= lineage then
    if state[3] then epoch = false else set = {'l', lineage} end
  end
  local n, refreshed = tonumber(state[2] or '0'), tonumber(state[4] or '0')
  if not epoch then
    epoch, n, refreshed = fresh, 0, 0
    redis.call('DEL', KEYS[2 * r])
    set = {'e', epoch}
    if lineage ~= '' then set[3] = 'l'; set[4] = lineage end
  end
  refresh[r] = now - refreshed >= slack
  if refresh[r] then set[#set + 1] = 'x'; set[#set + 1] = ms end
  epochs[r], counts[r] = epoch, n
  local last = string.format('%d', n + tonumber(ARGV[7 + routes + r]))
  redis.call('HSET', KEYS[2 * r - 1], 'n', last, unpack(set))
  if refresh[r] then
    redis.call('PEXPIRE', KEYS[2 * r - 1], string.format('%d', ARGV[3] + slack))
  end
end
local out = {}
for r = 1, routes do
  out[2 * r - 1] = epochs[r]
  out[2 * r] = counts[r] + 1
end
for i = first, #ARGV, 3 do
  local r = tonumber(ARGV[i])
  local n = counts[r] + 1
  counts[r] = n
  local offset = string.format('%d', n)
  local text = ARGV[i + 1] .. ',"offset":' .. offset .. ',"epoch":"' .. epochs[r] .. '"}'
  redis.call('XADD', KEYS[2 * r], 'MAXLEN', '~', size, offset .. '-1', 't', text, 's', ARGV[i + 2], 'at', ms)
  redis.call(publish, ARGV[7 + r], text)
end
for r = 1, routes do
  if refresh[r] then
    redis.call('PEXPIRE', KEYS[2 * r], string.format('%d', ARGV[2] + slack))
  end
end
return out
"#,
);

/// Messages one [`NUMBER`] call carries at most.
pub const BATCH_MAX: usize = 128;
/// Text bytes one call carries at most (beyond a first message of any
/// size): a call is one step for Redis, which serves nothing else meanwhile.
const BATCH_BYTES: usize = 256 * 1024;

/// The longest an expiry refresh is put off: `x` above.
const SLACK_MAX: Duration = Duration::from_secs(30);

/// One kept message to number.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub keys: &'a Keys,
    pub channel: &'a str,
    pub text: &'a str,
    pub sender: &'a str,
}

/// What numbering needs beyond the messages: how to call the script, how
/// it publishes, an epoch for a route that has none, and the master's
/// lineage ([`super::link::Commands::lineage`]).
#[derive(Debug, Clone, Copy)]
pub struct Numbering<'a> {
    pub invoke: Invoke,
    pub publish: Publish,
    pub fresh: &'a Epoch,
    pub lineage: &'a str,
}

/// Whether `next` may join a batch that holds `count` messages of
/// `bytes` text bytes.
pub fn fits(count: usize, bytes: usize, next: &Message<'_>) -> bool {
    count == 0 || (count < BATCH_MAX && bytes + next.text.len() <= BATCH_BYTES)
}

/// The call of [`NUMBER`] for a batch of messages, to go in a pipeline.
pub fn number_cmd(messages: &[Message<'_>], retention: Retention, how: Numbering<'_>) -> Cmd {
    let (of_message, count) = routes_of(messages.iter().map(|m| m.keys.position.as_str()));
    // Each route's first message (routes are numbered as they first
    // appear) and how many messages it has.
    let mut routes: Vec<(&Message<'_>, usize)> = Vec::with_capacity(count);
    for (m, &r) in messages.iter().zip(&of_message) {
        if r == routes.len() {
            routes.push((m, 0));
        }
        routes[r].1 += 1;
    }
    let slack = (retention.ttl / 4).min(SLACK_MAX);
    let mut cmd = NUMBER.invoke(how.invoke);
    cmd.arg(routes.len() * 2);
    for (first, _) in &routes {
        cmd.arg(&first.keys.position).arg(&first.keys.history);
    }
    cmd.arg(retention.size)
        .arg(millis(retention.ttl))
        .arg(millis(position_ttl(retention)))
        .arg(millis(slack))
        .arg(how.fresh.as_str())
        .arg(how.publish.command())
        .arg(how.lineage);
    for (first, _) in &routes {
        cmd.arg(first.channel);
    }
    for (_, count) in &routes {
        cmd.arg(*count);
    }
    for (m, r) in messages.iter().zip(of_message) {
        let body = m.text.strip_suffix('}').unwrap_or(m.text);
        cmd.arg(r + 1).arg(body.as_bytes()).arg(m.sender);
    }
    cmd
}

/// Each message's route, as an index from 0 among the batch's routes in
/// the order they first appear (named by their position keys), and how
/// many routes there are.
fn routes_of<'a>(positions: impl Iterator<Item = &'a str>) -> (Vec<usize>, usize) {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let of_message = positions
        .map(|key| {
            let next = index.len();
            *index.entry(key).or_insert(next)
        })
        .collect();
    (of_message, index.len())
}

/// The positions a [`NUMBER`] answer gives, one per message of the call
/// (named by its route's position key, in the call's order), or `None`
/// for any other answer.
pub fn numbered<'a>(
    reply: &Value,
    positions: impl Iterator<Item = &'a str>,
) -> Option<Vec<Position>> {
    let Value::Array(items) = reply else {
        return None;
    };
    let (of_message, count) = routes_of(positions);
    if items.len() != count * 2 {
        return None;
    }
    let mut next: Vec<Position> = items
        .chunks(2)
        .map(|pair| {
            Some(Position {
                epoch: Epoch::parse(&string(&pair[0])?)?,
                offset: int(&pair[1])?,
            })
        })
        .collect::<Option<_>>()?;
    Some(
        of_message
            .into_iter()
            .map(|r| {
                let position = next[r].clone();
                next[r].offset += 1;
                position
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_number_answer_gives_each_message_its_routes_next_offset() {
        let reply = Value::Array(vec![bulk("ea"), Value::Int(7), bulk("eb"), Value::Int(1)]);
        let keys = ["a", "b", "a", "a", "b"];
        let positions = numbered(&reply, keys.into_iter()).unwrap();
        let got: Vec<(u64, &str)> = positions
            .iter()
            .map(|p| (p.offset, p.epoch.as_str()))
            .collect();
        assert_eq!(got, [(7, "ea"), (1, "eb"), (8, "ea"), (9, "ea"), (2, "eb")]);
        // Any other shape: no positions.
        assert_eq!(numbered(&reply, ["a"].into_iter()), None);
        assert_eq!(numbered(&Value::Int(1), ["a"].into_iter()), None);
        let bad = Value::Array(vec![Value::Int(7), bulk("ea")]);
        assert_eq!(numbered(&bad, ["a"].into_iter()), None);
    }

    #[test]
    fn a_batch_names_each_route_once() {
        let a = Keys {
            position: "{a}:position".into(),
            history: "{a}:history".into(),
        };
        let b = Keys {
            position: "{b}:position".into(),
            history: "{b}:history".into(),
        };
        let msg = |keys, channel| Message {
            keys,
            channel,
            text: "{\"x\":1}",
            sender: "s",
        };
        let messages = [msg(&a, "a"), msg(&b, "b"), msg(&a, "a")];
        let fresh = Epoch::random();
        let retention = Retention {
            size: 100,
            ttl: Duration::from_secs(300),
        };
        let how = Numbering {
            invoke: Invoke::Source,
            publish: Publish::Classic,
            fresh: &fresh,
            lineage: "",
        };
        let cmd = number_cmd(&messages, retention, how);
        let args: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Arg::Cursor => String::new(),
            })
            .collect();
        // EVAL, source, 4 keys, 7 settings, 2 channels and their counts,
        // 3 × 3 per message.
        assert_eq!(args.len(), 2 + 1 + 4 + 7 + 4 + 9);
        assert_eq!(args[2], "4");
        assert_eq!(
            &args[3..7],
            ["{a}:position", "{a}:history", "{b}:position", "{b}:history"]
        );
        assert_eq!(&args[14..18], ["a", "b", "2", "1"]);
        // Routes by index; texts lose their closing brace.
        assert_eq!(&args[18..21], ["1", "{\"x\":1", "s"]);
        assert_eq!(args[21], "2");
        assert_eq!(args[24], "1");
        // A 300 s TTL puts refreshes off by 30 s at most.
        assert_eq!(args[10], "30000");
    }
}
