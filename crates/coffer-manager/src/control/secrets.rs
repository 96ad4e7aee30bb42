//! Secret operations.

use std::sync::Arc;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use coffer_core::api::{
    Base64Value, IdResponse, ObjectVersion, RotateResponse, Secret, SecretSpec, SecretSpecRequest,
    SecretVersionInfo,
};
use coffer_core::limits::MAX_SECRET_SIZE;
use coffer_core::record::{
    secret_data_key, secret_dek_key, secret_key, secret_name_key, SecretRecord, VersionRecord,
    WrappedKeyRecord, SERVICE_INDEX_KEY,
};
use coffer_core::{validate_labels, ObjectId, SecretName};
use coffer_crypto::value::{open_value, seal_value};
use coffer_crypto::{KeyMaterial, SecretBytes};
use coffer_store::{Compare, Op, Store};
use zeroize::Zeroizing;

use super::Manager;
use crate::audit::{Actor, Pending};
use crate::error::ControlError;
use crate::view::Entry;

type SecretEntry = Entry<SecretRecord>;

fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// Parses a JSON body into `T`, with a one-line message naming what is wrong.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, ControlError> {
    if body.is_empty() {
        return Err(ControlError::Invalid(format!(
            "{what}: the request body is empty; send a JSON object"
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        ControlError::Invalid(format!(
            "{what}: malformed JSON: {}",
            coffer_core::api::json_error(&e)
        ))
    })
}

/// Decodes a base64 value and applies Swarm's size rule.
fn decode_value(data: &Base64Value) -> Result<SecretBytes, ControlError> {
    let text = data.0.trim_end_matches(['\n', '\r']);
    let mut raw = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3 + 3));
    STANDARD.decode_vec(text, &mut raw).map_err(|_| {
        ControlError::Invalid(
            "Data is not valid base64 (standard alphabet, padded); encode the value with base64"
                .into(),
        )
    })?;
    if raw.is_empty() {
        return Err(ControlError::Invalid(
            "secret value is empty; a secret needs at least one byte".into(),
        ));
    }
    if raw.len() > MAX_SECRET_SIZE {
        return Err(ControlError::Invalid(format!(
            "secret value is {} bytes; it must be under 500 KiB (at most {MAX_SECRET_SIZE} bytes)",
            raw.len()
        )));
    }
    Ok(SecretBytes::from_zeroizing(raw))
}

/// Parses Docker's `filters` JSON into key -> values, refusing keys not in `allowed`.
pub(crate) fn parse_filter_map(
    json: &str,
    what: &str,
    allowed: &[&str],
) -> Result<std::collections::BTreeMap<String, Vec<String>>, ControlError> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| ControlError::Invalid(format!("filters is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ControlError::Invalid("filters must be a JSON object".into()))?;
    let mut out = std::collections::BTreeMap::new();
    for (k, vals) in obj {
        let list: Vec<String> = match vals {
            serde_json::Value::Object(m) => m.keys().cloned().collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            _ => {
                return Err(ControlError::Invalid(format!(
                    "filter {k:?} has a value of the wrong type"
                )))
            }
        };
        if !allowed.contains(&k.as_str()) {
            return Err(ControlError::Invalid(format!(
                "invalid filter {k:?}; {what} can be filtered by {}",
                allowed.join(", ")
            )));
        }
        out.insert(k.clone(), list);
    }
    Ok(out)
}

/// Filters of `GET /secrets`, as Docker takes them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ListFilters {
    /// `id` prefixes.
    pub id: Vec<String>,
    /// `name` prefixes (Docker matches secret names by prefix).
    pub name: Vec<String>,
    /// `label` filters: `key` or `key=value`.
    pub label: Vec<String>,
    /// `names`: exact names.
    pub names: Vec<String>,
}

impl ListFilters {
    /// Parses Docker's `filters` JSON: `{"name":{"x":true}}` or the older `{"name":["x"]}`.
    pub fn parse(json: &str) -> Result<Self, ControlError> {
        let mut f = Self::default();
        for (k, list) in parse_filter_map(json, "secrets", &["id", "name", "names", "label"])? {
            match k.as_str() {
                "id" => f.id.extend(list),
                "name" => f.name.extend(list),
                "names" => f.names.extend(list),
                _ => f.label.extend(list),
            }
        }
        Ok(f)
    }

    fn is_empty(&self) -> bool {
        self.id.is_empty() && self.name.is_empty() && self.label.is_empty() && self.names.is_empty()
    }

    fn matches(&self, r: &SecretRecord) -> bool {
        self.matches_named(&r.id, &r.name, &r.labels)
    }

