//! History in Redis, read back: the script that reads a route's kept
//! messages, the batched reads built on it, and loading the scripts.
//!
//! Keys (`channels.rs` documents them): `{<channel>}:position`, a hash of
//! the route's epoch (`e`) and last offset (`n`), and `{<channel>}:history`,
//! a stream whose entry IDs are `<offset>-1`, so that an offset range is an
//! `XRANGE`. `NUMBER` (`numbering.rs`) writes them.
//!
//! - [`READ`] returns a route's position (creating it when asked: "asking
//!   for its position creates it") and the kept messages in an offset
//!   range, at most a batch of them, skipping those past the TTL. Recovery
//!   ([`recover`]) and the broker's gap repair ([`read`]) both use it.
//!
//! Scripts are loaded with `SCRIPT LOAD` when a connection is made
//! ([`load`]) and called with `EVALSHA`; after a `NOSCRIPT` answer (a
//! `SCRIPT FLUSH`, a restarted Redis, a promoted cluster replica) the call
//! is made again with `EVAL` and the source ([`Invoke`]).

use redis::{RedisResult, Value};

use super::link::Commands;
use super::numbering::NUMBER;
use super::scripts::{int, millis, position_ttl, string, Invoke, Keys, Script};
use crate::history::{decide, Epoch, Kept, Position, Recovery, Retention, Since};
use crate::protocol::Encoded;

/// Reads a route's position and kept messages.
///
/// KEYS: position, history. ARGV: after (entries with a greater offset),
/// upto (and not greater; 0: up to the last), count (entries scanned at
/// most; 0: the position only), TTL in ms (older entries are skipped),
/// position TTL in ms, a fresh epoch to create a missing position with
/// (`""`: do not create), the epoch the caller reads in (`""`: any; entries
/// only when it is the route's), the master's lineage to create it with
/// (`""`: none; see `NUMBER`), the history size (entries more than that
/// many offsets back are not returned: the stream is trimmed with
/// `MAXLEN ~`, which may leave a few more).
///
/// Returns `{epoch, last offset, scanned up to, more, offset1, text1,
/// sender1, …}`; `epoch` is `""` when the route has no position (and none
/// was created). `more` is 1 when the batch was full and entries may follow
/// `scanned up to`.
pub static READ: Script = Script::new(
    r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
local n = 0
if epoch then
  n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
elseif ARGV[6] ~= '' then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'n', 0)
  if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'l', ARGV[8]) end
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  return {'', 0, 0, 0}
end
local after = tonumber(ARGV[1])
local count = tonumber(ARGV[3])
local upto = tonumber(ARGV[2])
if upto == 0 or upto > n then upto = n end
local floor = n - tonumber(ARGV[9])
if after < floor then after = math.min(floor, upto) end
if count == 0 or after >= upto or (ARGV[7] ~= '' and ARGV[7] ~= epoch) then
  return {epoch, n, after, 0}
end
local entries = redis.call('XRANGE', KEYS[2], string.format('%d', after + 1),
  string.format('%d', upto), 'COUNT', count)
local t = redis.call('TIME')
local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[4])
local out = {epoch, n, after, 0}
local scanned = after
for _, entry in ipairs(entries) do
  local offset = tonumber(string.match(entry[1], '^(%d+)'))
  scanned = offset
  local fields = entry[2]
  local text, sender, at = nil, '', 0
  for i = 1, #fields, 2 do
    local k = fields[i]
    if k == 't' then text = fields[i + 1]
    elseif k == 's' then sender = fields[i + 1]
    elseif k == 'at' then at = tonumber(fields[i + 1]) end
  end
  if text and at > oldest then
    out[#out + 1] = offset
    out[#out + 1] = text
    out[#out + 1] = sender
  end
end
out[3] = scanned
if #entries == count and scanned < upto then out[4] = 1 end
return out
"#,
);

/// Entries a single [`READ`] scans at most: small enough that a storm of
/// reconnects never holds Redis for long, large enough that a default
/// history (100) is one round trip.
pub const BATCH: u64 = 256;

/// Loads both scripts (on every new connection).
pub async fn load(conn: &mut Commands) -> RedisResult<()> {
    NUMBER.load(conn).await?;
    READ.load(conn).await
}

/// What to read: the range after `after` (up to `upto`, 0 for the end),
/// in epoch `want` (`None`: whichever is current), creating the position
/// with a fresh epoch when `create`.
#[derive(Debug, Clone)]
pub struct Range<'a> {
    pub after: u64,
    pub upto: u64,
    pub count: u64,
    pub want: Option<&'a Epoch>,
    pub create: bool,
}

/// One [`READ`] answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The route's position; `None` when it has none.
    pub position: Option<Position>,
    /// The last offset this read looked at (kept or skipped).
    pub scanned: u64,
    /// Whether entries may follow `scanned` in the range asked for.
    pub more: bool,
    /// The kept entries read, oldest first.
    pub kept: Vec<Kept>,
}

