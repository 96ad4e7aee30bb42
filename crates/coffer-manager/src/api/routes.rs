//! Routing: one match over method and path segments.

use std::time::SystemTime;

use bytes::Bytes;
use coffer_core::api::{IdResponse, UnlockKeyResponse, UnlockRequest};
use coffer_core::limits::MAX_BODY_SIZE;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{error, json, json_response, Resp, API_VERSION, MIN_API_VERSION};
use crate::audit::Actor;
use crate::control::{ListFilters, Manager};
use crate::error::ControlError;

/// Strips a `/v1.NN` prefix.
pub(crate) fn strip_version(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some(idx) = rest.find('/') {
            let ver = &rest[..idx];
            if !ver.is_empty() && ver.chars().all(|c| c.is_ascii_digit() || c == '.') {
                return &rest[idx..];
            }
        }
    }
    path
}

pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Zeroizing<Vec<u8>>, ControlError> {
    let too_large = ControlError::TooLarge {
        limit: MAX_BODY_SIZE,
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        if len > MAX_BODY_SIZE {
            return Err(too_large);
        }
    }
    let collected = Limited::new(req.into_body(), MAX_BODY_SIZE)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ControlError::TooLarge {
                    limit: MAX_BODY_SIZE,
                }
            } else {
                ControlError::Invalid(format!("could not read the request body: {e}"))
            }
        })?;
    Ok(Zeroizing::new(Vec::from(collected.to_bytes())))
}

