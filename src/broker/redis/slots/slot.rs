//! Redis Cluster key slots: which of the 16384 slots a key or channel name
//! belongs to, as Redis computes it (`CLUSTER KEYSLOT`).
//!
//! CRC16/XMODEM of the name's hash tag (the text between the first `{` and
//! the next `}`, when not empty) or of the whole name, modulo 16384. Our
//! own copy because redis-rs 0.32 keeps its `get_slot` private, and the
//! broker needs the slot of every channel it subscribes or publishes to
//! (one `SSUBSCRIBE` per slot; one publishing queue per master).

/// Every slot of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// One of the cluster's 16384 slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(u16);

impl Slot {
    /// The slot of a key or channel name.
    pub fn of(name: &str) -> Slot {
        Slot(crc16(hash_tag(name.as_bytes())) % SLOTS)
    }

    /// A slot number, if in range.
    #[cfg(test)]
    pub fn new(n: u16) -> Option<Slot> {
        (n < SLOTS).then_some(Slot(n))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// The part of a name that decides its slot.
fn hash_tag(name: &[u8]) -> &[u8] {
    let Some(open) = name.iter().position(|&b| b == b'{') else {
        return name;
    };
    let rest = &name[open + 1..];
    match rest.iter().position(|&b| b == b'}') {
        Some(len) if len > 0 => &rest[..len],
        _ => name,
    }
}

/// CRC16/XMODEM (polynomial 0x1021, initial 0), as in Redis's `crc16.c`.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7 and the cluster spec.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(Slot::of("foo").get(), 12182);
        assert_eq!(Slot::of("bar").get(), 5061);
        assert_eq!(Slot::of("").get(), 0);
    }

    #[test]
    fn a_hash_tag_decides_the_slot() {
        assert_eq!(Slot::of("{user1000}.following"), Slot::of("user1000"));
        assert_eq!(Slot::of("a{user1000}b{x}"), Slot::of("user1000"));
        // An empty tag is no tag: the whole name counts.
        assert_eq!(Slot::of("{}.x").get(), crc16(b"{}.x") % SLOTS);
        // No closing brace: the whole name.
        assert_eq!(Slot::of("{abc").get(), crc16(b"{abc") % SLOTS);
        // History keys share their channel's slot.
        assert_eq!(
            Slot::of("{p:ws:group:g1}:history"),
            Slot::of("p:ws:group:g1")
        );
    }

    #[test]
    fn slots_are_in_range() {
        assert!(Slot::new(16383).is_some());
        assert!(Slot::new(16384).is_none());
    }
}