    /// Whether an object with this id, name and labels passes the filters.
    pub fn matches_named(
        &self,
        id: &str,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        let any = |list: &[String], f: &dyn Fn(&str) -> bool| {
            list.is_empty() || list.iter().any(|x| f(x))
        };
        any(&self.id, &|p| id.starts_with(p))
            && any(&self.name, &|p| name.starts_with(p))
            && any(&self.names, &|n| name == n)
            && self.label.iter().all(|l| match l.split_once('=') {
                Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
                None => labels.contains_key(l.as_str()),
            })
    }
}

/// The API shape of a stored secret.
pub(crate) fn to_api(e: &SecretEntry) -> Secret {
    let r = &e.record;
    Secret {
        id: r.id.clone(),
        version: ObjectVersion {
            index: u64::try_from(e.mod_revision).unwrap_or(0),
        },
        created_at: r.created_at.clone(),
        updated_at: r.updated_at.clone(),
        spec: SecretSpec {
            name: r.name.clone(),
            labels: r.labels.clone(),
        },
        current_version: r.current,
        versions: r
            .versions
            .iter()
            .map(|v| SecretVersionInfo {
                number: v.number,
                created_at: v.created_at.clone(),
                digest: v.digest.clone(),
            })
            .collect(),
        holders: Vec::new(),
    }
}

fn record_bytes(r: &SecretRecord) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_default()
}

fn sealed_ops(id: &str, version: u32, sealed: &coffer_crypto::value::SealedValue) -> [Op; 2] {
    let wrapped = WrappedKeyRecord {
        kek: sealed.kek_id,
        wrapped: STANDARD.encode(&sealed.wrapped_key),
    };
    [
        Op::Put(secret_data_key(id, version), sealed.ciphertext.clone()),
        Op::Put(
            secret_dek_key(id, version),
            serde_json::to_vec(&wrapped).unwrap_or_default(),
        ),
    ]
}

/// Opens version `version` of a secret through the store and keys. The single read path
/// for values: delivery to tasks, verification, and tests use it.
pub async fn open_version(
    store: &dyn Store,
    keys: &KeyMaterial,
    record: &SecretRecord,
    version: u32,
) -> Result<SecretBytes, ControlError> {
    let integrity = || ControlError::Integrity {
        name: record.name.clone(),
        version,
    };
    let data = store
        .get(&secret_data_key(&record.id, version))
        .await?
        .ok_or_else(integrity)?;
    let dek = store
        .get(&secret_dek_key(&record.id, version))
        .await?
        .ok_or_else(integrity)?;
    let w: WrappedKeyRecord = serde_json::from_slice(&dek.value).map_err(|_| integrity())?;
    let wrapped = STANDARD.decode(&w.wrapped).map_err(|_| integrity())?;
    open_value(keys, &record.id, version, w.kek, &wrapped, &data.value).map_err(|_| integrity())
}

impl Manager {
    /// `POST /secrets/create`.
    pub async fn create_secret(
        &self,
        actor: &Actor,
        body: &[u8],
    ) -> Result<IdResponse, ControlError> {
        self.audited(Pending::new(actor, "secret.create"), async |ev: &mut Pending| {
            let req: SecretSpecRequest = parse_json(body, "secret create")?;
            let name = req.name.as_deref().ok_or_else(|| {
                ControlError::Invalid("secret Name is missing; send {\"Name\": ..., \"Data\": <base64>}".into())
            })?;
            ev.object_name = name.chars().take(80).collect();
            let name = SecretName::new(name).map_err(|e| ControlError::Invalid(e.to_string()))?;
            let labels = req.labels.clone().unwrap_or_default();
            validate_labels(&labels).map_err(|e| ControlError::Invalid(e.to_string()))?;
            if req.driver.is_some() || req.templating.is_some() {
                return Err(ControlError::Invalid(
                    "secret drivers and templating are not supported; omit Driver and Templating".into(),
                ));
            }
            let data = req.data.as_ref().ok_or_else(|| {
                ControlError::Invalid("secret Data is missing; send the value base64-encoded in Data".into())
            })?;
            let value = decode_value(data)?;
            let keys = self.keys.material().await?;
            if self.view.name_taken(name.as_str()) {
                return Err(ControlError::NameConflict { kind: "secret", name: name.to_string() });
            }
            let id = ObjectId::from_random(coffer_crypto::digest::random_u128()?).to_string();
            ev.object_id.clone_from(&id);
            ev.version = 1;
            let _rotation = self.key_rotation.read().await;
            let sealed = seal_value(&keys, &id, 1, &value)?;
            drop(value);
            let t = now();
            let record = SecretRecord {
                id: id.clone(),
                name: name.to_string(),
                labels,
                created_at: t.clone(),
                updated_at: t.clone(),
                current: 1,
                versions: vec![VersionRecord { number: 1, created_at: t, digest: sealed.digest.clone() }],
            };
            let [data_op, dek_op] = sealed_ops(&id, 1, &sealed);
            let r = self.commit_audited(ev, vec![Compare::Absent(secret_name_key(name.as_str())), Compare::Absent(secret_key(&id))], vec![
                    Op::Put(secret_key(&id), record_bytes(&record)),
                    Op::Put(secret_name_key(name.as_str()), id.as_bytes().to_vec()),
                    data_op,
                    dek_op,
                ], ControlError::NameConflict { kind: "secret", name: String::new() }.outcome()).await?;
            if !r.succeeded {
                return Err(ControlError::NameConflict { kind: "secret", name: name.to_string() });
            }
            self.view.wait_for(r.revision).await;
            Ok(IdResponse { id })
        })
        .await
    }

