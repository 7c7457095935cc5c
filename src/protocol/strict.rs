//! What serde_json lets through in a raw value and strict JSON readers
//! refuse: a lone UTF-16 surrogate escape (`"\ud83d"`), a number beyond
//! f64 (`1e999`), nesting past serde_json's recursion limit. The frame
//! parser keeps `payload`, `cmd` and `msg` as raw text, skipped rather than
//! decoded so that relaying them costs no allocation, and skipping checks
//! the syntax only; relayed as they are, such values would reach every
//! recipient as text some readers cannot parse (both cases found by
//! fuzzing). A cheap scan finds the frames that may hold one, and only
//! those get a strict parse, whose error is the 4000's reason.

/// Nesting the scan lets pass; serde_json's own limit is 128.
const DEPTH: usize = 64;
/// The longest run of digits the scan lets pass; f64 ends at 309 digits.
const DIGITS: usize = 300;

/// Whether `text` may hold a value [`check`] refuses. False positives
/// (brackets or `\ud8..` inside a string, a word like `"v1e"`) only cost
/// the strict parse.
pub fn may_need(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut digits = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                digits += 1;
                if digits > DIGITS {
                    return true;
                }
                continue;
            }
            b'e' | b'E' if digits > 0 => return true,
            b'[' | b'{' => {
                depth += 1;
                if depth > DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\\' if is_surrogate_escape(&bytes[i..]) => return true,
            _ => {}
        }
        digits = 0;
    }
    false
}

/// `\uD800` to `\uDFFF`, any case.
fn is_surrogate_escape(at: &[u8]) -> bool {
    match at {
        [b'\\', b'u', d, x, ..] => {
            (d | 0x20) == b'd' && matches!(x | 0x20, b'8' | b'9' | b'a'..=b'f')
        }
        _ => false,
    }
}

/// A strict parse of the whole frame: decodes every string and number.
pub fn check(text: &str) -> Result<(), serde_json::Error> {
    serde_json::from_str::<serde_json::Value>(text).map(drop)
}
