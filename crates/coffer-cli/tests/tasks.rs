//! Services running for real (needs root): the in-process agent receives assignments over
//! the node protocol, mounts each task's secrets on its own memory-only filesystem, runs
//! the workload through the exec driver, masks its output, rotates secrets live, and
//! leaves nothing behind when a task stops, even after `kill -9`. Without root these say
//! SKIP, unless COFFER_REQUIRE_ROOT=1.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    reason = "integration tests: a panic is the failure report"
)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{ok, wait_until, Server};
use serde_json::Value;

fn root() -> bool {
    coffer_test_support::require_root("services cannot run tasks here")
}

fn fails(o: &std::process::Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

fn tasks(s: &Server, service: &str) -> Vec<Value> {
    let f = format!("{{\"service\":{{\"{service}\":true}}}}");
    let (st, v) = s.api("GET", &format!("/tasks?filters={}", urlenc(&f)), None);
    assert_eq!(st, 200, "{v}");
    v.as_array().unwrap().clone()
}

fn urlenc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn running_pids(s: &Server, service: &str) -> Vec<u32> {
    tasks(s, service)
        .iter()
        .filter(|t| t["Status"]["State"] == "running" && t["DesiredState"] == "running")
        .map(|t| u32::try_from(t["Status"]["ContainerStatus"]["PID"].as_u64().unwrap()).unwrap())
        .collect()
}

fn logs(s: &Server, service: &str) -> String {
    s.service_logs(service)
}

/// A task's view of a path, through its mount namespace.
fn in_task(pid: u32, path: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/root{path}"))
}

fn secret_mounts(s: &Server) -> usize {
    let agent = s.agent_dir().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&agent))
        .count()
}

#[test]
fn seed_flow_grants_modes_and_masking() {
    if !root() {
        return;
    }
    let s = Server::start(&[]);
    let canary = b"CANARY-seed-7f3a9b1c";
    s.create("db_password", canary);
    // Same secret twice, each file with its own owner and mode (Swarm gives both the last
    // mode), plus an env grant; a third service has no grant.
    ok(&s.cli(
        &[
            "service", "create", "--name", "web", "--replicas", "2",
            "--secret", "db_password",
            "--secret", "source=db_password,target=pw_user,uid=1000,gid=1000,mode=0400",
            "--user", "1000:1000",
            "--", "sh", "-c", "stat -c '%n %u %g %a' /run/secrets/*; cat /run/secrets/pw_user; echo; touch /run/secrets/x 2>/dev/null && echo WRITABLE; ls /proc/self/root$0 >/dev/null 2>&1; exec sleep 1000",
        ],
        None,
    ));
    ok(&s.cli(
        &[
            "service",
            "create",
            "--name",
            "envy",
            "--secret",
            "source=db_password,type=env,target=DB_PW",
            "--",
            "sleep",
            "1000",
        ],
        None,
    ));
    ok(&s.cli(
        &["service", "create", "--name", "other", "--", "sh", "-c", "ls /run/secrets; test -e /run/secrets/db_password && echo HAS_IT || echo NO_SUCH_FILE; exec sleep 1000"],
        None,
    ));
    let web = running_pids(&s, "web");
    assert_eq!(web.len(), 2);
    for pid in &web {
        assert_eq!(in_task(*pid, "/run/secrets/db_password").unwrap(), canary);
        let meta = std::fs::metadata(format!("/proc/{pid}/root/run/secrets/pw_user")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (1000, 1000, 0o400)
        );
        let meta = std::fs::metadata(format!("/proc/{pid}/root/run/secrets/db_password")).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (0, 0, 0o444));
        // Runs as the --user; nothing secret in its environment or command line.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            status.lines().any(|l| l.starts_with("Uid:\t1000\t")),
            "{status}"
        );
        for f in ["environ", "cmdline"] {
            let b = std::fs::read(format!("/proc/{pid}/{f}")).unwrap();
            assert!(
                !b.windows(canary.len()).any(|w| w == canary),
                "canary in /proc/{pid}/{f}"
            );
        }
    }
    wait_until("web printed its files", || {
        logs(&s, "web")
            .matches("/run/secrets/pw_user 1000 1000 400")
            .count()
            == 2
    });
    let out = logs(&s, "web");
    assert!(out.contains("/run/secrets/db_password 0 0 444"), "{out}");
    assert!(
        !out.contains("WRITABLE"),
        "/run/secrets must be read-only: {out}"
    );
    // The value printed by the workload is masked before it is stored.
    assert!(out.contains("****"), "{out}");
    assert!(!out.contains("CANARY"), "value in logs: {out}");
    wait_until("other looked", || {
        logs(&s, "other").contains("NO_SUCH_FILE")
    });
    let other = running_pids(&s, "other")[0];
    in_task(other, "/run/secrets/db_password").unwrap_err();
    // Env delivery: only in that task's environment.
    let envy = running_pids(&s, "envy")[0];
    let environ = std::fs::read(format!("/proc/{envy}/environ")).unwrap();
    let want = [b"DB_PW=".as_slice(), canary].concat();
    assert!(
        environ.split(|b| *b == 0).any(|v| v == want.as_slice()),
        "env grant missing"
    );
    // Inspect shows grants, never the value; secret inspect shows holders.
    for out in [
        ok(&s.cli(&["service", "inspect", "envy"], None)),
        ok(&s.cli(&["secret", "inspect", "db_password"], None)),
    ] {
        assert!(!out.contains("CANARY"), "{out}");
    }
    let holders = ok(&s.cli(&["secret", "inspect", "db_password"], None));
    assert_eq!(holders.matches("\"Task\": \"web.").count(), 2, "{holders}");
    // `coffer service logs` shows the same masked output.
    let cli_logs = ok(&s.cli(&["service", "logs", "web"], None));
    assert!(
        cli_logs.contains("****") && cli_logs.contains("/run/secrets/pw_user 1000 1000 400"),
        "{cli_logs}"
    );
    assert!(!cli_logs.contains("CANARY"));
    // ps output and the server log never carry the value.
    assert!(!ok(&s.cli(&["service", "ps", "web"], None)).contains("CANARY"));
    assert!(!s.log().contains("CANARY"));
    // Everything stops and unmounts on service rm.
    assert_eq!(secret_mounts(&s), 4);
    for svc in ["web", "envy", "other"] {
        ok(&s.cli(&["service", "rm", svc], None));
    }
    assert_eq!(secret_mounts(&s), 0, "mounts left after service rm");
    for pid in web {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived"
        );
    }
}

