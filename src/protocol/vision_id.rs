//! `VisionId`: the validated identifier of a group, a client or a publishing
//! service.
//!
//! Vision IDs become parts of Redis channel and key names, so the only way to
//! get one is through [`VisionId::parse`], which admits 1 to 64 characters of
//! `[A-Za-z0-9_-]` and nothing else. Cloning is cheap (shared string).

use std::fmt;
use std::sync::Arc;

/// The longest Vision ID the contract admits.
pub const MAX_LEN: usize = 64;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VisionId(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VisionIdError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("has a character outside [A-Za-z0-9_-]")]
    BadChar,
}

impl VisionId {
    pub fn parse(s: &str) -> Result<Self, VisionIdError> {
        check(s)?;
        Ok(VisionId(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Validates without allocating; used on the hot path before comparing.
pub fn check(s: &str) -> Result<(), VisionIdError> {
    if s.is_empty() {
        return Err(VisionIdError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(VisionIdError::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(VisionIdError::BadChar);
    }
    Ok(())
}

impl fmt::Display for VisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for VisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for VisionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for VisionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for VisionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Read from JSON the hub wrote or an operator sent: refused unless valid.
impl<'de> serde::Deserialize<'de> for VisionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        VisionId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A Vision ID known to be valid, for tests.
#[cfg(test)]
pub(crate) fn id(s: &str) -> VisionId {
    VisionId::parse(s).unwrap_or_else(|e| panic!("{s:?} {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        let long_ok = "a".repeat(64);
        let too_long = "a".repeat(65);
        let cases: &[(&str, Result<(), VisionIdError>)] = &[
            ("a", Ok(())),
            ("Abc_09-z", Ok(())),
            (&long_ok, Ok(())),
            ("", Err(VisionIdError::Empty)),
            (&too_long, Err(VisionIdError::TooLong)),
            ("a b", Err(VisionIdError::BadChar)),
            ("a:b", Err(VisionIdError::BadChar)),
            ("a*", Err(VisionIdError::BadChar)),
            ("é", Err(VisionIdError::BadChar)),
            ("a/b", Err(VisionIdError::BadChar)),
        ];
        for (input, want) in cases {
            assert_eq!(VisionId::parse(input).map(|_| ()), *want, "input {input:?}");
        }
    }
}
