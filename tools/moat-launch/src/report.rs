//! `moat report [RUN] [-o FILE]`: one self-contained HTML file that shows what a run did.
//!
//! Everything the report shows comes from the run's directory (metadata.json, network.jsonl,
//! logs.jsonl, the audit log, snapshot manifests, any other `*.jsonl` records), which the run
//! could write: every string is treated as hostile. Text goes through [`esc`]; the rows the
//! script pages through are embedded as JSON with `<`, `>`, `&`, U+2028 and U+2029 escaped,
//! so no record can close the script or add an element. The summary panels and the first
//! page of rows are rendered here, so the report reads without JavaScript; the script adds
//! the timeline (SVG, zoom), the filters and paging. Nothing is fetched: styles, script and
//! data are inline.
//!
//! The audit verdict comes from the `moat-audit` binary (`verify --json`). After the file is
//! written, its SHA-256 is appended to the run's audit log as a `report_written` event by
//! `moat-audit append --run ID` (which verifies the log before it extends it and signs a
//! checkpoint over the new entry).

use crate::run::tool;
use crate::store::{AuditRecord, Metadata};
use moat_core::{Error, Result, cli};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const CSS: &str = include_str!("report.css");
const JS: &str = include_str!("report.js");

/// Bytes read from one record file at most; the rest is left out (and said).
const MAX_FILE: u64 = 256 << 20;
/// Rows embedded for the script, by source; the summaries count every record.
const MAX_REQUESTS: usize = 12_000;
const MAX_LOGS: usize = 3_000;
const MAX_EVENTS: usize = 3_000;
/// Commands of the exec trace on the timeline, failed commands listed, programs tabled.
const MAX_EXECS: usize = 3_000;
const MAX_FAILED: usize = 100;
const MAX_PROGRAMS: usize = 50;
/// Characters kept of one string in a row (paths, log lines, event details).
const MAX_TEXT: usize = 160;
/// Rows rendered server-side (the first page).
const PAGE: usize = 100;

/// Where the report goes.
pub enum Dest {
    Stdout,
    File(PathBuf),
}

/// Pick the destination: `-o -` or no `-o` off a terminal is standard output; no `-o` on a
/// terminal is `moat-report-RUN.html` here.
pub fn dest(out: Option<&str>, id: &str) -> Dest {
    match out {
        Some("-") => Dest::Stdout,
        Some(f) => Dest::File(PathBuf::from(f)),
        None if cli::stdout_is_terminal() => {
            Dest::File(PathBuf::from(format!("moat-report-{id}.html")))
        }
        None => Dest::Stdout,
    }
}

pub fn command(run: Option<&str>, out: Option<&str>) -> Result<()> {
    let store = crate::commands::store()?;
    crate::commands::reconcile_all(&store)?;
    let m = store.resolve(run)?;
    let dir = store.dir(&m.id);
    let dest = dest(out, &m.id);
    if let Dest::File(p) = &dest
        && p.is_dir()
    {
        return Err(Error::usage(format!(
            "-o {}: a directory; name a file",
            p.display()
        )));
    }
    let data = Data::load(&dir, &m)?;
    let audit = verify(&m, &dir);
    // A log that does not verify is not extended (moat-audit append would refuse it too).
    let intact = audit.verdict.as_deref() == Some("intact");
    let recordable = m.state.is_terminal() && audit.log_exists && intact;
    let html = render(&data, &m, &audit, recordable);
    let bytes = html.as_bytes();
    let sha = moat_core::hex(&Sha256::digest(bytes));
    let file_name = match &dest {
        Dest::Stdout => {
            cli::write_stdout(bytes)?;
            "-".to_string()
        }
        Dest::File(p) => {
            let path = if p.is_absolute() {
                p.clone()
            } else {
                Path::new(".").join(p)
            };
            moat_core::fsutil::write_atomic(&path, bytes, 0o600)?;
            eprintln!("moat: wrote {} ({} bytes)", p.display(), bytes.len());
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        }
    };
    if !recordable {
        let why = if !audit.log_exists {
            "the run has no audit log"
        } else if !m.state.is_terminal() {
            "the run is still running"
        } else {
            "its audit log does not verify"
        };
        eprintln!("moat: warning: the report's SHA-256 ({sha}) is not recorded: {why}");
        return Ok(());
    }
    let entry = record(&m.id, &sha, bytes.len(), &file_name)?;
    eprintln!(
        "moat: recorded the report's SHA-256 {sha} in the audit log of {} (entry {entry}); check a copy with `sha256sum` and `moat audit {}`",
        m.id, m.id
    );
    Ok(())
}

