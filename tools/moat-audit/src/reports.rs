//! Reports recorded in a run's log: `moat report` appends a `report_written` event with the
//! SHA-256 of the HTML file it wrote. Verification lists each one as a note, so a shared
//! report can be checked against the run (`sha256sum FILE` against the listed hash).

use crate::verify::Report;
use std::io::BufRead;
use std::path::Path;

/// Add a note per `report_written` event of the log at `audit_log`; only for a log whose
/// verification passed, so the hashes listed are the log's.
pub fn note(r: &mut Report, audit_log: &Path) -> std::io::Result<()> {
    if r.fault.is_some() {
        return Ok(());
    }
    let reader = std::io::BufReader::new(std::fs::File::open(audit_log)?);
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        // A cheap filter before parsing: most entries are not reports.
        if !line.windows(14).any(|w| w == b"report_written") {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
            continue;
        };
        let ev = &v["event"];
        if ev["type"] != "report_written" {
            continue;
        }
        let sha = ev["sha256"].as_str().unwrap_or("-");
        let sha: String = sha
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .take(64)
            .collect();
        r.notes.push(format!(
            "report_written: sha256 {sha} ({} bytes) recorded at {} (entry {i})",
            ev["bytes"].as_u64().map_or("?".into(), |b| b.to_string()),
            v["ts"]
                .as_str()
                .unwrap_or("-")
                .chars()
                .take(40)
                .collect::<String>(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Fault, FaultKind};

    fn notes(log: &str, fault: bool) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.jsonl");
        std::fs::write(&p, log).unwrap();
        let mut r = Report::default();
        if fault {
            r.fault = Some(Fault {
                kind: FaultKind::Modified,
                entry: Some(0),
                checkpoint: None,
                detail: "x".into(),
            });
        }
        note(&mut r, &p).unwrap();
        r.notes
    }

    /// Each report_written entry is listed with its hash and entry number; nothing is listed
    /// for a log that failed, and a hostile hash cannot put other text in the note.
    #[test]
    fn reports_are_listed_only_from_a_good_log() {
        let sha = "ab".repeat(32);
        let log = format!(
            "{{\"event\":{{\"type\":\"run_ended\",\"v\":1}},\"seq\":0,\"ts\":\"t0\",\"v\":1}}\n{{\"event\":{{\"bytes\":10,\"sha256\":\"{sha}\",\"type\":\"report_written\",\"v\":1}},\"seq\":1,\"ts\":\"t1\",\"v\":1}}\n{{\"event\":{{\"sha256\":\"zz\\nverdict intact\",\"type\":\"report_written\",\"v\":1}},\"seq\":2,\"ts\":\"t2\",\"v\":1}}\n"
        );
        let n = notes(&log, false);
        assert_eq!(n.len(), 2, "{n:?}");
        assert_eq!(
            n[0],
            format!("report_written: sha256 {sha} (10 bytes) recorded at t1 (entry 1)")
        );
        assert!(
            !n[1].contains('\n') && !n[1].contains("verdict"),
            "{}",
            n[1]
        );
        assert!(notes(&log, true).is_empty());
    }
}
