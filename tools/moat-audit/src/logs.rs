//! The run's output, `logs.jsonl`, checked against the audit log. The launcher records the
//! output in `log_chunk` events: each names a byte range of `logs.jsonl` (`offset`,
//! `length`), how many lines it holds and the SHA-256 of those bytes. The chunks follow each
//! other from offset 0, so the log covers every byte the run printed; once the run has
//! ended (`run_ended` is in the log) no byte may follow the last chunk.
//!
//! This check runs only on a log whose own verification passed: the chunk records are then
//! as trustworthy as the rest of the log.

use crate::verify::{Fault, FaultKind, Report};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::Path;

struct Chunk {
    entry: u64,
    offset: u64,
    length: u64,
    lines: u64,
    sha256: String,
}

fn fault(entry: Option<u64>, detail: String) -> Fault {
    Fault {
        kind: FaultKind::LogsModified,
        entry,
        checkpoint: None,
        detail,
    }
}

/// Check `logs` (the run's logs.jsonl) against the `log_chunk` events of the audit log at
/// `audit_log`; a mismatch becomes the report's fault, a summary one of its notes. Nothing
/// is checked when the run has no logs.jsonl.
pub fn check(r: &mut Report, audit_log: &Path, logs: &Path) -> std::io::Result<()> {
    if r.fault.is_some() {
        return Ok(());
    }
    let mut f = match std::fs::File::open(logs) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut chunks = vec![];
    let mut ended = false;
    let reader = std::io::BufReader::new(std::fs::File::open(audit_log)?);
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
            continue;
        };
        let ev = &v["event"];
        match ev["type"].as_str() {
            Some("run_ended") => ended = true,
            Some("log_chunk") => {
                let n = |k: &str| ev[k].as_u64();
                match (n("offset"), n("length"), n("lines"), ev["sha256"].as_str()) {
                    (Some(offset), Some(length), Some(lines), Some(h)) => chunks.push(Chunk {
                        entry: i as u64,
                        offset,
                        length,
                        lines,
                        sha256: h.to_string(),
                    }),
                    _ => {
                        r.fault = Some(fault(
                            Some(i as u64),
                            "a log_chunk record without offset, length, lines and sha256".into(),
                        ));
                        return Ok(());
                    }
                }
            }
            _ => {}
        }
    }
    let size = f.metadata()?.len();
    let mut at = 0u64;
    let mut lines = 0u64;
    let mut buf = vec![];
    for c in &chunks {
        if c.offset != at {
            r.fault = Some(fault(
                Some(c.entry),
                format!(
                    "logs.jsonl: the recorded chunks skip from byte {at} to {}",
                    c.offset
                ),
            ));
            return Ok(());
        }
        let end = c.offset + c.length;
        if end > size {
            r.fault = Some(fault(
                Some(c.entry),
                format!(
                    "logs.jsonl has {size} bytes, and the audit log recorded {end}: it was cut short"
                ),
            ));
            return Ok(());
        }
        f.seek(SeekFrom::Start(c.offset))?;
        buf.resize(c.length as usize, 0);
        f.read_exact(&mut buf)?;
        let got = moat_core::hex(&Sha256::digest(&buf));
        if got != c.sha256 {
            r.fault = Some(fault(
                Some(c.entry),
                format!(
                    "logs.jsonl lines {}..{} (bytes {}..{end}) differ from what the audit log recorded",
                    lines + 1,
                    lines + c.lines,
                    c.offset
                ),
            ));
            return Ok(());
        }
        at = end;
        lines += c.lines;
    }
    if chunks.is_empty() {
        // The launcher records a last chunk (empty when nothing was printed) at every run's
        // end: a run without one comes from a moat before log_chunk.
        if ended && size > 0 {
            r.notes
                .push("logs.jsonl: not recorded in this audit log (an older run)".to_string());
        }
        return Ok(());
    }
    if size > at {
        if ended {
            r.fault = Some(fault(
                None,
                format!(
                    "logs.jsonl has {} bytes after the last recorded chunk (byte {at}), written after the run ended",
                    size - at
                ),
            ));
            return Ok(());
        }
        r.notes.push(format!(
            "logs.jsonl: {} bytes after byte {at} are not recorded yet (the run is still running)",
            size - at
        ));
    }
    {
        r.notes.push(format!(
            "logs.jsonl: {lines} line{} in {} chunk{} match the audit log",
            if lines == 1 { "" } else { "s" },
            chunks.len(),
            if chunks.len() == 1 { "" } else { "s" }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ev: serde_json::Value) -> String {
        format!("{}\n", serde_json::json!({ "event": ev }))
    }

    fn chunk(offset: usize, bytes: &str, lines: u64) -> String {
        entry(
            serde_json::json!({"v": 1, "type": "log_chunk", "offset": offset,
            "length": bytes.len(), "lines": lines,
            "sha256": moat_core::hex(&Sha256::digest(bytes.as_bytes()))}),
        )
    }

    fn check_with(audit: &str, logs: &str) -> Report {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("log.jsonl"), audit).unwrap();
        std::fs::write(d.path().join("logs.jsonl"), logs).unwrap();
        let mut r = Report::default();
        check(
            &mut r,
            &d.path().join("log.jsonl"),
            &d.path().join("logs.jsonl"),
        )
        .unwrap();
        r
    }

    #[test]
    fn matching_changed_cut_and_extended_logs() {
        let (a, b) = ("{\"line\":\"a\"}\n{\"line\":\"b\"}\n", "{\"line\":\"c\"}\n");
        let ended = entry(serde_json::json!({"v": 1, "type": "run_ended"}));
        let audit = format!("{}{}{ended}", chunk(0, a, 2), chunk(a.len(), b, 1));
        let all = format!("{a}{b}");
        let r = check_with(&audit, &all);
        assert!(r.fault.is_none(), "{:?}", r.fault);
        assert!(
            r.notes.iter().any(|n| n.contains("3 lines in 2 chunks")),
            "{:?}",
            r.notes
        );

        let r = check_with(&audit, &all.replace("\"c\"", "\"C\""));
        let f = r.fault.expect("a changed line");
        assert_eq!(f.kind, FaultKind::LogsModified);
        assert!(f.detail.contains("lines 3..3"), "{}", f.detail);

        let r = check_with(&audit, &all[..all.len() - 2]);
        assert!(r.fault.expect("cut").detail.contains("cut short"));

        let r = check_with(&audit, &format!("{all}{{\"line\":\"d\"}}\n"));
        assert!(
            r.fault
                .expect("extended")
                .detail
                .contains("after the run ended")
        );

        // While the run runs, a tail not yet recorded is a note, not a fault.
        let running = format!("{}{}", chunk(0, a, 2), chunk(a.len(), b, 1));
        let r = check_with(&running, &format!("{all}{{\"line\":\"d\"}}\n"));
        assert!(r.fault.is_none());
        assert!(r.notes.iter().any(|n| n.contains("not recorded yet")));

        // A gap between recorded ranges.
        let r = check_with(&chunk(3, b, 1), &all);
        assert!(r.fault.expect("a gap").detail.contains("skip"));
    }
}