/// Append `report_written` to the run's audit log; the entry's number.
fn record(id: &str, sha: &str, len: usize, file: &str) -> Result<u64> {
    let mut child = Command::new(tool("moat-audit"))
        .args(["append", "--run", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("running moat-audit append", e))?;
    let line = serde_json::to_string(&json!({
        "v": 1, "type": "report_written", "run": id, "sha256": sha, "bytes": len, "file": file,
        "ts": moat_core::timefmt::now_rfc3339(),
    }))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(format!("{line}\n").as_bytes());
    }
    let o = child
        .wait_with_output()
        .map_err(|e| Error::io("running moat-audit append", e))?;
    let closed = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "audit_closed");
    match closed {
        Some(c) if o.status.success() && c["appended"] == 1 => {
            Ok(c["tree_size"].as_u64().unwrap_or(1).saturating_sub(1))
        }
        _ => Err(Error::software(format!(
            "the report was written, and recording its SHA-256 {sha} in the audit log failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
    }
}

/// What `moat-audit verify --json` said.
#[derive(Default)]
pub struct Audit {
    pub log_exists: bool,
    pub disabled: bool,
    pub verdict: Option<String>,
    pub tree_size: Option<u64>,
    pub root: Option<String>,
    pub entries: Option<u64>,
    pub fault: Option<String>,
    pub notes: Vec<String>,
    pub error: Option<String>,
}

fn verify(m: &Metadata, dir: &Path) -> Audit {
    let mut a = Audit {
        log_exists: dir.join("audit/log.jsonl").is_file(),
        disabled: matches!(m.audit, Some(AuditRecord::Off(_))),
        ..Audit::default()
    };
    if !a.log_exists {
        return a;
    }
    let o = Command::new(tool("moat-audit"))
        .args(["verify", &m.id, "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let o = match o {
        Ok(o) => o,
        Err(e) => {
            a.error = Some(format!("moat-audit: {}", moat_core::error::io_msg(&e)));
            return a;
        }
    };
    let rec = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "audit_report");
    let Some(r) = rec else {
        a.error = Some(format!(
            "moat-audit verify gave no report: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
        return a;
    };
    a.verdict = r["verdict"].as_str().map(String::from);
    a.tree_size = r["tree_size"].as_u64();
    a.root = r["root"].as_str().map(String::from);
    a.entries = r["entries"].as_u64();
    a.fault = r["fault"]["detail"]
        .as_str()
        .map(|d| format!("{}: {d}", r["fault"]["kind"].as_str().unwrap_or("fault")));
    a.notes = r["notes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    a
}

// ---------------------------------------------------------------- reading the records

/// One row of the timeline.
#[derive(Clone, Debug, Default)]
pub struct Row {
    /// Milliseconds since the Unix epoch (0 when unknown).
    pub t: i64,
    pub kind: String,
    pub host: String,
    pub method: String,
    /// The path, the log line or the event's details.
    pub text: String,
    pub status: Option<i64>,
    pub dur: Option<i64>,
    pub bytes: Option<i64>,
    pub grant: String,
    /// "allowed", or the rule that denied the request.
    pub policy: String,
}

#[derive(Default)]
pub struct HostStat {
    pub requests: u64,
    pub denied: u64,
    pub errors: u64,
    pub bytes: i64,
    pub grants: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct Data {
    pub rows: Vec<Row>,
    pub hosts: BTreeMap<String, HostStat>,
    /// (host, rule) -> (count, method and path of the first)
    pub denied: BTreeMap<(String, String), (u64, String)>,
    /// (grant, host) -> (requests, credential_used events)
    pub grants: BTreeMap<(String, String), (u64, u64)>,
    /// Event type -> count, for everything that is not a request or a log line.
    pub kinds: BTreeMap<String, u64>,
    /// Numeric members of usage records (types with "usage" in their name), summed by name:
    /// spend, tokens, as the tools that record usage name them.
    pub usage: BTreeMap<String, f64>,
    pub requests: u64,
    pub logs: u64,
    /// The exec trace (exec.jsonl): program name -> (started, ended with a failure).
    pub programs: BTreeMap<String, (u64, u64)>,
    pub execs: u64,
    /// The first failed commands: (time, command, exit code or signal).
    pub failed: Vec<(i64, String, String)>,
    pub left_out: Vec<String>,
    pub start: Option<i64>,
    pub end: Option<i64>,
}

fn ms(ts: &str) -> Option<i64> {
    let t = moat_core::timefmt::parse_rfc3339(ts)?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// At most `n` characters of `s`, with an ellipsis when cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut o: String = s.chars().take(n).collect();
    o.push('…');
    o
}

/// Each line of `path` (at most MAX_FILE bytes of it) that is a JSON object.
fn each_record(path: &Path, left_out: &mut Vec<String>, mut f: impl FnMut(Value)) {
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > MAX_FILE {
        left_out.push(format!(
            "{}: only the first {} MiB of {} bytes were read",
            path.file_name().unwrap_or_default().to_string_lossy(),
            MAX_FILE >> 20,
            size
        ));
    }
    let r = std::io::BufReader::new(file.take(MAX_FILE));
    for line in r.split(b'\n').map_while(|l| l.ok()) {
        if line.len() > (1 << 20) {
            continue;
        }
        if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(&line) {
            f(v);
        }
    }
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        x => x.to_string(),
    }
}

/// `scheme://host[:port]/path?query` -> (host[:port], path?query).
fn split_url(url: &str) -> (String, String) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), String::new()),
    }
}

/// Short "k=v k=v" text of an event's members, for rows of unknown kinds.
fn details(v: &Value) -> String {
    let mut out = String::new();
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            if matches!(k.as_str(), "v" | "type" | "ts") {
                continue;
            }
            let x = match x {
                Value::String(s) => s.clone(),
                x => x.to_string(),
            };
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(out, "{k}={x}");
            if out.len() > MAX_TEXT * 2 {
                break;
            }
        }
    }
    clip(&out, MAX_TEXT)
}

