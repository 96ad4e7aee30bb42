//! `coffer secret ...`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::{Subcommand, ValueEnum};
use coffer_core::api::{IdResponse, RotateResponse, Secret};
use http::Method;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::client::Client;
use crate::output::{ago, table};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SecretCommand {
    /// Create a secret from a file or standard input (-).
    Create {
        /// Secret name.
        name: String,
        /// File with the value, or - for standard input (the default).
        #[arg(default_value = "-")]
        file: String,
        /// Label key=value (repeatable).
        #[arg(short, long = "label")]
        labels: Vec<String>,
    },
    /// List secrets.
    #[command(alias = "list")]
    Ls {
        /// Only print IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Filter: name=PREFIX, id=PREFIX, label=KEY or label=KEY=VALUE (repeatable).
        #[arg(short, long = "filter")]
        filters: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show secrets (never their values).
    Inspect {
        /// Human-readable output instead of JSON.
        #[arg(long)]
        pretty: bool,
        /// Names or IDs.
        #[arg(required = true)]
        secrets: Vec<String>,
    },
    /// Change a secret's labels.
    Update {
        /// Add or replace a label key=value (repeatable).
        #[arg(long = "label-add")]
        add: Vec<String>,
        /// Remove a label by key (repeatable).
        #[arg(long = "label-rm")]
        rm: Vec<String>,
        /// Name or ID.
        secret: String,
    },
    /// Remove secrets.
    #[command(alias = "remove")]
    Rm {
        /// Names or IDs.
        #[arg(required = true)]
        secrets: Vec<String>,
    },
    /// Add a new value version and make it current.
    Rotate {
        /// Name or ID.
        secret: String,
        /// File with the new value, or - for standard input (the default).
        #[arg(default_value = "-")]
        file: String,
    },
    /// Make the previous kept version current again.
    Rollback {
        /// Name or ID.
        secret: String,
    },
    /// List a secret's value versions (never their values).
    Versions {
        /// Name or ID.
        secret: String,
    },
    /// Check that stored values open (integrity), without showing them.
    Verify {
        /// Names or IDs (default: all).
        secrets: Vec<String>,
    },
}

/// Reads a value from FILE or standard input, with a clear error for each way it can fail.
fn read_value(file: &str) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    if file == "-" {
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the value from standard input")?;
    } else {
        let p = Path::new(file);
        let meta = std::fs::metadata(p).map_err(|e| {
            anyhow!("cannot read {file:?}: {e}; give an existing file, or - for standard input")
        })?;
        if meta.is_dir() {
            bail!("{file:?} is a directory; give a file, or - for standard input");
        }
        let mut f = std::fs::File::open(p).map_err(|e| anyhow!("cannot read {file:?}: {e}"))?;
        f.read_to_end(&mut buf)
            .map_err(|e| anyhow!("cannot read {file:?}: {e}"))?;
    }
    if buf.is_empty() {
        bail!("the secret value is empty; a secret needs at least one byte");
    }
    Ok(buf)
}

/// `{..., "Data": "<base64>"}` built in a zeroizing buffer.
fn body_with_data(
    fields: serde_json::Map<String, serde_json::Value>,
    value: &[u8],
) -> Zeroizing<Vec<u8>> {
    let mut b64 = Zeroizing::new(String::with_capacity(value.len() * 4 / 3 + 4));
    STANDARD.encode_string(value, &mut b64);
    let head = serde_json::to_vec(&fields).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = Zeroizing::new(Vec::with_capacity(head.len() + b64.len() + 16));
    out.extend_from_slice(&head[..head.len() - 1]);
    if fields.is_empty() {
        out.extend_from_slice(b"\"Data\":\"");
    } else {
        out.extend_from_slice(b",\"Data\":\"");
    }
    out.extend_from_slice(b64.as_bytes());
    out.extend_from_slice(b"\"}");
    out
}