#[test]
fn live_rotation_signal_and_restart() {
    if !root() {
        return;
    }
    let s = Server::start(&[]);
    s.create("api_key", b"value-one-AAAA");
    // A reader in a tight loop flags anything that is not a whole value.
    ok(&s.cli(
        &[
            "service", "create", "--name", "reader",
            "--secret", "source=api_key,target=key,on-rotate=live",
            "--", "sh", "-c", "while :; do v=$(cat /run/secrets/key 2>/dev/null); case \"$v\" in value-one-AAAA|value-two-*) ;; *) echo \"BAD len=${#v}\";; esac; done",
        ],
        None,
    ));
    ok(&s.cli(
        &[
            "service",
            "create",
            "--name",
            "hup",
            "--secret",
            "source=api_key,target=key,on-rotate=signal:SIGHUP",
            "--",
            "sh",
            "-c",
            "trap 'echo GOT_HUP' HUP; while :; do sleep 0.05; done",
        ],
        None,
    ));
    ok(&s.cli(
        &[
            "service",
            "create",
            "--name",
            "restarty",
            "--secret",
            "source=api_key,on-rotate=restart",
            "--",
            "sleep",
            "1000",
        ],
        None,
    ));
    ok(&s.cli(
        &[
            "service",
            "create",
            "--name",
            "pinned",
            "--secret",
            "source=api_key,version=1",
            "--",
            "sleep",
            "1000",
        ],
        None,
    ));
    let reader = running_pids(&s, "reader")[0];
    let restarty = running_pids(&s, "restarty")[0];
    let pinned = running_pids(&s, "pinned")[0];
    for i in 0..20 {
        let v = format!("value-two-{i:04}");
        ok(&s.cli(&["secret", "rotate", "api_key", "-"], Some(v.as_bytes())));
        wait_until("the new value is in the running task", || {
            in_task(reader, "/run/secrets/key").ok().as_deref() == Some(v.as_bytes())
        });
    }
    assert_eq!(
        running_pids(&s, "reader"),
        vec![reader],
        "live rotation must not restart"
    );
    wait_until("SIGHUP delivered", || logs(&s, "hup").contains("GOT_HUP"));
    assert!(
        !logs(&s, "reader").contains("BAD"),
        "a reader saw a partial file: {}",
        logs(&s, "reader")
    );
    // restart: replaced by a task holding the new version; the pinned one stays on 1.
    wait_until("restart grant replaced its task", || {
        let p = running_pids(&s, "restarty");
        p.len() == 1 && p[0] != restarty
    });
    let newpid = running_pids(&s, "restarty")[0];
    assert_eq!(
        in_task(newpid, "/run/secrets/api_key").unwrap(),
        b"value-two-0019"
    );
    assert_eq!(running_pids(&s, "pinned"), vec![pinned]);
    assert_eq!(
        in_task(pinned, "/run/secrets/api_key").unwrap(),
        b"value-one-AAAA"
    );
    // Rollback delivers the previous version the same way.
    ok(&s.cli(&["secret", "rollback", "api_key"], None));
    wait_until("rollback delivered", || {
        in_task(reader, "/run/secrets/key").ok().as_deref() == Some(b"value-two-0018".as_slice())
    });
}

