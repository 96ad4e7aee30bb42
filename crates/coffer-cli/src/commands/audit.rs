//! `coffer audit ...`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use coffer_core::api::{AuditEvent, AuditVerifyResponse};
use http::Method;

use super::secret::Format;
use crate::client::Client;
use crate::output::table;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// List audit events, oldest first.
    Ls {
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many events.
        #[arg(long)]
        limit: Option<usize>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Check the hash chain: detects edited, inserted and deleted events.
    Verify,
}

pub(crate) async fn run(host: Option<&str>, cmd: AuditCommand) -> Result<ExitCode> {
    let c = Client::new(host)?;
    match cmd {
        AuditCommand::Ls {
            after,
            limit,
            format,
        } => {
            let mut path = format!("/coffer/audit?after={after}");
            if let Some(l) = limit {
                path.push_str(&format!("&limit={l}"));
            }
            let events: Vec<AuditEvent> =
                serde_json::from_slice(&c.call(Method::GET, &path, None).await?)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&events)?),
                Format::Table => table(
                    &[
                        "SEQ", "TIME", "ACTOR", "ACTION", "OBJECT", "VERSION", "OUTCOME",
                    ],
                    &events
                        .iter()
                        .map(|e| {
                            let obj = match (e.object_name.is_empty(), e.object_id.is_empty()) {
                                (false, false) => format!("{} ({})", e.object_name, e.object_id),
                                (false, true) => e.object_name.clone(),
                                (true, false) => e.object_id.clone(),
                                (true, true) => "-".into(),
                            };
                            let v = if e.version == 0 {
                                "-".into()
                            } else {
                                e.version.to_string()
                            };
                            vec![
                                e.seq.to_string(),
                                e.time.clone(),
                                e.actor.clone(),
                                e.action.clone(),
                                obj,
                                v,
                                e.outcome.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        AuditCommand::Verify => {
            let r: AuditVerifyResponse =
                serde_json::from_slice(&c.call(Method::GET, "/coffer/audit/verify", None).await?)?;
            if r.error.is_empty() {
                println!("audit chain intact: {} events, head {}", r.events, r.head);
            } else {
                eprintln!(
                    "audit chain BROKEN after {} good events: {}",
                    r.events, r.error
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
