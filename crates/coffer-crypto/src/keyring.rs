//! Key-encryption keys, the digest key, the keyring file and unlock keys.
//!
//! The keyring file is JSON, mode 0600, written atomically (temporary file, fsync, rename,
//! fsync of the directory):
//!
//! ```text
//! {"format":1,"autolock":false,"material":"<base64 of the binary key material>"}
//! {"format":1,"autolock":true,"sealed":"<base64 envelope of the material>"}
//! ```
//!
//! The binary material is `"CFK1" | current kek id u32 | digest key (32) | count u32 |
//! (id u32 | key (32))*`, so it can be built and parsed in zeroizing buffers.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::envelope::{self, KEY_LEN};
use crate::{fill_random, RandomError};

const MATERIAL_MAGIC: &[u8; 4] = b"CFK1";
const KEYRING_AAD: &[u8] = b"coffer/keyring/v1";
const UNLOCK_PREFIX: &str = "COFFER-KEY-1-";

/// A key-encryption key. Zeroized on drop; never printed.
pub struct Kek {
    id: u32,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl Kek {
    /// This KEK's id (recorded beside every data key it wraps).
    pub fn id(&self) -> u32 {
        self.id
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek {{ id: {}, key: [REDACTED] }}", self.id)
    }
}

/// All keys of a manager: KEKs (one current) and the digest key.
pub struct KeyMaterial {
    current: u32,
    keks: Vec<Kek>,
    digest_key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("current", &self.current)
            .field("keks", &self.keks)
            .field("digest_key", &"[REDACTED]")
            .finish()
    }
}

/// The keyring file could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// Reading or writing the file failed.
    #[error("keyring file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a coffer keyring.
    #[error("keyring file {path} is damaged or not a coffer keyring; restore it from a backup")]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// The file is group- or world-accessible.
    #[error("keyring file {path} has mode {mode:o}; it must be 0600 (chmod 600 {path})")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Randomness failed.
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// A given unlock key does not open the keyring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnlockError {
    /// The text is not an unlock key at all.
    #[error("that is not a coffer unlock key (they look like COFFER-KEY-1-...)")]
    Malformed,
    /// Well-formed, but not the key this keyring is sealed under.
    #[error(
        "the unlock key is wrong; use the key printed when autolock was turned on or last rotated"
    )]
    Wrong,
}

impl KeyMaterial {
    /// Fresh material: one KEK (id 1) and a digest key.
    pub fn generate() -> Result<Self, RandomError> {
        let mut digest_key = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(digest_key.as_mut())?;
        Ok(Self {
            current: 1,
            keks: vec![new_kek(1)?],
            digest_key,
        })
    }

    /// The KEK new data keys are wrapped with.
    pub fn current(&self) -> &Kek {
        // Invariant: `current` always names a KEK in `keks` (constructors and `decode`
        // ensure it, `retain` never drops the current one).
        match self.kek(self.current) {
            Some(k) => k,
            None => unreachable!("current KEK is always present"),
        }
    }

    /// The KEK with this id, if kept.
    pub fn kek(&self, id: u32) -> Option<&Kek> {
        self.keks.iter().find(|k| k.id == id)
    }

    /// Ids of all kept KEKs.
    pub fn kek_ids(&self) -> Vec<u32> {
        self.keks.iter().map(|k| k.id).collect()
    }

    /// Adds a new KEK and makes it current; returns its id.
    pub fn rotate(&mut self) -> Result<u32, RandomError> {
        let id = self.keks.iter().map(|k| k.id).max().unwrap_or(0) + 1;
        self.keks.push(new_kek(id)?);
        self.current = id;
        Ok(id)
    }

    /// Drops every KEK except the current one and those in `keep`.
    pub fn retain(&mut self, keep: &[u32]) {
        let current = self.current;
        self.keks
            .retain(|k| k.id == current || keep.contains(&k.id));
    }

    /// The key for keyed digests of values.
    pub fn digest_key(&self) -> &[u8; KEY_LEN] {
        &self.digest_key
    }

