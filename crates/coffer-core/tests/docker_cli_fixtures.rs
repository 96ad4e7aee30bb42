//! The service specs the real docker client sent (fixtures captured from docker 28.2)
//! decode into coffer's types, keep what coffer does not model, and give the grants the
//! user asked for.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    reason = "integration tests: a panic is the failure report"
)]

use coffer_core::grant::{Delivery, Grant, OnRotate};
use coffer_core::service::ServiceSpec;

fn body(name: &str) -> (String, String) {
    let path = format!(
        "{}/tests/fixtures/docker-cli-28.2/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).unwrap();
    let (line, body) = text.split_once('\n').unwrap();
    (line.to_owned(), body.to_owned())
}

#[test]
fn service_create_from_docker_cli() {
    let (line, b) = body("004.http");
    assert_eq!(line, "POST /v1.45/services/create");
    let spec: ServiceSpec = serde_json::from_str(&b).unwrap();
    assert_eq!(spec.name, "web");
    let c = &spec.task_template.container_spec;
    assert_eq!(
        c.args.as_deref(),
        Some(&["sleep".to_owned(), "1000".to_owned()][..])
    );
    assert_eq!(
        (c.user.as_deref(), c.dir.as_deref()),
        (Some("1000:1000"), Some("/srv"))
    );
    assert_eq!(
        spec.mode
            .as_ref()
            .unwrap()
            .replicated
            .as_ref()
            .unwrap()
            .replicas,
        Some(2)
    );
    let grants: Vec<_> = c
        .secrets
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| r.to_grant().unwrap())
        .collect();
    assert_eq!(
        grants[0].delivery,
        Delivery::File {
            target: "db_password".into(),
            uid: 0,
            gid: 0,
            mode: 0o444
        }
    );
    assert_eq!(
        grants[1].delivery,
        Delivery::File {
            target: "pw".into(),
            uid: 1000,
            gid: 1000,
            mode: 0o400
        }
    );
    assert!(grants
        .iter()
        .all(|g| g.on_rotate == OnRotate::Restart && g.source.as_str() == "db_password"));
    // What coffer does not model survives a round trip.
    assert!(spec.other.contains_key("EndpointSpec"));
    assert!(spec.task_template.other.contains_key("Resources"));
    assert!(c.other.contains_key("DNSConfig"));
    let again: ServiceSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(again, spec);
    // And the grants map back to the references docker sent.
    let mut back = grants[1].to_reference("s1");
    let ext = back.coffer.take().unwrap();
    assert_eq!(ext.on_rotate.as_deref(), Some("restart"));
    assert_eq!(&back, &c.secrets.as_ref().unwrap()[1]);
    // coffer's extensions round-trip through the reference.
    for spec in [
        "source=db_password,target=pw,mode=0400,version=3,on-rotate=signal:SIGHUP",
        "source=db_password,type=env,target=DB_PW,on-rotate=live",
    ] {
        let g = Grant::parse(spec, OnRotate::Live).unwrap();
        let r = g.to_reference("s1");
        assert_eq!(r.to_grant().unwrap(), g, "{spec}");
        let json = serde_json::to_string(&r).unwrap();
        let again: coffer_core::service::SecretReference = serde_json::from_str(&json).unwrap();
        assert_eq!(again.to_grant().unwrap(), g, "{json}");
    }
}

#[test]
fn service_update_from_docker_cli() {
    let (line, b) = body("008.http");
    assert!(
        line.starts_with("POST /v1.45/services/svc1/update?") && line.contains("version=9"),
        "{line}"
    );
    let spec: ServiceSpec = serde_json::from_str(&b).unwrap();
    let refs = spec.task_template.container_spec.secrets.unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(
        refs[0].to_grant().unwrap().delivery,
        Delivery::File {
            target: "pw2".into(),
            uid: 0,
            gid: 0,
            mode: 0o440
        }
    );
}
