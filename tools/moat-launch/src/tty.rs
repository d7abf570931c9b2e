//! Interactive runs (-i): the CLI attaches its own stdin/stdout to the container's TTY through
//! the Engine API. A terminal is put in raw mode with stty(1) (no unsafe termios here) and
//! restored on the way out; window size changes are passed on. `Ctrl-/ d` detaches,
//! `Ctrl-/ k` stops the run, `Ctrl-/ Ctrl-/` sends a literal Ctrl-/; everything else,
//! Ctrl+C included, goes to the container.

use crate::docker;
use crate::store::{Store, supervisor_gone};
use futures_util::StreamExt;
use moat_core::{Error, Result};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFIX: u8 = 0x1f;

/// The terminal's settings, restored on drop.
struct Raw(Option<String>);

impl Raw {
    fn enter() -> Raw {
        if !moat_core::cli::stdin_is_terminal() {
            return Raw(None);
        }
        let saved = Command::new("stty")
            .arg("-g")
            .stdin(Stdio::inherit())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        let _ = Command::new("stty")
            .args(["raw", "-echo"])
            .stdin(Stdio::inherit())
            .status();
        Raw(saved)
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            let _ = Command::new("stty").arg(s).stdin(Stdio::inherit()).status();
        }
    }
}

pub fn term_size() -> Option<(i32, i32)> {
    if !moat_core::cli::stdin_is_terminal() {
        return None;
    }
    let o = Command::new("stty")
        .arg("size")
        .stdin(Stdio::inherit())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&o.stdout);
    let mut it = s.split_whitespace().filter_map(|x| x.parse().ok());
    Some((it.next()?, it.next()?))
}

enum End {
    Exited,
    Detach,
    Stop,
}

/// Attach to the run's container; `gate` tells the supervisor we are attached so it may
/// start the container (TUIs then see their first output).
pub fn attach(store: &Store, id: &str, gate: bool) -> Result<i32> {
    let dir = store.dir(id);
    // Wait for the container to exist (bounded by the supervisor being alive).
    let container = loop {
        let m = store.load(id)?;
        if let Some(c) = m.container_id {
            break c;
        }
        if m.state.is_terminal() || m.supervisor_pid.is_some_and(|p| supervisor_gone(p, id)) {
            // Failed before the container existed: show why, like a plain follow does.
            return crate::attach::follow(store, id, true);
        }
        // Build progress and warnings meanwhile.
        std::thread::sleep(Duration::from_millis(20));
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the runtime", e))?;
    let end = rt.block_on(async {
        let d = docker::connect().await?;
        let opts = bollard::query_parameters::AttachContainerOptions {
            stream: true,
            stdin: true,
            stdout: true,
            stderr: true,
            // What it printed before is in `moat logs`; a replay of a full-screen CLI's
            // history would only scramble the screen it redraws (below).
            logs: false,
            ..Default::default()
        };
        let mut att = d
            .attach_container(&container, Some(opts))
            .await
            .map_err(|e| docker::err("attaching to the container", e))?;
        if gate {
            moat_core::fsutil::write_atomic(&dir.join("attached"), b"", 0o600)?;
        }
        let _raw = Raw::enter();
        let d2 = d.clone();
        let c2 = container.clone();
        let resize = async move {
            let mut last = None;
            if !gate && let Some((h, w)) = term_size() {
                // Joining a CLI that is already running: one column less, then the real
                // size. The window change makes a full-screen CLI draw itself again, here.
                let o = bollard::query_parameters::ResizeContainerTTYOptions {
                    h: (h - 1).max(1),
                    w: (w - 1).max(1),
                };
                let _ = d2.resize_container_tty(&c2, o).await;
                // Long enough for a CLI that handles window changes at a slower pace to
                // draw at the smaller size, so the real size is a change again.
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            loop {
                let size = term_size();
                if size.is_some() && size != last {
                    let (h, w) = size.unwrap_or((24, 80));
                    let o = bollard::query_parameters::ResizeContainerTTYOptions { h, w };
                    // Before the container starts this fails; try again on the next tick.
                    if d2.resize_container_tty(&c2, o).await.is_ok() {
                        last = size;
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        let output = async {
            let mut out = tokio::io::stdout();
            while let Some(Ok(chunk)) = att.output.next().await {
                if out.write_all(chunk.as_ref()).await.is_err() {
                    break;
                }
                let _ = out.flush().await;
            }
            End::Exited
        };
        let mut input = att.input;
        let keys = async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 4096];
            let mut pending = false;
            loop {
                let n = match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        // Input ended: an EOF (Ctrl-D) for the TTY, then keep showing
                        // output until the command ends.
                        let _ = input.write_all(&[0x04]).await;
                        let _ = input.flush().await;
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                    Ok(n) => n,
                };
                let mut send = Vec::with_capacity(n);
                for &b in &buf[..n] {
                    if pending {
                        pending = false;
                        match b {
                            b'd' => return End::Detach,
                            b'k' => return End::Stop,
                            _ => send.push(b),
                        }
                    } else if b == PREFIX {
                        pending = true;
                    } else {
                        send.push(b);
                    }
                }
                if !send.is_empty() && input.write_all(&send).await.is_err() {
                    std::future::pending::<()>().await;
                }
                let _ = input.flush().await;
            }
        };
        let end = tokio::select! {
            e = output => e,
            e = keys => e,
            _ = resize => End::Exited,
        };
        Ok::<_, Error>(end)
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    match end {
        End::Detach => {
            eprintln!("\r\nmoat: detached from {id}; `moat attach {id}` returns to it");
            Ok(0)
        }
        End::Stop => {
            eprintln!("\r\nmoat: stopping {id}");
            crate::commands::stop_run(store, id)?;
            crate::attach::follow(store, id, false)
        }
        End::Exited => {
            // The command ended; wait (bounded) for the supervisor to record it.
            crate::attach::follow_quiet(store, id)
        }
    }
}
