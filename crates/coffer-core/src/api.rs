//! Bodies of the HTTP API, in Docker Engine API shapes (`shared/corpus/docker-engine-api`).
//!
//! Field names are Docker's (PascalCase, `ID`). coffer's extensions are extra fields that
//! the docker client ignores: [`Secret::versions`] and [`Secret::current_version`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// `Version` of a swarm object: the store revision at which it last changed. Updates must
/// name the version they read (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectVersion {
    /// Store modification revision.
    #[serde(rename = "Index")]
    pub index: u64,
}

/// A driver reference (`Driver`, `Templating`). coffer accepts none yet but keeps the shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Driver {
    /// Driver name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Driver options.
    #[serde(rename = "Options", default, skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, String>>,
}

/// Base64 text of a secret value, as it arrives in a request. Zeroized on drop, never
/// printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Base64Value(pub Zeroizing<String>);

impl fmt::Debug for Base64Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// `SecretSpec` as a request body (`POST /secrets/create`, `POST /secrets/{id}/update`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpecRequest {
    /// Name of the secret.
    #[serde(rename = "Name", default)]
    pub name: Option<String>,
    /// User-defined labels.
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Base64 (standard, padded) value.
    #[serde(rename = "Data", default)]
    pub data: Option<Base64Value>,
    /// External secret driver (unsupported).
    #[serde(rename = "Driver", default)]
    pub driver: Option<Driver>,
    /// Templating driver (unsupported).
    #[serde(rename = "Templating", default)]
    pub templating: Option<Driver>,
}

/// `SecretSpec` as returned. `Data` is never present: no read returns a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretSpec {
    /// Name of the secret.
    #[serde(rename = "Name")]
    pub name: String,
    /// User-defined labels.
    #[serde(rename = "Labels")]
    pub labels: BTreeMap<String, String>,
}

/// One value version (coffer extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersionInfo {
    /// Version number, from 1.
    #[serde(rename = "Number")]
    pub number: u32,
    /// When this version was created (RFC 3339).
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    /// Keyed digest of the value (`hmac-sha256:<hex>`): lets an operator see that two
    /// versions differ without revealing anything about either.
    #[serde(rename = "Digest")]
    pub digest: String,
}

/// A secret as returned by `GET /secrets` and `GET /secrets/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    /// Object id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Object version (for updates).
    #[serde(rename = "Version")]
    pub version: ObjectVersion,
    /// Creation time (RFC 3339, nanoseconds).
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    /// Last change (RFC 3339, nanoseconds).
    #[serde(rename = "UpdatedAt")]
    pub updated_at: String,
    /// The spec, without `Data`.
    #[serde(rename = "Spec")]
    pub spec: SecretSpec,
    /// coffer: the version a new task receives.
    #[serde(rename = "CurrentVersion", default)]
    pub current_version: u32,
    /// coffer: kept value versions, oldest first.
    #[serde(rename = "Versions", default)]
    pub versions: Vec<SecretVersionInfo>,
    /// coffer (inspect only): the services granted it and the tasks holding a version.
    #[serde(rename = "Holders", default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<SecretHolder>,
}

/// A service or task that holds a secret (coffer extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretHolder {
    /// Service name.
    #[serde(rename = "Service")]
    pub service: String,
    /// Task name, or empty for the service's grant itself.
    #[serde(rename = "Task", default)]
    pub task: String,
    /// Version delivered (tasks) or pinned (services; 0 = follows the current one).
    #[serde(rename = "Version")]
    pub version: u32,
    /// Task state.
    #[serde(rename = "State", default)]
    pub state: String,
}

/// Response to a create: `{"ID": "..."}` as dockerd sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdResponse {
    /// The new object's id.
    #[serde(rename = "ID", alias = "Id")]
    pub id: String,
}

/// Error body: `{"message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// One line naming the thing and the fix.
    pub message: String,
}

/// Body of `POST /coffer/secrets/{id}/rotate` (coffer extension).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Base64 value of the new version.
    #[serde(rename = "Data")]
    pub data: Base64Value,
}

/// Response to a rotate or rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateResponse {
    /// The secret's id.
    #[serde(rename = "ID")]
    pub id: String,
    /// The version now current.
    #[serde(rename = "CurrentVersion")]
    pub current_version: u32,
}

/// Body of `POST /coffer/unlock`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlockRequest {
    /// The unlock key, `COFFER-KEY-1-...`.
    #[serde(rename = "UnlockKey")]
    pub unlock_key: Base64Value,
}

impl fmt::Debug for UnlockRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnlockRequest { UnlockKey: [REDACTED] }")
    }
}

/// The unlock key as returned by `GET /coffer/unlock-key`. Shown to admins only.
#[derive(Clone, Serialize)]
pub struct UnlockKeyResponse {
    /// The unlock key.
    #[serde(rename = "UnlockKey")]
    pub unlock_key: Zeroizing<String>,
}

impl fmt::Debug for UnlockKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnlockKeyResponse { UnlockKey: [REDACTED] }")
    }
}

/// Response of `POST /coffer/key/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotateResponse {
    /// Id of the new key-encryption key.
    #[serde(rename = "KekId")]
    pub kek_id: u32,
    /// Data keys re-wrapped.
    #[serde(rename = "Rewrapped")]
    pub rewrapped: u64,
}

