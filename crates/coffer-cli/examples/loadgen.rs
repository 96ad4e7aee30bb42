//! Create load for `bench/run`: C keep-alive connections over the unix socket, each sending
//! N creates of 64-byte values in turn. Prints throughput and latency percentiles (ms).
//!
//! `cargo run --release --example loadgen -- SOCKET CONNECTIONS CREATES_PER_CONNECTION PREFIX`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "a benchmark tool: a panic is the report; percentile indexes are small and positive"
)]

use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, conns, per, prefix] = args.as_slice() else {
        eprintln!("usage: loadgen SOCKET CONNECTIONS CREATES_PER_CONNECTION PREFIX");
        std::process::exit(64);
    };
    let conns: usize = conns.parse().unwrap();
    let per: usize = per.parse().unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let socket = socket.clone();
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let value = base64::engine::general_purpose::STANDARD
                    .encode(format!("{:064}", c * per + i));
                let body = format!(r#"{{"Name":"{prefix}_{c}_{i}","Data":"{value}"}}"#);
                let req = http::Request::post("http://coffer/v1.41/secrets/create")
                    .header("Content-Type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let t = Instant::now();
                let resp = tx.send_request(req).await.unwrap();
                let status = resp.status();
                resp.into_body().collect().await.unwrap();
                assert_eq!(status, 201);
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let q = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize];
    println!(
        "connections={conns} creates={} throughput={:.0}/s p50={:.3}ms p99={:.3}ms",
        all.len(),
        all.len() as f64 / secs,
        q(0.5),
        q(0.99)
    );
}
