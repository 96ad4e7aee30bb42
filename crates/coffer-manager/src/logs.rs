//! Task output, as the agents send it: already masked (every granted value replaced by
//! `****` on the node, before it leaves). Kept in memory, the newest lines per service,
//! and fanned out to followers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{BufMut, Bytes, BytesMut};
use coffer_core::node::LogLine;
use tokio::sync::broadcast;

/// Lines kept per service.
pub const LINES_PER_SERVICE: usize = 10_000;

/// One line of a task's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Position in the manager's log stream (increasing).
    pub seq: u64,
    /// Service id.
    pub service_id: String,
    /// Task id.
    pub task_id: String,
    /// Node id.
    pub node_id: String,
    /// 1 = stdout, 2 = stderr (Docker's stream numbers).
    pub stream: u8,
    /// RFC 3339 time.
    pub time: String,
    /// The masked line.
    pub line: String,
}

impl LogEntry {
    /// The entry in Docker's multiplexed log stream: an 8-byte header (stream, size) and
    /// `[timestamp ][details ]line\n`, in the order `docker service logs` parses them.
    pub fn docker_frame(&self, details: bool, timestamps: bool) -> Bytes {
        let mut payload = String::new();
        if timestamps {
            payload.push_str(&self.time);
            payload.push(' ');
        }
        if details {
            payload.push_str(&format!(
                "com.docker.swarm.node.id={},com.docker.swarm.service.id={},com.docker.swarm.task.id={} ",
                self.node_id, self.service_id, self.task_id
            ));
        }
        payload.push_str(&self.line);
        payload.push('\n');
        let mut b = BytesMut::with_capacity(8 + payload.len());
        b.put_u8(self.stream);
        b.put_bytes(0, 3);
        b.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
        b.put_slice(payload.as_bytes());
        b.freeze()
    }
}

/// The log buffer.
#[derive(Debug)]
pub struct Logs {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<LogEntry>>,
}

#[derive(Debug, Default)]
struct Inner {
    seq: u64,
    per_service: HashMap<String, VecDeque<Arc<LogEntry>>>,
}

impl Default for Logs {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            tx: broadcast::channel(4096).0,
        }
    }
}

impl Logs {
    /// Adds lines of one task.
    pub fn push(&self, service_id: &str, task_id: &str, node_id: &str, lines: Vec<LogLine>) {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *guard;
        let q = inner.per_service.entry(service_id.to_owned()).or_default();
        for l in lines {
            inner.seq += 1;
            let e = Arc::new(LogEntry {
                seq: inner.seq,
                service_id: service_id.to_owned(),
                task_id: task_id.to_owned(),
                node_id: node_id.to_owned(),
                stream: if l.stream == "stderr" { 2 } else { 1 },
                time: l.time,
                line: l.line,
            });
            if q.len() >= LINES_PER_SERVICE {
                q.pop_front();
            }
            q.push_back(Arc::clone(&e));
            let _ = self.tx.send(e);
        }
    }

    /// The kept lines of a service and a receiver for the lines that follow them.
    pub fn read(
        &self,
        service_id: &str,
    ) -> (Vec<Arc<LogEntry>>, broadcast::Receiver<Arc<LogEntry>>) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let rx = self.tx.subscribe();
        (self.kept(&inner, service_id, 0), rx)
    }

    /// The kept lines of a service after `seq` (a follower that fell behind catches up).
    pub fn read_after(&self, service_id: &str, seq: u64) -> Vec<Arc<LogEntry>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        self.kept(&inner, service_id, seq)
    }

    fn kept(&self, inner: &Inner, service_id: &str, after: u64) -> Vec<Arc<LogEntry>> {
        inner
            .per_service
            .get(service_id)
            .map(|q| q.iter().filter(|e| e.seq > after).cloned().collect())
            .unwrap_or_default()
    }

    /// Drops a removed service's lines.
    pub fn forget(&self, service_id: &str) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .per_service
            .remove(service_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_frames() {
        let e = LogEntry {
            seq: 1,
            service_id: "s".into(),
            task_id: "t".into(),
            node_id: "n".into(),
            stream: 2,
            time: "2026-01-01T00:00:00Z".into(),
            line: "hello".into(),
        };
        let f = e.docker_frame(false, false);
        assert_eq!(&f[..], b"\x02\0\0\0\0\0\0\x06hello\n");
        let f = e.docker_frame(true, true);
        let text = std::str::from_utf8(&f[8..]).unwrap();
        assert_eq!(
            text,
            "2026-01-01T00:00:00Z com.docker.swarm.node.id=n,com.docker.swarm.service.id=s,com.docker.swarm.task.id=t hello\n"
        );
        assert_eq!(
            usize::try_from(u32::from_be_bytes([f[4], f[5], f[6], f[7]])).unwrap(),
            text.len()
        );
    }

    #[test]
    fn bounded_and_followed() {
        let logs = Logs::default();
        let (_, mut rx) = logs.read("s");
        let line = |i: usize| LogLine {
            stream: "stdout".into(),
            time: String::new(),
            line: format!("{i}"),
        };
        logs.push("s", "t", "n", (0..3).map(line).collect());
        assert_eq!(rx.try_recv().unwrap().line, "0");
        logs.push(
            "s",
            "t",
            "n",
            (3..LINES_PER_SERVICE + 5).map(line).collect(),
        );
        let (kept, _) = logs.read("s");
        assert_eq!(kept.len(), LINES_PER_SERVICE);
        assert_eq!(kept[0].line, "5");
        // A follower that lagged catches up from the kept lines.
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        let after = logs.read_after("s", kept[LINES_PER_SERVICE - 2].seq);
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].line, format!("{}", LINES_PER_SERVICE + 4));
        logs.forget("s");
        assert!(logs.read("s").0.is_empty());
    }
}
