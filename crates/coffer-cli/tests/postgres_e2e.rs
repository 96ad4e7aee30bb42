//! The seed tutorial's example, end to end with a real PostgreSQL (Debian's postgresql
//! package): `db` initializes and runs PostgreSQL with its superuser password from
//! /run/secrets/db_password, `web` connects with the password it reads from its own
//! /run/secrets, a third service finds no such file. Then the password is rotated live:
//! the test changes it in the database, rotates the secret, and `web` connects again
//! without a restart. The values appear nowhere on disk outside the encrypted store, nor in
//! inspect or ps output, any task's environment, or the captured logs.
//!
//! Needs root and PostgreSQL; says SKIP without them unless COFFER_REQUIRE_ROOT=1 or
//! COFFER_REQUIRE_POSTGRES=1.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    reason = "integration tests: a panic is the failure report"
)]

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok, Server};

fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists() && p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn id(flag: &str) -> Option<u32> {
    let o = Command::new("id").args([flag, "postgres"]).output().ok()?;
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

fn ready() -> Option<(PathBuf, u32, u32)> {
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let pg = pg_bin()
        .zip(id("-u"))
        .zip(id("-g"))
        .map(|((b, u), g)| (b, u, g));
    let required = std::env::var("COFFER_REQUIRE_POSTGRES").as_deref() == Ok("1")
        || std::env::var("COFFER_REQUIRE_ROOT").as_deref() == Ok("1");
    match (root, pg) {
        (true, Some(p)) => Some(p),
        (r, p) => {
            assert!(
                !required,
                "PostgreSQL end-to-end test required but root={r}, postgresql installed={}",
                p.is_some()
            );
            eprintln!("SKIP: the PostgreSQL end-to-end test needs root and Debian's postgresql package (apt-get install postgresql)");
            None
        }
    }
}

fn logs(s: &Server, service: &str) -> String {
    s.service_logs(service)
}

fn wait_for_log(s: &Server, service: &str, after: usize, want: &str, secs: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let l = logs(s, service);
        if let Some(p) = l.get(after..).and_then(|t| t.find(want)) {
            return after + p + want.len();
        }
        assert!(
            Instant::now() < deadline,
            "{service} never logged {want:?} after byte {after}:\n{l}\n-- db:\n{}",
            logs(s, "db")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// psql as the test (not a task), the password on standard input.
fn psql(port: u16, password: &str, sql: &str) -> std::process::Output {
    let mut c = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-W",
            "-tAc",
            sql,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    c.wait_with_output().unwrap()
}

#[test]
fn seed_example_with_postgres_and_live_rotation() {
    let Some((bin, uid, gid)) = ready() else {
        return;
    };
    let s = Server::start(&[]);
    let pgdir = tempfile::Builder::new()
        .prefix("coffer-pg")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(pgdir.path(), Some(uid), Some(gid)).unwrap();
    let port = coffer_test_support::free_port();
    let suffix = format!("{:x}", std::process::id());
    let old_pw = format!("PgCanaryOld{suffix}");
    let new_pw = format!("PgCanaryNew{suffix}");
    ok(&s.cli(
        &["secret", "create", "db_password", "-"],
        Some(old_pw.as_bytes()),
    ));

    let dir = pgdir.path().display().to_string();
    let db_cmd = format!(
        "{b}/initdb -D {dir}/data -U postgres --auth=scram-sha-256 --pwfile=/run/secrets/db_password >/dev/null && exec {b}/postgres -D {dir}/data -h 127.0.0.1 -p {port} -k {dir}",
        b = bin.display()
    );
    let grant = format!("source=db_password,uid={uid},gid={gid},mode=0400");
    let user = format!("{uid}:{gid}");
    ok(&s.cli(
        &[
            "service",
            "create",
            "--name",
            "db",
            "--user",
            &user,
            "--workdir",
            &dir,
            "--secret",
            &grant,
            "--",
            "sh",
            "-c",
            &db_cmd,
        ],
        None,
    ));
    let web_cmd = format!(
        "while :; do if psql -h 127.0.0.1 -p {port} -U postgres -d postgres -W -tAc 'select 1' </run/secrets/db_password >/dev/null 2>&1; then echo CONNECTED; else echo REFUSED; fi; sleep 0.2; done"
    );
    ok(&s.cli(
        &[
            "service",
            "create",
            "--name",
            "web",
            "--secret",
            "source=db_password,on-rotate=live",
            "--",
            "sh",
            "-c",
            &web_cmd,
        ],
        None,
    ));
    ok(&s.cli(&["service", "create", "--name", "nogrant", "--", "sh", "-c", "test -e /run/secrets/db_password && echo HAS_FILE || echo NO_SUCH_FILE; exec sleep 1000"], None));

    // web reaches the database with the password from its file.
    let mut pos = wait_for_log(&s, "web", 0, "CONNECTED", 60);
    wait_for_log(&s, "nogrant", 0, "NO_SUCH_FILE", 10);
    let web_pid = {
        let (_, v) = s.api("GET", "/tasks", None);
        v.as_array()
            .unwrap()
            .iter()
            .find(|t| {
                t["Name"].as_str().unwrap().starts_with("web.") && t["Status"]["State"] == "running"
            })
            .unwrap()["Status"]["ContainerStatus"]["PID"]
            .as_u64()
            .unwrap()
    };

    // The database password changes; web is refused until the secret follows.
    ok(&psql(
        port,
        &old_pw,
        &format!("ALTER USER postgres PASSWORD '{new_pw}'"),
    ));
    pos = wait_for_log(&s, "web", pos, "REFUSED", 20);
    ok(&s.cli(
        &["secret", "rotate", "db_password", "-"],
        Some(new_pw.as_bytes()),
    ));
    wait_for_log(&s, "web", pos, "CONNECTED", 20);
    // Same process: rotated live, not restarted.
    let (_, v) = s.api("GET", "/tasks", None);
    let still = v.as_array().unwrap().iter().any(|t| {
        t["Status"]["ContainerStatus"]["PID"].as_u64() == Some(web_pid)
            && t["Status"]["State"] == "running"
    });
    assert!(still, "web was restarted instead of rotated live");

    // Nowhere: inspect, ps, logs, task environments, the server's log, any file.
    let mut texts = vec![
        ok(&s.cli(&["service", "inspect", "db", "web", "nogrant"], None)),
        ok(&s.cli(&["service", "ps", "db"], None)),
        ok(&s.cli(&["service", "ps", "web"], None)),
        ok(&s.cli(&["secret", "inspect", "db_password"], None)),
        logs(&s, "db"),
        logs(&s, "web"),
        s.log(),
        String::from_utf8_lossy(
            &Command::new("ps")
                .args(["axww", "-o", "args"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned(),
    ];
    let (_, v) = s.api("GET", "/tasks", None);
    for t in v.as_array().unwrap() {
        if let Some(pid) = t["Status"]["ContainerStatus"]["PID"]
            .as_u64()
            .filter(|p| *p > 0)
        {
            texts.push(
                String::from_utf8_lossy(
                    &std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default(),
                )
                .into_owned(),
            );
        }
    }
    for pw in [&old_pw, &new_pw] {
        for t in &texts {
            assert!(
                !t.contains(pw.as_str()),
                "a password leaked into output:\n{t}"
            );
        }
        for root in [s.dir.path(), pgdir.path()] {
            // Task secret files live on memory-only mounts (checked below), not on disk.
            for f in common::files_under(root)
                .into_iter()
                .filter(|f| !f.starts_with(s.agent_dir()))
            {
                let b = std::fs::read(&f).unwrap_or_default();
                assert!(
                    !b.windows(pw.len()).any(|w| w == pw.as_bytes()),
                    "a password is on disk in {}",
                    f.display()
                );
            }
        }
    }
    let agent = s.agent_dir().display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours: Vec<&str> = mounts.lines().filter(|l| l.contains(&agent)).collect();
    assert_eq!(ours.len(), 3, "{mounts}");
    assert!(
        ours.iter()
            .all(|l| l.contains(" - ramfs ") || l.contains(" - tmpfs ")),
        "{ours:?}"
    );
    for svc in ["web", "nogrant", "db"] {
        ok(&s.cli(&["service", "rm", svc], None));
    }
}
