//! Following a run from a terminal: its output (logs.jsonl) to stdout/stderr and the
//! supervisor's messages (launch.log: build progress, warnings, failures) to stderr, until it
//! ends. Ctrl+C detaches; Ctrl+C twice within 500 ms stops the run.

use crate::store::{State, Store, supervisor_gone};
use moat_core::Result;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// New bytes of a file since `offset`; only whole lines when `lines`.
fn read_new(path: &Path, offset: &mut u64, lines: bool) -> Vec<u8> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return vec![];
    };
    if f.seek(SeekFrom::Start(*offset)).is_err() {
        return vec![];
    }
    let mut buf = vec![];
    let _ = f.read_to_end(&mut buf);
    if lines {
        match buf.iter().rposition(|b| *b == b'\n') {
            Some(i) => buf.truncate(i + 1),
            None => buf.clear(),
        }
    }
    *offset += buf.len() as u64;
    buf
}

struct Tail {
    logs: u64,
    launch: u64,
    /// The status line while the run starts (see progress.rs).
    status: Option<crate::progress::Quiet>,
}

impl Tail {
    /// While the run is being created or started, a status line on a quiet terminal.
    fn starting(&mut self, m: &crate::store::Metadata) {
        if matches!(m.state, State::Created | State::Starting) {
            let stage = format!("starting run {}", m.name);
            self.status
                .get_or_insert_with(|| crate::progress::Quiet::new(&stage))
                .tick();
        } else {
            self.status = None;
        }
    }

    fn pump(&mut self, dir: &Path, show_logs: bool) {
        let launch = read_new(&dir.join("launch.log"), &mut self.launch, false);
        if !launch.is_empty() {
            if let Some(s) = &mut self.status {
                s.clear();
            }
            let _ = std::io::stderr().write_all(&launch);
        }
        if !show_logs {
            return;
        }
        let logs = read_new(&dir.join("logs.jsonl"), &mut self.logs, true);
        if !logs.is_empty()
            && let Some(s) = &mut self.status
        {
            s.clear();
        }
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        for l in logs.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(l) else {
                continue;
            };
            let line = v["line"].as_str().unwrap_or_default();
            let r = if v["stream"] == "stderr" {
                writeln!(err, "{line}")
            } else {
                writeln!(out, "{line}")
            };
            if r.is_err() {
                break;
            }
        }
        let _ = out.flush();
    }
}

fn end_code(store: &Store, id: &str) -> Result<i32> {
    let m = store.load(id)?;
    if let Some(c) = m.exit_code {
        return Ok(c.clamp(0, 255) as i32);
    }
    Ok(m.error_code.unwrap_or(if m.state == State::Failed {
        moat_core::exit::SOFTWARE
    } else {
        0
    }))
}

/// Follow until the run ends; returns the code to exit with (the command's own).
pub fn follow(store: &Store, id: &str, from_start: bool) -> Result<i32> {
    let dir = store.dir(id);
    let mut t = Tail {
        logs: 0,
        launch: 0,
        status: None,
    };
    if !from_start {
        let size = |p: &str| std::fs::metadata(dir.join(p)).map(|m| m.len()).unwrap_or(0);
        t.logs = size("logs.jsonl");
        t.launch = size("launch.log");
    }
    let rt = crate::commands::rt()?;
    rt.block_on(async {
        let mut first_int: Option<Instant> = None;
        let mut stopping = false;
        let mut tick = tokio::time::interval(Duration::from_millis(15));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = tokio::signal::ctrl_c() => {
                    if r.is_err() { continue; }
                    match first_int {
                        Some(t0) if t0.elapsed() <= Duration::from_millis(500) && !stopping => {
                            stopping = true;
                            eprintln!("\nmoat: stopping run {id}");
                            let s2 = Store::new(store.home.clone());
                            let id2 = id.to_string();
                            std::thread::spawn(move || {
                                if let Err(e) = crate::commands::stop_run(&s2, &id2) {
                                    eprintln!("moat-launch: {}", e.msg);
                                }
                            });
                        }
                        _ => first_int = Some(Instant::now()),
                    }
                    continue;
                }
            }
            if let Some(t0) = first_int
                && !stopping
                && t0.elapsed() > Duration::from_millis(500)
            {
                let name = store.load(id).map(|m| m.name).unwrap_or_default();
                eprintln!("\nmoat: detached from {name} ({id}); it keeps running.\nmoat: `moat attach {id}` follows it again, `moat stop {id}` stops it.");
                return Ok(0);
            }
            t.pump(&dir, true);
            let m = store.load(id)?;
            t.starting(&m);
            if m.state.is_terminal() {
                t.pump(&dir, true);
                return end_code(store, id);
            }
            if let Some(pid) = m.supervisor_pid
                && supervisor_gone(pid, id)
            {
                // One more look: it may have just finished.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if !store.load(id)?.state.is_terminal() {
                    crate::commands::reconcile_one(store, id)?;
                }
                t.pump(&dir, true);
                return end_code(store, id);
            }
        }
    })
}

/// Wait (bounded) for the supervisor to record the end; output was shown elsewhere.
pub fn follow_quiet(store: &Store, id: &str) -> Result<i32> {
    for _ in 0..1500 {
        let m = store.load(id)?;
        if m.state.is_terminal() {
            return end_code(store, id);
        }
        if m.supervisor_pid.is_some_and(|p| supervisor_gone(p, id)) {
            crate::commands::reconcile_one(store, id)?;
            return end_code(store, id);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    end_code(store, id)
}

/// For -d: show the supervisor's messages until the command is running, then print the id.
pub fn wait_started(store: &Store, id: &str) -> Result<i32> {
    let dir = store.dir(id);
    let mut t = Tail {
        logs: 0,
        launch: 0,
        status: None,
    };
    loop {
        t.pump(&dir, false);
        let m = store.load(id)?;
        t.starting(&m);
        if matches!(m.state, State::Running | State::Stopping) || m.state.is_terminal() {
            t.pump(&dir, false);
            if m.state == State::Failed && m.exit_code.is_none() {
                return end_code(store, id);
            }
            moat_core::cli::write_stdout(format!("{id}\n").as_bytes())?;
            if m.interactive {
                eprintln!(
                    "moat: run {} ({id}) started in the background with a TTY; `moat attach {id}` takes it (Ctrl-/ d detaches again)",
                    m.name
                );
            } else {
                eprintln!(
                    "moat: run {} ({id}) started in the background; `moat attach {id}` follows it",
                    m.name
                );
            }
            return Ok(0);
        }
        if let Some(pid) = m.supervisor_pid
            && supervisor_gone(pid, id)
        {
            std::thread::sleep(Duration::from_millis(50));
            if !store.load(id)?.state.is_terminal() {
                crate::commands::reconcile_one(store, id)?;
            }
            t.pump(&dir, false);
            return end_code(store, id);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
