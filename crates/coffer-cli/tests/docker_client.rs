//! The real `docker` client drives a coffer manager (`DOCKER_HOST=unix://<coffer socket>`).
//! Without a docker binary the test says so and passes, unless `COFFER_REQUIRE_DOCKER=1`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    clippy::cast_possible_truncation,
    reason = "integration tests: a panic is the failure report"
)]

mod common;

use std::process::{Command, Output};

use common::{ok, wait_until, Server};

fn docker_binary() -> Option<String> {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("docker"))
                .find(|d| d.exists())
        })
        .unwrap_or(None);
    if found.is_none() {
        assert!(
            std::env::var("COFFER_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "COFFER_REQUIRE_DOCKER=1 but there is no docker client (apt-get install docker.io)"
        );
        eprintln!("SKIP: no docker client on PATH (apt-get install docker.io); the docker-client test did not run");
    }
    found.map(|p| p.display().to_string())
}

fn docker(bin: &str, s: &Server, args: &[&str], stdin: Option<&[u8]>) -> Output {
    common::output_of(
        Command::new(bin)
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", s.socket().display()))
            .env("DOCKER_CONFIG", s.dir.path().join("docker-config"))
            .env_remove("DOCKER_CONTEXT"),
        stdin,
    )
}

/// The service's grants as `docker service inspect` shows them.
fn grants(bin: &str, s: &Server, service: &str) -> Vec<serde_json::Value> {
    let refs = ok(&docker(
        bin,
        s,
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec.Secrets}}",
            service,
        ],
        None,
    ));
    serde_json::from_str::<serde_json::Value>(&refs)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn docker_secret_commands() {
    let Some(bin) = docker_binary() else { return };
    let s = Server::start(&[]);
    let id = ok(&docker(
        &bin,
        &s,
        &["secret", "create", "db_password", "-"],
        Some(b"hunter2\n"),
    ))
    .trim()
    .to_owned();
    assert_eq!(id.len(), 25, "{id}");
    let file = s.dir.path().join("api_key.txt");
    common::write_file(&file, b"k-123");
    let id2 = ok(&docker(
        &bin,
        &s,
        &[
            "secret",
            "create",
            "--label",
            "env=prod",
            "--label",
            "tier",
            "api_key",
            file.to_str().unwrap(),
        ],
        None,
    ))
    .trim()
    .to_owned();

    let ls = ok(&docker(&bin, &s, &["secret", "ls"], None));
    assert!(ls.lines().next().unwrap().starts_with("ID"), "{ls}");
    assert!(
        ls.contains("db_password") && ls.contains("api_key") && ls.contains(&id),
        "{ls}"
    );
    let filtered = ok(&docker(
        &bin,
        &s,
        &[
            "secret",
            "ls",
            "--filter",
            "label=env=prod",
            "--format",
            "{{.Name}}",
        ],
        None,
    ));
    assert_eq!(filtered.trim(), "api_key");
    let filtered = ok(&docker(
        &bin,
        &s,
        &["secret", "ls", "-q", "--filter", "name=db"],
        None,
    ));
    assert_eq!(filtered.trim(), id);

    assert_eq!(
        ok(&docker(
            &bin,
            &s,
            &["secret", "inspect", "--format", "{{.Spec.Name}}", &id2],
            None
        ))
        .trim(),
        "api_key"
    );
    let json = ok(&docker(&bin, &s, &["secret", "inspect", "api_key"], None));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["ID"], id2.as_str());
    assert_eq!(v[0]["Spec"]["Labels"]["env"], "prod");
    assert!(
        !json.contains("k-123") && !json.contains("ay0xMjM="),
        "no value in inspect"
    );

    // Errors come back as docker prints them.
    let dup = docker(
        &bin,
        &s,
        &["secret", "create", "db_password", "-"],
        Some(b"x"),
    );
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("already exists"),
        "{dup:?}"
    );
    let missing = docker(&bin, &s, &["secret", "inspect", "nosuch"], None);
    assert!(!missing.status.success());

    ok(&docker(
        &bin,
        &s,
        &["secret", "rm", "db_password", &id2],
        None,
    ));
    assert!(s.list().is_empty());
    // The value docker sent is the value stored, byte for byte (docker keeps the newline).
    drop(s);
}

#[test]
fn docker_stored_value_is_exact() {
    let Some(bin) = docker_binary() else { return };
    let mut s = Server::start(&[]);
    ok(&docker(
        &bin,
        &s,
        &["secret", "create", "pw", "-"],
        Some(b"exact value\n"),
    ));
    s.stop();
    assert_eq!(
        common::read_all_values(&s.data_dir())["pw"].as_deref(),
        Ok(&b"exact value\n"[..])
    );
}