    /// `GET /secrets`: the JSON array.
    pub async fn list_secrets(&self, filters: &ListFilters) -> Result<Bytes, ControlError> {
        self.keys.material().await?;
        let render = |entries: &[Arc<SecretEntry>]| {
            let list: Vec<Secret> = entries
                .iter()
                .filter(|e| filters.matches(&e.record))
                .map(|e| to_api(e))
                .collect();
            Bytes::from(serde_json::to_vec(&list).unwrap_or_default())
        };
        if filters.is_empty() {
            Ok(self.view.cached_list(render))
        } else {
            Ok(render(&self.view.all()))
        }
    }

    /// `GET /secrets/{id}`.
    pub async fn inspect_secret(&self, key: &str) -> Result<Secret, ControlError> {
        self.keys.material().await?;
        let entry = self.view.lookup(key)?;
        let mut s = to_api(&entry);
        s.holders = self.holders(&entry.record.id);
        Ok(s)
    }

    /// `POST /secrets/{id}/update?version=N`: labels only, as Docker.
    pub async fn update_secret(
        &self,
        actor: &Actor,
        key: &str,
        version: Option<&str>,
        body: &[u8],
    ) -> Result<(), ControlError> {
        self.audited(Pending::new(actor, "secret.update"), async |ev: &mut Pending| {
            self.keys.material().await?;
            let entry = self.view.lookup(key)?;
            *ev = ev.clone().object(&entry.record.id, &entry.record.name);
            let req: SecretSpecRequest = parse_json(body, "secret update")?;
            let rev = self.view.check_version(&entry, version)?;
            let renamed = req.name.as_deref().is_some_and(|n| n != entry.record.name);
            if renamed || req.data.is_some() || req.driver.is_some() || req.templating.is_some() {
                return Err(ControlError::Invalid(
                    "only updates to Labels are allowed; to change the value use `coffer secret rotate`".into(),
                ));
            }
            let labels = req.labels.unwrap_or_default();
            validate_labels(&labels).map_err(|e| ControlError::Invalid(e.to_string()))?;
            let mut record = entry.record.clone();
            record.labels = labels;
            record.updated_at = now();
            self.commit_record_change(ev, &entry, rev, record, vec![]).await
        })
        .await
    }

    /// Writes a changed record guarded by its mod revision.
    async fn commit_record_change(
        &self,
        ev: &mut Pending,
        entry: &SecretEntry,
        rev: i64,
        record: SecretRecord,
        extra: Vec<Op>,
    ) -> Result<(), ControlError> {
        let id = record.id.clone();
        let mut success = vec![Op::Put(secret_key(&id), record_bytes(&record))];
        success.extend(extra);
        let r = self
            .commit_audited(
                ev,
                vec![Compare::ModRevision(secret_key(&id), rev)],
                success,
                "refused: stale-version",
            )
            .await?;
        if !r.succeeded {
            return Err(self.view.stale(&id, &entry.record.name, rev));
        }

        self.view.wait_for(r.revision).await;
        Ok(())
    }

