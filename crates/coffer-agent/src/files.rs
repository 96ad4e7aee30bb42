//! Secret files: safe target names and the atomic writer.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use coffer_crypto::SecretBytes;
use zeroize::Zeroizing;

/// A file name under `/run/secrets`: not empty, at most 255 bytes, no `/`, no NUL, not `.`
/// or `..`. Parsed, so a path built from it cannot escape its directory.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetName(String);

/// A refused target name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret target {0:?} is not a file name under /run/secrets: no '/', no '..', no NUL, 1 to 255 bytes")]
pub struct TargetError(pub String);

impl TargetName {
    /// Parses a target.
    pub fn new(s: &str) -> Result<Self, TargetError> {
        let ok =
            !s.is_empty() && s.len() <= 255 && !s.contains(['/', '\0']) && s != "." && s != "..";
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(TargetError(s.chars().take(80).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TargetName({:?})", self.0)
    }
}

/// One file to write: where, owned by whom, with which mode, and the value.
#[derive(Debug, Clone)]
pub struct SecretFile {
    /// File name.
    pub target: TargetName,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits (Docker's default is 0444).
    pub mode: u32,
    /// The value.
    pub value: SecretBytes,
}

/// Writing a secret file failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write secret file {path}: {source}")]
pub struct WriteError {
    /// The file.
    pub path: PathBuf,
    /// What failed.
    pub source: std::io::Error,
}

/// Writes `file` into `dir` atomically: a temporary file created exclusively with mode
/// 0600, the value, owner and mode set on the open file, then a rename over the target.
/// A reader sees the old file or the new one, never a partial or missing one, which is
/// what live rotation relies on.
pub fn write_secret(dir: &Path, file: &SecretFile) -> Result<PathBuf, WriteError> {
    let path = dir.join(file.target.as_str());
    let tmp = dir.join(format!(".{}.coffer-tmp", file.target.as_str()));
    let err = |source| WriteError {
        path: path.clone(),
        source,
    };
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(err)?;
    let written = f
        .write_all(file.value.expose())
        .and_then(|()| std::os::unix::fs::fchown(&f, Some(file.uid), Some(file.gid)))
        .and_then(|()| f.set_permissions(fs::Permissions::from_mode(file.mode & 0o7777)))
        .and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(path)
}

/// One file as the user-namespace helper receives it on standard input.
#[derive(serde::Serialize, serde::Deserialize)]
struct FileMessage {
    #[serde(rename = "Target")]
    target: String,
    #[serde(rename = "Uid")]
    uid: u32,
    #[serde(rename = "Gid")]
    gid: u32,
    #[serde(rename = "Mode")]
    mode: u32,
    #[serde(rename = "Value")]
    value: coffer_core::api::Base64Value,
}

/// The agent's side: a task's files as JSON (values in base64), in zeroizing buffers.
pub fn encode_files(files: &[SecretFile]) -> Zeroizing<Vec<u8>> {
    use base64::Engine;
    let msgs: Vec<FileMessage> = files
        .iter()
        .map(|f| {
            let mut b64 = Zeroizing::new(String::with_capacity(f.value.len() * 4 / 3 + 4));
            base64::engine::general_purpose::STANDARD.encode_string(f.value.expose(), &mut b64);
            FileMessage {
                target: f.target.as_str().to_owned(),
                uid: f.uid,
                gid: f.gid,
                mode: f.mode,
                value: coffer_core::api::Base64Value(b64),
            }
        })
        .collect();
    // Sized up front so the buffer holding values is never reallocated (and copied).
    let size = msgs
        .iter()
        .map(|m| m.value.0.len() + m.target.len() + 96)
        .sum::<usize>()
        + 2;
    let mut out = Zeroizing::new(Vec::with_capacity(size));
    let _ = serde_json::to_writer(&mut *out, &msgs);
    out
}

/// The helper's side: the files [`encode_files`] made. The error names no value.
pub fn decode_files(bytes: &[u8]) -> Result<Vec<SecretFile>, String> {
    use base64::Engine;
    let damaged = || "the task's secrets arrived damaged".to_owned();
    let msgs: Vec<FileMessage> = serde_json::from_slice(bytes).map_err(|_| damaged())?;
    msgs.into_iter()
        .map(|m| {
            let mut value = Zeroizing::new(Vec::with_capacity(m.value.0.len()));
            base64::engine::general_purpose::STANDARD
                .decode_vec(m.value.0.as_bytes(), &mut value)
                .map_err(|_| damaged())?;
            Ok(SecretFile {
                target: TargetName::new(&m.target).map_err(|e| e.to_string())?,
                uid: m.uid,
                gid: m.gid,
                mode: m.mode,
                value: SecretBytes::from_zeroizing(value),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        for ok in ["db_password", "a b", "x.pem", ".hidden", "é"] {
            TargetName::new(ok).unwrap();
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "/etc/passwd",
            "a/b",
            "a\0b",
            long.as_str(),
        ] {
            TargetName::new(bad).unwrap_err();
        }
    }

    #[test]
    fn atomic_write_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let me = fs::metadata(dir.path())
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap();
        let mk = |v: &[u8], mode| SecretFile {
            target: TargetName::new("pw").unwrap(),
            uid: me,
            gid: std::os::unix::fs::MetadataExt::gid(&fs::metadata(dir.path()).unwrap()),
            mode,
            value: SecretBytes::new(v.to_vec()),
        };
        let p = write_secret(dir.path(), &mk(b"one", 0o400)).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o400
        );
        write_secret(dir.path(), &mk(b"two", 0o440)).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o440
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        // A symlink planted at the temporary path is not followed.
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(".pw.coffer-tmp")).unwrap();
        write_secret(dir.path(), &mk(b"three", 0o400)).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
    }

    #[test]
    fn helper_files_round_trip() {
        let files = vec![SecretFile {
            target: TargetName::new("pw").unwrap(),
            uid: 7,
            gid: 8,
            mode: 0o400,
            value: SecretBytes::new(b"v\x00\xff".to_vec()),
        }];
        let back = decode_files(&encode_files(&files)).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(
            (
                back[0].target.as_str(),
                back[0].uid,
                back[0].gid,
                back[0].mode
            ),
            ("pw", 7, 8, 0o400)
        );
        assert_eq!(back[0].value.expose(), b"v\x00\xff");
        assert_eq!(
            decode_files(b"[{\"Target\":1}]").unwrap_err(),
            "the task's secrets arrived damaged"
        );
    }
}
