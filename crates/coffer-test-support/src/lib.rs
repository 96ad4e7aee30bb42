//! What coffer's integration tests share across crates. A test that needs something the
//! machine lacks says `SKIP: ...` with the reason and passes, unless the matching
//! `COFFER_REQUIRE_*` switch is set (CI sets them all), in which case it fails.
#![warn(missing_docs)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a panic is the failure report"
)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the test runs as root; if not it prints `SKIP: not root, so <what>`, or fails
/// when `COFFER_REQUIRE_ROOT=1`.
pub fn require_root(what: &str) -> bool {
    let is_root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if !is_root {
        assert!(
            std::env::var("COFFER_REQUIRE_ROOT").as_deref() != Ok("1"),
            "COFFER_REQUIRE_ROOT=1 but not root"
        );
        eprintln!("SKIP: not root, so {what} (run as root)");
    }
    is_root
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private single-member etcd on free loopback ports, killed on drop.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The client port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts Debian's `etcd` and waits until it accepts connections. Without an etcd
    /// binary: `SKIP: no etcd binary ...; <what>` and `None`, or a failure when
    /// `COFFER_REQUIRE_ETCD=1`.
    pub fn start(what: &str) -> Option<Self> {
        let Some(bin) = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            assert!(
                std::env::var("COFFER_REQUIRE_ETCD").as_deref() != Ok("1"),
                "COFFER_REQUIRE_ETCD=1 but no etcd binary; install Debian's etcd-server"
            );
            eprintln!("SKIP: no etcd binary (apt-get install etcd-server); {what}");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let (port, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(bin)
            .args(["--name", "test", "--data-dir"])
            .arg(dir.path())
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let etcd = Self {
            child,
            endpoint,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(etcd)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
