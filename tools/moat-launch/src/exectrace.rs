//! Exec tracing (`tracing.disable_exec`, on by default): the commands a run executes are
//! recorded in the run's `exec.jsonl` and shown by `moat trace --exec`.
//!
//! The mechanism has to work in a container with every capability dropped, started by a moat
//! that may not be root on the host. The host's proc connector and eBPF need CAP_NET_ADMIN or
//! CAP_BPF on the host, so they are not it. What needs no capability is ptrace of one's own
//! descendants: moat-init (as root, before it drops to moatuser) hands the command to
//! `moat-exectrace` (src/bin/moat-exectrace.rs), which forks it under PTRACE_TRACEME, keeps
//! a uid other than moatuser's (0, or 65534 when moatuser is uid 0) with every capability but
//! CAP_KILL dropped, and stops the traced processes only at fork/clone and exec. A process of
//! another uid without capabilities cannot signal, ptrace or read it, so the agent can
//! neither stop the tracer nor speak for it; if the tracer dies anyway,
//! PTRACE_O_EXITKILL kills every traced process.
//!
//! The tracer does not write a file the agent could reach: it sends JSON lines over a unix
//! socket in a private directory of the run's sockets directory (mounted read-only at
//! [`MOUNT`]) to this supervisor, after the run's one-time exec token. The first connection
//! with the token is the tracer's; every other connection is closed unread. The supervisor
//! masks what it knows to be secret in argv (the `secrets:` values, the run's tokens),
//! caps argv ([`MAX_ARGS`] arguments, [`MAX_ARGV_BYTES`] bytes, with a marker), stamps and
//! writes `runs/<id>/exec.jsonl` (0600, the host user's), and stops at [`MAX_RECORDS`] records
//! with a final `truncated` record.
//!
//! The binary is the host's own moat-exectrace, bind-mounted read-only at [`BIN_MOUNT`]; it is
//! linked against the host's C library, so moat-init first runs it with `--check` and an image
//! it cannot load in is refused (when tracing is asked for) or runs untraced with a warning.
//!
//! Limits (man/moat-launch.1): processes started by `docker exec` (moat has no exec) and the
//! pre_run hook are not descendants of the tracer and are not traced; a program that is traced
//! already cannot be traced by a debugger in the run (strace, gdb); a process created with
//! clone(CLONE_UNTRACED) escapes tracing, so the trace records what programs ran, it does not
//! stop an agent that means to hide a command.

use moat_core::{Error, Result};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

/// Where the socket's directory is mounted in the container.
pub const MOUNT: &str = "/run/moat/exec";
const SOCKET: &str = "exec.sock";
/// Where the tracer binary is mounted in the container.
pub const BIN_MOUNT: &str = "/run/moat/moat-exectrace";
/// The one-time token's variable (moat-init hands it to the tracer only).
pub const TOKEN_VAR: &str = "MOAT_EXEC_TOKEN";
/// `1` when the run must not start untraced (`tracing.disable_exec: false`).
pub const REQUIRED_VAR: &str = "MOAT_EXEC_REQUIRED";
/// Records kept per run; then one `truncated` record and nothing more.
pub const MAX_RECORDS: u64 = 100_000;
/// Arguments kept per argv.
pub const MAX_ARGS: usize = 64;
/// Bytes of argv kept (the sum of the arguments' lengths).
pub const MAX_ARGV_BYTES: usize = 4096;
/// Secret values shorter than this are not masked (they would mask ordinary words).
pub const MIN_SECRET_LEN: usize = 4;
/// What a masked secret reads as.
pub const MASK: &str = "[masked]";
/// The longest line taken from the tracer (its argv is at most 64 KiB of cmdline).
const MAX_LINE: u64 = 1024 * 1024;

/// The tracer binary that sits next to this one.
pub fn tracer_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding moat-launch", e))?;
    let p = exe
        .parent()
        .map(|d| d.join("moat-exectrace"))
        .unwrap_or_default();
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::software(format!(
            "exec tracing needs moat-exectrace next to moat-launch ({} is missing); reinstall moat, or set tracing.disable_exec: true",
            p.display()
        )))
    }
}

/// Masks what the run knows to be secret.
#[derive(Default, Clone)]
pub struct Masker {
    /// Each value with what it reads as.
    secrets: Vec<(String, &'static str)>,
}

/// What a decoy value given to the run reads as (as in the network trace).
pub const DECOY_MASK: &str = "[decoy]";

impl Masker {
    #[cfg(test)]
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        Self::with_decoys(values, [])
    }