#[test]
fn docker_service_commands() {
    let Some(bin) = docker_binary() else { return };
    let s = Server::start(&[]);
    let sid = ok(&docker(
        &bin,
        &s,
        &["secret", "create", "db_password", "-"],
        Some(b"pw"),
    ))
    .trim()
    .to_owned();
    let create = [
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--secret",
        "db_password",
        "--secret",
        "source=db_password,target=pw,uid=1000,gid=1000,mode=0400",
        "--replicas",
        "2",
        "--env",
        "A=1",
        "--user",
        "1000:1000",
        "--workdir",
        "/srv",
        "busybox",
        "sleep",
        "1000",
    ];
    ok(&docker(&bin, &s, &create, None));
    // The tasks run (exec driver as root; rejected with the reason otherwise).
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    let want = if root {
        "web replicated 2/2"
    } else {
        "web replicated 0/2"
    };
    wait_until(&format!("service ls shows {want}"), || {
        let ls = ok(&docker(
            &bin,
            &s,
            &[
                "service",
                "ls",
                "--format",
                "{{.Name}} {{.Mode}} {{.Replicas}}",
            ],
            None,
        ));
        ls.trim() == want
    });
    let ps = ok(&docker(
        &bin,
        &s,
        &[
            "service",
            "ps",
            "--format",
            "{{.Name}} {{.Node}} {{.DesiredState}} {{.CurrentState}}",
            "web",
        ],
        None,
    ));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let mut names: Vec<&str> = ps.lines().map(|l| l.split(' ').next().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["web.1", "web.2"], "{ps}");
    for l in ps.lines() {
        assert!(l.contains(hostname.trim()) && l.contains("Running"), "{ps}");
    }
    // The docker client sends --secret grants in no fixed order (it gathers them in a map).
    let refs = grants(&bin, &s, "web");
    let pw = refs
        .iter()
        .find(|r| r["File"]["Name"] == "pw")
        .expect("the pw grant");
    assert_eq!(
        pw["File"],
        serde_json::json!({"Name": "pw", "UID": "1000", "GID": "1000", "Mode": 256})
    );
    assert_eq!(refs.len(), 2);
    assert!(
        refs.iter().all(|r| r["SecretID"] == sid.as_str()),
        "{refs:?}"
    );
    // A granted secret cannot be removed; the message is Docker's.
    let rm = docker(&bin, &s, &["secret", "rm", "db_password"], None);
    assert!(
        String::from_utf8_lossy(&rm.stderr)
            .contains("secret 'db_password' is in use by the following service: web"),
        "{rm:?}"
    );
    ok(&docker(
        &bin,
        &s,
        &[
            "service",
            "update",
            "--detach",
            "--secret-rm",
            "db_password",
            "--secret-add",
            "source=db_password,target=pw2,mode=0440",
            "web",
        ],
        None,
    ));
    let refs = grants(&bin, &s, "web");
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0]["File"]["Name"], "pw2");
    if root {
        // docker service logs (with and without timestamps) reads the masked output.
        ok(&docker(
            &bin,
            &s,
            &[
                "service",
                "create",
                "--detach",
                "--name",
                "talk",
                "--secret",
                "db_password",
                "busybox",
                "sh",
                "-c",
                "echo hello-from-task; cat /run/secrets/db_password; echo; sleep 1000",
            ],
            None,
        ));
        let mut logs = String::new();
        wait_until("the masked output is in docker service logs", || {
            logs = ok(&docker(
                &bin,
                &s,
                &["service", "logs", "--timestamps", "talk"],
                None,
            ));
            logs.contains("****")
        });
        let l: Vec<&str> = logs.lines().collect();
        assert_eq!(l.len(), 2, "{logs}");
        assert!(
            l[0].starts_with("20")
                && l[0].contains(" talk.1.")
                && l[0].ends_with("| hello-from-task"),
            "{logs}"
        );
        assert!(l[1].ends_with(" ****"), "{logs}");
        let plain = ok(&docker(
            &bin,
            &s,
            &["service", "logs", "--no-task-ids", "talk"],
            None,
        ));
        assert!(
            plain.lines().next().unwrap().ends_with("| hello-from-task"),
            "{plain}"
        );
        ok(&docker(&bin, &s, &["service", "rm", "talk"], None));
    }
    ok(&docker(&bin, &s, &["service", "rm", "web"], None));
    // docker service rm returns at once; the secret is free once the tasks have stopped.
    wait_until("the secret is free", || {
        docker(&bin, &s, &["secret", "rm", "db_password"], None)
            .status
            .success()
    });
}

/// The docker client drops fields it does not know when it updates a service; coffer's
/// grant extensions (on-rotate, version, env) must survive a `docker service update`.
#[test]
fn docker_update_keeps_coffer_grant_extensions() {
    let Some(bin) = docker_binary() else { return };
    let s = Server::start(&["--no-agent"]);
    s.create("k", b"v1");
    let o = s.cli(
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "web",
            "--secret",
            "source=k,target=live,on-rotate=live",
            "--secret",
            "source=k,target=pinned,version=1,on-rotate=signal:SIGHUP",
            "--secret",
            "source=k,type=env,target=K_ENV",
            "--",
            "sleep",
            "1000",
        ],
        None,
    );
    assert!(o.status.success(), "{o:?}");
    ok(&docker(
        &bin,
        &s,
        &["service", "update", "--detach", "--env-add", "X=1", "web"],
        None,
    ));
    let (_, v) = s.api("GET", "/services/web", None);
    let refs = v["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(refs.len(), 3, "{refs:?}");
    let by = |t: &str| {
        refs.iter()
            .find(|r| r["File"]["Name"] == t || r["Coffer"]["Env"] == t)
            .unwrap_or_else(|| panic!("grant {t} lost: {refs:?}"))["Coffer"]
            .clone()
    };
    assert_eq!(by("live")["OnRotate"], "live");
    assert_eq!(
        (
            by("pinned")["Version"].as_u64(),
            by("pinned")["OnRotate"].as_str()
        ),
        (Some(1), Some("signal:SIGHUP"))
    );
    assert_eq!(by("K_ENV")["Env"], "K_ENV");
    assert!(v["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
        .to_string()
        .contains("X=1"));
}
