//! Secret grants: Docker's `--secret` SPEC (`db_password`, or
//! `source=db_password,target=pw,uid=1000,gid=1000,mode=0400`) plus coffer's `version=N`,
//! `on-rotate=live|restart|signal:SIGHUP` and `type=file|env`.

use std::fmt;

use crate::name::{NameError, SecretName};

/// What happens to running tasks when the granted secret is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRotate {
    /// The new value replaces the file in place (atomic rename); the process keeps running.
    Live,
    /// Tasks are replaced one by one (the default for grants made by the docker client).
    Restart,
    /// As `Live`, then the task's process gets this signal.
    Signal(Signal),
}

/// Signals a rotation may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP.
    Hup,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
}

/// How a grant reaches the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A file under /run/secrets.
    File {
        /// File name under /run/secrets.
        target: String,
        /// Owner uid (default 0).
        uid: u32,
        /// Owner gid (default 0).
        gid: u32,
        /// Mode (default 0444, as Docker).
        mode: u32,
    },
    /// An environment variable of that task only (opt-in: environments leak more easily).
    Env {
        /// Variable name.
        var: String,
    },
}

/// A parsed grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The secret.
    pub source: SecretName,
    /// Where it goes.
    pub delivery: Delivery,
    /// Pinned value version (`None`: the current one, following rotations).
    pub version: Option<u32>,
    /// What a rotation does.
    pub on_rotate: OnRotate,
}

/// A refused SPEC; the message names the part and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The secret name is invalid.
    #[error("--secret {spec:?}: {source}")]
    Name {
        /// The SPEC.
        spec: String,
        /// Why.
        source: NameError,
    },
    /// A key is not one we know.
    #[error("--secret {spec:?}: unknown option {key:?}; use source, target, uid, gid, mode, version, on-rotate, type")]
    UnknownKey {
        /// The SPEC.
        spec: String,
        /// The key.
        key: String,
    },
    /// A value is invalid for its key.
    #[error("--secret {spec:?}: {key}={value:?} is invalid: {why}")]
    BadValue {
        /// The SPEC.
        spec: String,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What is expected.
        why: &'static str,
    },
    /// `source` is missing.
    #[error("--secret {spec:?}: source is missing; name the secret, as in source=db_password")]
    NoSource {
        /// The SPEC.
        spec: String,
    },
    /// Options that do not go together.
    #[error("--secret {spec:?}: {why}")]
    Conflict {
        /// The SPEC.
        spec: String,
        /// What conflicts.
        why: &'static str,
    },
}

/// Checks a file target: a single file name under /run/secrets.
pub fn valid_target(t: &str) -> bool {
    !t.is_empty() && t.len() <= 255 && !t.contains(['/', '\0']) && t != "." && t != ".."
}

