//! Digests and random ids.

use ring::{digest, hmac};

use crate::envelope::KEY_LEN;
use crate::{fill_random, RandomError};

/// A keyed digest of a value, `hmac-sha256:<hex>`. Without the digest key (in the keyring)
/// nobody can test guesses against it.
pub fn keyed_digest(key: &[u8; KEY_LEN], value: &[u8]) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    format!("hmac-sha256:{}", hex(hmac::sign(&k, value).as_ref()))
}

/// SHA-256 as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// 128 random bits, for object ids.
pub fn random_u128() -> Result<u128, RandomError> {
    let mut b = [0u8; 16];
    fill_random(&mut b)?;
    Ok(u128::from_le_bytes(b))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let a = keyed_digest(&[1; 32], b"x");
        assert_ne!(a, keyed_digest(&[2; 32], b"x"));
        assert_eq!(a, keyed_digest(&[1; 32], b"x"));
        assert!(a.starts_with("hmac-sha256:") && a.len() == 12 + 64);
    }
}