    /// `values` read as [`MASK`], the run's decoy values as [`DECOY_MASK`]: a command that
    /// carries one is recorded, the value is not.
    pub fn with_decoys(
        values: impl IntoIterator<Item = String>,
        decoys: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut secrets: Vec<(String, &'static str)> = values
            .into_iter()
            .map(|v| (v, MASK))
            .chain(decoys.into_iter().map(|v| (v, DECOY_MASK)))
            .filter(|(v, _)| v.len() >= MIN_SECRET_LEN)
            .collect();
        // The longest first, so a secret that contains another is masked whole.
        secrets.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.cmp(b)));
        secrets.dedup_by(|a, b| a.0 == b.0);
        Masker { secrets }
    }

    fn mask(&self, arg: &str) -> String {
        let mut a = arg.to_string();
        for (s, m) in &self.secrets {
            if a.contains(s.as_str()) {
                a = a.replace(s.as_str(), m);
            }
        }
        a
    }

    /// Mask, then cap (so the cap never cuts a secret in two and keeps half).
    pub fn argv(&self, argv: &[String]) -> Vec<String> {
        cap(argv.iter().map(|a| self.mask(a)).collect())
    }
}

/// At most [`MAX_ARGS`] arguments and [`MAX_ARGV_BYTES`] bytes; what is cut is said in a
/// last element `[moat: argv capped: N args, M bytes]` (the original's counts).
pub fn cap(argv: Vec<String>) -> Vec<String> {
    let total: usize = argv.iter().map(String::len).sum();
    if argv.len() <= MAX_ARGS && total <= MAX_ARGV_BYTES {
        return argv;
    }
    let n = argv.len();
    let mut out = vec![];
    let mut used = 0;
    for a in argv.into_iter().take(MAX_ARGS) {
        let room = MAX_ARGV_BYTES - used;
        if room == 0 {
            break;
        }
        if a.len() <= room {
            used += a.len();
            out.push(a);
        } else {
            let mut end = room;
            while !a.is_char_boundary(end) {
                end -= 1;
            }
            out.push(a[..end].to_string());
            break;
        }
    }
    out.push(format!("[moat: argv capped: {n} args, {total} bytes]"));
    out
}

fn ts(ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(ns);
    moat_core::timefmt::rfc3339(t)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// One line of the tracer to one record of exec.jsonl (None: not a record).
pub fn record(line: &str, m: &Masker) -> Option<Value> {
    let v: Value = serde_json::from_str(line).ok()?;
    let ts = ts(v["ts_ns"].as_u64().unwrap_or(0));
    let int = |k: &str| v[k].as_i64();
    match v["event"].as_str()? {
        "exec" => Some(json!({
            "v": 1, "type": "exec", "event": "exec", "ts": ts,
            "pid": int("pid")?, "ppid": int("ppid").unwrap_or(0),
            "argv": m.argv(&strings(&v["argv"])),
        })),
        "exit" => Some(json!({
            "v": 1, "type": "exec", "event": "exit", "ts": ts,
            "pid": int("pid")?, "ppid": int("ppid").unwrap_or(0),
            "argv": m.argv(&strings(&v["argv"])),
            "exit_code": int("exit_code"), "signal": int("signal"),
        })),
        "untraced" => Some(json!({
            "v": 1, "type": "exec", "event": "untraced", "ts": ts,
            "reason": m.mask(v["reason"].as_str().unwrap_or_default()),
        })),
        _ => None,
    }
}

/// Writes exec.jsonl (made when the tracer connects), at most [`MAX_RECORDS`] records and
/// then a `truncated` one.
struct Writer {
    file: std::fs::File,
    n: u64,
    done: bool,
}

impl Writer {
    fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok(Writer {
            file,
            n: 0,
            done: false,
        })
    }

    fn put(&mut self, rec: &Value) {
        if self.done {
            return;
        }
        let rec = if self.n >= MAX_RECORDS {
            self.done = true;
            json!({"v": 1, "type": "exec", "event": "truncated",
                   "ts": moat_core::timefmt::now_rfc3339(), "records": MAX_RECORDS})
        } else {
            rec.clone()
        };
        self.n += 1;
        let _ = writeln!(self.file, "{rec}");
    }
}

/// The supervisor's end of a run's exec trace.
pub struct Listening {
    accept: tokio::task::JoinHandle<()>,
    claimed: Arc<AtomicBool>,
    done: tokio::sync::watch::Receiver<bool>,
}

impl Listening {
    /// Stop listening; once the tracer connected, wait (a few seconds at most) for the last
    /// of its records: the container has ended, so its end of the socket is closed.
    pub async fn finish(mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
        if self.claimed.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.done.wait_for(|d| *d)).await;
        }
    }
}