#[test]
fn update_replaces_tasks_and_rm_refuses_held_secret() {
    if !root() {
        return;
    }
    let s = Server::start(&[]);
    s.create("a", b"AAAA-value");
    s.create("b", b"BBBB-value");
    // Ignores SIGTERM: stopping takes the grace period, then SIGKILL ends it.
    ok(&s.cli(
        &[
            "service",
            "create",
            "--name",
            "svc",
            "--replicas",
            "2",
            "--stop-grace-period",
            "3s",
            "--secret",
            "a",
            "--",
            "sh",
            "-c",
            "trap '' TERM; (setsid sleep 4711 &); while :; do sleep 0.05; done",
        ],
        None,
    ));
    let old = running_pids(&s, "svc");
    // Update in the background; while an old task is stopping it still holds `a`.
    let sock = format!("unix://{}", s.socket().display());
    let updater = std::thread::spawn(move || {
        common::cli_at(
            &sock,
            &[
                "service",
                "update",
                "svc",
                "--secret-rm",
                "a",
                "--secret-add",
                "b",
            ],
            None,
        )
    });
    wait_until("an old task is stopping", || {
        tasks(&s, "svc")
            .iter()
            .any(|t| t["DesiredState"] == "shutdown" && t["Status"]["State"] == "running")
    });
    let err = fails(&s.cli(&["secret", "rm", "a"], None));
    assert!(
        err.contains("secret 'a' is in use by the following task") && err.contains("svc."),
        "{err}"
    );
    ok(&updater.join().unwrap());
    let new = running_pids(&s, "svc");
    assert_eq!(new.len(), 2);
    for pid in &new {
        assert!(!old.contains(pid));
        in_task(*pid, "/run/secrets/a").unwrap_err();
        assert_eq!(in_task(*pid, "/run/secrets/b").unwrap(), b"BBBB-value");
    }
    // No process of the old tasks survived, not even the setsid'd sleep.
    let leftovers = std::process::Command::new("pgrep")
        .args(["-f", "^sleep 4711"])
        .output()
        .unwrap();
    let n = String::from_utf8_lossy(&leftovers.stdout).lines().count();
    assert_eq!(
        n, 2,
        "only the two new tasks' sleeps may run (the old tasks' setsid children must be gone)"
    );
    assert_eq!(secret_mounts(&s), 2);
    ok(&s.cli(&["secret", "rm", "a"], None));
    let err = fails(&s.cli(&["secret", "rm", "b"], None));
    assert!(
        err.contains("in use by the following service: svc"),
        "{err}"
    );
}