fn valid_env_var(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

impl Grant {
    /// Parses a SPEC. `default_on_rotate` is `Restart` for grants from the docker client
    /// and `Live` for coffer's own CLI.
    pub fn parse(spec: &str, default_on_rotate: OnRotate) -> Result<Self, GrantError> {
        let s = spec.to_owned();
        let bad = |key: &str, value: &str, why| GrantError::BadValue {
            spec: s.clone(),
            key: key.to_owned(),
            value: value.to_owned(),
            why,
        };
        let (mut source, mut target, mut uid, mut gid, mut mode) =
            (None, None, 0u32, 0u32, 0o444u32);
        let (mut version, mut on_rotate, mut env) = (None, default_on_rotate, false);
        let (mut saw_uid, mut saw_gid, mut saw_mode) = (false, false, false);
        if !spec.contains('=') {
            source = Some(spec.to_owned());
        } else {
            for part in spec.split(',') {
                let Some((k, v)) = part.split_once('=') else {
                    return Err(GrantError::UnknownKey {
                        spec: s.clone(),
                        key: part.to_owned(),
                    });
                };
                match k.trim() {
                    "source" | "src" => source = Some(v.to_owned()),
                    "target" => target = Some(v.to_owned()),
                    "uid" => {
                        uid = v.parse().map_err(|_| bad(k, v, "a numeric uid"))?;
                        saw_uid = true;
                    }
                    "gid" => {
                        gid = v.parse().map_err(|_| bad(k, v, "a numeric gid"))?;
                        saw_gid = true;
                    }
                    "mode" => {
                        mode = u32::from_str_radix(v, 8)
                            .ok()
                            .filter(|m| *m <= 0o777)
                            .ok_or_else(|| {
                                bad(k, v, "an octal mode from 0 to 0777, such as 0400")
                            })?;
                        saw_mode = true;
                    }
                    "version" => {
                        version = Some(
                            v.parse::<u32>()
                                .ok()
                                .filter(|n| *n >= 1)
                                .ok_or_else(|| bad(k, v, "a version number from 1"))?,
                        );
                    }
                    "on-rotate" => {
                        on_rotate = match v {
                            "live" => OnRotate::Live,
                            "restart" => OnRotate::Restart,
                            "signal:SIGHUP" | "signal:HUP" => OnRotate::Signal(Signal::Hup),
                            "signal:SIGUSR1" | "signal:USR1" => OnRotate::Signal(Signal::Usr1),
                            "signal:SIGUSR2" | "signal:USR2" => OnRotate::Signal(Signal::Usr2),
                            _ => {
                                return Err(bad(
                                    k,
                                    v,
                                    "live, restart, or signal:SIGHUP|SIGUSR1|SIGUSR2",
                                ))
                            }
                        }
                    }
                    "type" => {
                        env = match v {
                            "file" => false,
                            "env" => true,
                            _ => return Err(bad(k, v, "file or env")),
                        }
                    }
                    other => {
                        return Err(GrantError::UnknownKey {
                            spec: s.clone(),
                            key: other.to_owned(),
                        })
                    }
                }
            }
        }
        let source = source.ok_or_else(|| GrantError::NoSource { spec: s.clone() })?;
        let source = SecretName::new(&source).map_err(|e| GrantError::Name {
            spec: s.clone(),
            source: e,
        })?;
        let delivery = if env {
            if saw_uid || saw_gid || saw_mode {
                return Err(GrantError::Conflict {
                    spec: s,
                    why: "uid, gid and mode apply to files, not to type=env",
                });
            }
            let var = target.ok_or_else(|| GrantError::Conflict {
                spec: s.clone(),
                why: "type=env needs target=VARIABLE",
            })?;
            if !valid_env_var(&var) {
                return Err(bad(
                    "target",
                    &var,
                    "an environment variable name: letters, digits, _",
                ));
            }
            Delivery::Env { var }
        } else {
            let target = target.unwrap_or_else(|| source.as_str().to_owned());
            if !valid_target(&target) {
                return Err(bad(
                    "target",
                    &target,
                    "a file name under /run/secrets: no '/', no '..'",
                ));
            }
            Delivery::File {
                target,
                uid,
                gid,
                mode,
            }
        };
        Ok(Self {
            source,
            delivery,
            version,
            on_rotate,
        })
    }
}

impl fmt::Display for Grant {
    /// The canonical SPEC, which parses back to the same grant.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "source={}", self.source)?;
        match &self.delivery {
            Delivery::File {
                target,
                uid,
                gid,
                mode,
            } => write!(f, ",target={target},uid={uid},gid={gid},mode={mode:04o}")?,
            Delivery::Env { var } => write!(f, ",type=env,target={var}")?,
        }
        if let Some(v) = self.version {
            write!(f, ",version={v}")?;
        }
        let r = match self.on_rotate {
            OnRotate::Live => "live",
            OnRotate::Restart => "restart",
            OnRotate::Signal(Signal::Hup) => "signal:SIGHUP",
            OnRotate::Signal(Signal::Usr1) => "signal:SIGUSR1",
            OnRotate::Signal(Signal::Usr2) => "signal:SIGUSR2",
        };
        write!(f, ",on-rotate={r}")
    }
}