fn ping(head: bool) -> Resp {
    let mut r = Response::new(
        Full::new(if head {
            Bytes::new()
        } else {
            Bytes::from_static(b"OK")
        })
        .boxed(),
    );
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    h.insert("Swarm", HeaderValue::from_static("active/manager"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct VersionBody {
    platform: Platform,
    version: &'static str,
    api_version: &'static str,
    #[serde(rename = "MinAPIVersion")]
    min_api_version: &'static str,
    os: &'static str,
    arch: &'static str,
    git_commit: &'static str,
    go_version: &'static str,
    kernel_version: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Platform {
    name: &'static str,
}

fn version_body() -> VersionBody {
    VersionBody {
        platform: Platform { name: "coffer" },
        version: env!("CARGO_PKG_VERSION"),
        api_version: API_VERSION,
        min_api_version: MIN_API_VERSION,
        os: "linux",
        arch: std::env::consts::ARCH,
        git_commit: "",
        go_version: "none (coffer is written in Rust)",
        kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

async fn info(m: &Manager) -> serde_json::Value {
    let locked = m.is_locked().await;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let uptime = SystemTime::now()
        .duration_since(m.started)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    serde_json::json!({
        "ID": m.cluster_id,
        "Name": hostname,
        "ServerVersion": format!("coffer {}", env!("CARGO_PKG_VERSION")),
        "OperatingSystem": "linux",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "Driver": "coffer",
        "Swarm": {
            "NodeID": m.cluster_id,
            "NodeAddr": "127.0.0.1",
            "LocalNodeState": if locked { "locked" } else { "active" },
            "ControlAvailable": true,
            "Error": "",
            "RemoteManagers": [{"NodeID": m.cluster_id, "Addr": "127.0.0.1"}],
            "Nodes": 1,
            "Managers": 1,
            "Cluster": {"ID": m.cluster_id, "Spec": {"Name": "default", "EncryptionConfig": {"AutoLockManagers": m.autolock().await}}}
        },
        "Coffer": {
            "Locked": locked,
            "Secrets": m.secret_count(),
            "Store": m.store_description,
            "UptimeSeconds": uptime
        }
    })
}

#[derive(Deserialize, Default)]
struct VerifyRequest {
    #[serde(rename = "Names", default)]
    names: Vec<String>,
}

#[derive(Serialize)]
struct VerifyResponse {
    #[serde(rename = "Checked")]
    checked: usize,
    #[serde(rename = "Failures")]
    failures: Vec<String>,
}

/// Handles one request.
pub(crate) async fn handle(m: &Manager, actor: &Actor, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = strip_version(req.uri().path()).to_owned();
    let query = req.uri().query().map(str::to_owned);
    let q = query.as_deref();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    tracing::debug!(%method, %path, "request");
    let result: Result<Resp, ControlError> = async {
        Ok(match (&method, segs.as_slice()) {
            (&Method::GET, ["_ping"]) => ping(false),
            (&Method::HEAD, ["_ping"]) => ping(true),
            (&Method::GET, ["version"]) => json(StatusCode::OK, &version_body()),
            (&Method::GET, ["info"]) => json(StatusCode::OK, &info(m).await),
            (&Method::POST, ["secrets", "create"]) => {
                let body = read_body(req).await;
                let r: IdResponse = match body {
                    Ok(b) => m.create_secret(actor, &b).await?,
                    Err(e) => return Err(e),
                };
                json(StatusCode::CREATED, &r)
            }
            (&Method::GET, ["secrets"]) => {
                let filters = match query_param(q, "filters") {
                    Some(f) if !f.is_empty() => ListFilters::parse(&f)?,
                    _ => ListFilters::default(),
                };
                json_response(StatusCode::OK, m.list_secrets(&filters).await?)
            }
            (&Method::GET, ["secrets", id]) => json(StatusCode::OK, &m.inspect_secret(id).await?),
            (&Method::POST, ["secrets", id, "update"]) => {
                let id = (*id).to_owned();
                let version = query_param(q, "version");
                let body = read_body(req).await?;
                m.update_secret(actor, &id, version.as_deref(), &body)
                    .await?;
                json_response(StatusCode::OK, Bytes::new())
            }
            (&Method::DELETE, ["secrets", id]) => {
                m.remove_secret(actor, id).await?;
                json_response(StatusCode::NO_CONTENT, Bytes::new())
            }
            (&Method::POST, ["services", "create"]) => {
                let body = read_body(req).await?;
                json(StatusCode::CREATED, &m.create_service(actor, &body).await?)
            }
            (&Method::GET, ["services"]) => {
                let filters = match query_param(q, "filters") {
                    Some(f) if !f.is_empty() => ListFilters::parse(&f)?,
                    _ => ListFilters::default(),
                };
                let status = query_param(q, "status").is_some_and(|s| s == "true" || s == "1");
                json_response(StatusCode::OK, m.list_services(&filters, status).await?)
            }
            (&Method::GET, ["services", id]) => json(StatusCode::OK, &m.inspect_service(id).await?),
            (&Method::POST, ["services", id, "update"]) => {
                let id = (*id).to_owned();
                let version = query_param(q, "version");
                let body = read_body(req).await?;
                m.update_service(actor, &id, version.as_deref(), &body)
                    .await?;
                json(StatusCode::OK, &serde_json::json!({ "Warnings": null }))
            }
            (&Method::DELETE, ["services", id]) => {
                m.remove_service(actor, id).await?;
                json_response(StatusCode::OK, Bytes::new())
            }
            (&Method::GET, ["services", id, "logs"]) => {
                let entry = m.services.lookup(id)?;
                let flag = |k: &str| query_param(q, k).is_some_and(|v| v == "1" || v == "true");
                let tail = query_param(q, "tail").and_then(|t| t.parse::<usize>().ok());
                let (stdout, stderr) = (flag("stdout"), flag("stderr"));
                let (stdout, stderr) = if stdout || stderr {
                    (stdout, stderr)
                } else {
                    (true, true)
                };
                super::logs_response(
                    m,
                    &entry.record.id,
                    super::LogOptions {
                        follow: flag("follow"),
                        details: flag("details"),
                        timestamps: flag("timestamps"),
                        stdout,
                        stderr,
                        tail,
                    },
                )
            }
            (&Method::GET, ["tasks"]) => {
                let filters = query_param(q, "filters");
                json_response(StatusCode::OK, m.list_tasks(filters.as_deref())?)
            }
            (&Method::GET, ["tasks", id]) => json(StatusCode::OK, &m.inspect_task(id)?),
            (&Method::GET, ["nodes"]) => json_response(StatusCode::OK, m.list_nodes()),
            (&Method::GET, ["nodes", id]) => json(StatusCode::OK, &m.inspect_node(id)?),
            (&Method::POST, ["coffer", "secrets", id, "rotate"]) => {
                let id = (*id).to_owned();
                let body = read_body(req).await?;
                json(StatusCode::OK, &m.rotate_secret(actor, &id, &body).await?)
            }
            (&Method::POST, ["coffer", "secrets", id, "rollback"]) => {
                json(StatusCode::OK, &m.rollback_secret(actor, id).await?)
            }
            (&Method::POST, ["coffer", "secrets", "verify"]) => {
                let body = read_body(req).await?;
                let r: VerifyRequest = if body.is_empty() {
                    VerifyRequest::default()
                } else {
                    crate::control::parse_json(&body, "verify")?
                };
                let (checked, failures) = m.verify_secrets(actor, &r.names).await?;
                json(StatusCode::OK, &VerifyResponse { checked, failures })
            }
            (&Method::POST, ["coffer", "key", "rotate"]) => {
                json(StatusCode::OK, &m.rotate_kek(actor).await?)
            }
            (&Method::POST, ["coffer", "unlock"]) => {
                let body = read_body(req).await?;
                let r: UnlockRequest = crate::control::parse_json(&body, "unlock")?;
                m.unlock(actor, &r.unlock_key.0).await?;
                json_response(StatusCode::OK, Bytes::new())
            }
            (&Method::GET, ["coffer", "unlock-key"]) => {
                let k = m.unlock_key(actor).await?;
                json(
                    StatusCode::OK,
                    &UnlockKeyResponse {
                        unlock_key: k.to_text(),
                    },
                )
            }
            (&Method::POST, ["coffer", "unlock-key", "rotate"]) => {
                let k = m.rotate_unlock_key(actor).await?;
                json(
                    StatusCode::OK,
                    &UnlockKeyResponse {
                        unlock_key: k.to_text(),
                    },
                )
            }
            (&Method::GET, ["coffer", "audit"]) => {
                let after = query_param(q, "after")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let limit = query_param(q, "limit")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(usize::MAX);
                json(StatusCode::OK, &m.audit.list(after, limit).await?)
            }
            (&Method::GET, ["coffer", "audit", "verify"]) => {
                json(StatusCode::OK, &m.audit.verify().await?)
            }
            _ => return Err(ControlError::NoRoute(format!("{method} {path}"))),
        })
    }
    .await;
    result.unwrap_or_else(|e| error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefix() {
        assert_eq!(strip_version("/v1.41/secrets"), "/secrets");
        assert_eq!(
            strip_version("/v1.41/secrets/abc/update"),
            "/secrets/abc/update"
        );
        assert_eq!(strip_version("/secrets"), "/secrets");
        assert_eq!(strip_version("/version"), "/version");
        assert_eq!(strip_version("/vx/secrets"), "/vx/secrets");
    }

    #[test]
    fn query() {
        let q = Some("filters=%7B%22name%22%3A%7B%22db%22%3Atrue%7D%7D&version=3");
        assert_eq!(
            query_param(q, "filters").unwrap(),
            r#"{"name":{"db":true}}"#
        );
        assert_eq!(query_param(q, "version").unwrap(), "3");
        assert_eq!(query_param(q, "nope"), None);
    }
}
