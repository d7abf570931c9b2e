//! Printing a verification report: a short table for people, or one JSON-lines record
//! (`audit_report`) for scripts.

use crate::verify::Report;
use serde_json::{Map, Value, json};

/// The report as a `{"v":1,"type":"audit_report",...}` record.
pub fn record(subject: &str, what: &str, r: &Report) -> Value {
    let mut m = Map::new();
    m.insert(what.into(), json!(subject));
    m.insert("verdict".into(), json!(verdict(r)));
    m.insert("entries".into(), json!(r.entries));
    m.insert("first_ts".into(), json!(r.first_ts));
    m.insert("last_ts".into(), json!(r.last_ts));
    m.insert("tree_size".into(), json!(r.tree_size));
    m.insert("root".into(), json!(r.root.map(|h| moat_core::hex(&h))));
    m.insert("checkpoints".into(), json!(r.checkpoints));
    m.insert("unverified_tail".into(), json!(r.unverified_tail));
    m.insert(
        "fault".into(),
        match &r.fault {
            None => Value::Null,
            Some(f) => json!({
                "kind": f.kind.as_str(),
                "entry": f.entry,
                "checkpoint": f.checkpoint,
                "detail": f.detail,
            }),
        },
    );
    m.insert("notes".into(), json!(r.notes));
    moat_core::jsonl::record("audit_report", &m).expect("an object")
}

pub fn verdict(r: &Report) -> &'static str {
    if r.fault.is_none() {
        "intact"
    } else {
        "failed"
    }
}

/// The report for people.
pub fn text(subject_label: &str, subject: &str, r: &Report) -> String {
    let mut s = String::new();
    let mut row = |k: &str, v: String| s.push_str(&format!("{k:<12} {v}\n"));
    row(subject_label, subject.to_string());
    row("entries", r.entries.to_string());
    row(
        "time span",
        match (&r.first_ts, &r.last_ts) {
            (Some(a), Some(b)) => format!("{a} .. {b}"),
            _ => "-".into(),
        },
    );
    row(
        "tree size",
        r.tree_size.map_or("-".into(), |t| t.to_string()),
    );
    row("root", r.root.map_or("-".into(), |h| moat_core::hex(&h)));
    row("checkpoints", r.checkpoints.to_string());
    for n in &r.notes {
        row("note", n.clone());
    }
    match &r.fault {
        None => row("verdict", "intact".into()),
        Some(f) => row("verdict", format!("FAILED: {f}")),
    }
    s
}
