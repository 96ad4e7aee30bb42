//! The services API (Docker shapes): grants are resolved against real secrets and checked,
//! every refusal is one line and changes nothing, and a secret granted to a service cannot
//! be removed (Docker's rule and message), also when the two requests race.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    reason = "integration tests: a panic is the failure report"
)]

mod common;

use common::Server;
use serde_json::json;

fn spec(name: &str, secrets: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "Name": name,
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "1000"], "Secrets": secrets}},
        "Mode": {"Replicated": {"Replicas": 2}},
        "EndpointSpec": {"Mode": "vip"}
    }))
    .unwrap()
}

fn grant(name: &str, target: &str, mode: u32) -> serde_json::Value {
    json!({"SecretName": name, "File": {"Name": target, "UID": "0", "GID": "0", "Mode": mode}})
}

fn services(s: &Server) -> serde_json::Value {
    s.api("GET", "/services", None).1
}

#[test]
fn create_inspect_update_remove() {
    let s = Server::start(&[]);
    let sid = s.create("db_password", b"pw");
    let (st, v) = s.api(
        "POST",
        "/services/create",
        Some(&spec(
            "web",
            json!([
                grant("db_password", "db_password", 0o444),
                grant("db_password", "pw", 0o400)
            ]),
        )),
    );
    assert_eq!(st, 201, "{v}");
    let id = v["ID"].as_str().unwrap().to_owned();
    let (_, svc) = s.api("GET", "/services/web", None);
    assert_eq!(svc["ID"], id.as_str());
    let refs = svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
        .as_array()
        .unwrap();
    assert!(
        refs.iter().all(|r| r["SecretID"] == sid.as_str()),
        "grants resolved to the secret's id: {refs:?}"
    );
    assert_eq!(
        svc["Spec"]["EndpointSpec"]["Mode"], "vip",
        "fields coffer does not model are kept"
    );
    let (_, listed) = s.api("GET", "/services?status=true", None);
    assert_eq!(listed[0]["ServiceStatus"]["DesiredTasks"], 2);

    let ver = svc["Version"]["Index"].as_u64().unwrap();
    let (st, v) = s.api(
        "POST",
        &format!("/services/{id}/update?version={ver}"),
        Some(&spec("web", json!([grant("db_password", "only", 0o440)]))),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.api(
        "POST",
        &format!("/services/{id}/update?version={ver}"),
        Some(&spec("web", json!([]))),
    );
    assert_eq!(st, 409, "stale version: {v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("service \"web\" changed since version"),
        "{v}"
    );
    let (_, svc) = s.api("GET", &format!("/services/{id}"), None);
    assert_eq!(
        svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["File"]["Name"],
        "only"
    );

    let (st, v) = s.api("DELETE", "/services/web", None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(services(&s), json!([]));
    let audit = String::from_utf8(s.cli(&["audit", "ls"], None).stdout).unwrap();
    for action in ["service.create", "service.update", "service.remove"] {
        assert!(audit.contains(action), "{audit}");
    }
}

#[test]
fn bad_service_requests_change_nothing() {
    let s = Server::start(&[]);
    s.create("db_password", b"pw");
    let (st, _) = s.api(
        "POST",
        "/services/create",
        Some(&spec(
            "web",
            json!([grant("db_password", "db_password", 0o444)]),
        )),
    );
    assert_eq!(st, 201);
    let before = services(&s);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (spec("api", json!([grant("nosuch", "x", 0o444)])), 400, "secret \"nosuch\" not found"),
        (spec("api", json!([grant("db_password", "../escape", 0o444)])), 400, "target=\"../escape\" is invalid"),
        (spec("api", json!([grant("db_password", "/etc/passwd", 0o444)])), 400, "is invalid"),
        (spec("api", json!([grant("db_password", "x", 0o1777)])), 400, "mode"),
        (spec("api", json!([{"SecretName": "db_password", "File": {"Name": "x", "UID": "alice", "GID": "0", "Mode": 292}}])), 400, "uid=\"alice\""),
        (spec("api", json!([grant("db_password", "same", 0o444), grant("db_password", "same", 0o400)])), 400, "two grants write the same file /run/secrets/same"),
        (spec("web", json!([])), 409, "service \"web\" already exists"),
        (spec("bad name", json!([])), 400, "service name"),
        (br#"{"Name":"api","TaskTemplate":{"ContainerSpec":{"Image":"busybox"}}}"#.to_vec(), 400, "service has no command"),
        (br#"{"Name":"api","TaskTemplate":{"ContainerSpec":{"Args":["x"]}},"Mode":{"Replicated":{"Replicas":-1}}}"#.to_vec(), 400, "malformed JSON"),
        (b"{".to_vec(), 400, "malformed JSON"),
    ];
    for (body, status, needle) in cases {
        let (st, v) = s.api("POST", "/services/create", Some(&body));
        let m = v["message"].as_str().unwrap_or_default().to_owned();
        assert_eq!(st, status, "{m}");
        assert!(
            m.contains(needle) && !m.contains('\n'),
            "{m:?} lacks {needle:?}"
        );
        assert_eq!(
            services(&s),
            before,
            "refused request changed nothing: {needle}"
        );
    }
    for (m, p) in [
        ("GET", "/services/nosuch"),
        ("DELETE", "/services/nosuch"),
        ("POST", "/services/nosuch/update?version=1"),
    ] {
        let (st, v) = s.api(m, p, Some(&spec("nosuch", json!([]))));
        assert_eq!(st, 404, "{m} {p}: {v}");
        assert!(v["message"]
            .as_str()
            .unwrap()
            .contains("service \"nosuch\" not found"));
    }
}

#[test]
fn granted_secret_cannot_be_removed() {
    let s = Server::start(&[]);
    s.create("db_password", b"pw");
    for svc in ["web", "api"] {
        let (st, _) = s.api(
            "POST",
            "/services/create",
            Some(&spec(
                svc,
                json!([grant("db_password", "db_password", 0o444)]),
            )),
        );
        assert_eq!(st, 201);
    }
    let out = s.cli(&["secret", "rm", "db_password"], None);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error: secret 'db_password' is in use by the following services: api, web"
    );
    assert_eq!(s.list().len(), 1, "still there");
    s.api("DELETE", "/services/api", None);
    let (st, v) = s.api("DELETE", "/secrets/db_password", None);
    assert_eq!(
        (st, v["message"].as_str().unwrap()),
        (
            400,
            "secret 'db_password' is in use by the following service: web"
        )
    );
    s.api("DELETE", "/services/web", None);
    // Its tasks may still be stopping: coffer also refuses while a task holds the secret
    // (Docker does not), then lets it go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (st, v) = s.api("DELETE", "/secrets/db_password", None);
        if st == 204 {
            break;
        }
        let m = v["message"].as_str().unwrap();
        assert!(
            st == 400 && m.contains("in use by the following task") && m.contains("web."),
            "{st} {m}"
        );
        assert!(std::time::Instant::now() < deadline, "tasks never stopped");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn secret_removal_racing_service_creation_never_leaves_a_dangling_grant() {
    let s = Server::start(&[]);
    for round in 0..20 {
        let name = format!("s{round}");
        s.create(&name, b"v");
        let socket = s.socket();
        let body = spec(&format!("svc{round}"), json!([grant(&name, "x", 0o444)]));
        let creator = std::thread::spawn(move || {
            common::http(&socket, "POST", "/services/create", Some(&body))
                .unwrap()
                .0
        });
        let (rm, _) = s.api("DELETE", &format!("/secrets/{name}"), None);
        let created = creator.join().unwrap();
        // Either order is fine; both succeeding is not.
        assert!(
            !(rm == 204 && created == 201),
            "round {round}: secret removed and service created with a grant of it"
        );
        assert!(
            rm == 204 || created == 201,
            "round {round}: one of them succeeds ({rm}, {created})"
        );
    }
}

#[test]
fn a_manager_without_agent_says_why_nothing_runs() {
    let s = Server::start(&["--no-agent"]);
    let o = s.cli(&["service", "create", "--name", "idle", "--", "true"], None);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.trim().lines().last().unwrap();
    assert!(
        last.starts_with("Error: service idle cannot run: no node is ready")
            && last.contains("--no-agent"),
        "{err}"
    );
    // The service exists and waits for a node.
    assert_eq!(s.api("GET", "/services/idle", None).0, 200);
    let (_, nodes) = s.api("GET", "/nodes", None);
    assert!(nodes.as_array().unwrap().is_empty(), "{nodes}");
}
