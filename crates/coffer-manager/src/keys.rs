//! The manager's keys: the keyring file, lock state, unlock key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_crypto::keyring::{self, KeyringFile};
use coffer_crypto::{KeyMaterial, UnlockKey};
use tokio::sync::RwLock;

use crate::error::ControlError;

/// Lock state of the key material.
#[derive(Debug)]
enum State {
    /// Autolock is on and nobody has unlocked since start.
    Locked { sealed: Vec<u8> },
    /// Keys in memory; `unlock_key` is set when autolock is on.
    Unlocked {
        material: Arc<KeyMaterial>,
        unlock_key: Option<UnlockKey>,
    },
}

/// The keyring of a running manager.
#[derive(Debug)]
pub struct Keys {
    path: PathBuf,
    state: RwLock<State>,
}

/// What opening the keyring produced.
#[derive(Debug)]
pub struct Opened {
    /// The keys.
    pub keys: Keys,
    /// A new unlock key to show the operator once (autolock just turned on).
    pub new_unlock_key: Option<UnlockKey>,
    /// Whether a new keyring was made.
    pub created: bool,
}

impl Keys {
    /// Opens `path`, creating a keyring if there is none; turns autolock on if asked.
    pub fn open(path: &Path, autolock: bool) -> Result<Opened, ControlError> {
        let existing = match path.try_exists() {
            Ok(true) => Some(KeyringFile::load(path)?),
            Ok(false) => None,
            Err(source) => {
                return Err(coffer_crypto::KeyringError::Io {
                    path: path.to_owned(),
                    source,
                }
                .into())
            }
        };
        let (state, new_unlock_key, created) = match existing {
            Some(KeyringFile::Sealed(sealed)) => (State::Locked { sealed }, None, false),
            Some(KeyringFile::Plain(material)) if autolock => {
                let key = UnlockKey::generate()?;
                keyring::save_sealed(path, &material, &key)?;
                let state = State::Unlocked {
                    material: Arc::new(material),
                    unlock_key: Some(key.clone()),
                };
                (state, Some(key), false)
            }
            Some(KeyringFile::Plain(material)) => (
                State::Unlocked {
                    material: Arc::new(material),
                    unlock_key: None,
                },
                None,
                false,
            ),
            None => {
                let material = KeyMaterial::generate()?;
                if autolock {
                    let key = UnlockKey::generate()?;
                    keyring::save_sealed(path, &material, &key)?;
                    let state = State::Unlocked {
                        material: Arc::new(material),
                        unlock_key: Some(key.clone()),
                    };
                    (state, Some(key), true)
                } else {
                    keyring::save_plain(path, &material)?;
                    (
                        State::Unlocked {
                            material: Arc::new(material),
                            unlock_key: None,
                        },
                        None,
                        true,
                    )
                }
            }
        };
        Ok(Opened {
            keys: Self {
                path: path.to_owned(),
                state: RwLock::new(state),
            },
            new_unlock_key,
            created,
        })
    }

    /// The key material, or [`ControlError::Locked`].
    pub async fn material(&self) -> Result<Arc<KeyMaterial>, ControlError> {
        match &*self.state.read().await {
            State::Unlocked { material, .. } => Ok(Arc::clone(material)),
            State::Locked { .. } => Err(ControlError::Locked),
        }
    }

    /// Whether the manager is locked.
    pub async fn is_locked(&self) -> bool {
        matches!(&*self.state.read().await, State::Locked { .. })
    }

    /// Whether autolock is on.
    pub async fn autolock(&self) -> bool {
        match &*self.state.read().await {
            State::Locked { .. } => true,
            State::Unlocked { unlock_key, .. } => unlock_key.is_some(),
        }
    }

    /// Unlocks with `text`. Unlocking an unlocked manager with the right key succeeds.
    pub async fn unlock(&self, text: &str) -> Result<(), ControlError> {
        let key = UnlockKey::parse(text)?;
        let mut state = self.state.write().await;
        match &*state {
            State::Locked { sealed } => {
                let material = KeyringFile::unseal(sealed, &key)?;
                *state = State::Unlocked {
                    material: Arc::new(material),
                    unlock_key: Some(key),
                };
                Ok(())
            }
            State::Unlocked {
                unlock_key: Some(current),
                ..
            } => {
                if current.matches(&key) {
                    Ok(())
                } else {
                    Err(keyring::UnlockError::Wrong.into())
                }
            }
            State::Unlocked {
                unlock_key: None, ..
            } => Err(ControlError::NotAutolocked),
        }
    }

    /// The current unlock key (autolock only).
    pub async fn unlock_key(&self) -> Result<UnlockKey, ControlError> {
        match &*self.state.read().await {
            State::Locked { .. } => Err(ControlError::Locked),
            State::Unlocked {
                unlock_key: Some(k),
                ..
            } => Ok(k.clone()),
            State::Unlocked {
                unlock_key: None, ..
            } => Err(ControlError::NotAutolocked),
        }
    }

    /// Replaces the unlock key: reseals the keyring file atomically.
    pub async fn rotate_unlock_key(&self) -> Result<UnlockKey, ControlError> {
        let mut state = self.state.write().await;
        match &mut *state {
            State::Locked { .. } => Err(ControlError::Locked),
            State::Unlocked {
                unlock_key: None, ..
            } => Err(ControlError::NotAutolocked),
            State::Unlocked {
                material,
                unlock_key: Some(k),
            } => {
                let new = UnlockKey::generate()?;
                keyring::save_sealed(&self.path, material, &new)?;
                *k = new.clone();
                Ok(new)
            }
        }
    }

    /// Replaces the material (after a KEK rotation step) and writes the keyring file
    /// first, so the file never lacks a key the store needs.
    pub async fn replace(&self, new: KeyMaterial) -> Result<Arc<KeyMaterial>, ControlError> {
        let mut state = self.state.write().await;
        match &mut *state {
            State::Locked { .. } => Err(ControlError::Locked),
            State::Unlocked {
                material,
                unlock_key,
            } => {
                match unlock_key {
                    Some(k) => keyring::save_sealed(&self.path, &new, k)?,
                    None => keyring::save_plain(&self.path, &new)?,
                }
                *material = Arc::new(new);
                Ok(Arc::clone(material))
            }
        }
    }
}
