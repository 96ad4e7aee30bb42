//! Object ids in Docker Swarm's format: 25 lowercase base36 characters from 128 random bits.

use std::fmt;

/// Length of an id: 128 bits in base36 need 25 digits.
pub const ID_LEN: usize = 25;

/// An object id (secret, audit event, node ...). Randomness comes from the caller (the crypto
/// crate), so this crate stays free of I/O.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ObjectId(String);

/// An id that is not 25 lowercase base36 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an object id (25 characters of 0-9 and a-z)")]
pub struct IdError(String);

impl ObjectId {
    /// Makes an id from 128 random bits, as swarmkit's `identity.NewID`.
    pub fn from_random(bits: u128) -> Self {
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut out = [b'0'; ID_LEN];
        let mut n = bits;
        for slot in out.iter_mut().rev() {
            // `n % 36` is below 36, so the index is in range and the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation, reason = "n % 36 < 36")]
            let d = (n % 36) as usize;
            *slot = DIGITS[d];
            n /= 36;
        }
        Self(out.iter().map(|&b| char::from(b)).collect())
    }

    /// Parses a full id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() == ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError(s.chars().take(40).collect()))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn extremes() {
        assert_eq!(ObjectId::from_random(0).as_str(), "0".repeat(25));
        let max = ObjectId::from_random(u128::MAX);
        assert_eq!(max.as_str(), "f5lxx1zz5pnorynqglhzmsp33");
        ObjectId::parse(max.as_str()).unwrap();
        ObjectId::parse("ABC").unwrap_err();
    }

    proptest! {
        #[test]
        fn roundtrip(bits: u128) {
            let id = ObjectId::from_random(bits);
            prop_assert_eq!(u128::from_str_radix(id.as_str(), 36).unwrap(), bits);
            prop_assert_eq!(ObjectId::parse(id.as_str()).unwrap(), id);
        }
    }
}
