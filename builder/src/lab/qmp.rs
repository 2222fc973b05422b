//! A small QMP client (qemu's machine protocol, docs/interop/qmp-spec): a Unix socket carrying
//! line-delimited JSON. The greeting, then `qmp_capabilities`, then one command at a time;
//! asynchronous events may arrive before any reply and are skipped. Every read has a timeout
//! and every line a length cap: the socket is qemu's, not the guest's, but a wedged or
//! misbehaving qemu must not hang or grow the builder.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// Longest line accepted (qemu's replies to the few commands used are a few hundred bytes).
pub const MAX_LINE: usize = 64 * 1024;
/// Events skipped while waiting for one reply (a guest can trigger events; bounded anyway).
pub const MAX_EVENTS: usize = 256;
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP: a line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("QMP: qemu closed the socket")]
    Closed,
    #[error("QMP: {0}")]
    Protocol(String),
    #[error("QMP: qemu says: {0}")]
    Refused(String),
}

/// One line (without its `\n`), at most `max` bytes; `TooLong` beyond, `Closed` at EOF.
pub fn read_line<R: BufRead>(r: &mut R, max: usize) -> Result<Vec<u8>, std::io::Result<QmpError>> {
    let mut line = Vec::new();
    // One byte more than allowed: reaching it means the line is too long.
    let n = r
        .take(max as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(Err)?;
    if n == 0 {
        return Err(Ok(QmpError::Closed));
    }
    if line.last() != Some(&b'\n') {
        return Err(Ok(if line.len() > max {
            QmpError::TooLong
        } else {
            QmpError::Closed
        }));
    }
    line.pop();
    Ok(line)
}

/// What one line of qemu's is: the reply (`Some(return value)`), an event (`None`), or an error.
pub fn classify(line: &[u8]) -> Result<Option<Value>, QmpError> {
    let v: Value =
        serde_json::from_slice(line).map_err(|e| QmpError::Protocol(format!("not JSON: {e}")))?;
    if let Some(r) = v.get("return") {
        return Ok(Some(r.clone()));
    }
    if let Some(e) = v.get("error") {
        let desc = e["desc"].as_str().unwrap_or("no description");
        return Err(QmpError::Refused(images::bundle::printable(desc, 300)));
    }
    if v.get("event").is_some() {
        return Ok(None);
    }
    Err(QmpError::Protocol("neither a reply nor an event".into()))
}

pub struct Qmp {
    path: String,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect, read the greeting, negotiate capabilities.
    pub fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let shown = path.display().to_string();
        let io = |source| QmpError::Io {
            path: shown.clone(),
            source,
        };
        let s = UnixStream::connect(path).map_err(io)?;
        s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        let writer = s.try_clone().map_err(io)?;
        let mut q = Qmp {
            path: shown.clone(),
            reader: BufReader::new(s),
            writer,
        };
        let greeting = q.line()?;
        let v: Value = serde_json::from_slice(&greeting)
            .map_err(|e| QmpError::Protocol(format!("greeting is not JSON: {e}")))?;
        if v.get("QMP").is_none() {
            return Err(QmpError::Protocol("no QMP greeting".into()));
        }
        q.execute("qmp_capabilities")?;
        Ok(q)
    }

    fn line(&mut self) -> Result<Vec<u8>, QmpError> {
        read_line(&mut self.reader, MAX_LINE).map_err(|e| match e {
            Ok(q) => q,
            Err(source) => QmpError::Io {
                path: self.path.clone(),
                source,
            },
        })
    }

    /// Run `command` (no arguments), return its `return` value.
    pub fn execute(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command }).to_string();
        msg.push('\n');
        self.writer
            .write_all(msg.as_bytes())
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        for _ in 0..MAX_EVENTS {
            let l = self.line()?;
            if let Some(v) = classify(&l)? {
                return Ok(v);
            }
        }
        Err(QmpError::Protocol(format!(
            "more than {MAX_EVENTS} events and no reply"
        )))
    }

    /// `query-status`: `running`, `paused`, `shutdown`, …
    pub fn status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status")?;
        v["status"]
            .as_str()
            .map(|s| images::bundle::printable(s, 32))
            .ok_or_else(|| QmpError::Protocol("query-status without status".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<Vec<u8>, std::io::Result<QmpError>>) -> QmpError {
        match r {
            Err(Ok(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    /// Protects the line cap: a line longer than the limit is refused, not buffered.
    #[test]
    fn lines_are_capped_and_framed() {
        let mut r = std::io::Cursor::new(b"{\"return\": {}}\n{\"event\": \"X\"}\n".to_vec());
        assert_eq!(read_line(&mut r, 100).unwrap(), b"{\"return\": {}}");
        assert_eq!(read_line(&mut r, 100).unwrap(), b"{\"event\": \"X\"}");
        assert!(matches!(err(read_line(&mut r, 100)), QmpError::Closed));
        let long = vec![b'a'; 101];
        let mut r = std::io::Cursor::new([long.as_slice(), b"\n"].concat());
        assert!(matches!(err(read_line(&mut r, 100)), QmpError::TooLong));
        let mut r = std::io::Cursor::new(b"{\"return\"".to_vec());
        assert!(
            matches!(err(read_line(&mut r, 100)), QmpError::Closed),
            "half a line at EOF"
        );
        // Exactly at the cap is fine.
        let mut r = std::io::Cursor::new([vec![b'b'; 100].as_slice(), b"\n"].concat());
        assert_eq!(read_line(&mut r, 100).unwrap().len(), 100);
    }

    #[test]
    fn replies_events_and_errors() {
        assert_eq!(
            classify(br#"{"return": {"status": "running", "running": true}}"#).unwrap(),
            Some(json!({"status": "running", "running": true}))
        );
        assert_eq!(
            classify(br#"{"event": "RESET", "timestamp": {}}"#).unwrap(),
            None
        );
        let e = classify(br#"{"error": {"class": "GenericError", "desc": "no\u001b[2J"}}"#)
            .unwrap_err();
        assert_eq!(e.to_string(), "QMP: qemu says: no[2J", "escaped");
        assert!(matches!(classify(b"nope"), Err(QmpError::Protocol(_))));
        assert!(matches!(classify(b"{}"), Err(QmpError::Protocol(_))));
    }

    /// Against a fake qemu on a socket pair: greeting, capabilities, an event before the reply.
    #[test]
    fn handshake_and_command_over_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut got = Vec::new();
            for reply in [
                "{\"return\": {}}\n",
                "{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"running\"}}\n",
            ] {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                got.push(line);
                w.write_all(reply.as_bytes()).unwrap();
            }
            got
        });
        let mut q = Qmp::connect(&path).unwrap();
        assert_eq!(q.status().unwrap(), "running");
        let got = t.join().unwrap();
        assert!(got[0].contains("qmp_capabilities"), "{got:?}");
        assert!(got[1].contains("query-status"), "{got:?}");
    }
}
