//! Service operations. A service's grants are checked against the secrets that exist
//! (resolved by id, then by name) and against each other (one file or variable per
//! target) before anything is written.

use std::time::SystemTime;

use bytes::Bytes;
use coffer_core::api::{ObjectVersion, Service, ServiceCreateResponse, ServiceStatus};
use coffer_core::grant::{check_unique_targets, Grant};
use coffer_core::record::{
    secret_key, service_key, service_name_key, ServiceRecord, SERVICE_INDEX_KEY,
};
use coffer_core::service::ServiceSpec;
use coffer_core::{validate_labels, ObjectId, SecretName};
use coffer_store::{Compare, Op};

use super::secrets::parse_json;
use super::{ListFilters, Manager};
use crate::audit::{Actor, Pending};
use crate::error::ControlError;
use crate::view::Entry;

type ServiceEntry = Entry<ServiceRecord>;

/// A checked spec and the compares that its granted secrets still exist at commit.
type CheckedSpec = (ServiceSpec, Vec<Compare>);

fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// The API shape of a stored service.
fn to_api(e: &ServiceEntry, running: Option<u64>) -> Service {
    let r = &e.record;
    let desired = replicas(&r.spec);
    Service {
        id: r.id.clone(),
        version: ObjectVersion {
            index: u64::try_from(e.mod_revision).unwrap_or(0),
        },
        created_at: r.created_at.clone(),
        updated_at: r.updated_at.clone(),
        spec: r.spec.clone(),
        service_status: running.map(|running_tasks| ServiceStatus {
            running_tasks,
            desired_tasks: desired,
        }),
    }
}

/// Replicas wanted (Docker's default is 1).
pub(crate) fn replicas(spec: &ServiceSpec) -> u64 {
    spec.mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .unwrap_or(1)
}

impl Manager {
    /// Validates a spec and resolves its grants; returns the spec to store and the secrets
    /// it references (with their revisions, for the transaction's compares).
    fn check_service_spec(&self, mut spec: ServiceSpec) -> Result<CheckedSpec, ControlError> {
        SecretName::new(&spec.name).map_err(|e| {
            ControlError::Invalid(e.to_string().replacen("secret name", "service name", 1))
        })?;
        validate_labels(&spec.labels).map_err(|e| ControlError::Invalid(e.to_string()))?;
        if spec.mode.as_ref().is_some_and(|m| m.global.is_some()) {
            return Err(ControlError::Invalid(
                "global services are not supported yet; use replicated mode (--replicas N)".into(),
            ));
        }
        let c = &spec.task_template.container_spec;
        if c.command.as_ref().is_none_or(Vec::is_empty) && c.args.as_ref().is_none_or(Vec::is_empty)
        {
            return Err(ControlError::Invalid(
                "service has no command; the exec driver runs Command and Args, so give one (coffer service create NAME -- COMMAND)".into(),
            ));
        }
        let mut grants: Vec<Grant> = Vec::new();
        let mut compares = Vec::new();
        for r in spec
            .task_template
            .container_spec
            .secrets
            .iter_mut()
            .flatten()
        {
            let by_id = (!r.secret_id.is_empty())
                .then(|| self.view.lookup(&r.secret_id).ok())
                .flatten();
            let entry = match by_id {
                Some(e) if r.secret_name.is_empty() || e.record.name == r.secret_name => e,
                Some(e) => {
                    return Err(ControlError::Invalid(format!(
                    "grant names secret {:?} but SecretID {} is secret {:?}; give one or the other",
                    r.secret_name, r.secret_id, e.record.name
                )))
                }
                None => self.view.lookup(&r.secret_name).map_err(|_| {
                    let n = if r.secret_name.is_empty() {
                        &r.secret_id
                    } else {
                        &r.secret_name
                    };
                    ControlError::Invalid(format!(
                        "secret {n:?} not found; create it first with `coffer secret create {n}`"
                    ))
                })?,
            };
            r.secret_id.clone_from(&entry.record.id);
            r.secret_name.clone_from(&entry.record.name);
            grants.push(
                r.to_grant()
                    .map_err(|e| ControlError::Invalid(e.to_string()))?,
            );
            compares.push(Compare::Exists(secret_key(&entry.record.id)));
        }
        check_unique_targets(&grants).map_err(ControlError::Invalid)?;
        Ok((spec, compares))
    }

    /// `POST /services/create`.
    pub async fn create_service(
        &self,
        actor: &Actor,
        body: &[u8],
    ) -> Result<ServiceCreateResponse, ControlError> {
        self.audited(
            Pending::new(actor, "service.create"),
            async |ev: &mut Pending| {
                let spec: ServiceSpec = parse_json(body, "service create")?;
                ev.object_name = spec.name.chars().take(80).collect();
                self.keys.material().await?;
                let (spec, secrets_exist) = self.check_service_spec(spec)?;
                if self.services.name_taken(&spec.name) {
                    return Err(ControlError::NameConflict {
                        kind: "service",
                        name: spec.name.clone(),
                    });
                }
                let id = ObjectId::from_random(coffer_crypto::digest::random_u128()?).to_string();
                ev.object_id.clone_from(&id);
                let t = now();
                let name = spec.name.clone();
                let record = ServiceRecord {
                    id: id.clone(),
                    spec,
                    created_at: t.clone(),
                    updated_at: t,
                };
                let mut compares = vec![
                    Compare::Absent(service_name_key(&name)),
                    Compare::Absent(service_key(&id)),
                ];
                compares.extend(secrets_exist);
                let r = self
                    .commit_audited(
                        ev,
                        compares,
                        vec![
                            Op::Put(
                                service_key(&id),
                                serde_json::to_vec(&record).unwrap_or_default(),
                            ),
                            Op::Put(service_name_key(&name), id.as_bytes().to_vec()),
                            Op::Put(SERVICE_INDEX_KEY.into(), Vec::new()),
                        ],
                        "refused: name-conflict or secret removed",
                    )
                    .await?;
                if !r.succeeded {
                    return Err(ControlError::NameConflict {
                        kind: "service",
                        name,
                    });
                }
                self.services.wait_for(r.revision).await;
                Ok(ServiceCreateResponse { id, warnings: None })
            },
        )
        .await
    }

