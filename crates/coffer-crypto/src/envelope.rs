//! The sealed envelope: a small versioned binary format.
//!
//! ```text
//! magic "CFE" | format 0x01 | alg 0x01 (AES-256-GCM) | nonce (12) | ciphertext || tag (16)
//! ```

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use zeroize::Zeroizing;

use crate::{fill_random, RandomError};

const MAGIC: &[u8; 3] = b"CFE";
const FORMAT: u8 = 1;
const ALG_AES_256_GCM: u8 = 1;
const HEADER_LEN: usize = MAGIC.len() + 2 + NONCE_LEN;
const TAG_LEN: usize = 16;

/// Length of every symmetric key coffer uses.
pub const KEY_LEN: usize = 32;

/// A sealed envelope could not be opened. Deliberately says nothing about which check
/// failed (format, key, associated data or tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed data failed its integrity check")]
pub struct OpenError;

/// A parsed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Algorithm byte.
    pub alg: u8,
    /// AEAD nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the tag.
    pub ciphertext: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Parses the envelope header; the content is checked by [`open`].
    pub fn read(bytes: &'a [u8]) -> Result<Self, OpenError> {
        if bytes.len() < HEADER_LEN + TAG_LEN || &bytes[..3] != MAGIC || bytes[3] != FORMAT {
            return Err(OpenError);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[5..HEADER_LEN]);
        Ok(Self {
            alg: bytes[4],
            nonce,
            ciphertext: &bytes[HEADER_LEN..],
        })
    }

    /// Encodes the envelope.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ciphertext.len());
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.push(self.alg);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(self.ciphertext);
        out
    }
}

fn key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    // AES_256_GCM takes exactly KEY_LEN bytes, which the type guarantees.
    match UnboundKey::new(&aead::AES_256_GCM, bytes) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => unreachable!("AES-256-GCM accepts every 32-byte key"),
    }
}

/// Seals `plaintext` under `key` with associated data `aad`, with a fresh random nonce.
pub fn seal(
    key_bytes: &[u8; KEY_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, RandomError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.push(ALG_AES_256_GCM);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let mut tail = out.split_off(HEADER_LEN);
    key(key_bytes)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut tail,
        )
        .map_err(|_| RandomError)?;
    out.extend_from_slice(&tail);
    Ok(out)
}

/// Opens an envelope sealed by [`seal`] with the same key and associated data.
pub fn open(
    key_bytes: &[u8; KEY_LEN],
    sealed: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let env = Envelope::read(sealed)?;
    if env.alg != ALG_AES_256_GCM {
        return Err(OpenError);
    }
    let mut buf = Zeroizing::new(env.ciphertext.to_vec());
    let len = key(key_bytes)
        .open_in_place(
            Nonce::assume_unique_for_key(env.nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| OpenError)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn wrong_key_aad_or_byte_fails() {
        let k = [7u8; 32];
        let s = seal(&k, b"hello", b"a").unwrap();
        assert_eq!(open(&k, &s, b"a").unwrap().as_slice(), b"hello");
        assert_eq!(open(&[8u8; 32], &s, b"a"), Err(OpenError));
        assert_eq!(open(&k, &s, b"b"), Err(OpenError));
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert_eq!(open(&k, &t, b"a"), Err(OpenError), "flip at {i}");
        }
        assert_eq!(open(&k, &s[..s.len() - 1], b"a"), Err(OpenError));
    }

    proptest! {
        #[test]
        fn roundtrip(k: [u8; 32], pt in proptest::collection::vec(any::<u8>(), 0..2048), aad in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = seal(&k, &pt, &aad).unwrap();
            let opened = open(&k, &s, &aad).unwrap();
            prop_assert_eq!(opened.as_slice(), pt.as_slice());
            let env = Envelope::read(&s).unwrap();
            prop_assert_eq!(env.encode(), s);
        }

        #[test]
        fn read_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Envelope::read(&bytes);
            let _ = open(&[0u8; 32], &bytes, b"");
        }
    }
}