#[test]
fn bad_input_is_refused_with_one_line() {
    if !root() {
        return;
    }
    let s = Server::start(&[]);
    s.create("db_password", b"v");
    ok(&s.cli(
        &[
            "service", "create", "--name", "web", "--detach", "--", "sleep", "1000",
        ],
        None,
    ));
    let before = s.api("GET", "/services", None).1;
    for (args, want) in [
        (
            vec!["--name", "x", "--secret", "nope", "--", "true"],
            "secret \"nope\" not found",
        ),
        (
            vec![
                "--name",
                "x",
                "--secret",
                "source=db_password,colour=red",
                "--",
                "true",
            ],
            "unknown option \"colour\"",
        ),
        (
            vec![
                "--name",
                "x",
                "--secret",
                "source=db_password,mode=0999",
                "--",
                "true",
            ],
            "mode=\"0999\" is invalid",
        ),
        (
            vec![
                "--name",
                "x",
                "--secret",
                "source=db_password,uid=bob",
                "--",
                "true",
            ],
            "uid=\"bob\" is invalid",
        ),
        (
            vec![
                "--name",
                "x",
                "--secret",
                "db_password",
                "--secret",
                "source=db_password,target=db_password",
                "--",
                "true",
            ],
            "same file /run/secrets/db_password",
        ),
        (
            vec![
                "--name",
                "x",
                "--secret",
                "source=db_password,target=../etc/passwd",
                "--",
                "true",
            ],
            "no '/'",
        ),
        (vec!["--name", "web", "--", "true"], "already exists"),
        (
            vec!["--name", "x", "--replicas", "-1", "--", "true"],
            "--replicas \"-1\" is invalid",
        ),
    ] {
        let mut full = vec!["service", "create"];
        full.extend(args);
        let err = fails(&s.cli(&full, None));
        assert!(err.contains(want), "{full:?}: {err}");
    }
    let err = fails(&s.cli(&["service", "update", "ghost", "--replicas", "2"], None));
    assert!(err.contains("not found"), "{err}");
    let (st, v) = s.api(
        "POST",
        "/services/web/update?version=1",
        Some(br#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Command":["true"]}}}"#),
    );
    assert_eq!(st, 409, "{v}");
    assert_eq!(
        s.api("GET", "/services", None).1,
        before,
        "a refused request changed something"
    );
    // A command that does not exist: the task fails with the reason, restarts no faster
    // than the delay.
    let o = s.cli(
        &[
            "service",
            "create",
            "--name",
            "broken",
            "--restart-delay",
            "1s",
            "--",
            "/no/such/cmd",
        ],
        None,
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.trim().lines().last().unwrap();
    assert!(
        last.starts_with("Error: service broken did not converge")
            && last.contains("/no/such/cmd")
            && last.contains("No such file"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(3500));
    let ts = tasks(&s, "broken");
    assert!(
        (2..=5).contains(&ts.len()),
        "restarts faster than the delay: {} tasks",
        ts.len()
    );
    let ps = ok(&s.cli(&["service", "ps", "broken"], None));
    assert!(ps.contains("No such file or directory"), "{ps}");
}

#[test]
fn run_passes_output_and_exit_code_through() {
    if !root() {
        return;
    }
    let s = Server::start(&[]);
    s.create("token", b"TOKEN-CANARY-42");
    let o = s.cli(
        &[
            "run",
            "--secret",
            "token",
            "--",
            "sh",
            "-c",
            "cat /run/secrets/token; echo; echo to-stderr >&2; exit 7",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(7));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.trim(), "****");
    assert!(String::from_utf8_lossy(&o.stderr).contains("to-stderr"));
    assert_eq!(secret_mounts(&s), 0, "run left a mount");
    assert_eq!(
        s.api("GET", "/services", None).1.as_array().unwrap().len(),
        0
    );
    let o = s.cli(&["run", "--", "/no/such/cmd"], None);
    assert_eq!(o.status.code(), Some(127));
    // A lot of output, quickly: every line arrives, in order.
    let o = s.cli(&["run", "--", "seq", "1", "20000"], None);
    let out = ok(&o);
    let want: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert!(
        out == want,
        "lines lost or reordered: got {} lines",
        out.lines().count()
    );
}

#[test]
fn kill_9_then_restart_cleans_up_and_reconciles() {
    if !root() {
        return;
    }
    let mut s = Server::start(&[]);
    s.create("k", b"KKKK-value");
    ok(&s.cli(
        &[
            "service",
            "create",
            "--name",
            "w",
            "--restart-delay",
            "100ms",
            "--secret",
            "k",
            "--",
            "sleep",
            "1000",
        ],
        None,
    ));
    let old = running_pids(&s, "w")[0];
    s.kill9();
    assert_eq!(
        secret_mounts(&s),
        1,
        "the mount outlives a killed agent until it restarts"
    );
    s.restart();
    wait_until("a new task runs", || {
        let p = running_pids(&s, "w");
        p.len() == 1 && p[0] != old
    });
    assert!(
        !std::path::Path::new(&format!("/proc/{old}")).exists(),
        "the old task's process survived"
    );
    assert_eq!(secret_mounts(&s), 1, "only the new task's mount remains");
    let new = running_pids(&s, "w")[0];
    assert_eq!(in_task(new, "/run/secrets/k").unwrap(), b"KKKK-value");
    // A clean stop takes the tasks down with it (nothing left running or mounted), and
    // they come back after a restart, even with restart-condition on-failure.
    ok(&s.cli(
        &[
            "service",
            "update",
            "w",
            "--restart-condition",
            "on-failure",
        ],
        None,
    ));
    let before = running_pids(&s, "w")[0];
    s.stop();
    assert!(!std::path::Path::new(&format!("/proc/{before}")).exists());
    assert_eq!(
        secret_mounts(&s),
        0,
        "a stopped coffer leaves no secret mount"
    );
    s.restart();
    wait_until("the task is back", || running_pids(&s, "w").len() == 1);
}

#[test]
fn start_first_update_starts_the_new_task_before_stopping_the_old() {
    if !root() {
        return;
    }
    let s = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events");
    let cmd = format!(
        "echo start $$ >> {l}; trap 'echo stop $$ >> {l}; exit 0' TERM; while :; do sleep 0.05; done",
        l = log.display()
    );
    ok(&s.cli(
        &["service", "create", "--name", "sf", "--", "sh", "-c", &cmd],
        None,
    ));
    ok(&s.cli(
        &[
            "service",
            "update",
            "sf",
            "--update-order",
            "start-first",
            "--env-add",
            "X=1",
        ],
        None,
    ));
    let events = std::fs::read_to_string(&log).unwrap();
    let ev: Vec<(&str, &str)> = events.lines().map(|l| l.split_once(' ').unwrap()).collect();
    assert_eq!(ev.len(), 3, "{events}");
    assert_eq!(
        (ev[0].0, ev[1].0, ev[2].0),
        ("start", "start", "stop"),
        "{events}"
    );
    assert_eq!(ev[2].1, ev[0].1, "the old task stops last: {events}");
    let err = fails(&s.cli(
        &["service", "update", "sf", "--update-order", "sideways"],
        None,
    ));
    assert!(err.contains("use stop-first or start-first"), "{err}");
}

/// Without root, the exec driver uses a user namespace: the same /run/secrets (memory-only,
/// read-only, the grant's mode), live rotation, nothing left after stop. Run as uid 1000.
#[test]
fn without_root_a_user_namespace_driver() {
    if !root() {
        return;
    }
    let s = Server::start_as(1000, 1000);
    s.create("pw", b"USERNS-CANARY-1");
    ok(&s.cli(
        &["service", "create", "--name", "u", "--secret", "source=pw,mode=0400", "--secret", "source=pw,target=live,on-rotate=live",
          "--", "sh", "-c", "touch /run/secrets/x 2>/dev/null && echo WRITABLE; cat /run/secrets/pw; echo; exec sleep 1000"],
        None,
    ));
    let pid = running_pids(&s, "u")[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t1000\t")),
        "runs as the server's user: {status}"
    );
    assert_eq!(in_task(pid, "/run/secrets/pw").unwrap(), b"USERNS-CANARY-1");
    let meta = std::fs::metadata(format!("/proc/{pid}/root/run/secrets/pw")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (1000, 0o400));
    // Memory-only, and only in the task's namespace: nothing in the host's mount table.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(" /run/secrets "))
        .unwrap();
    assert!(
        line.contains(" - ramfs ") || line.contains(" - tmpfs "),
        "{line}"
    );
    assert!(line.contains(" ro,"), "{line}");
    assert!(!std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains("coffer-secrets"));
    wait_until("output", || logs(&s, "u").contains("****"));
    assert!(!logs(&s, "u").contains("WRITABLE") && !logs(&s, "u").contains("CANARY"));
    ok(&s.cli(&["secret", "rotate", "pw", "-"], Some(b"USERNS-CANARY-2")));
    wait_until("live rotation", || {
        in_task(pid, "/run/secrets/live").ok().as_deref() == Some(b"USERNS-CANARY-2".as_slice())
    });
    assert_eq!(running_pids(&s, "u"), vec![pid]);
    ok(&s.cli(&["service", "rm", "u"], None));
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    // An owner the namespace cannot have is refused with the reason.
    let o = s.cli(
        &[
            "service",
            "create",
            "--name",
            "bad",
            "--restart-condition",
            "none",
            "--secret",
            "source=pw,uid=5",
            "--",
            "true",
        ],
        None,
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("without root a task has only its own user"),
        "{err}"
    );
}
