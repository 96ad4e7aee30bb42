//! `coffer run`: one process with its secrets under /run/secrets, on the local node, its
//! output (masked) passed through and its exit code returned; the secrets are gone when it
//! exits. A one-off service (restart none) that is removed afterwards: the CLI never sees a
//! value, and the manager's audit trail records the run.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use http::Method;
use serde_json::json;

use super::service::{print_logs, spec, tasks, TaskArgs};
use crate::client::Client;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Name of the one-off service (default: run-<random>).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    task: TaskArgs,
}

fn random_suffix() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) async fn run(host: Option<&str>, a: RunArgs) -> Result<ExitCode> {
    let c = Client::new(host)?;
    let name = a.name.unwrap_or_else(|| format!("run-{}", random_suffix()));
    let body = spec(
        &name,
        &a.task,
        1,
        json!({"Condition": "none"}),
        &["coffer.run=true".to_owned()],
    )?;
    let id = super::service::create(&c, &body).await?;
    let result = follow(&c, &id).await;
    // The one-off service goes whatever happened; its task has ended (or is stopped now).
    let _ = c
        .call(Method::DELETE, &format!("/services/{id}"), None)
        .await;
    let _ = super::service::gone(&c, &id).await;
    result
}

async fn follow(c: &Client, id: &str) -> Result<ExitCode> {
    let logs = c
        .stream(&format!("/services/{id}/logs?stdout=1&stderr=1&follow=1"))
        .await?;
    let (done_tx, done_rx) = tokio::sync::watch::channel(None::<serde_json::Value>);
    let poll = {
        let c = c.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            loop {
                if let Ok(ts) = tasks(&c, &id).await {
                    if let Some(t) = ts.into_iter().find(|t| {
                        matches!(
                            t["Status"]["State"].as_str(),
                            Some("complete" | "failed" | "rejected" | "shutdown")
                        )
                    }) {
                        let _ = done_tx.send(Some(t));
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let rx = done_rx.clone();
    let printer = print_logs(logs, move || rx.borrow().is_some());
    tokio::select! {
        r = printer => r?,
        _ = tokio::signal::ctrl_c() => {
            poll.abort();
            eprintln!("coffer run: interrupted; stopping the task");
            return Ok(ExitCode::from(130));
        }
    }
    let _ = poll.await;
    let Some(t) = done_rx.borrow().clone() else {
        bail!("the task's state could not be read");
    };
    let state = t["Status"]["State"].as_str().unwrap_or("");
    let code = t["Status"]["ContainerStatus"]["ExitCode"]
        .as_i64()
        .unwrap_or(0);
    let err = t["Status"]["Err"].as_str().unwrap_or("");
    match state {
        "complete" => Ok(ExitCode::SUCCESS),
        "rejected" => {
            eprintln!("coffer run: {err}");
            Ok(ExitCode::from(125))
        }
        _ if code != 0 => {
            if code == 127 && !err.is_empty() {
                eprintln!("coffer run: {err}");
            }
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        _ => {
            eprintln!("coffer run: {err}");
            Ok(ExitCode::FAILURE)
        }
    }
}
