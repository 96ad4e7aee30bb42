//! A small HTTP/1 client over the manager's unix socket.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::paths;

/// Where the manager is.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    socket: PathBuf,
    host: String,
}

impl Client {
    /// From `--host`/`COFFER_HOST` (`unix:///path`), or the default socket.
    pub(crate) fn new(host: Option<&str>) -> Result<Self> {
        match host {
            None | Some("") => {
                let socket = paths::default_socket();
                Ok(Self {
                    host: format!("unix://{}", socket.display()),
                    socket,
                })
            }
            Some(h) => {
                let Some(path) = h.strip_prefix("unix://") else {
                    bail!("COFFER_HOST {h:?} is not supported; use unix:///path/to/coffer.sock (TCP comes with remote agents)");
                };
                Ok(Self {
                    socket: PathBuf::from(path),
                    host: h.to_owned(),
                })
            }
        }
    }

    /// Sends one request; returns the body of a 2xx answer, or the server's message.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes> {
        let (status, bytes) = self.raw(method, path, body).await?;
        if status.is_success() {
            return Ok(bytes);
        }
        let msg = serde_json::from_slice::<coffer_core::api::ErrorResponse>(&bytes)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(anyhow!("{msg}"))
    }

    /// Opens a streaming answer (logs): the body, to be read frame by frame.
    pub(crate) async fn stream(&self, path: &str) -> Result<hyper::body::Incoming> {
        let resp = self.send(Method::GET, path, None).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            let msg = serde_json::from_slice::<coffer_core::api::ErrorResponse>(&bytes)
                .map(|e| e.message)
                .unwrap_or_else(|_| format!("{status}"));
            return Err(anyhow!("{msg}"));
        }
        Ok(resp.into_body())
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading coffer's answer failed")?
            .to_bytes();
        Ok((status, bytes))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    "nothing is listening there; start coffer with `coffer dev` (or `coffer server`), or point COFFER_HOST at its socket"
                }
                std::io::ErrorKind::PermissionDenied => "the socket belongs to another user; run as that user (root for the system socket)",
                _ => "check that coffer is running and COFFER_HOST is right",
            };
            anyhow!("cannot connect to coffer at {}: {e}; {hint}", self.host)
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with coffer failed")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://coffer{path}"))
            .header("Host", "coffer");
        if body.is_some() {
            req = req.header("Content-Type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        sender
            .send_request(req)
            .await
            .context("request to coffer failed")
    }
}