    /// A copy (the manager keeps one copy per state; both are zeroized on drop).
    pub fn duplicate(&self) -> Self {
        Self {
            current: self.current,
            keks: self
                .keks
                .iter()
                .map(|k| Kek {
                    id: k.id,
                    key: k.key.clone(),
                })
                .collect(),
            digest_key: self.digest_key.clone(),
        }
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(48 + self.keks.len() * (4 + KEY_LEN)));
        out.extend_from_slice(MATERIAL_MAGIC);
        out.extend_from_slice(&self.current.to_be_bytes());
        out.extend_from_slice(self.digest_key.as_ref());
        let n = u32::try_from(self.keks.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for k in &self.keks {
            out.extend_from_slice(&k.id.to_be_bytes());
            out.extend_from_slice(k.key.as_ref());
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let rest = b.strip_prefix(MATERIAL_MAGIC)?;
        let (current, rest) = take_u32(rest)?;
        let (dk, rest) = take_key(rest)?;
        let (n, mut rest) = take_u32(rest)?;
        let mut keks = Vec::new();
        for _ in 0..n {
            let (id, r) = take_u32(rest)?;
            let (key, r) = take_key(r)?;
            keks.push(Kek { id, key });
            rest = r;
        }
        if !rest.is_empty() || !keks.iter().any(|k| k.id == current) {
            return None;
        }
        Some(Self {
            current,
            keks,
            digest_key: dk,
        })
    }
}

fn new_kek(id: u32) -> Result<Kek, RandomError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    fill_random(key.as_mut())?;
    Ok(Kek { id, key })
}

fn take_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let (h, t) = b.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*h), t))
}

fn take_key(b: &[u8]) -> Option<(Zeroizing<[u8; KEY_LEN]>, &[u8])> {
    let (h, t) = b.split_first_chunk::<KEY_LEN>()?;
    Some((Zeroizing::new(*h), t))
}

/// An unlock key: 256 random bits, shown as `COFFER-KEY-1-<base64url>`.
#[derive(Clone)]
pub struct UnlockKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnlockKey([REDACTED])")
    }
}

impl UnlockKey {
    /// A new random key.
    pub fn generate() -> Result<Self, RandomError> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(k.as_mut())?;
        Ok(Self(k))
    }

    /// Parses the text form (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, UnlockError> {
        let body = text
            .trim()
            .strip_prefix(UNLOCK_PREFIX)
            .ok_or(UnlockError::Malformed)?;
        let mut raw = Zeroizing::new(Vec::with_capacity(KEY_LEN + 3));
        URL_SAFE_NO_PAD
            .decode_vec(body, &mut raw)
            .map_err(|_| UnlockError::Malformed)?;
        let arr: [u8; KEY_LEN] = raw
            .as_slice()
            .try_into()
            .map_err(|_| UnlockError::Malformed)?;
        Ok(Self(Zeroizing::new(arr)))
    }

    /// The text form, to show the operator once.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(UNLOCK_PREFIX.len() + 44));
        s.push_str(UNLOCK_PREFIX);
        URL_SAFE_NO_PAD.encode_string(self.0.as_ref(), &mut s);
        s
    }

    /// Whether two keys are the same, in constant time.
    pub fn matches(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    fn sealing_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"coffer unlock key");
        let prk = salt.extract(self.0.as_ref());
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        // HKDF-SHA256 can expand to 32 bytes for any info; both calls cannot fail.
        if let Ok(okm) = prk.expand(&[b"keyring v1"], ring::hkdf::HKDF_SHA256) {
            let _ = okm.fill(out.as_mut());
        }
        out
    }
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    format: u32,
    autolock: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    material: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

impl Drop for FileFormat {
    fn drop(&mut self) {
        if let Some(m) = self.material.as_mut() {
            m.zeroize();
        }
    }
}

/// A keyring file as loaded.
#[derive(Debug)]
pub enum KeyringFile {
    /// Without autolock: the material itself.
    Plain(KeyMaterial),
    /// With autolock: the material sealed under an unlock key.
    Sealed(Vec<u8>),
}

