//! Revocations kept in Redis (docs/protocol.md section 11), so that they
//! outlive a restart of every instance and reach an instance that missed
//! the control message (its pub/sub connection was down).
//!
//! One sorted set, `{prefix}ws:revoked`, scored by each revocation's
//! `until`: members `jti:<jti>` and `sub:<issued_before>:<sub>`. Writing
//! one also drops the ended ones and keeps the key's expiry at the latest
//! `until`, so the set never outlives what it holds. One key: on a cluster
//! it lives in one slot, and loading it is one call.

use redis::RedisResult;

use crate::broker::redis::link::RedisLink;
use crate::channels::Names;
use crate::protocol::VisionId;
use crate::revocation::Revocation;

pub struct RevocationStore {
    key: String,
}

impl RevocationStore {
    pub fn new(names: &Names) -> RevocationStore {
        RevocationStore {
            key: names.revoked_key(),
        }
    }

    /// Keeps `revocation` until its end; `now` drops the ended ones.
    pub async fn save(
        &self,
        link: &RedisLink,
        revocation: &Revocation,
        now: u64,
    ) -> RedisResult<()> {
        let mut conn = link.command().ok_or_else(down)?;
        let until = revocation.until();
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(&self.key)
            .arg("GT")
            .arg(until)
            .arg(member(revocation))
            .ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&self.key)
            .arg("-inf")
            .arg(now)
            .ignore();
        // A key with no expiry takes this one; a later one extends it.
        for option in ["NX", "GT"] {
            pipe.cmd("EXPIREAT")
                .arg(&self.key)
                .arg(until)
                .arg(option)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await
    }

    /// Every revocation still in force at `now`.
    pub async fn load(&self, link: &RedisLink, now: u64) -> RedisResult<Vec<Revocation>> {
        let mut conn = link.command().ok_or_else(down)?;
        let kept: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&self.key)
            .arg(format!("({now}"))
            .arg("+inf")
            .arg("BYSCORE")
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        Ok(kept
            .into_iter()
            .filter_map(|(member, until)| parse(&member, until as u64))
            .collect())
    }
}

fn down() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::IoError, "Redis is unavailable"))
}

fn member(revocation: &Revocation) -> String {
    match revocation {
        Revocation::Token { jti, .. } => format!("jti:{jti}"),
        Revocation::Client {
            sub, issued_before, ..
        } => format!("sub:{issued_before}:{sub}"),
    }
}

/// A member as [`member`] wrote it; `None` for anything else (another
/// version's, or a hand-made one).
fn parse(member: &str, until: u64) -> Option<Revocation> {
    if let Some(jti) = member.strip_prefix("jti:") {
        return Some(Revocation::Token {
            jti: jti.to_owned(),
            until,
        });
    }
    let (before, sub) = member.strip_prefix("sub:")?.split_once(':')?;
    Some(Revocation::Client {
        sub: VisionId::parse(sub).ok()?,
        issued_before: before.parse().ok()?,
        until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::id;

    #[test]
    fn members_round_trip() {
        let token = Revocation::Token {
            jti: "a:b".into(),
            until: 9,
        };
        let client = Revocation::Client {
            sub: id("c"),
            issued_before: 7,
            until: 9,
        };
        for r in [token, client] {
            assert_eq!(parse(&member(&r), 9), Some(r));
        }
        assert_eq!(parse("sub:x:c", 9), None);
        assert_eq!(parse("other", 9), None);
    }
}
