//! What serde_json lets through in a raw value and strict JSON readers
//! refuse: a lone UTF-16 surrogate escape (`"\ud83d"`), a number beyond
//! f64 (`1e999`), nesting past serde_json's recursion limit (128). The
//! frame parser keeps `payload`, `cmd` and `msg` as raw text, skipped
//! rather than decoded so that relaying them costs no copy, and skipping
//! checks the syntax only; relayed as they are, such values would reach
//! every recipient as text some readers cannot parse (both found by
//! fuzzing). [`check`] reads a raw value once more, strictly, without
//! building anything: every string and number decoded, and thrown away.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Reads `raw` (one JSON value) strictly; the error is the 4000's reason.
pub fn check(raw: &str) -> Result<(), serde_json::Error> {
    serde_json::from_str::<Strict>(raw).map(drop)
}

/// Any JSON value, read and dropped.
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Strict, D::Error> {
        deserializer.deserialize_any(Strict)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_entry::<Strict, Strict>()?.is_some() {}
        Ok(Strict)
    }
}