/// Listen for the tracer. Returns the directory to mount read-only at [`MOUNT`].
pub fn start(
    sockets: &Path,
    token: &str,
    out: &Path,
    masker: Masker,
) -> Result<(PathBuf, Listening)> {
    let dir = sockets.join("exec");
    moat_core::fsutil::create_private_dir(&dir)?;
    let sock = dir.join(SOCKET);
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock)
        .map_err(|e| Error::io(format!("listening on {}", sock.display()), e))?;
    let out = out.to_path_buf();
    let want: Arc<str> = token.into();
    let claimed = Arc::new(AtomicBool::new(false));
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let state = Arc::new(std::sync::Mutex::new(Some((out, masker, done_tx))));
    let claimed2 = claimed.clone();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (want, claimed, state) = (want.clone(), claimed2.clone(), state.clone());
            tokio::spawn(async move {
                let mut r = tokio::io::BufReader::new(conn);
                let mut first = vec![];
                let got = tokio::time::timeout(
                    Duration::from_secs(30),
                    (&mut r).take(256).read_until(b'\n', &mut first),
                )
                .await;
                if !matches!(got, Ok(Ok(_))) {
                    return;
                }
                let first = first.strip_suffix(b"\n").unwrap_or(&first);
                // Only the first connection with the token is the tracer's.
                if !crate::unix_http::ct_eq(first, want.as_bytes())
                    || claimed.swap(true, Ordering::SeqCst)
                {
                    return;
                }
                let Some((path, m, done_tx)) = state.lock().ok().and_then(|mut g| g.take()) else {
                    return;
                };
                let Ok(mut w) = Writer::open(&path) else {
                    eprintln!(
                        "moat: WARNING: cannot write {}; this run records no exec trace",
                        path.display()
                    );
                    let _ = done_tx.send(true);
                    return;
                };
                let mut line = vec![];
                loop {
                    line.clear();
                    match (&mut r).take(MAX_LINE).read_until(b'\n', &mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if line.last() != Some(&b'\n') {
                        // Longer than MAX_LINE: skip the rest of it.
                        let mut rest = vec![];
                        if r.read_until(b'\n', &mut rest).await.unwrap_or(0) == 0 {
                            break;
                        }
                        continue;
                    }
                    if let Some(rec) = record(&String::from_utf8_lossy(&line), &m) {
                        w.put(&rec);
                    }
                }
                let _ = done_tx.send(true);
            });
        }
    });
    Ok((
        dir,
        Listening {
            accept,
            claimed,
            done,
        },
    ))
}

/// One argument for a terminal: plain words as they are, anything else quoted with its
/// control characters escaped (argv is the agent's).
fn shown(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./=:,@%+-".contains(c));
    if plain {
        a.to_string()
    } else {
        let mut s = String::from("'");
        for c in a.chars() {
            match c {
                '\'' => s.push_str("'\\''"),
                c if c.is_control() => s.extend(c.escape_default()),
                c => s.push(c),
            }
        }
        s.push('\'');
        s
    }
}

