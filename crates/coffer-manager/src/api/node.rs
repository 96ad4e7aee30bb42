//! The node listener: where agents register, receive their assignments (a long-lived
//! HTTP/2 stream carrying the values of exactly the secret versions their tasks
//! reference) and report task status and masked output. Separate from the admin API, which
//! never returns a value. Every request carries the node credential as a bearer token.
//!
//! Today the listener is a unix socket in the 0700 data directory with a token made at
//! start-up and handed to the in-process agent; remote agents over mutually authenticated
//! TLS use the same protocol.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coffer_core::node::{LogLine, RegisterRequest, RegisterResponse, StatusReport};
use http::{header, Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixListener;
use zeroize::Zeroizing;

use super::routes::read_body;
use super::{error, json, json_response, stream_response, ChannelBody, Resp};
use crate::control::{parse_json, Manager, ValueCache};
use crate::error::ControlError;

/// The node credential of this manager's boot (for the in-process agent).
pub fn node_token(m: &Manager) -> Zeroizing<String> {
    // Hex digits: always UTF-8.
    Zeroizing::new(String::from_utf8_lossy(m.node_token.expose()).into_owned())
}

fn authorized(m: &Manager, req: &Request<Incoming>) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let want = m.node_token.expose();
    let given = given.as_bytes();
    // Constant time over the token's length.
    given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Serves the node protocol (HTTP/2) on `listener` until `shutdown` resolves.
pub async fn serve(m: Arc<Manager>, listener: UnixListener, shutdown: impl Future<Output = ()>) {
    if let Err(e) = m.mark_nodes_down().await {
        tracing::warn!(error = %e, "could not mark nodes down at start-up");
    }
    let mut conns = super::accept_loop(&listener, shutdown, move |stream| {
        let m = Arc::clone(&m);
        async move {
            let svc = service_fn(move |req| {
                let m = Arc::clone(&m);
                async move { Ok::<_, Infallible>(handle(m, req).await) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        }
    })
    .await;
    conns.abort_all();
}

async fn handle(m: Arc<Manager>, req: Request<Incoming>) -> Resp {
    if !authorized(&m, &req) {
        return error(&ControlError::Invalid(
            "node request without the node credential; nodes authenticate with their token".into(),
        ))
        .tap_status(StatusCode::UNAUTHORIZED);
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let r: Result<Resp, ControlError> = async {
        Ok(match (&method, segs.as_slice()) {
            (&Method::POST, ["coffer", "node", "register"]) => {
                let body = read_body(req).await?;
                let r: RegisterRequest = parse_json(&body, "node register")?;
                let node_id = m.register_node(&r.hostname).await?;
                tracing::info!(node = %node_id, hostname = %r.hostname, "node registered");
                json(StatusCode::OK, &RegisterResponse { node_id })
            }
            (&Method::GET, ["coffer", "node", node, "assignments"]) => {
                let node = m.nodes.lookup(node)?.record.id.clone();
                assignments_stream(&m, node)
            }
            (&Method::POST, ["coffer", "node", node, "tasks", task, "status"]) => {
                let (node, task) = ((*node).to_owned(), (*task).to_owned());
                let body = read_body(req).await?;
                let r: StatusReport = parse_json(&body, "task status")?;
                m.report_status(&node, &task, &r).await?;
                json_response(StatusCode::NO_CONTENT, Bytes::new())
            }
            (&Method::POST, ["coffer", "node", node, "tasks", task, "logs"]) => {
                let (node, task) = ((*node).to_owned(), (*task).to_owned());
                let body = read_body(req).await?;
                let lines: Vec<LogLine> = parse_json(&body, "task logs")?;
                let t = m.tasks.lookup(&task)?;
                if t.record.node_id != node {
                    return Err(ControlError::Invalid(format!(
                        "task {task} is not assigned to node {node}"
                    )));
                }
                m.logs.push(&t.record.service_id, &task, &node, lines);
                json_response(StatusCode::NO_CONTENT, Bytes::new())
            }
            _ => return Err(ControlError::NoRoute(format!("{method} {path}"))),
        })
    }
    .await;
    r.unwrap_or_else(|e| error(&e))
}

trait TapStatus {
    fn tap_status(self, s: StatusCode) -> Self;
}

impl TapStatus for Resp {
    fn tap_status(mut self, s: StatusCode) -> Self {
        *self.status_mut() = s;
        self
    }
}

/// One JSON line per message: the node's complete assignments, sent again after every
/// change that alters them. While the manager is locked nothing new is sent.
fn assignments_stream(m: &Arc<Manager>, node: String) -> Resp {
    let (tx, body) = tokio::sync::mpsc::channel::<Bytes>(1);
    let m = Arc::clone(m);
    tokio::spawn(async move {
        let mut cache = ValueCache::default();
        let mut last = None;
        let mut currents = m.node_secret_currents(&node);
        let mut tasks = m.tasks.subscribe();
        let mut secrets = m.view.subscribe();
        if let Err(e) = m.set_node_state(&node, "ready").await {
            tracing::warn!(error = %e, "could not mark the node ready");
        }
        loop {
            tasks.borrow_and_update();
            secrets.borrow_and_update();
            let built = m.assignments(&node, &mut cache).await;
            let locked = matches!(built, Err(ControlError::Locked));
            match built {
                Ok(a) if last.as_ref() != Some(&a.tasks) => {
                    // Pre-sized and zeroized after sending: the message holds values.
                    let mut buf = Zeroizing::new(Vec::with_capacity(
                        64 * 1024
                            + a.tasks
                                .iter()
                                .map(|t| {
                                    t.secrets
                                        .iter()
                                        .map(|s| s.value.0.len() + 512)
                                        .sum::<usize>()
                                        + 1024
                                })
                                .sum::<usize>(),
                    ));
                    if let Err(e) = serde_json::to_writer(&mut *buf, &a) {
                        tracing::error!(error = %coffer_core::api::json_error(&e), "assignments could not be encoded");
                    } else {
                        buf.push(b'\n');
                        if tx.send(Bytes::from_owner(buf)).await.is_err() {
                            break;
                        }
                        last = Some(a.tasks);
                    }
                }
                Ok(_) => {}
                Err(ControlError::Locked) => {}
                Err(e) => {
                    tracing::warn!(error = %e, node = %node, "assignments could not be built")
                }
            }
            // Build again after a change to the tasks, or to the current version of a secret
            // this node's tasks hold; a locked manager is asked again every second.
            let closed = loop {
                tokio::select! {
                    _ = tasks.changed() => break false,
                    _ = secrets.changed() => {
                        secrets.borrow_and_update();
                        let now = m.node_secret_currents(&node);
                        if now != currents {
                            currents = now;
                            break false;
                        }
                    }
                    () = tokio::time::sleep(Duration::from_secs(1)), if locked => break false,
                    () = tx.closed() => break true,
                }
            };
            if closed {
                break;
            }
        }
        tracing::info!(node = %node, "node disconnected");
        if let Err(e) = m.set_node_state(&node, "down").await {
            tracing::warn!(error = %e, "could not mark the node down");
        }
    });
    stream_response("application/x-ndjson", ChannelBody(body))
}