/// Add the numeric members of a usage record to the totals.
fn add_usage(totals: &mut BTreeMap<String, f64>, ty: &str, v: &Value) {
    if !ty.contains("usage") || totals.len() > 64 {
        return;
    }
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            if let Some(n) = x.as_f64().filter(|n| n.is_finite())
                && !matches!(k.as_str(), "v" | "seq")
            {
                *totals.entry(clip(k, 40)).or_default() += n;
            }
        }
    }
}

impl Data {
    pub fn load(dir: &Path, m: &Metadata) -> Result<Data> {
        let mut d = Data {
            start: m
                .started_at
                .as_deref()
                .and_then(ms)
                .or_else(|| ms(&m.created_at)),
            end: m.stopped_at.as_deref().and_then(ms),
            ..Data::default()
        };
        let mut left_out = vec![];
        let mut request_ids = std::collections::HashSet::new();
        let (mut nreq, mut nlog, mut nev) = (0usize, 0usize, 0usize);
        each_record(&dir.join("network.jsonl"), &mut left_out, |v| {
            let (host, path) = split_url(v["url"].as_str().unwrap_or_default());
            let status = v
                .get("status")
                .or_else(|| v.get("status_code"))
                .and_then(Value::as_i64);
            let policy = match s(&v, "policy") {
                p if p.is_empty() => "allowed".to_string(),
                p => p,
            };
            let grant = s(&v, "grant");
            let bytes = v["bytes_out"].as_i64().unwrap_or(0) + v["bytes_in"].as_i64().unwrap_or(0);
            let h = d.hosts.entry(host.clone()).or_default();
            h.requests += 1;
            h.bytes += bytes;
            if !v["error"].is_null() && v.get("error").is_some() {
                h.errors += 1;
            }
            if policy != "allowed" {
                h.denied += 1;
                let e = d
                    .denied
                    .entry((host.clone(), policy.clone()))
                    .or_insert((0, format!("{} {}", s(&v, "method"), clip(&path, MAX_TEXT))));
                e.0 += 1;
            }
            for g in grant.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                *h.grants.entry(g.to_string()).or_default() += 1;
                d.grants.entry((g.to_string(), host.clone())).or_default().0 += 1;
            }
            if let Some(id) = v["request_id"].as_str() {
                request_ids.insert(id.to_string());
            }
            d.requests += 1;
            nreq += 1;
            if nreq <= MAX_REQUESTS {
                d.rows.push(Row {
                    t: ms(&s(&v, "ts")).unwrap_or(0),
                    kind: "request".into(),
                    host,
                    method: clip(&s(&v, "method"), 16),
                    text: clip(&path, MAX_TEXT),
                    status,
                    dur: v["duration_ms"].as_f64().map(|x| x.round() as i64),
                    bytes: Some(bytes),
                    grant: clip(&grant, 64),
                    policy: clip(&policy, 80),
                });
            }
        });
        if nreq > MAX_REQUESTS {
            left_out.push(format!(
                "network.jsonl: the timeline holds the first {MAX_REQUESTS} of {nreq} requests; the summaries count them all"
            ));
        }
        each_record(&dir.join("logs.jsonl"), &mut left_out, |v| {
            d.logs += 1;
            nlog += 1;
            if nlog <= MAX_LOGS {
                d.rows.push(Row {
                    t: ms(&s(&v, "ts")).unwrap_or(0),
                    kind: "log".into(),
                    method: clip(&s(&v, "stream"), 8),
                    text: clip(&s(&v, "line"), MAX_TEXT),
                    ..Row::default()
                });
            }
        });
        if nlog > MAX_LOGS {
            left_out.push(format!(
                "logs.jsonl: the timeline holds the first {MAX_LOGS} of {nlog} lines (`moat logs` prints them all)"
            ));
        }
        // The audit log's events: credential uses, denials, the run's start and end, and
        // any type other tools add (shown by their type).
        let mut events: Vec<Row> = vec![];
        each_record(&dir.join("audit/log.jsonl"), &mut left_out, |e| {
            let v = &e["event"];
            let ty = s(v, "type");
            if ty.is_empty() || ty == "log_chunk" {
                return;
            }
            if ty == "policy_denied"
                && v["request_id"]
                    .as_str()
                    .is_some_and(|r| request_ids.contains(r))
            {
                return;
            }
            if ty == "credential_used" {
                let g = s(v, "grant");
                d.grants.entry((g, s(v, "host"))).or_default().1 += 1;
            }
            add_usage(&mut d.usage, &ty, v);
            events.push(Row {
                t: ms(&s(&e, "ts")).unwrap_or(0),
                kind: clip(&ty, 40),
                host: clip(&s(v, "host"), 80),
                method: clip(&s(v, "method"), 16),
                text: details(v),
                grant: clip(&s(v, "grant"), 64),
                policy: clip(&s(v, "rule"), 80),
                ..Row::default()
            });
        });
        // Other record files the run's tools write (usage, decoys...): by their type.
        let mut others: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension().is_some_and(|x| x == "jsonl")
                            && !matches!(
                                p.file_name().and_then(|n| n.to_str()),
                                Some("network.jsonl" | "logs.jsonl")
                            )
                            && p.is_file()
                    })
                    .collect()
            })
            .unwrap_or_default();
        others.sort();
        for p in others {
            each_record(&p, &mut left_out, |v| {
                let ty = s(&v, "type");
                if ty.is_empty() {
                    return;
                }
                add_usage(&mut d.usage, &ty, &v);
                events.push(Row {
                    t: ms(&s(&v, "ts")).unwrap_or(0),
                    kind: clip(&ty, 40),
                    host: clip(&s(&v, "host"), 80),
                    text: details(&v),
                    grant: clip(&s(&v, "grant"), 64),
                    ..Row::default()
                });
            });
        }
        // The exec trace: every command started (already masked by the supervisor that
        // wrote it), and those that failed.
        let mut nexec = 0usize;
        each_record(&dir.join("exec.jsonl"), &mut left_out, |v| {
            let argv: Vec<String> = v["argv"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| x.as_str().unwrap_or("?").to_string())
                        .collect()
                })
                .unwrap_or_default();
            let prog = argv
                .first()
                .map(|a| clip(a.rsplit('/').next().unwrap_or(a), 40))
                .unwrap_or_default();
            let cmd = clip(&argv.join(" "), MAX_TEXT);
            match s(&v, "event").as_str() {
                "exec" => {
                    d.execs += 1;
                    d.programs.entry(prog).or_default().0 += 1;
                    nexec += 1;
                    if nexec <= MAX_EXECS {
                        d.rows.push(Row {
                            t: ms(&s(&v, "ts")).unwrap_or(0),
                            kind: "exec".into(),
                            method: clip(&s(&v, "pid"), 10),
                            text: cmd,
                            ..Row::default()
                        });
                    }
                }
                "exit" => {
                    let how = match (v["exit_code"].as_i64(), v["signal"].as_i64()) {
                        (Some(0), _) => return,
                        (Some(c), _) => format!("exit {c}"),
                        (None, Some(sig)) => format!("signal {sig}"),
                        (None, None) => return,
                    };
                    d.programs.entry(prog).or_default().1 += 1;
                    if d.failed.len() < MAX_FAILED {
                        d.failed.push((ms(&s(&v, "ts")).unwrap_or(0), cmd, how));
                    }
                }
                _ => {}
            }
        });
        if nexec > MAX_EXECS {
            left_out.push(format!(
                "exec.jsonl: the timeline holds the first {MAX_EXECS} of {nexec} commands (`moat trace --exec` lists them all)"
            ));
        }
        // Snapshots.
        if let Ok(rd) = std::fs::read_dir(dir.join("snapshots")) {
            let mut snaps: Vec<PathBuf> = rd
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path().join("manifest.json"))
                .collect();
            snaps.sort();
            for p in snaps {
                let Ok(f) = std::fs::File::open(&p) else {
                    continue;
                };
                let mut b = vec![];
                if f.take(64 << 20).read_to_end(&mut b).is_err() {
                    continue;
                }
                let Ok(v) = serde_json::from_slice::<Value>(&b) else {
                    continue;
                };
                events.push(Row {
                    t: ms(&s(&v, "created_at")).unwrap_or(0),
                    kind: "snapshot".into(),
                    text: clip(
                        &format!(
                            "{} {} label={} files={} bytes={}",
                            s(&v, "id"),
                            s(&v, "kind"),
                            s(&v, "label"),
                            s(&v, "files"),
                            s(&v, "bytes")
                        ),
                        MAX_TEXT,
                    ),
                    ..Row::default()
                });
            }
        }
        for e in &events {
            *d.kinds.entry(e.kind.clone()).or_default() += 1;
        }
        nev += events.len();
        if nev > MAX_EVENTS {
            left_out.push(format!(
                "the timeline holds the first {MAX_EVENTS} of {nev} other events; the table of event types counts them all"
            ));
        }
        events.sort_by_key(|r| r.t);
        events.truncate(MAX_EVENTS);
        d.rows.extend(events);
        d.rows.sort_by_key(|r| r.t);
        if d.start.is_none() {
            d.start = d.rows.iter().map(|r| r.t).find(|t| *t > 0);
        }
        d.left_out = left_out;
        Ok(d)
    }
}