/// `moat trace --exec`: TIME PID EXIT COMMAND, one row per exec, or the records (`--json`).
pub fn command(run: Option<&str>, json_out: bool) -> Result<()> {
    let store = crate::commands::store()?;
    let m = store.resolve(run)?;
    let path = store.dir(&m.id).join("exec.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "no exec trace for {} ({}): exec tracing was off for it (tracing.disable_exec: true) or could not start (see `moat logs {}`)",
                m.name, m.id, m.id
            );
            return Ok(());
        }
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let recs: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut out = String::new();
    if json_out {
        for r in &recs {
            out.push_str(&serde_json::to_string(r)?);
            out.push('\n');
        }
        return moat_core::cli::write_stdout(out.as_bytes());
    }
    out.push_str(&format!(
        "{:<12} {:>7} {:>5} COMMAND\n",
        "TIME", "PID", "EXIT"
    ));
    for (i, r) in recs.iter().enumerate() {
        match r["event"].as_str() {
            Some("exec") => {
                let pid = r["pid"].as_i64().unwrap_or(0);
                // Its exit: the next exit record of the same pid.
                let end = recs[i + 1..].iter().find(|x| {
                    x["pid"].as_i64() == Some(pid)
                        && matches!(x["event"].as_str(), Some("exit" | "exec"))
                });
                let exit = match end {
                    Some(x) if x["event"] == "exit" => {
                        match (x["exit_code"].as_i64(), x["signal"].as_i64()) {
                            (Some(c), _) => c.to_string(),
                            (None, Some(s)) => format!("sig{s}"),
                            _ => "-".into(),
                        }
                    }
                    // Replaced by another exec: it never exited as itself.
                    Some(_) => "exec".into(),
                    None => "-".into(),
                };
                let ts = r["ts"].as_str().unwrap_or_default();
                let clock = ts
                    .split_once('T')
                    .map(|(_, t)| t.get(..12).unwrap_or(t))
                    .unwrap_or(ts);
                let cmd: Vec<String> = strings(&r["argv"]).iter().map(|a| shown(a)).collect();
                out.push_str(&format!(
                    "{clock:<12} {pid:>7} {exit:>5} {}\n",
                    cmd.join(" ")
                ));
            }
            Some("untraced") => out.push_str(&format!(
                "(this run was not traced: {})\n",
                shown(r["reason"].as_str().unwrap_or_default())
            )),
            Some("truncated") => {
                out.push_str(&format!("(the trace stopped at {MAX_RECORDS} records)\n"))
            }
            _ => {}
        }
    }
    moat_core::cli::write_stdout(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn secrets_are_masked_wherever_they_appear() {
        let m = Masker::new(v(&["s3cr3t-value", "abc", "s3cr3t-value-longer"]));
        let out = m.argv(&v(&[
            "curl",
            "-H",
            "Authorization: Bearer s3cr3t-value",
            "--data=s3cr3t-value-longer&x=s3cr3t-value",
            "abc",
        ]));
        assert_eq!(
            out,
            v(&[
                "curl",
                "-H",
                "Authorization: Bearer [masked]",
                "--data=[masked]&x=[masked]",
                // Shorter than MIN_SECRET_LEN: not masked.
                "abc",
            ])
        );
    }

    #[test]
    fn argv_is_capped_with_a_marker() {
        let many: Vec<String> = (0..100).map(|i| format!("a{i}")).collect();
        let out = cap(many.clone());
        assert_eq!(out.len(), MAX_ARGS + 1);
        assert_eq!(out[..MAX_ARGS], many[..MAX_ARGS]);
        let total: usize = many.iter().map(String::len).sum();
        assert_eq!(
            out.last().unwrap(),
            &format!("[moat: argv capped: 100 args, {total} bytes]")
        );

        let big = vec!["echo".to_string(), "é".repeat(3000)];
        let out = cap(big);
        assert_eq!(out.len(), 3);
        let kept: usize = out[..2].iter().map(String::len).sum();
        assert!(kept <= MAX_ARGV_BYTES, "{kept}");
        assert!(kept >= MAX_ARGV_BYTES - 1, "{kept}");
        assert_eq!(out[2], "[moat: argv capped: 2 args, 6004 bytes]");

        let small = v(&["ls", "-l"]);
        assert_eq!(cap(small.clone()), small);
    }

    #[test]
    fn decoys_read_as_decoy_and_secrets_as_masked() {
        let m = Masker::with_decoys(
            ["hunter22".to_string()],
            ["AKIADECOYDECOYDECOY1".to_string()],
        );
        assert_eq!(
            m.argv(&[
                "curl".into(),
                "https://x/?id=AKIADECOYDECOYDECOY1&p=hunter22".into()
            ]),
            ["curl", "https://x/?id=[decoy]&p=[masked]"]
        );
    }

    #[test]
    fn a_secret_across_the_cap_is_masked_not_halved() {
        let secret = "x".repeat(100);
        let m = Masker::new([secret.clone()]);
        let mut argv = vec!["y".repeat(MAX_ARGV_BYTES - 50)];
        argv.push(secret.clone());
        let out = m.argv(&argv);
        assert!(!out.iter().any(|a| a.contains(&"x".repeat(20))), "{out:?}");
    }

    #[test]
    fn tracer_lines_become_records() {
        let m = Masker::new(v(&["hunter22"]));
        let r = record(
            r#"{"event":"exec","ts_ns":1700000000000000000,"pid":7,"ppid":1,"argv":["echo","hunter22"]}"#,
            &m,
        )
        .unwrap();
        assert_eq!(r["v"], 1);
        assert_eq!(r["type"], "exec");
        assert_eq!(r["event"], "exec");
        assert_eq!(r["argv"], json!(["echo", "[masked]"]));
        assert!(r["ts"].as_str().unwrap().starts_with("2023-11-14T22:13:20"));
        let r = record(
            r#"{"event":"exit","ts_ns":1,"pid":7,"ppid":1,"argv":["false"],"exit_code":null,"signal":9}"#,
            &m,
        )
        .unwrap();
        assert_eq!(r["exit_code"], Value::Null);
        assert_eq!(r["signal"], 9);
        assert_eq!(r["argv"], json!(["false"]));
        assert!(record("not json", &m).is_none());
        assert!(record(r#"{"event":"other"}"#, &m).is_none());
    }

    #[test]
    fn the_writer_stops_with_a_truncated_record() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("exec.jsonl");
        let mut w = Writer::open(&p).unwrap();
        w.n = MAX_RECORDS - 1;
        let rec = json!({"event": "exec"});
        w.put(&rec);
        w.put(&rec);
        w.put(&rec);
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[1].contains("\"truncated\""), "{text}");
    }
}