    /// `DELETE /secrets/{id}`.
    pub async fn remove_secret(&self, actor: &Actor, key: &str) -> Result<(), ControlError> {
        self.audited(
            Pending::new(actor, "secret.remove"),
            async |ev: &mut Pending| {
                self.keys.material().await?;
                let entry = self.view.lookup(key)?;
                let r = &entry.record;
                *ev = ev.clone().object(&r.id, &r.name);
                // Refused while a service is granted the secret (Docker's rule and message).
                // The compare on the services index makes the check and the delete one step.
                let index_rev = self
                    .store
                    .get(SERVICE_INDEX_KEY)
                    .await?
                    .map_or(0, |kv| kv.mod_revision);
                let users = self.services_using(&r.id, index_rev).await;
                if !users.is_empty() {
                    return Err(ControlError::InUse {
                        secret: r.name.clone(),
                        plural: if users.len() > 1 { "s" } else { "" },
                        services: users.join(", "),
                    });
                }
                let holders = self.running_tasks_holding(&r.id);
                if !holders.is_empty() {
                    return Err(ControlError::HeldByTasks {
                        secret: r.name.clone(),
                        plural: if holders.len() > 1 { "s" } else { "" },
                        tasks: holders.join(", "),
                    });
                }
                let mut success = vec![
                    Op::Delete(secret_key(&r.id)),
                    Op::Delete(secret_name_key(&r.name)),
                ];
                for v in &r.versions {
                    success.push(Op::Delete(secret_data_key(&r.id, v.number)));
                    success.push(Op::Delete(secret_dek_key(&r.id, v.number)));
                }
                let res = self
                    .commit_audited(
                        ev,
                        vec![
                            Compare::ModRevision(secret_key(&r.id), entry.mod_revision),
                            Compare::ModRevision(SERVICE_INDEX_KEY.into(), index_rev),
                        ],
                        success,
                        "refused: changed concurrently",
                    )
                    .await?;
                if !res.succeeded {
                    return Err(self.view.stale(&r.id, &r.name.clone(), entry.mod_revision));
                }
                self.view.wait_for(res.revision).await;
                Ok(())
            },
        )
        .await
    }

    /// `POST /coffer/secrets/{id}/rotate`: appends version n+1 and makes it current.
    pub async fn rotate_secret(
        &self,
        actor: &Actor,
        key: &str,
        body: &[u8],
    ) -> Result<RotateResponse, ControlError> {
        self.audited(
            Pending::new(actor, "secret.rotate"),
            async |ev: &mut Pending| {
                let keys = self.keys.material().await?;
                let entry = self.view.lookup(key)?;
                *ev = ev.clone().object(&entry.record.id, &entry.record.name);
                let req: coffer_core::api::RotateRequest = parse_json(body, "secret rotate")?;
                let value = decode_value(&req.data)?;
                let mut record = entry.record.clone();
                let n = record.latest() + 1;
                ev.version = n;
                let _rotation = self.key_rotation.read().await;
                let sealed = seal_value(&keys, &record.id, n, &value)?;
                drop(value);
                let t = now();
                record.versions.push(VersionRecord {
                    number: n,
                    created_at: t.clone(),
                    digest: sealed.digest.clone(),
                });
                record.current = n;
                record.updated_at = t;
                let mut extra: Vec<Op> = sealed_ops(&record.id, n, &sealed).into();
                let keep = usize::try_from(self.keep_versions).unwrap_or(usize::MAX);
                while record.versions.len() > keep {
                    let old = record.versions.remove(0);
                    extra.push(Op::Delete(secret_data_key(&record.id, old.number)));
                    extra.push(Op::Delete(secret_dek_key(&record.id, old.number)));
                }
                let id = record.id.clone();
                self.commit_record_change(ev, &entry, entry.mod_revision, record, extra)
                    .await?;
                Ok(RotateResponse {
                    id,
                    current_version: n,
                })
            },
        )
        .await
    }

    /// `POST /coffer/secrets/{id}/rollback`: makes the previous kept version current.
    pub async fn rollback_secret(
        &self,
        actor: &Actor,
        key: &str,
    ) -> Result<RotateResponse, ControlError> {
        self.audited(Pending::new(actor, "secret.rollback"), async |ev: &mut Pending| {
            self.keys.material().await?;
            let entry = self.view.lookup(key)?;
            *ev = ev.clone().object(&entry.record.id, &entry.record.name);
            let mut record = entry.record.clone();
            let prev = record.versions.iter().map(|v| v.number).filter(|&n| n < record.current).max();
            let Some(prev) = prev else {
                return Err(ControlError::Invalid(format!(
                    "secret {:?} has no version before {} to roll back to; `coffer secret versions {}` lists them",
                    record.name, record.current, record.name
                )));
            };
            ev.version = prev;
            record.current = prev;
            record.updated_at = now();
            let id = record.id.clone();
            self.commit_record_change(ev, &entry, entry.mod_revision, record, vec![]).await?;
            Ok(RotateResponse { id, current_version: prev })
        })
        .await
    }

