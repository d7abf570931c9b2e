//! The run's audit writer: `moat-audit append --run ID` as a child of the supervisor.
//!
//! The record is not optional. A run starts only once the writer has said `audit_ready`
//! (its log is open, recovered and signed over); a writer that cannot start fails the run
//! (exit 70) with its reason, unless the user passed `--no-audit`. While the run runs, a
//! watcher reads the writer's output to its end: if the writer exits before the run closes
//! its input, `died` gets the reason, and the lifecycle cuts the run's network.

use crate::run::tool;
use crate::store::AuditSeal;
use moat_core::{Error, Result};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};

/// How long the writer may take to open, check and sign over its log.
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct Audit {
    pub tx: mpsc::UnboundedSender<String>,
    writer: tokio::task::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<Option<AuditSeal>>,
    /// `Some(reason)` once the writer is gone while the run still needs it.
    died: watch::Receiver<Option<String>>,
    closing: Arc<AtomicBool>,
    /// The writer's first answer, until `ready` has taken it.
    ready: Option<oneshot::Receiver<std::result::Result<(), String>>>,
}

const READY_HINT: &str = "fix that and start the run again; `--no-audit` runs without an audit log";

fn status_text(s: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(9)) => "killed by SIGKILL".to_string(),
        (None, Some(n)) => format!("killed by signal {n}"),
        _ => s.to_string(),
    }
}