/// Checks a set of grants for one task: no two file grants with the same target, no two
/// env grants with the same variable.
pub fn check_unique_targets(grants: &[Grant]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for g in grants {
        let key = match &g.delivery {
            Delivery::File { target, .. } => format!("file /run/secrets/{target}"),
            Delivery::Env { var } => format!("environment variable {var}"),
        };
        if !seen.insert(key.clone()) {
            return Err(format!(
                "two grants write the same {key}; give each its own target"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn docker_forms() {
        let g = Grant::parse("db_password", OnRotate::Restart).unwrap();
        assert_eq!(
            g.delivery,
            Delivery::File {
                target: "db_password".into(),
                uid: 0,
                gid: 0,
                mode: 0o444
            }
        );
        assert_eq!(g.on_rotate, OnRotate::Restart);
        let g = Grant::parse(
            "source=db_password,target=pw,uid=1000,gid=1000,mode=0400",
            OnRotate::Live,
        )
        .unwrap();
        assert_eq!(
            g.delivery,
            Delivery::File {
                target: "pw".into(),
                uid: 1000,
                gid: 1000,
                mode: 0o400
            }
        );
        let g = Grant::parse(
            "source=api,version=3,on-rotate=signal:SIGHUP",
            OnRotate::Live,
        )
        .unwrap();
        assert_eq!(
            (g.version, g.on_rotate),
            (Some(3), OnRotate::Signal(Signal::Hup))
        );
        let g = Grant::parse("source=api,type=env,target=API_KEY", OnRotate::Live).unwrap();
        assert_eq!(
            g.delivery,
            Delivery::Env {
                var: "API_KEY".into()
            }
        );
    }

    #[test]
    fn refusals_name_the_part() {
        let cases = [
            ("source=db,colour=red", "unknown option \"colour\""),
            ("source=db,mode=0999", "mode=\"0999\" is invalid"),
            ("source=db,uid=alice", "uid=\"alice\" is invalid"),
            (
                "source=db,target=../etc/passwd",
                "target=\"../etc/passwd\" is invalid",
            ),
            ("source=db,target=/etc/passwd", "no '/'"),
            ("target=pw", "source is missing"),
            ("bad name", "is invalid"),
            ("source=db,type=env", "type=env needs target"),
            ("source=db,type=env,target=X,mode=0400", "apply to files"),
            ("source=db,version=0", "version=\"0\" is invalid"),
            (
                "source=db,on-rotate=sometimes",
                "on-rotate=\"sometimes\" is invalid",
            ),
            ("source=db,type=env,target=1X", "target=\"1X\" is invalid"),
        ];
        for (spec, needle) in cases {
            let e = Grant::parse(spec, OnRotate::Live).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn duplicate_targets() {
        let a = Grant::parse("source=a,target=x", OnRotate::Live).unwrap();
        let b = Grant::parse("source=b,target=x", OnRotate::Live).unwrap();
        let c = Grant::parse("source=a,target=y,mode=0400", OnRotate::Live).unwrap();
        assert!(check_unique_targets(&[a.clone(), b])
            .unwrap_err()
            .contains("/run/secrets/x"));
        // The same secret twice with two targets and modes is fine.
        check_unique_targets(&[a, c]).unwrap();
    }

    proptest! {
        #[test]
        fn display_parses_back(name in "[a-z]([a-z0-9_]{0,9}[a-z0-9])?", target in "[a-z][a-z0-9._-]{0,10}", uid in 0u32..70000, mode in 0u32..0o777, ver in proptest::option::of(1u32..50)) {
            let mut spec = format!("source={name},target={target},uid={uid},gid={uid},mode={mode:o}");
            if let Some(v) = ver { spec.push_str(&format!(",version={v}")); }
            let g = Grant::parse(&spec, OnRotate::Live).unwrap();
            prop_assert_eq!(Grant::parse(&g.to_string(), OnRotate::Restart).unwrap(), g);
        }

        #[test]
        fn accepted_file_targets_stay_in_run_secrets(spec in "\\PC{0,60}") {
            if let Ok(Grant { delivery: Delivery::File { target, .. }, .. }) = Grant::parse(&spec, OnRotate::Live) {
                prop_assert!(!target.contains('/') && target != ".." && target != ".");
            }
        }
    }
}
