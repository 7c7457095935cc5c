//! Shared API keys (docs/protocol.md section 1): "a trusted party", compared in
//! constant time, never logged.

use subtle::ConstantTimeEq;

#[derive(Default)]
pub struct ApiKeys(Vec<String>);

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        ApiKeys(keys.to_vec())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares with every key, without stopping at a match.
    pub fn admits(&self, given: &[u8]) -> bool {
        let matched = self.0.iter().fold(subtle::Choice::from(0), |acc, key| {
            acc | key.as_bytes().ct_eq(given)
        });
        bool::from(matched)
    }
}
