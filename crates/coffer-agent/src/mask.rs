//! Masking task output: every granted value (each version the task was given, with and
//! without its trailing newline, and each line of a multi-line value) becomes `****`
//! before a line leaves the agent.

use zeroize::Zeroizing;

/// What replaces a value.
pub const MASK: &str = "****";

/// Lines longer than this are cut (and masked) in pieces.
pub const MAX_LINE: usize = 64 * 1024;

/// The values to hide from one task's output.
#[derive(Default)]
pub struct Masker {
    /// Longest first, so a value containing another is hidden whole.
    needles: Vec<Zeroizing<Vec<u8>>>,
}

/// Holds values: Debug shows how many, never which.
impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values, [REDACTED])", self.needles.len())
    }
}

/// Holds unmasked output: Debug shows its length only.
impl std::fmt::Debug for LineBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LineBuffer({} bytes, [REDACTED])", self.buf.len())
    }
}

impl Masker {
    /// Adds a value (and its variants).
    pub fn add(&mut self, value: &[u8]) {
        let mut add = |n: &[u8]| {
            if !n.is_empty() && !self.needles.iter().any(|x| x.as_slice() == n) {
                self.needles.push(Zeroizing::new(n.to_vec()));
            }
        };
        add(value);
        let trimmed = value
            .strip_suffix(b"\n")
            .map(|v| v.strip_suffix(b"\r").unwrap_or(v))
            .unwrap_or(value);
        add(trimmed);
        if trimmed.contains(&b'\n') {
            for line in trimmed.split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                add(line);
            }
        }
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    /// One line with every value replaced.
    pub fn mask(&self, line: &[u8]) -> String {
        let mut out: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(line.len()));
        let mut i = 0;
        'outer: while i < line.len() {
            for n in &self.needles {
                if line[i..].starts_with(n) {
                    out.extend_from_slice(MASK.as_bytes());
                    i += n.len();
                    continue 'outer;
                }
            }
            out.push(line[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Splits a byte stream into lines.
#[derive(Default)]
pub struct LineBuffer {
    buf: Zeroizing<Vec<u8>>,
    /// No cut at [`MAX_LINE`] (protocol messages, which are whole JSON documents).
    unbounded: bool,
}

impl LineBuffer {
    /// A splitter that never cuts a line (for protocol messages).
    pub fn unbounded() -> Self {
        Self {
            buf: Zeroizing::default(),
            unbounded: true,
        }
    }

    /// Appends `data`; returns the complete lines (without newlines). Only the new bytes
    /// are searched, and the consumed lines leave the buffer in one move.
    pub fn push(&mut self, data: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
        // Whatever the buffer held has no newline: it was all searched before.
        let mut next = self.buf.len();
        self.buf.extend_from_slice(data);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(off) = self.buf[next..].iter().position(|b| *b == b'\n') {
            let end = next + off;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            lines.push(Zeroizing::new(line.to_vec()));
            start = end + 1;
            next = start;
        }
        self.buf.drain(..start);
        if !self.unbounded && self.buf.len() > MAX_LINE {
            lines.push(Zeroizing::new(std::mem::take(&mut *self.buf)));
        }
        lines
    }

    /// What is left at the end of the stream.
    pub fn finish(&mut self) -> Option<Zeroizing<Vec<u8>>> {
        (!self.buf.is_empty()).then(|| Zeroizing::new(std::mem::take(&mut *self.buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_values_and_variants() {
        let mut m = Masker::default();
        m.add(b"hunter2\n");
        m.add(b"-----BEGIN KEY-----\nAAAA\n-----END KEY-----\n");
        assert_eq!(m.mask(b"pw=hunter2 ok"), "pw=**** ok");
        assert_eq!(m.mask(b"hunter2hunter2"), "********");
        assert_eq!(m.mask(b"AAAA"), "****");
        assert_eq!(m.mask(b"nothing here"), "nothing here");
        let mut e = Masker::default();
        e.add(b"");
        assert_eq!(e.mask(b"abc"), "abc");
    }

    #[test]
    fn debug_shows_no_value() {
        let mut m = Masker::default();
        m.add(b"hunter2");
        let mut b = LineBuffer::default();
        b.push(b"pw=hunter2 without newline");
        let shown = format!("{m:?} {b:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("104, 117"),
            "{shown}"
        );
    }

    #[test]
    fn longest_value_first() {
        let mut m = Masker::default();
        m.add(b"abc");
        m.add(b"abcdef");
        assert_eq!(m.mask(b"xabcdefx"), "x****x");
    }

    #[test]
    fn lines() {
        let mut b = LineBuffer::default();
        assert!(b.push(b"par").is_empty());
        let l = b.push(b"tial\r\nnext\nrest");
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].as_slice(), b"partial");
        assert_eq!(l[1].as_slice(), b"next");
        assert_eq!(b.finish().unwrap().as_slice(), b"rest");
        assert!(b.finish().is_none());
    }

    #[test]
    fn protocol_messages_are_never_cut() {
        // An assignments message for 120 tasks is well over MAX_LINE; cutting it lost
        // tasks (found by bench/tasks: 5 of 120 tasks never started).
        let big = vec![b'x'; MAX_LINE * 3];
        let mut u = LineBuffer::unbounded();
        assert!(u.push(&big).is_empty());
        let l = u.push(b"\n");
        assert_eq!((l.len(), l[0].len()), (1, MAX_LINE * 3));
        let mut b = LineBuffer::default();
        assert_eq!(b.push(&big).len(), 1, "output lines are cut");
    }

    proptest::proptest! {
        /// Whatever surrounds them, no granted value survives masking (values without '*',
        /// which could be re-formed from the mask itself).
        #[test]
        fn no_value_survives(
            values in proptest::collection::vec("[a-c0-1 ]{1,6}", 1..4),
            pieces in proptest::collection::vec((0usize..6, "[a-c0-1 *]{0,4}"), 0..12),
        ) {
            let mut m = Masker::default();
            for v in &values {
                m.add(v.as_bytes());
            }
            let mut line = String::new();
            for (pick, filler) in &pieces {
                match values.get(*pick) {
                    Some(v) => line.push_str(v),
                    None => line.push_str(filler),
                }
            }
            let out = m.mask(line.as_bytes());
            for v in &values {
                let v = v.trim_end_matches('\n');
                if !v.is_empty() && !v.contains('*') {
                    proptest::prop_assert!(!out.contains(v), "{v:?} in {out:?} (from {line:?})");
                }
            }
        }
    }
}
