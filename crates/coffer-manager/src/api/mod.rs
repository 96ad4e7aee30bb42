//! The HTTP+JSON API on a unix socket, in Docker Engine API shapes.
//!
//! Paths work with and without a `/v1.NN` prefix. The socket is created 0600: whoever can
//! connect is an admin (as with docker.sock). Each connection's peer credentials
//! (`SO_PEERCRED`) name the actor in the audit trail.

pub mod node;
mod routes;

use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::audit::Actor;
use crate::control::Manager;
use crate::error::ControlError;

/// The API version coffer answers as (Docker Engine 24+ shapes; older clients negotiate down).
pub const API_VERSION: &str = "1.45";
/// The oldest API version accepted in a path prefix.
pub const MIN_API_VERSION: &str = "1.24";

/// Binding the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process answers on the socket.
    #[error("{0} is in use by a running server; stop it, or pass another --socket")]
    InUse(String),
    /// The socket could not be created.
    #[error("cannot listen on {path}: {source}; pass a writable --socket path")]
    Io {
        /// Socket path.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// Binds the API socket at `path` with mode 0600, replacing a stale socket file.
pub async fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let shown = path.display().to_string();
    let io = |source| BindError::Io {
        path: shown.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(BindError::InUse(shown));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves the API on `listener` until `shutdown` resolves, then lets requests in flight
/// finish (up to 5 s).
pub async fn serve(
    manager: Arc<Manager>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) {
    let conns = accept_loop(&listener, shutdown, move |stream: UnixStream| {
        let actor = match stream.peer_cred() {
            Ok(c) => Actor(format!("uid={} pid={}", c.uid(), c.pid().unwrap_or(0))),
            Err(_) => Actor("unknown".into()),
        };
        let mgr = Arc::clone(&manager);
        async move {
            let svc = service_fn(move |req| {
                let mgr = Arc::clone(&mgr);
                let actor = actor.clone();
                async move { Ok::<_, Infallible>(routes::handle(&mgr, &actor, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        }
    })
    .await;
    let mut conns = conns;
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        conns.abort_all();
    }
}

/// Accepts connections until `shutdown` resolves, each served by `conn` in its own task;
/// returns the connections still open (the caller decides how long they may finish).
pub(crate) async fn accept_loop<F, Fut>(
    listener: &UnixListener,
    shutdown: impl Future<Output = ()>,
    conn: F,
) -> JoinSet<()>
where
    F: Fn(UnixStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(conn(stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns
}

/// A response: a whole body, or a stream (logs, assignments).
pub(crate) type Resp = Response<BoxBody<Bytes, Infallible>>;

/// A response body fed by a channel: each message is sent as it comes; the body ends when
/// the sender is dropped.
#[derive(Debug)]
pub(crate) struct ChannelBody(pub(crate) tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|m| m.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// A streaming response with `content_type`.
pub(crate) fn stream_response(content_type: &'static str, body: ChannelBody) -> Resp {
    let mut r = Response::new(body.boxed());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert("Api-Version", HeaderValue::from_static(API_VERSION));
    r
}

pub(crate) fn json_response(status: StatusCode, body: Bytes) -> Resp {
    let mut r = Response::new(Full::new(body).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert("Api-Version", HeaderValue::from_static(API_VERSION));
    r
}

pub(crate) fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Resp {
    json_response(
        status,
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    )
}

pub(crate) fn error(e: &ControlError) -> Resp {
    let status = e.status();
    if status.is_server_error() {
        tracing::error!(error = %e, "request failed");
    } else {
        tracing::debug!(error = %e, "request refused");
    }
    json(
        status,
        &coffer_core::api::ErrorResponse {
            message: e.to_string(),
        },
    )
}

/// How `GET /services/{id}/logs` was asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogOptions {
    pub(crate) follow: bool,
    pub(crate) details: bool,
    pub(crate) timestamps: bool,
    pub(crate) stdout: bool,
    pub(crate) stderr: bool,
    pub(crate) tail: Option<usize>,
}

/// A service's kept (masked) output in Docker's multiplexed format, then, with `follow`,
/// new lines as they come until the client goes away.
pub(crate) fn logs_response(m: &Manager, service_id: &str, o: LogOptions) -> Resp {
    let (kept, mut rx) = m.logs.read(service_id);
    let logs = Arc::clone(&m.logs);
    let service_id = service_id.to_owned();
    let mut lines = kept;
    if let Some(t) = o.tail {
        let skip = lines.len().saturating_sub(t);
        lines.drain(..skip);
    }
    let (tx, body) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut last = 0;
        // Sends a line the client asked for; false once the client has gone.
        let send = async |e: &crate::logs::LogEntry, last: &mut u64| {
            *last = e.seq;
            let wanted = (e.stream == 1 && o.stdout) || (e.stream == 2 && o.stderr);
            !wanted
                || tx
                    .send(e.docker_frame(o.details, o.timestamps))
                    .await
                    .is_ok()
        };
        for e in lines {
            if !send(&e, &mut last).await {
                return;
            }
        }
        if !o.follow {
            return;
        }
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(e) if e.service_id == service_id && e.seq > last => {
                        if !send(&e, &mut last).await {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the fan-out: catch up from the kept lines.
                        for e in logs.read_after(&service_id, last) {
                            if !send(&e, &mut last).await {
                                return;
                            }
                        }
                    }
                    Err(_) => return,
                },
                () = tx.closed() => return,
            }
        }
    });
    stream_response(
        "application/vnd.docker.multiplexed-stream",
        ChannelBody(body),
    )
}