impl Audit {
    /// Start the writer; `ready` waits until it is ready. Errors are the run's reason to fail.
    pub async fn start(run_id: &str) -> Result<Audit> {
        let hint = READY_HINT;
        let mut child = Command::new(tool("moat-audit"))
            .args(["append", "--run", run_id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                Error::software(format!(
                    "the audit writer could not start: moat-audit: {}",
                    moat_core::error::io_msg(&e)
                ))
                .with_hint(hint)
            })?;
        // The writer's diagnostics go on to launch.log; the last one is kept as a reason.
        let last_err = Arc::new(Mutex::new(String::new()));
        let err_task = {
            let last = last_err.clone();
            let stderr = child.stderr.take().expect("piped");
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    eprintln!("{l}");
                    if !l.trim().is_empty()
                        && let Ok(mut g) = last.lock()
                    {
                        *g = l.trim().to_string();
                    }
                }
            })
        };
        let last_line =
            |last: &Arc<Mutex<String>>| last.lock().map(|g| g.clone()).unwrap_or_default();
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        // Readiness is awaited by `ready` (before the run's container is created), so the
        // writer opens and checks its log while the run's network, proxy and guard start;
        // events sent meanwhile wait in the pipe.
        let (ready_tx, ready_rx) = oneshot::channel::<std::result::Result<(), String>>();

        let (died_tx, died) = watch::channel(None::<String>);
        let died_tx = Arc::new(died_tx);
        let closing = Arc::new(AtomicBool::new(false));

        let mut stdin = child.stdin.take().expect("piped");
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let writer = {
            let (died_tx, closing) = (died_tx.clone(), closing.clone());
            tokio::spawn(async move {
                while let Some(line) = rx.recv().await {
                    if let Err(e) = stdin.write_all(line.as_bytes()).await {
                        if !closing.load(Ordering::SeqCst) {
                            died_tx.send_if_modified(|v| {
                                v.get_or_insert_with(|| {
                                    format!(
                                        "the audit writer died (its input: {})",
                                        moat_core::error::io_msg(&e)
                                    )
                                });
                                true
                            });
                        }
                        break;
                    }
                }
                let _ = stdin.shutdown().await;
            })
        };
        let watcher = {
            let closing = closing.clone();
            tokio::spawn(async move {
                let first = tokio::time::timeout(READY_WITHIN, lines.next_line()).await;
                let ready = matches!(&first, Ok(Ok(Some(l)))
                    if moat_core::jsonl::parse(l).ok().flatten().is_some_and(|r| r.kind == "audit_ready"));
                if !ready {
                    let _ = child.start_kill();
                    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), err_task).await;
                    let why = match (&first, last_line(&last_err)) {
                        (Err(_), _) => {
                            format!("it was not ready within {}s", READY_WITHIN.as_secs())
                        }
                        (_, l) if !l.is_empty() => l,
                        _ => match status {
                            Ok(Ok(s)) => format!("moat-audit ended with {}", status_text(&s)),
                            _ => "moat-audit ended before it was ready".to_string(),
                        },
                    };
                    let _ = ready_tx.send(Err(why));
                    return None;
                }
                let _ = ready_tx.send(Ok(()));
                let mut seal = None;
                while let Ok(Some(l)) = lines.next_line().await {
                    if let Ok(Some(r)) = moat_core::jsonl::parse(&l)
                        && r.kind == "audit_closed"
                        && let (Some(size), Some(root)) =
                            (r.get("tree_size").and_then(|v| v.as_u64()), r.str("root"))
                    {
                        seal = Some(AuditSeal {
                            tree_size: size,
                            root: root.to_string(),
                        });
                    }
                }
                // Its output ended: the writer is exiting.
                let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), err_task).await;
                let status = match status {
                    Ok(Ok(s)) => Some(s),
                    _ => {
                        let _ = child.kill().await;
                        None
                    }
                };
                if closing.load(Ordering::SeqCst) {
                    match status {
                        Some(s) if !s.success() => {
                            eprintln!("moat: warning: moat-audit exited with {s}")
                        }
                        None => eprintln!("moat: warning: moat-audit did not finish in time"),
                        _ => {}
                    }
                } else {
                    let how = status
                        .map(|s| status_text(&s))
                        .unwrap_or_else(|| "its output ended".to_string());
                    let mut why = format!("moat-audit {how}");
                    let l = last_line(&last_err);
                    if !l.is_empty() {
                        why.push_str(&format!(": {l}"));
                    }
                    died_tx.send_if_modified(|v| {
                        v.get_or_insert_with(|| format!("the audit writer died ({why})"));
                        true
                    });
                }
                seal
            })
        };
        Ok(Audit {
            tx,
            writer,
            watcher,
            died,
            closing,
            ready: Some(ready_rx),
        })
    }

    /// Wait until the writer said `audit_ready`; its failure is the run's reason to fail.
    pub async fn ready(&mut self) -> Result<()> {
        let Some(rx) = self.ready.take() else {
            return Ok(());
        };
        let why = match rx.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(why)) => why,
            Err(_) => "moat-audit ended before it was ready".to_string(),
        };
        Err(
            Error::software(format!("the audit writer could not start: {why}"))
                .with_hint(READY_HINT),
        )
    }

    pub fn event(&self, kind: &str, body: serde_json::Value) {
        if let Ok(l) = moat_core::jsonl::line(kind, &body) {
            let _ = self.tx.send(l);
        }
    }

    /// Resolves with the reason once the writer is gone while the run still needs it.
    pub fn died(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.died.clone();
        async move {
            let why = match rx.wait_for(|v| v.is_some()).await {
                Ok(v) => v.clone(),
                Err(_) => None,
            };
            match why {
                Some(w) => w,
                // The writer's tasks are gone without a word: never while it runs.
                None => std::future::pending().await,
            }
        }
    }

    /// The reason, if the writer is already gone.
    pub fn dead(&self) -> Option<String> {
        self.died.borrow().clone()
    }

    /// Close the input and wait; returns what moat-audit's `audit_closed` record says.
    pub async fn finish(self) -> Option<AuditSeal> {
        let Audit {
            tx,
            writer,
            watcher,
            closing,
            ..
        } = self;
        closing.store(true, Ordering::SeqCst);
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
        match tokio::time::timeout(Duration::from_secs(45), watcher).await {
            Ok(Ok(seal)) => seal,
            _ => {
                eprintln!("moat: warning: moat-audit did not finish in time");
                None
            }
        }
    }
}

/// The writer died mid-run: the proxy (the container's only path out) is killed at once,
/// then the container; the returned error is the run's reason to fail.
pub async fn cut_off(
    proxy: Option<&mut tokio::process::Child>,
    d: &bollard::Docker,
    container: &str,
    why: String,
) -> Error {
    if let Some(p) = proxy {
        let _ = p.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), p.wait()).await;
    }
    eprintln!("moat: {why}; stopping the run's network and the run");
    let _ = d
        .kill_container(
            container,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await;
    Error::software(format!("{why}; the run's network was stopped"))
}

/// `--no-audit`: said loudly, and kept in the run's metadata as `"audit": "disabled"`.
pub fn disabled(store: &crate::store::Store, id: &str) -> Result<()> {
    eprintln!(
        "moat: WARNING: --no-audit: this run has no audit log; nothing it does is recorded in a tamper-evident log, and `moat audit {id}` will have nothing to verify"
    );
    store.update(id, |m| {
        m.audit = Some(crate::store::AuditRecord::Off(
            crate::store::AuditOff::Disabled,
        ))
    })?;
    Ok(())
}