impl KeyringFile {
    /// Reads and parses a keyring file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| KeyringError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyringError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = Zeroizing::new(fs::read(path).map_err(io)?);
        let malformed = || KeyringError::Malformed {
            path: path.to_owned(),
        };
        let f: FileFormat = serde_json::from_slice(&text).map_err(|_| malformed())?;
        if f.format != 1 {
            return Err(malformed());
        }
        match (f.autolock, &f.material, &f.sealed) {
            (false, Some(m), None) => {
                let mut raw = Zeroizing::new(Vec::new());
                STANDARD.decode_vec(m, &mut raw).map_err(|_| malformed())?;
                Ok(Self::Plain(
                    KeyMaterial::decode(&raw).ok_or_else(malformed)?,
                ))
            }
            (true, None, Some(s)) => Ok(Self::Sealed(STANDARD.decode(s).map_err(|_| malformed())?)),
            _ => Err(malformed()),
        }
    }

    /// Opens a sealed keyring with an unlock key.
    pub fn unseal(sealed: &[u8], key: &UnlockKey) -> Result<KeyMaterial, UnlockError> {
        let raw = envelope::open(&key.sealing_key(), sealed, KEYRING_AAD)
            .map_err(|_| UnlockError::Wrong)?;
        KeyMaterial::decode(&raw).ok_or(UnlockError::Wrong)
    }
}

/// Writes the material in the clear (no autolock).
pub fn save_plain(path: &Path, material: &KeyMaterial) -> Result<(), KeyringError> {
    let raw = material.encode();
    let mut b64 = Zeroizing::new(String::with_capacity(raw.len() * 4 / 3 + 4));
    STANDARD.encode_string(raw.as_slice(), &mut b64);
    let f = FileFormat {
        format: 1,
        autolock: false,
        material: Some(b64.to_string()),
        sealed: None,
    };
    write_json(path, &f)
}

/// Writes the material sealed under an unlock key (autolock).
pub fn save_sealed(
    path: &Path,
    material: &KeyMaterial,
    key: &UnlockKey,
) -> Result<(), KeyringError> {
    let sealed = envelope::seal(&key.sealing_key(), &material.encode(), KEYRING_AAD)?;
    let f = FileFormat {
        format: 1,
        autolock: true,
        material: None,
        sealed: Some(STANDARD.encode(sealed)),
    };
    write_json(path, &f)
}

fn write_json(path: &Path, f: &FileFormat) -> Result<(), KeyringError> {
    let bytes = Zeroizing::new(serde_json::to_vec(f).map_err(|_| KeyringError::Malformed {
        path: path.to_owned(),
    })?);
    write_private(path, &bytes).map_err(|source| KeyringError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file atomically with mode 0600: temporary file, fsync, rename, fsync of the
/// directory. A crash leaves either the old or the new content, never a mix.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_sealed_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keyring.json");
        let mut m = KeyMaterial::generate().unwrap();
        m.rotate().unwrap();
        save_plain(&p, &m).unwrap();
        let KeyringFile::Plain(back) = KeyringFile::load(&p).unwrap() else {
            panic!("plain")
        };
        assert_eq!(back.kek_ids(), vec![1, 2]);
        assert_eq!(back.current().id(), 2);
        assert_eq!(back.kek(1).unwrap().bytes(), m.kek(1).unwrap().bytes());

        let uk = UnlockKey::generate().unwrap();
        save_sealed(&p, &m, &uk).unwrap();
        let KeyringFile::Sealed(s) = KeyringFile::load(&p).unwrap() else {
            panic!("sealed")
        };
        let text = uk.to_text();
        let parsed = UnlockKey::parse(&format!("  {}\n", text.as_str())).unwrap();
        assert_eq!(
            KeyringFile::unseal(&s, &parsed).unwrap().digest_key(),
            m.digest_key()
        );
        let other = UnlockKey::generate().unwrap();
        assert!(parsed.matches(&uk) && !other.matches(&uk));
        assert_eq!(
            KeyringFile::unseal(&s, &other).unwrap_err(),
            UnlockError::Wrong
        );
        assert_eq!(
            UnlockKey::parse("SWMKEY-1-abc").unwrap_err(),
            UnlockError::Malformed
        );
        // The sealed file does not contain the KEK bytes in any encoding.
        let file = fs::read(&p).unwrap();
        let kek_b64 = STANDARD.encode(m.current().bytes());
        assert!(!String::from_utf8_lossy(&file).contains(&kek_b64));
    }

    #[test]
    fn group_readable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keyring.json");
        save_plain(&p, &KeyMaterial::generate().unwrap()).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            KeyringFile::load(&p),
            Err(KeyringError::Permissions { mode: 0o640, .. })
        ));
    }

    #[test]
    fn debug_never_shows_keys() {
        let m = KeyMaterial::generate().unwrap();
        let d = format!("{m:?}");
        assert!(d.contains("REDACTED"));
        assert!(!d.contains(&format!("{:?}", m.current().bytes())));
    }
}