/// One audit event as returned by `GET /coffer/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the chain, from 1.
    #[serde(rename = "Seq")]
    pub seq: u64,
    /// When the request was made (RFC 3339).
    #[serde(rename = "Time")]
    pub time: String,
    /// Who made it: `uid=0 pid=123` from the socket's peer credentials.
    #[serde(rename = "Actor")]
    pub actor: String,
    /// What was asked: `secret.create`, `secret.rotate`, `unlock`, ...
    #[serde(rename = "Action")]
    pub action: String,
    /// Object id, when known.
    #[serde(rename = "ObjectId", default)]
    pub object_id: String,
    /// Object name, when known.
    #[serde(rename = "ObjectName", default)]
    pub object_name: String,
    /// Value version concerned, 0 when none.
    #[serde(rename = "Version", default)]
    pub version: u32,
    /// `ok`, or why it was refused.
    #[serde(rename = "Outcome")]
    pub outcome: String,
    /// Hash of the previous event (hex), all zeros for the first.
    #[serde(rename = "Prev")]
    pub prev: String,
    /// SHA-256 over this event's fields and `Prev` (hex).
    #[serde(rename = "Hash")]
    pub hash: String,
}

/// Result of `GET /coffer/audit/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerifyResponse {
    /// Events checked.
    #[serde(rename = "Events")]
    pub events: u64,
    /// Hash of the last event: record it to detect a rewrite of the whole chain later.
    #[serde(rename = "Head")]
    pub head: String,
    /// Empty when the chain is intact; otherwise the first break found.
    #[serde(rename = "Error", default)]
    pub error: String,
}

/// A JSON decoding error as one line that is safe to show and log. serde's type errors
/// quote the offending string (`invalid type: string "...", expected a map`), and a value
/// in the wrong field, or a protocol message carrying values, would be echoed into errors
/// and logs. Field names come in backticks and stay; anything in double quotes is replaced.
pub fn json_error(e: &serde_json::Error) -> String {
    redact_quoted(&e.to_string())
}

/// Replaces the contents of every double-quoted string in `message` with `...`.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..=start]);
        let after = &rest[start + 1..];
        // The closing quote is the last one before the next ", expected" or the end; serde
        // escapes inner quotes, so find the first unescaped quote.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        match end {
            Some(i) => {
                out.push_str("...\"");
                rest = &after[i + 1..];
            }
            None => {
                out.push_str("...");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn docker_create_body_decodes() {
        let body = r#"{"Name":"db_password","Labels":{"a":"b"},"Data":"aGVsbG8="}"#;
        let r: SecretSpecRequest = serde_json::from_str(body).unwrap();
        assert_eq!(r.name.as_deref(), Some("db_password"));
        assert_eq!(r.data.unwrap().0.as_str(), "aGVsbG8=");
        assert!(format!(
            "{:?}",
            serde_json::from_str::<SecretSpecRequest>(body).unwrap()
        )
        .contains("[REDACTED]"));
    }

    #[test]
    fn wrong_types_are_refused() {
        for body in [
            r#"{"Name":1}"#,
            r#"{"Labels":[]}"#,
            r#"{"Data":true}"#,
            r#"{"Nme":"x"}"#,
        ] {
            assert!(
                serde_json::from_str::<SecretSpecRequest>(body).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn json_errors_quote_no_string() {
        assert_eq!(redact_quoted(r#"a "x\"y" b "z"#), r#"a "..." b "..."#);
        let e = serde_json::from_str::<Vec<u32>>(r#"["s3cret-value"]"#).unwrap_err();
        let msg = json_error(&e);
        assert!(
            !msg.contains("s3cret") && msg.contains("invalid type"),
            "{msg}"
        );
    }

    proptest! {
        #[test]
        fn decoding_never_panics(s in "\\PC{0,200}") {
            let _ = serde_json::from_str::<SecretSpecRequest>(&s);
        }

        #[test]
        fn secret_roundtrip(name in "[a-z]{1,10}", idx in 0u64..u64::MAX, k in "[a-z]{1,5}", v in "\\PC{0,5}") {
            let s = Secret {
                id: "x".into(),
                version: ObjectVersion { index: idx },
                created_at: "t".into(),
                updated_at: "u".into(),
                spec: SecretSpec { name, labels: [(k, v)].into_iter().collect() },
                current_version: 1,
                versions: vec![],
                holders: vec![],
            };
            let j = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(serde_json::from_str::<Secret>(&j).unwrap(), s);
        }
    }
}

/// A service as returned by `GET /services` and `GET /services/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Object id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Object version (for updates).
    #[serde(rename = "Version")]
    pub version: ObjectVersion,
    /// Creation time.
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    /// Last change.
    #[serde(rename = "UpdatedAt")]
    pub updated_at: String,
    /// The spec.
    #[serde(rename = "Spec")]
    pub spec: crate::service::ServiceSpec,
    /// Task counts (`?status=true`).
    #[serde(
        rename = "ServiceStatus",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub service_status: Option<ServiceStatus>,
}

/// `ServiceStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Tasks running now.
    #[serde(rename = "RunningTasks")]
    pub running_tasks: u64,
    /// Tasks wanted.
    #[serde(rename = "DesiredTasks")]
    pub desired_tasks: u64,
}

/// Response to a service create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCreateResponse {
    /// The new service's id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Warnings for the client (none yet).
    #[serde(rename = "Warnings", default)]
    pub warnings: Option<Vec<String>>,
}
