//! Test harness: starts the real `coffer` binary on a private data directory and socket,
//! talks raw HTTP/1.1 to it over the unix socket, and runs the CLI against it.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test crates, each using a part"
)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_coffer");

/// A running `coffer server`.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub extra: Vec<String>,
    pub log_level: String,
    starts: u32,
    /// Run the server as this uid:gid (tests of the unprivileged driver).
    pub run_as: Option<(u32, u32)>,
}

impl Server {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("coffer.sock")
    }

    /// Where the in-process agent mounts task secrets.
    pub fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    /// The server's combined stdout and stderr so far (all runs).
    pub fn log(&self) -> String {
        let mut s = String::new();
        for i in 1..=self.starts {
            for f in ["out", "err"] {
                s.push_str(
                    &std::fs::read_to_string(self.dir.path().join(format!("{f}.{i}.log")))
                        .unwrap_or_default(),
                );
            }
        }
        s
    }

    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, "info")
    }

    pub fn start_with(extra: &[&str], log_level: &str) -> Self {
        let mut s = Self {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra: extra.iter().map(|x| (*x).to_owned()).collect(),
            log_level: log_level.to_owned(),
            starts: 0,
            run_as: None,
        };
        s.restart();
        s
    }

    /// Starts a server as another user (the test runs as root).
    pub fn start_as(uid: u32, gid: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        let mut s = Self {
            dir,
            child: None,
            extra: Vec::new(),
            log_level: "info".to_owned(),
            starts: 0,
            run_as: Some((uid, gid)),
        };
        s.restart();
        s
    }

    /// Starts (again) on the same data directory.
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    pub fn restart_with(&mut self, more: &[&str]) {
        assert!(self.child.is_none(), "stop the server first");
        self.starts += 1;
        let n = self.starts;
        let out = std::fs::File::create(self.dir.path().join(format!("out.{n}.log"))).unwrap();
        let err = std::fs::File::create(self.dir.path().join(format!("err.{n}.log"))).unwrap();
        let mut cmd = Command::new(BIN);
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid).env("HOME", self.dir.path());
        }
        let child = cmd
            .arg("server")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--socket")
            .arg(self.socket())
            .arg("--agent-dir")
            .arg(self.agent_dir())
            .args(&self.extra)
            .args(more)
            .env("COFFER_LOG", &self.log_level)
            .env_remove("COFFER_HOST")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = self.try_api("GET", "/_ping", None) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("coffer server exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "coffer server did not answer:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait: the clean stop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status()
                .unwrap();
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "coffer server exited with {status} on SIGTERM:\n{}",
                self.log()
            );
        }
    }

    pub fn try_api(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        http(&self.socket(), method, path, body)
    }

    /// One request; panics if the socket does not answer.
    pub fn api(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, serde_json::Value) {
        let (status, b) = self.try_api(method, path, body).unwrap();
        let v = if b.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&b).unwrap_or(serde_json::Value::String(
                String::from_utf8_lossy(&b).into_owned(),
            ))
        };
        (status, v)
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        cli_at(&format!("unix://{}", self.socket().display()), args, stdin)
    }

    /// Creates a secret through the API; returns its id.
    pub fn create(&self, name: &str, value: &[u8]) -> String {
        let (s, v) = self.api("POST", "/secrets/create", Some(&create_body(name, value)));
        assert_eq!(s, 201, "create {name}: {v}");
        v["ID"].as_str().unwrap().to_owned()
    }

    /// A service's captured output, as `GET /services/{name}/logs` returns it (Docker's
    /// multiplexed frames), stdout and stderr together.
    pub fn service_logs(&self, service: &str) -> String {
        let (st, b) = self
            .try_api(
                "GET",
                &format!("/services/{service}/logs?stdout=1&stderr=1"),
                None,
            )
            .unwrap();
        assert_eq!(st, 200, "logs of {service}");
        let mut out = String::new();
        let mut i = 0;
        while i + 8 <= b.len() {
            let len = u32::from_be_bytes([b[i + 4], b[i + 5], b[i + 6], b[i + 7]]) as usize;
            out.push_str(&String::from_utf8_lossy(&b[i + 8..i + 8 + len]));
            i += 8 + len;
        }
        out
    }

    pub fn list(&self) -> Vec<serde_json::Value> {
        let (s, v) = self.api("GET", "/secrets", None);
        assert_eq!(s, 200, "{v}");
        v.as_array().unwrap().clone()
    }
}

impl Drop for Server {
    /// SIGTERM first, so the agent stops its tasks and removes their mounts; SIGKILL if
    /// it does not end within 20 s.
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill9();
    }
}

pub fn create_body(name: &str, value: &[u8]) -> Vec<u8> {
    use base64::Engine;
    serde_json::to_vec(&serde_json::json!({"Name": name, "Data": base64::engine::general_purpose::STANDARD.encode(value)})).unwrap()
}

pub fn cli_at(host: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    output_of(Command::new(BIN).args(args).env("COFFER_HOST", host), stdin)
}

/// Runs `cmd` to the end with `stdin` as its input (or none) and its output captured.
pub fn output_of(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    let mut c = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        c.stdin.take().unwrap().write_all(input).unwrap();
    }
    c.wait_with_output().unwrap()
}

/// Polls `f` every 20 ms until it holds; fails the test after 20 s.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal HTTP/1.1 request over a unix socket (`Connection: close`).
pub fn http(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or(&[]);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: coffer\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    // The server may refuse early (413) and close; a failed write of the body is fine then.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let mut payload = resp[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload);
    }
    Ok((status, payload))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Opens every secret of a stopped server's SQLite store through the library, returning
/// name -> current value, or name -> error message.
pub fn read_all_values(
    data_dir: &Path,
) -> std::collections::BTreeMap<String, Result<Vec<u8>, String>> {
    use coffer_crypto::keyring::KeyringFile;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = coffer_store::SqliteStore::open(&data_dir.join("state.db")).unwrap();
        let KeyringFile::Plain(keys) = KeyringFile::load(&data_dir.join("keyring.json")).unwrap()
        else {
            panic!("keyring is sealed");
        };
        use coffer_store::Store;
        let range = store
            .range(coffer_core::record::SECRETS_PREFIX)
            .await
            .unwrap();
        let mut out = std::collections::BTreeMap::new();
        for kv in range.kvs {
            let rec: coffer_core::record::SecretRecord = serde_json::from_slice(&kv.value).unwrap();
            let r = coffer_manager::control::open_version(&store, &keys, &rec, rec.current).await;
            out.insert(
                rec.name.clone(),
                r.map(|v| v.expose().to_vec()).map_err(|e| e.to_string()),
            );
        }
        store.close();
        out
    })
}

/// Writes a test fixture file (not a secret-bearing file of coffer's).
pub fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::File::create(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// The command's standard output, after asserting it succeeded.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
