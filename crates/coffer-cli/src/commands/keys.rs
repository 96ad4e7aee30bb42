//! `coffer unlock`, `coffer unlock-key`, `coffer key rotate`.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use coffer_core::api::KeyRotateResponse;
use http::Method;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::client::Client;

#[derive(Debug, Args)]
pub(crate) struct UnlockKeyArgs {
    /// Replace the unlock key with a new one.
    #[arg(long)]
    rotate: bool,
    /// Print the key only.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Make a new key-encryption key and re-wrap every data key under it.
    Rotate,
}

#[derive(Deserialize)]
struct KeyBody {
    #[serde(rename = "UnlockKey")]
    unlock_key: Zeroizing<String>,
}

pub(crate) async fn unlock(host: Option<&str>) -> Result<ExitCode> {
    let c = Client::new(host)?;
    let key = if std::io::stdin().is_terminal() {
        Zeroizing::new(
            rpassword::prompt_password("Unlock key: ").context("cannot read the unlock key")?,
        )
    } else {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the unlock key from standard input")?;
        line
    };
    let body = Zeroizing::new(serde_json::to_vec(
        &serde_json::json!({"UnlockKey": key.trim()}),
    )?);
    c.call(Method::POST, "/coffer/unlock", Some(body.to_vec()))
        .await?;
    println!("unlocked");
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn unlock_key(host: Option<&str>, a: UnlockKeyArgs) -> Result<ExitCode> {
    let c = Client::new(host)?;
    let b = if a.rotate {
        c.call(Method::POST, "/coffer/unlock-key/rotate", None)
            .await?
    } else {
        c.call(Method::GET, "/coffer/unlock-key", None).await?
    };
    let k: KeyBody = serde_json::from_slice(&b)?;
    if a.quiet {
        println!("{}", k.unlock_key.as_str());
    } else {
        let what = if a.rotate {
            "New unlock key"
        } else {
            "Unlock key"
        };
        println!(
            "{what}:\n\n    {}\n\nKeep it safe: `coffer unlock` needs it after every restart.",
            k.unlock_key.as_str()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn key(host: Option<&str>, cmd: KeyCommand) -> Result<ExitCode> {
    let c = Client::new(host)?;
    match cmd {
        KeyCommand::Rotate => {
            let r: KeyRotateResponse =
                serde_json::from_slice(&c.call(Method::POST, "/coffer/key/rotate", None).await?)?;
            println!(
                "key-encryption key {} is current; {} data keys re-wrapped",
                r.kek_id, r.rewrapped
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