/// One batch of a route's history.
pub async fn read(
    conn: &mut Commands,
    keys: &Keys,
    range: &Range<'_>,
    retention: Retention,
) -> RedisResult<Batch> {
    let fresh = range.create.then(Epoch::random);
    let lineage = conn.lineage().to_owned();
    let build = |invoke| {
        let mut cmd = READ.invoke(invoke);
        cmd.arg(2)
            .arg(&keys.position)
            .arg(&keys.history)
            .arg(range.after)
            .arg(range.upto)
            .arg(range.count)
            .arg(millis(retention.ttl))
            .arg(millis(position_ttl(retention)))
            .arg(fresh.as_ref().map_or("", Epoch::as_str))
            .arg(range.want.map_or("", Epoch::as_str))
            .arg(lineage.as_str())
            .arg(retention.size);
        cmd
    };
    let reply: Value = match build(Invoke::Sha).query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
            build(Invoke::Source).query_async(conn).await?
        }
        other => other?,
    };
    parse_batch(reply).ok_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::TypeError, "unexpected READ answer"))
    })
}

/// A `READ` answer as a [`Batch`]; `None` for any other shape.
pub fn parse_batch(reply: Value) -> Option<Batch> {
    let Value::Array(items) = reply else {
        return None;
    };
    let (head, entries) = items.split_at_checked(4)?;
    let epoch = string(&head[0])?;
    let position = match epoch.is_empty() {
        true => None,
        false => Some(Position {
            epoch: Epoch::parse(&epoch)?,
            offset: int(&head[1])?,
        }),
    };
    let mut kept = Vec::with_capacity(entries.len() / 3);
    for entry in entries.chunks(3) {
        let [offset, text, sender] = entry else {
            return None;
        };
        kept.push(Kept {
            offset: int(offset)?,
            text: Encoded::from_text(string(text)?),
            sender: string(sender)?.into(),
        });
    }
    Some(Batch {
        position,
        scanned: int(&head[2])?,
        more: int(&head[3])? == 1,
        kept,
    })
}

/// A socket's recovery of one route: the position (created when the route
/// has none) and every kept message after `since`, read in batches, then
/// [`decide`]d whole or lost.
pub async fn recover(
    conn: &mut Commands,
    keys: &Keys,
    since: &Since,
    retention: Retention,
) -> RedisResult<Recovery> {
    let (after, want, count) = match since {
        Since::New => (0, None, 0),
        Since::At(at) => (at.offset, Some(&at.epoch), BATCH),
        Since::Oldest => (0, None, BATCH),
    };
    // Only a resume must be whole: a skipped entry ends its reading.
    let whole = matches!(since, Since::At(_));
    let first = Range {
        after,
        upto: 0,
        count,
        want,
        create: true,
    };
    let mut batch = read(conn, keys, &first, retention).await?;
    let Some(position) = batch.position.take() else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::TypeError,
            "READ created no position",
        )));
    };
    let mut kept = std::mem::take(&mut batch.kept);
    // Later batches read up to the position of the first, in its epoch; a
    // skipped entry (trimmed or past the TTL) makes it lost already.
    while batch.more && (!whole || kept.len() as u64 == batch.scanned - after) {
        let next = Range {
            after: batch.scanned,
            upto: position.offset,
            count: BATCH,
            want: Some(&position.epoch),
            create: false,
        };
        batch = read(conn, keys, &next, retention).await?;
        if batch.position.as_ref().map(|p| &p.epoch) != Some(&position.epoch) {
            break;
        }
        kept.append(&mut batch.kept);
    }
    Ok(Recovery {
        outcome: decide(since, &position, kept),
        position: Some(position),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_read_answer_is_a_batch() {
        let reply = Value::Array(vec![
            bulk("e1"),
            Value::Int(9),
            Value::Int(8),
            Value::Int(1),
            Value::Int(8),
            bulk("{\"a\":1}"),
            bulk("svc"),
        ]);
        let batch = parse_batch(reply).unwrap();
        assert_eq!(batch.position.unwrap().offset, 9);
        assert_eq!((batch.scanned, batch.more), (8, true));
        assert_eq!(batch.kept.len(), 1);
        assert_eq!(&*batch.kept[0].sender, "svc");

        let none = Value::Array(vec![bulk(""), Value::Int(0), Value::Int(0), Value::Int(0)]);
        assert_eq!(parse_batch(none).unwrap().position, None);
        assert_eq!(parse_batch(Value::Array(vec![bulk("e")])), None);
    }
}
