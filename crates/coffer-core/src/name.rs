//! Secret names and labels.

use std::collections::BTreeMap;
use std::fmt;

use crate::limits::{MAX_LABELS_SIZE, MAX_NAME_LEN};

/// A validated secret name: `^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$`, at most 64
/// characters (Docker Swarm's rule). It can never contain `/`, `..` at an end, NUL or
/// whitespace, so it is safe as a file name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName(String);

/// Why a secret name was refused. Each message names the rule and so the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("secret name is empty; give a name such as db_password")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("secret name {name:?} is {len} characters long; the limit is 64")]
    TooLong {
        /// The name as given.
        name: String,
        /// Its length in characters.
        len: usize,
    },
    /// The name has a character outside `[a-zA-Z0-9-_.]`, or starts or ends with `-_.`.
    #[error(
        "secret name {name:?} is invalid: use letters, digits, '-', '_' and '.', \
         starting and ending with a letter or digit"
    )]
    Invalid {
        /// The name as given.
        name: String,
    },
}

impl SecretName {
    /// Parses a name, applying Swarm's rule exactly.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        let len = name.chars().count();
        if len > MAX_NAME_LEN {
            return Err(NameError::TooLong {
                name: truncate_for_message(name),
                len,
            });
        }
        let bytes = name.as_bytes();
        let edge_ok = |b: u8| b.is_ascii_alphanumeric();
        let inner_ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        let ok = bytes.iter().all(|&b| inner_ok(b))
            && bytes.first().copied().is_some_and(edge_ok)
            && bytes.last().copied().is_some_and(edge_ok);
        if !ok {
            return Err(NameError::Invalid {
                name: truncate_for_message(name),
            });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn truncate_for_message(s: &str) -> String {
    // Names are not secret, but keep error lines short.
    if s.chars().count() > 80 {
        let mut t: String = s.chars().take(77).collect();
        t.push_str("...");
        t
    } else {
        s.to_owned()
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretName({:?})", self.0)
    }
}

/// Why a set of labels was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// A label has an empty key.
    #[error(
        "label with an empty key (value {value:?}); labels are key=value with a non-empty key"
    )]
    EmptyKey {
        /// The value that came with the empty key.
        value: String,
    },
    /// A key contains a control character or whitespace.
    #[error("label key {key:?} contains whitespace or a control character")]
    BadKey {
        /// The key as given.
        key: String,
    },
    /// The labels are too large in total.
    #[error("labels total {size} bytes; the limit is 65536")]
    TooLarge {
        /// Total bytes of keys and values.
        size: usize,
    },
}

/// Checks labels as swarmkit does (non-empty keys, bounded size), plus no whitespace in keys.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), LabelError> {
    let mut size = 0;
    for (k, v) in labels {
        if k.is_empty() {
            return Err(LabelError::EmptyKey { value: v.clone() });
        }
        if k.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(LabelError::BadKey { key: k.clone() });
        }
        size += k.len() + v.len();
    }
    if size > MAX_LABELS_SIZE {
        return Err(LabelError::TooLarge { size });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn swarm_examples() {
        for ok in ["a", "db_password", "A1", "a-b.c_d", "x".repeat(64).as_str()] {
            assert!(SecretName::new(ok).is_ok(), "{ok} should be accepted");
        }
        let long = "x".repeat(65);
        for bad in [
            "", "-a", ".a", "a-", "a.", "_a", "a b", "a/b", "..", "é", "a\0b", &long,
        ] {
            assert!(SecretName::new(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            SecretName::new(&long).unwrap_err(),
            NameError::TooLong {
                name: long.clone(),
                len: 65
            }
        );
    }

    #[test]
    fn labels() {
        let mut l = BTreeMap::new();
        l.insert("k".to_owned(), String::new());
        assert_eq!(validate_labels(&l), Ok(()));
        l.insert(String::new(), "v".to_owned());
        assert_eq!(
            validate_labels(&l),
            Err(LabelError::EmptyKey {
                value: "v".to_owned()
            })
        );
    }

    fn reference(s: &str) -> bool {
        // Straight transcription of the regular expression.
        let b = s.as_bytes();
        !b.is_empty()
            && s.chars().count() <= 64
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
    }

    proptest! {
        #[test]
        fn name_matches_reference(s in "[a-zA-Z0-9._/ \\-é]{0,70}") {
            prop_assert_eq!(SecretName::new(&s).is_ok(), reference(&s));
        }

        #[test]
        fn accepted_names_are_safe_file_names(s in "\\PC{0,70}") {
            if let Ok(n) = SecretName::new(&s) {
                prop_assert!(!n.as_str().contains('/'));
                prop_assert!(n.as_str() != "." && n.as_str() != "..");
                prop_assert!(!n.as_str().starts_with('.'));
            }
        }

        #[test]
        fn labels_with_nonempty_keys_pass(k in "[a-z.]{1,20}", v in "\\PC{0,20}") {
            let mut l = BTreeMap::new();
            l.insert(k, v);
            prop_assert!(validate_labels(&l).is_ok());
        }
    }
}