// ---------------------------------------------------------------- HTML

/// HTML-escape text or an attribute value; control characters become U+FFFD.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            '\t' | '\n' => o.push(c),
            c if c.is_control() => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// JSON that is safe inside a `<script>` element: it cannot close the element or start a
/// comment, and U+2028/U+2029 are escaped.
pub fn script_json(v: &Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("\\u003c"),
            '>' => o.push_str("\\u003e"),
            '&' => o.push_str("\\u0026"),
            '\u{2028}' => o.push_str("\\u2028"),
            '\u{2029}' => o.push_str("\\u2029"),
            c => o.push(c),
        }
    }
    o
}

fn clock(t: i64) -> String {
    if t <= 0 {
        return "-".into();
    }
    let st = std::time::UNIX_EPOCH + std::time::Duration::from_millis(t as u64);
    moat_core::timefmt::rfc3339(st)
}

fn opt(x: Option<i64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The data the script pages through: string tables and compact rows
/// `[t - t0, kind, host, method, text, status, duration, bytes, grant, policy]` with indexes
/// into the tables for kind, host, method, grant and policy.
fn embedded(d: &Data, t0: i64) -> Value {
    let mut tables: [(Vec<String>, HashMap<String, usize>); 5] = Default::default();
    let mut idx = |i: usize, s: &str| -> usize {
        let (list, map) = &mut tables[i];
        *map.entry(s.to_string()).or_insert_with(|| {
            list.push(s.to_string());
            list.len() - 1
        })
    };
    let rows: Vec<Value> = d
        .rows
        .iter()
        .map(|r| {
            json!([
                if r.t > 0 { r.t - t0 } else { 0 },
                idx(0, &r.kind),
                idx(1, &r.host),
                idx(2, &r.method),
                r.text,
                r.status,
                r.dur,
                r.bytes,
                idx(3, &r.grant),
                idx(4, &r.policy),
            ])
        })
        .collect();
    let [k, h, m, g, p] = tables.map(|(l, _)| l);
    json!({
        "t0": t0,
        "start": d.start.map(|s| s - t0),
        "end": d.end.map(|e| e - t0),
        "kinds": k, "hosts": h, "methods": m, "grants": g, "policies": p,
        "rows": rows,
    })
}

fn row_html(o: &mut String, r: &Row) {
    let status = opt(r.status);
    let cls = if r.policy != "allowed" && !r.policy.is_empty() {
        " class=\"deny\""
    } else {
        ""
    };
    let _ = writeln!(
        o,
        "<tr{cls}><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc(&clock(r.t)),
        esc(&r.kind),
        esc(&r.host),
        esc(&r.method),
        esc(&r.text),
        esc(&status),
        esc(&opt(r.dur)),
        esc(&opt(r.bytes)),
        esc(&r.grant),
        esc(&r.policy),
    );
}

const ROW_HEAD: &str = "<tr><th scope=\"col\">Time (UTC)</th><th scope=\"col\">Kind</th><th scope=\"col\">Host</th><th scope=\"col\">What</th><th scope=\"col\">Status</th><th scope=\"col\">ms</th><th scope=\"col\">Bytes</th><th scope=\"col\">Grant</th><th scope=\"col\">Policy</th></tr>";

pub fn render(d: &Data, m: &Metadata, a: &Audit, recordable: bool) -> String {
    let t0 = d.start.unwrap_or(0);
    let mut o = String::with_capacity(64 * 1024 + d.rows.len() * 64);
    let title = format!("moat report: {} ({})", m.name, m.id);
    let _ = writeln!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>",
        esc(&title)
    );
    let _ = writeln!(
        o,
        "<header><h1>moat report</h1><p class=\"sub\">Run <strong>{}</strong> <code>{}</code>: {} {}</p></header>",
        esc(&m.name),
        esc(&m.id),
        esc(m.state.as_str()),
        m.exit_code
            .map(|c| format!("(exit code {c})"))
            .unwrap_or_default()
    );
    let denied: u64 = d.denied.values().map(|x| x.0).sum();
    let _ = writeln!(
        o,
        "<p class=\"facts\"><span>{} requests to {} hosts</span><span>{denied} denied</span><span>{} log lines</span><span>{} other events</span></p>",
        d.requests,
        d.hosts.len(),
        d.logs,
        d.kinds.values().sum::<u64>()
    );
    o.push_str(&"<nav aria-label=\"Sections\"><ul><li><a href=\"#audit\">Audit</a></li><li><a href=\"#timeline\">Timeline</a></li><li><a href=\"#hosts\">Hosts</a></li><li><a href=\"#denied\">Denied</a></li><li><a href=\"#grants\">Grants</a></li>{EXEC}<li><a href=\"#events\">Events</a></li><li><a href=\"#rows\">Rows</a></li><li><a href=\"#run\">Run</a></li></ul></nav>\n<main>\n".replace("{EXEC}", if d.execs > 0 { "<li><a href=\"#exec\">Commands</a></li>" } else { "" }));

    let kv = |o: &mut String, k: &str, v: &str| {
        let _ = writeln!(
            o,
            "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
            esc(k),
            esc(v)
        );
    };
    // The audit verdict.
    o.push_str(
        "<section id=\"audit\" aria-labelledby=\"audit-h\"><h2 id=\"audit-h\">Audit log</h2>\n",
    );
    if !a.log_exists {
        let why = if a.disabled {
            "This run was started with --no-audit: it has no audit log."
        } else {
            "This run has no audit log."
        };
        let _ = writeln!(o, "<p class=\"verdict bad\" id=\"verdict\">{why}</p>");
    } else if let Some(e) = &a.error {
        let _ = writeln!(
            o,
            "<p class=\"verdict bad\" id=\"verdict\">The audit log could not be checked: {}</p>",
            esc(e)
        );
    } else {
        let ok = a.verdict.as_deref() == Some("intact");
        let _ = writeln!(
            o,
            "<p class=\"verdict {}\" id=\"verdict\">{}</p>",
            if ok { "ok" } else { "bad" },
            if ok {
                "The run's audit log verifies.".to_string()
            } else {
                format!(
                    "The run's audit log does NOT verify: {}",
                    esc(a.fault.as_deref().unwrap_or("failed"))
                )
            }
        );
        o.push_str("<table class=\"kv\"><caption>moat-audit verify, when this report was written</caption><tbody>\n");
        kv(&mut o, "Verdict", a.verdict.as_deref().unwrap_or("-"));
        kv(&mut o, "Entries", &opt(a.entries.map(|x| x as i64)));
        kv(&mut o, "Tree size", &opt(a.tree_size.map(|x| x as i64)));
        kv(&mut o, "Root", a.root.as_deref().unwrap_or("-"));
        for n in &a.notes {
            kv(&mut o, "Note", n);
        }
        o.push_str("</tbody></table>\n");
    }
    o.push_str("</section>\n");

    // Timeline: drawn by the script.
    o.push_str("<section id=\"timeline\" aria-labelledby=\"timeline-h\"><h2 id=\"timeline-h\">Timeline</h2>\n<form id=\"filters\" class=\"filters\" onsubmit=\"return false\"><div><label for=\"f-host\">Host</label><select id=\"f-host\"><option value=\"\">all</option></select></div><div><label for=\"f-status\">Status</label><select id=\"f-status\"><option value=\"\">all</option><option value=\"2\">2xx</option><option value=\"3\">3xx</option><option value=\"4\">4xx</option><option value=\"5\">5xx</option><option value=\"denied\">denied</option><option value=\"none\">no status</option></select></div><div><label for=\"f-grant\">Grant</label><select id=\"f-grant\"><option value=\"\">all</option></select></div><div><label for=\"f-kind\">Kind</label><select id=\"f-kind\"><option value=\"\">all</option></select></div><div class=\"zoom\"><button type=\"button\" id=\"z-in\">Zoom in</button><button type=\"button\" id=\"z-out\">Zoom out</button><button type=\"button\" id=\"z-left\">Earlier</button><button type=\"button\" id=\"z-right\">Later</button><button type=\"button\" id=\"z-all\">Whole run</button></div></form>\n<p class=\"note\">Lanes: one per host (the 12 busiest) and one per kind of event. Green line: the run's start; dark red line: its end; dark red marks: denied requests and statuses of 400 and above. Hover a mark for its details.</p><div id=\"chart\" class=\"chart\"><p class=\"note\">The timeline needs JavaScript; the tables on this page do not.</p></div>\n</section>\n");

    o.push_str("<div class=\"panels\">\n");
    // Hosts.
    o.push_str("<section id=\"hosts\" aria-labelledby=\"hosts-h\"><h2 id=\"hosts-h\">Hosts contacted</h2>\n");
    if d.hosts.is_empty() {
        o.push_str("<p>No network requests were recorded.</p>\n");
    } else {
        o.push_str("<div class=\"scroll\"><table id=\"host-table\"><caption>Requests by host</caption><thead><tr><th scope=\"col\">Host</th><th scope=\"col\">Requests</th><th scope=\"col\">Denied</th><th scope=\"col\">Errors</th><th scope=\"col\">Bytes</th><th scope=\"col\">Grants used</th></tr></thead><tbody>\n");
        let mut hosts: Vec<_> = d.hosts.iter().collect();
        hosts.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
        for (h, st) in hosts {
            let grants: Vec<String> = st
                .grants
                .iter()
                .map(|(g, n)| format!("{g} ({n})"))
                .collect();
            let _ = writeln!(
                o,
                "<tr><th scope=\"row\">{}</th><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                esc(h),
                st.requests,
                st.denied,
                st.errors,
                st.bytes,
                esc(&grants.join(", "))
            );
        }
        o.push_str("</tbody></table></div>\n");
    }
    o.push_str("</section>\n");

    // Denied.
    o.push_str("<section id=\"denied\" aria-labelledby=\"denied-h\"><h2 id=\"denied-h\">What was denied</h2>\n");
    if d.denied.is_empty() {
        o.push_str("<p>No request was denied.</p>\n");
    } else {
        o.push_str("<div class=\"scroll\"><table id=\"denied-table\"><caption>Denied requests by host and the rule that denied them</caption><thead><tr><th scope=\"col\">Host</th><th scope=\"col\">Rule</th><th scope=\"col\">Count</th><th scope=\"col\">First request</th></tr></thead><tbody>\n");
        for ((h, rule), (n, first)) in &d.denied {
            let _ = writeln!(
                o,
                "<tr><th scope=\"row\">{}</th><td>{}</td><td class=\"n\">{n}</td><td>{}</td></tr>",
                esc(h),
                esc(rule),
                esc(first)
            );
        }
        o.push_str("</tbody></table></div>\n");
    }
    o.push_str("</section>\n");

    // Grants.
    o.push_str("<section id=\"grants\" aria-labelledby=\"grants-h\"><h2 id=\"grants-h\">Grants used</h2>\n");
    if d.grants.is_empty() {
        o.push_str("<p>No grant was used.</p>\n");
    } else {
        o.push_str("<div class=\"scroll\"><table id=\"grant-table\"><caption>Which grants were used where</caption><thead><tr><th scope=\"col\">Grant</th><th scope=\"col\">Host</th><th scope=\"col\">Requests</th><th scope=\"col\">Credential uses (audit log)</th></tr></thead><tbody>\n");
        for ((g, h), (n, used)) in &d.grants {
            let _ = writeln!(
                o,
                "<tr><th scope=\"row\">{}</th><td>{}</td><td class=\"n\">{n}</td><td class=\"n\">{used}</td></tr>",
                esc(g),
                esc(h)
            );
        }
        o.push_str("</tbody></table></div>\n");
    }
    o.push_str("</section>\n");

    if !d.usage.is_empty() {
        o.push_str("<section id=\"usage\" aria-labelledby=\"usage-h\"><h2 id=\"usage-h\">Spend and usage</h2>\n<div class=\"scroll\"><table id=\"usage-table\"><caption>Totals of the run's usage records</caption><thead><tr><th scope=\"col\">Member</th><th scope=\"col\">Total</th></tr></thead><tbody>\n");
        for (k, n) in &d.usage {
            let _ = writeln!(
                o,
                "<tr><th scope=\"row\">{}</th><td class=\"n\">{}</td></tr>",
                esc(k),
                (n * 1e6).round() / 1e6
            );
        }
        o.push_str("</tbody></table></div></section>\n");
    }
    if d.execs > 0 {
        let _ = writeln!(
            o,
            "<section id=\"exec\" aria-labelledby=\"exec-h\"><h2 id=\"exec-h\">Commands run</h2>\n<p>{} commands in the exec trace; {} failed.</p>",
            d.execs,
            d.programs.values().map(|p| p.1).sum::<u64>()
        );
        let mut progs: Vec<(&String, &(u64, u64))> = d.programs.iter().collect();
        progs.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
        let _ = writeln!(
            o,
            "<div class=\"scroll\"><table id=\"exec-table\"><caption>Programs executed (the {} most frequent)</caption><thead><tr><th scope=\"col\">Program</th><th scope=\"col\">Runs</th><th scope=\"col\">Failed</th></tr></thead><tbody>",
            progs.len().min(MAX_PROGRAMS)
        );
        for (p, (n, f)) in progs.iter().take(MAX_PROGRAMS) {
            let _ = writeln!(
                o,
                "<tr><th scope=\"row\">{}</th><td class=\"n\">{n}</td><td class=\"n\">{f}</td></tr>",
                esc(p)
            );
        }
        o.push_str("</tbody></table></div>\n");
        if !d.failed.is_empty() {
            o.push_str("<div class=\"scroll\"><table id=\"failed-table\"><caption>Commands that failed</caption><thead><tr><th scope=\"col\">Time</th><th scope=\"col\">Command</th><th scope=\"col\">Result</th></tr></thead><tbody>\n");
            for (t, cmd, how) in &d.failed {
                let _ = writeln!(
                    o,
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                    clock(*t),
                    esc(cmd),
                    esc(how)
                );
            }
            o.push_str("</tbody></table></div>\n");
        }
        o.push_str("</section>\n");
    }
    // Other events by type (credential uses, snapshots, the run's start and end, and types
    // this version does not know, such as usage or decoy records).
    o.push_str("<section id=\"events\" aria-labelledby=\"events-h\"><h2 id=\"events-h\">Recorded events</h2>\n");
    if d.kinds.is_empty() {
        o.push_str("<p>No other events were recorded.</p>\n");
    } else {
        o.push_str("<div class=\"scroll\"><table id=\"kind-table\"><caption>Events by type (audit log, snapshots and other records)</caption><thead><tr><th scope=\"col\">Type</th><th scope=\"col\">Count</th></tr></thead><tbody>\n");
        for (k, n) in &d.kinds {
            let _ = writeln!(
                o,
                "<tr><th scope=\"row\">{}</th><td class=\"n\">{n}</td></tr>",
                esc(k)
            );
        }
        o.push_str("</tbody></table></div>\n");
    }
    for l in &d.left_out {
        let _ = writeln!(o, "<p class=\"note\">{}</p>", esc(l));
    }
    o.push_str("</section>\n");

    o.push_str("</div>\n");
    // The rows: the first page here, the rest through the script.
    let _ = writeln!(
        o,
        "<section id=\"rows\" aria-labelledby=\"rows-h\"><h2 id=\"rows-h\">All rows</h2>\n<div class=\"scroll\"><table id=\"row-table\"><caption id=\"row-caption\">Rows 1 to {} of {}</caption><thead>{ROW_HEAD}</thead><tbody id=\"row-body\">",
        d.rows.len().min(PAGE),
        d.rows.len()
    );
    for r in d.rows.iter().take(PAGE) {
        row_html(&mut o, r);
    }
    o.push_str("</tbody></table></div>\n<div class=\"pager\"><button type=\"button\" id=\"p-prev\">Previous page</button><button type=\"button\" id=\"p-next\">Next page</button></div>\n</section>\n");

    // The run.
    o.push_str("<section id=\"run\" aria-labelledby=\"run-h\"><h2 id=\"run-h\">Run</h2><table class=\"kv\"><caption>The run's metadata</caption><tbody>\n");
    kv(&mut o, "Name", &m.name);
    kv(&mut o, "Id", &m.id);
    kv(&mut o, "Agent", &m.agent);
    kv(&mut o, "Workspace", &m.workspace.to_string_lossy());
    kv(&mut o, "State", m.state.as_str());
    kv(&mut o, "Exit code", &opt(m.exit_code));
    kv(&mut o, "Grants", &m.grants.join(", "));
    kv(&mut o, "Image", m.image.as_deref().unwrap_or("-"));
    kv(&mut o, "Created", &m.created_at);
    kv(&mut o, "Started", m.started_at.as_deref().unwrap_or("-"));
    kv(&mut o, "Ended", m.stopped_at.as_deref().unwrap_or("-"));
    kv(&mut o, "Requests", &d.requests.to_string());
    kv(&mut o, "Log lines", &d.logs.to_string());
    o.push_str("</tbody></table></section>\n</main>\n");

    // Footer: how to check the report (it cannot hold its own hash).
    o.push_str("<footer><p>Written by <code>moat report</code> on ");
    o.push_str(&esc(&moat_core::timefmt::now_rfc3339()));
    o.push_str(". ");
    if recordable {
        let _ = write!(
            o,
            "This file's SHA-256 is recorded in the run's audit log as a <code>report_written</code> event. To check a copy: <code>sha256sum FILE</code>, then <code>moat audit {}</code>, which lists the SHA-256 of each report recorded for the run.",
            esc(&m.id)
        );
    } else {
        o.push_str("This report is not recorded in the run's audit log (the run has no audit log, was still running, or its log did not verify).");
    }
    o.push_str("</p></footer>\n");
    let _ = writeln!(
        o,
        "<script type=\"application/json\" id=\"report-data\">{}</script>\n<script>{JS}</script>\n</body>\n</html>",
        script_json(&embedded(d, t0))
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        let hostile = "</script><img src=x onerror=alert(1)>\"'&\u{2028}";
        let e = esc(hostile);
        assert!(!e.contains('<') && !e.contains('>') && !e.contains('"') && !e.contains('\''));
        assert!(e.contains("&lt;/script&gt;&lt;img"));
        let j = script_json(&json!({"x": hostile}));
        assert!(!j.contains('<') && !j.contains('>') && !j.contains('&'));
        assert!(!j.contains('\u{2028}'));
        let back: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(
            back["x"], hostile,
            "the escapes are still JSON for the same text"
        );
        assert_eq!(esc("a\u{0}b\u{1b}[31m"), "a\u{fffd}b\u{fffd}[31m");
    }

    #[test]
    fn urls_split_into_host_and_path() {
        assert_eq!(
            split_url("https://api.github.com/user?x=1"),
            ("api.github.com".into(), "/user?x=1".into())
        );
        assert_eq!(split_url("http://h:8080"), ("h:8080".into(), String::new()));
        assert_eq!(clip("abcdef", 3), "abc…");
    }
}