    /// Opens a secret's value (current version unless given). For delivery and tests; no
    /// API endpoint returns it.
    pub async fn read_secret_value(
        &self,
        key: &str,
        version: Option<u32>,
    ) -> Result<SecretBytes, ControlError> {
        let keys = self.keys.material().await?;
        let entry = self.view.lookup(key)?;
        let v = version.unwrap_or(entry.record.current);
        open_version(&*self.store, &keys, &entry.record, v).await
    }

    /// Checks that every kept version of every secret (or of those named) opens. Returns
    /// the failures as messages naming secret and version; never a value.
    pub async fn verify_secrets(
        &self,
        actor: &Actor,
        names: &[String],
    ) -> Result<(usize, Vec<String>), ControlError> {
        self.audited(
            Pending::new(actor, "secret.verify"),
            async |_ev: &mut Pending| {
                let keys = self.keys.material().await?;
                let entries: Vec<Arc<SecretEntry>> = if names.is_empty() {
                    self.view.all()
                } else {
                    names
                        .iter()
                        .map(|n| self.view.lookup(n))
                        .collect::<Result<_, _>>()?
                };
                let mut checked = 0;
                let mut failures = Vec::new();
                for e in entries {
                    for v in &e.record.versions {
                        checked += 1;
                        if let Err(err) =
                            open_version(&*self.store, &keys, &e.record, v.number).await
                        {
                            failures.push(err.to_string());
                        }
                    }
                }
                Ok((checked, failures))
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn rec(id: &str, name: &str, labels: &[(&str, &str)]) -> SecretRecord {
        SecretRecord {
            id: id.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            created_at: String::new(),
            updated_at: String::new(),
            current: 1,
            versions: vec![],
        }
    }

    #[test]
    fn filters_as_docker() {
        let f = ListFilters::parse(r#"{"name":{"db":true},"label":{"env=prod":true}}"#).unwrap();
        assert!(f.matches(&rec("abc", "db_password", &[("env", "prod")])));
        assert!(!f.matches(&rec("abc", "db_password", &[("env", "dev")])));
        assert!(!f.matches(&rec("abc", "api_key", &[("env", "prod")])));
        let f = ListFilters::parse(r#"{"label":["tier"],"id":["ab"]}"#).unwrap();
        assert!(f.matches(&rec("abc", "x", &[("tier", "")])));
        assert!(!f.matches(&rec("xbc", "x", &[("tier", "")])));
        let f = ListFilters::parse(r#"{"names":{"db":true}}"#).unwrap();
        assert!(!f.matches(&rec("abc", "db_password", &[])));
        assert!(f.matches(&rec("abc", "db", &[])));
        assert!(ListFilters::parse(r#"{"colour":{"x":true}}"#)
            .unwrap_err()
            .to_string()
            .contains("invalid filter"));
        ListFilters::parse("{").unwrap_err();
    }

    #[test]
    fn json_errors_never_echo_strings() {
        let canary = "CANARY-in-the-wrong-field";
        for body in [
            format!(r#"{{"Name":"x","Labels":"{canary}"}}"#),
            format!(r#"{{"Name":["{canary}"]}}"#),
            format!(r#"{{"Name":"x","Driver":{{"Name":5,"Options":"{canary}"}}}}"#),
            format!(r#"{{"Name":"x","Labels":"a\"{canary}\"b"}}"#),
        ] {
            let e = parse_json::<SecretSpecRequest>(body.as_bytes(), "secret create")
                .unwrap_err()
                .to_string();
            assert!(!e.contains("CANARY"), "{e}");
            assert!(e.contains("malformed JSON"), "{e}");
        }
        // What is not a string value stays, so the message still helps.
        let e = parse_json::<SecretSpecRequest>(br#"{"Name": 5}"#, "secret create")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid type: integer `5`, expected a string"),
            "{e}"
        );
    }

    #[test]
    fn value_limits_are_swarms() {
        let enc = |n: usize| Base64Value(Zeroizing::new(STANDARD.encode(vec![b'x'; n])));
        assert_eq!(decode_value(&enc(511_999)).unwrap().len(), 511_999);
        assert!(decode_value(&enc(512_000))
            .unwrap_err()
            .to_string()
            .contains("under 500 KiB"));
        assert!(decode_value(&enc(0))
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(decode_value(&Base64Value(Zeroizing::new("%%%".into())))
            .unwrap_err()
            .to_string()
            .contains("base64"));
    }
}