pub(crate) fn parse_label(l: &str) -> Result<(String, String)> {
    let (k, v) = l.split_once('=').unwrap_or((l, ""));
    if k.is_empty() {
        bail!("label {l:?} has an empty key; write key=value");
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn filters_json(filters: &[String]) -> Result<String> {
    let mut m: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
    for f in filters {
        let Some((k, v)) = f.split_once('=') else {
            bail!("filter {f:?} is not key=value; use name=PREFIX, id=PREFIX or label=KEY[=VALUE]");
        };
        m.entry(k.to_owned())
            .or_default()
            .insert(v.to_owned(), true);
    }
    Ok(serde_json::to_string(&m)?)
}

pub(crate) fn enc(s: &str) -> String {
    form_encode(s)
}

fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn inspect(c: &Client, key: &str) -> Result<Secret> {
    let b = c
        .call(Method::GET, &format!("/secrets/{}", enc(key)), None)
        .await?;
    Ok(serde_json::from_slice(&b)?)
}

pub(crate) async fn run(host: Option<&str>, cmd: SecretCommand) -> Result<ExitCode> {
    let c = Client::new(host)?;
    match cmd {
        SecretCommand::Create { name, file, labels } => {
            let labels: BTreeMap<String, String> = labels
                .iter()
                .map(|l| parse_label(l))
                .collect::<Result<_>>()?;
            let value = read_value(&file)?;
            let mut fields = serde_json::Map::new();
            fields.insert("Name".into(), name.into());
            fields.insert("Labels".into(), serde_json::to_value(labels)?);
            let body = body_with_data(fields, &value);
            let r: IdResponse = serde_json::from_slice(
                &c.call(Method::POST, "/secrets/create", Some(body.to_vec()))
                    .await?,
            )?;
            println!("{}", r.id);
        }
        SecretCommand::Ls {
            quiet,
            filters,
            format,
        } => {
            let path = if filters.is_empty() {
                "/secrets".to_owned()
            } else {
                format!("/secrets?filters={}", form_encode(&filters_json(&filters)?))
            };
            let mut list: Vec<Secret> =
                serde_json::from_slice(&c.call(Method::GET, &path, None).await?)?;
            list.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
            if quiet {
                for s in list {
                    println!("{}", s.id);
                }
            } else {
                match format {
                    Format::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                    Format::Table => table(
                        &["ID", "NAME", "VERSION", "CREATED", "UPDATED"],
                        &list
                            .iter()
                            .map(|s| {
                                vec![
                                    s.id.clone(),
                                    s.spec.name.clone(),
                                    s.current_version.to_string(),
                                    ago(&s.created_at),
                                    ago(&s.updated_at),
                                ]
                            })
                            .collect::<Vec<_>>(),
                    ),
                }
            }
        }
        SecretCommand::Inspect { pretty, secrets } => {
            let mut found = Vec::new();
            let mut failed = false;
            for s in &secrets {
                match inspect(&c, s).await {
                    Ok(x) => found.push(x),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        failed = true;
                    }
                }
            }
            if pretty {
                for (i, s) in found.iter().enumerate() {
                    if i > 0 {
                        println!();
                    }
                    print_pretty(s);
                }
            } else {
                println!("{}", serde_json::to_string_pretty(&found)?);
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        SecretCommand::Update { add, rm, secret } => {
            if add.is_empty() && rm.is_empty() {
                bail!("nothing to update; give --label-add key=value or --label-rm key");
            }
            let s = inspect(&c, &secret).await?;
            let mut labels = s.spec.labels.clone();
            for k in &rm {
                if labels.remove(k).is_none() {
                    bail!("secret {:?} has no label {k:?}; `coffer secret inspect {}` shows its labels", s.spec.name, s.spec.name);
                }
            }
            for l in &add {
                let (k, v) = parse_label(l)?;
                labels.insert(k, v);
            }
            let body =
                serde_json::to_vec(&serde_json::json!({"Name": s.spec.name, "Labels": labels}))?;
            c.call(
                Method::POST,
                &format!("/secrets/{}/update?version={}", s.id, s.version.index),
                Some(body),
            )
            .await?;
            println!("{secret}");
        }
        SecretCommand::Rm { secrets } => {
            let mut failed = false;
            for s in &secrets {
                match c
                    .call(Method::DELETE, &format!("/secrets/{}", enc(s)), None)
                    .await
                {
                    Ok(_) => println!("{s}"),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        SecretCommand::Rotate { secret, file } => {
            let value = read_value(&file)?;
            let body = body_with_data(serde_json::Map::new(), &value);
            let b = c
                .call(
                    Method::POST,
                    &format!("/coffer/secrets/{}/rotate", enc(&secret)),
                    Some(body.to_vec()),
                )
                .await?;
            let r: RotateResponse = serde_json::from_slice(&b)?;
            println!("{secret}: version {} is current", r.current_version);
        }
        SecretCommand::Rollback { secret } => {
            let b = c
                .call(
                    Method::POST,
                    &format!("/coffer/secrets/{}/rollback", enc(&secret)),
                    None,
                )
                .await?;
            let r: RotateResponse = serde_json::from_slice(&b)?;
            println!("{secret}: version {} is current", r.current_version);
        }
        SecretCommand::Versions { secret } => {
            let s = inspect(&c, &secret).await?;
            table(
                &["VERSION", "CREATED", "DIGEST", "CURRENT"],
                &s.versions
                    .iter()
                    .map(|v| {
                        let cur = if v.number == s.current_version {
                            "*"
                        } else {
                            ""
                        };
                        vec![
                            v.number.to_string(),
                            ago(&v.created_at),
                            v.digest.clone(),
                            cur.to_owned(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
        SecretCommand::Verify { secrets } => {
            #[derive(Deserialize)]
            struct R {
                #[serde(rename = "Checked")]
                checked: usize,
                #[serde(rename = "Failures")]
                failures: Vec<String>,
            }
            let body = serde_json::to_vec(&serde_json::json!({ "Names": secrets }))?;
            let r: R = serde_json::from_slice(
                &c.call(Method::POST, "/coffer/secrets/verify", Some(body))
                    .await?,
            )?;
            for f in &r.failures {
                eprintln!("FAILED: {f}");
            }
            println!(
                "{} value versions checked, {} failed",
                r.checked,
                r.failures.len()
            );
            if !r.failures.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_pretty(s: &Secret) {
    println!("ID:              {}", s.id);
    println!("Name:            {}", s.spec.name);
    if !s.spec.labels.is_empty() {
        println!("Labels:");
        for (k, v) in &s.spec.labels {
            println!(" - {k}={v}");
        }
    }
    println!("Current version: {}", s.current_version);
    println!(
        "Versions:        {}",
        s.versions
            .iter()
            .map(|v| v.number.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("Created at:      {}", s.created_at);
    println!("Updated at:      {}", s.updated_at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_body_is_json() {
        let mut f = serde_json::Map::new();
        f.insert("Name".into(), "x".into());
        let b = body_with_data(f, b"hello");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["Data"], "aGVsbG8=");
        assert_eq!(v["Name"], "x");
        let b = body_with_data(serde_json::Map::new(), b"hi");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["Data"], "aGk=");
    }

    #[test]
    fn filters() {
        assert_eq!(
            filters_json(&["name=db".into(), "label=a=b".into()]).unwrap(),
            r#"{"label":{"a=b":true},"name":{"db":true}}"#
        );
        filters_json(&["nope".into()]).unwrap_err();
        parse_label("=v").unwrap_err();
        assert_eq!(parse_label("k").unwrap(), ("k".into(), String::new()));
    }
}
