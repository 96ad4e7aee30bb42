//! Everything in coffer that touches key material. Sans-IO except for the keyring file.
//!
//! Each secret value version is sealed with its own random 256-bit data key (AES-256-GCM
//! from `ring`), with the secret id and version number as associated data, so a ciphertext
//! moved to another record fails to open. The data key is wrapped by the current
//! key-encryption key (KEK), again with the id and version as associated data. KEKs live
//! in the keyring file (0600), in the clear or, with autolock, sealed under an unlock key
//! that the operator keeps.
//!
//! # Layout
//! - [`secret`]: [`SecretBytes`], the only type plaintext travels in (zeroized, redacted).
//! - [`envelope`]: the versioned binary AEAD envelope and `seal`/`open`.
//! - [`keyring`]: KEKs, the digest key, the keyring file, unlock keys.
//! - [`value`]: seal and open a secret value version (data key + wrap).
//! - [`digest`]: keyed digests of values, SHA-256 for the audit chain, random ids.
//!
//! # Current limitations
//! - One algorithm (AES-256-GCM); the envelope carries an algorithm byte for later ones.
//! - Keys in memory are zeroized on drop but not locked against swapping (`mlock`).
#![warn(missing_docs)]

pub mod digest;
pub mod envelope;
pub mod keyring;
pub mod secret;
pub mod value;

pub use envelope::OpenError;
pub use keyring::{KeyMaterial, KeyringError, UnlockKey};
pub use secret::SecretBytes;

/// The system random source failed (practically never; reported rather than ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| RandomError)
}
