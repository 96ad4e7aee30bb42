//! Sealing and opening one version of a secret value.
//!
//! A fresh data key per version seals the value; the current KEK wraps the data key. Both
//! carry the secret id and version number as associated data, so neither a ciphertext nor
//! a wrapped key can be moved to another record or version.

use zeroize::Zeroizing;

use crate::envelope::{self, OpenError, KEY_LEN};
use crate::keyring::KeyMaterial;
use crate::secret::SecretBytes;
use crate::{digest, fill_random, RandomError};

/// A sealed value version, ready for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedValue {
    /// Envelope of the value under its data key.
    pub ciphertext: Vec<u8>,
    /// Id of the KEK that wrapped the data key.
    pub kek_id: u32,
    /// Envelope of the data key under that KEK.
    pub wrapped_key: Vec<u8>,
    /// Keyed digest of the value.
    pub digest: String,
}

fn value_aad(id: &str, version: u32) -> Vec<u8> {
    format!("coffer/value/v1\0{id}\0{version}").into_bytes()
}

fn dek_aad(id: &str, version: u32) -> Vec<u8> {
    format!("coffer/dek/v1\0{id}\0{version}").into_bytes()
}

/// Seals `value` as version `version` of secret `id`.
pub fn seal_value(
    keys: &KeyMaterial,
    id: &str,
    version: u32,
    value: &SecretBytes,
) -> Result<SealedValue, RandomError> {
    let mut dek = Zeroizing::new([0u8; KEY_LEN]);
    fill_random(dek.as_mut())?;
    let ciphertext = envelope::seal(&dek, value.expose(), &value_aad(id, version))?;
    let kek = keys.current();
    let wrapped_key = envelope::seal(kek.bytes(), dek.as_ref(), &dek_aad(id, version))?;
    Ok(SealedValue {
        ciphertext,
        kek_id: kek.id(),
        wrapped_key,
        digest: digest::keyed_digest(keys.digest_key(), value.expose()),
    })
}

fn unwrap_dek(
    keys: &KeyMaterial,
    id: &str,
    version: u32,
    kek_id: u32,
    wrapped: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, OpenError> {
    let kek = keys.kek(kek_id).ok_or(OpenError)?;
    let raw = envelope::open(kek.bytes(), wrapped, &dek_aad(id, version))?;
    let arr: [u8; KEY_LEN] = raw.as_slice().try_into().map_err(|_| OpenError)?;
    Ok(Zeroizing::new(arr))
}

/// Opens version `version` of secret `id`.
pub fn open_value(
    keys: &KeyMaterial,
    id: &str,
    version: u32,
    kek_id: u32,
    wrapped_key: &[u8],
    ciphertext: &[u8],
) -> Result<SecretBytes, OpenError> {
    let dek = unwrap_dek(keys, id, version, kek_id, wrapped_key)?;
    Ok(SecretBytes::from_zeroizing(envelope::open(
        &dek,
        ciphertext,
        &value_aad(id, version),
    )?))
}

/// Re-wraps a data key under the current KEK without touching the value's ciphertext.
pub fn rewrap_key(
    keys: &KeyMaterial,
    id: &str,
    version: u32,
    kek_id: u32,
    wrapped_key: &[u8],
) -> Result<(u32, Vec<u8>), OpenError> {
    let dek = unwrap_dek(keys, id, version, kek_id, wrapped_key)?;
    let kek = keys.current();
    let wrapped =
        envelope::seal(kek.bytes(), dek.as_ref(), &dek_aad(id, version)).map_err(|_| OpenError)?;
    Ok((kek.id(), wrapped))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn records_cannot_be_swapped() {
        let mut keys = KeyMaterial::generate().unwrap();
        let a = seal_value(&keys, "a", 1, &SecretBytes::new(b"alpha".to_vec())).unwrap();
        let b = seal_value(&keys, "b", 1, &SecretBytes::new(b"beta".to_vec())).unwrap();
        let open = |id, s: &SealedValue, keys: &KeyMaterial| {
            open_value(keys, id, 1, s.kek_id, &s.wrapped_key, &s.ciphertext)
        };
        assert_eq!(open("a", &a, &keys).unwrap().expose(), b"alpha");
        // a's ciphertext under b's record, and a's wrapped key under version 2.
        open_value(&keys, "b", 1, b.kek_id, &b.wrapped_key, &a.ciphertext).unwrap_err();
        open_value(&keys, "a", 2, a.kek_id, &a.wrapped_key, &a.ciphertext).unwrap_err();
        // Key rotation: rewrap, then the old KEK can go.
        keys.rotate().unwrap();
        let (kid, w) = rewrap_key(&keys, "a", 1, a.kek_id, &a.wrapped_key).unwrap();
        assert_eq!(kid, 2);
        keys.retain(&[]);
        assert_eq!(
            open_value(&keys, "a", 1, kid, &w, &a.ciphertext)
                .unwrap()
                .expose(),
            b"alpha"
        );
        assert!(open("b", &b, &keys).is_err(), "old KEK dropped");
    }

    proptest! {
        #[test]
        fn roundtrip(v in proptest::collection::vec(any::<u8>(), 1..4096), ver in 1u32..100) {
            let keys = KeyMaterial::generate().unwrap();
            let s = seal_value(&keys, "id", ver, &SecretBytes::new(v.clone())).unwrap();
            let o = open_value(&keys, "id", ver, s.kek_id, &s.wrapped_key, &s.ciphertext).unwrap();
            prop_assert_eq!(o.expose(), v.as_slice());
        }
    }
}