    /// `GET /services`.
    pub async fn list_services(
        &self,
        filters: &ListFilters,
        status: bool,
    ) -> Result<Bytes, ControlError> {
        let counts = status.then(|| self.running_counts());
        let list: Vec<Service> = self
            .services
            .all()
            .iter()
            .filter(|e| {
                filters.matches_named(&e.record.id, &e.record.spec.name, &e.record.spec.labels)
            })
            .map(|e| {
                let running = counts
                    .as_ref()
                    .map(|c| c.get(&e.record.id).copied().unwrap_or(0));
                to_api(e, running)
            })
            .collect();
        Ok(Bytes::from(serde_json::to_vec(&list).unwrap_or_default()))
    }

    /// `GET /services/{id}`.
    pub async fn inspect_service(&self, key: &str) -> Result<Service, ControlError> {
        let entry = self.services.lookup(key)?;
        Ok(to_api(&entry, None))
    }

    /// `POST /services/{id}/update?version=N`: replaces the spec.
    pub async fn update_service(
        &self,
        actor: &Actor,
        key: &str,
        version: Option<&str>,
        body: &[u8],
    ) -> Result<(), ControlError> {
        self.audited(
            Pending::new(actor, "service.update"),
            async |ev: &mut Pending| {
                let entry = self.services.lookup(key)?;
                *ev = ev.clone().object(&entry.record.id, &entry.record.spec.name);
                let spec: ServiceSpec = parse_json(body, "service update")?;
                self.services.check_version(&entry, version)?;
                if spec.name != entry.record.spec.name {
                    return Err(ControlError::Invalid(
                        "renaming services is not supported; create a new service".into(),
                    ));
                }
                let mut spec = spec;
                carry_extensions(&entry.record.spec, &mut spec);
                let (spec, secrets_exist) = self.check_service_spec(spec)?;
                let mut record = entry.record.clone();
                record.spec = spec;
                record.updated_at = now();
                let id = record.id.clone();
                let mut compares = vec![Compare::ModRevision(service_key(&id), entry.mod_revision)];
                compares.extend(secrets_exist);
                let r = self
                    .commit_audited(
                        ev,
                        compares,
                        vec![
                            Op::Put(
                                service_key(&id),
                                serde_json::to_vec(&record).unwrap_or_default(),
                            ),
                            Op::Put(SERVICE_INDEX_KEY.into(), Vec::new()),
                        ],
                        "refused: stale-version or secret removed",
                    )
                    .await?;
                if !r.succeeded {
                    return Err(self
                        .services
                        .stale(&id, &record.spec.name, entry.mod_revision));
                }

                self.services.wait_for(r.revision).await;
                Ok(())
            },
        )
        .await
    }

    /// `DELETE /services/{id}`.
    pub async fn remove_service(&self, actor: &Actor, key: &str) -> Result<(), ControlError> {
        self.audited(
            Pending::new(actor, "service.remove"),
            async |ev: &mut Pending| {
                let entry = self.services.lookup(key)?;
                let r = &entry.record;
                *ev = ev.clone().object(&r.id, &r.spec.name);
                let res = self
                    .commit_audited(
                        ev,
                        vec![Compare::ModRevision(service_key(&r.id), entry.mod_revision)],
                        vec![
                            Op::Delete(service_key(&r.id)),
                            Op::Delete(service_name_key(&r.spec.name)),
                            Op::Put(SERVICE_INDEX_KEY.into(), Vec::new()),
                        ],
                        "refused: changed concurrently",
                    )
                    .await?;
                if !res.succeeded {
                    return Err(self.services.stale(
                        &r.id,
                        &r.spec.name.clone(),
                        entry.mod_revision,
                    ));
                }
                self.services.wait_for(res.revision).await;
                self.logs.forget(&entry.record.id);
                Ok(())
            },
        )
        .await
    }

    /// The services granted `secret_id`, after the services view has caught up with
    /// `index_rev` (the services index key's revision read by the caller).
    pub(crate) async fn services_using(&self, secret_id: &str, index_rev: i64) -> Vec<String> {
        self.services.wait_for(index_rev).await;
        let mut names: Vec<String> = self
            .services
            .all()
            .iter()
            .filter(|e| e.record.secret_ids().any(|id| id == secret_id))
            .map(|e| e.record.spec.name.clone())
            .collect();
        names.sort();
        names
    }
}

/// The docker client drops fields it does not know when it updates a service, coffer's
/// grant extensions among them: a grant that comes back without them, for the same secret
/// and target as before, keeps the ones it had (an env grant comes back with no `File`).
fn carry_extensions(old: &ServiceSpec, new: &mut ServiceSpec) {
    let old_refs = old
        .task_template
        .container_spec
        .secrets
        .as_deref()
        .unwrap_or(&[]);
    for r in new
        .task_template
        .container_spec
        .secrets
        .iter_mut()
        .flatten()
    {
        if r.coffer.is_some() {
            continue;
        }
        let same = old_refs.iter().find(|o| {
            (o.secret_name == r.secret_name
                || (!r.secret_id.is_empty() && o.secret_id == r.secret_id))
                && o.file.as_ref().map(|f| &f.name) == r.file.as_ref().map(|f| &f.name)
        });
        if let Some(o) = same {
            r.coffer.clone_from(&o.coffer);
        }
    }
}
