//! The router as a background service: `router` serves in the foreground; `start` runs it
//! detached and waits until it listens; `stop` ends it; `status` shows the routers and the
//! routes. Each router holds `MOAT_HOME/proxy/router-PORT.lock` while it runs and describes
//! itself in `router-PORT.json` (pid, address, CA, log); its output goes to
//! `router-PORT.log`. Routers on different ports share the routes and never each other's files.

use crate::ca::{Ca, Kind};
use crate::router;
use moat_core::lock::FileLock;
use moat_core::{Error, MoatHome, Result, cli, fsutil, routes};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `--port` over `MOAT_PROXY_PORT` over 8080.
pub fn resolve_port(flag: Option<String>) -> Result<u16> {
    routes::router_port(flag.as_deref()).map_err(Error::usage)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Info {
    pub pid: u32,
    pub port: u16,
    pub addr: String,
    pub started_at: String,
    pub ca: PathBuf,
    pub log: PathBuf,
}

fn proxy_dir(home: &MoatHome) -> PathBuf {
    home.root().join("proxy")
}
fn lock_path(home: &MoatHome, port: u16) -> PathBuf {
    proxy_dir(home).join(format!("router-{port}.lock"))
}
fn info_path(home: &MoatHome, port: u16) -> PathBuf {
    proxy_dir(home).join(format!("router-{port}.json"))
}
fn log_path(home: &MoatHome, port: u16) -> PathBuf {
    proxy_dir(home).join(format!("router-{port}.log"))
}
pub fn routing_ca_dir(home: &MoatHome) -> PathBuf {
    proxy_dir(home).join("routing-ca")
}

/// The router on `port`, if one runs (its lock is held and it has described itself).
fn running(home: &MoatHome, port: u16) -> Result<Option<Info>> {
    let lp = lock_path(home, port);
    if !lp.exists() {
        return Ok(None);
    }
    if FileLock::try_exclusive(&lp)?.is_some() {
        return Ok(None);
    }
    let Ok(b) = std::fs::read(info_path(home, port)) else {
        return Ok(None);
    };
    Ok(serde_json::from_slice::<Info>(&b)
        .ok()
        .filter(|i| i.port == port))
}

/// Every running router, by port.
fn all_running(home: &MoatHome) -> Result<Vec<Info>> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(proxy_dir(home)) {
        for e in rd.flatten() {
            let n = e.file_name();
            let Some(p) = n
                .to_str()
                .and_then(|n| n.strip_prefix("router-"))
                .and_then(|n| n.strip_suffix(".lock"))
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            if let Some(i) = running(home, p)? {
                out.push(i);
            }
        }
    }
    out.sort_by_key(|i| i.port);
    Ok(out)
}

/// `router`: serve in the foreground until SIGTERM/SIGINT.
pub fn serve(port: u16) -> Result<()> {
    let home = MoatHome::from_env()?;
    fsutil::create_private_dir(&proxy_dir(&home))?;
    let Some(lock) = FileLock::try_exclusive(&lock_path(&home, port))? else {
        return Err(
            Error::unavailable(format!("a moat router already runs on port {port}"))
                .with_hint("`moat proxy status` shows it; `moat proxy stop --port PORT` ends it"),
        );
    };
    let ca = Ca::load_or_create_kind(&routing_ca_dir(&home), Kind::Routing)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the runtime", e))?;
    let res = rt.block_on(async move {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let listener = crate::admit::listen(addr).map_err(|e| {
            Error::unavailable(format!(
                "listening on {addr}: {}",
                moat_core::error::io_msg(&e)
            ))
            .with_hint("another program uses the port: pick another with --port or MOAT_PROXY_PORT")
        })?;
        let info = Info {
            pid: std::process::id(),
            port,
            addr: addr.to_string(),
            started_at: moat_core::timefmt::now_rfc3339(),
            ca: ca.cert_path.clone(),
            log: log_path(&home, port),
        };
        fsutil::write_atomic(
            &info_path(&home, port),
            &serde_json::to_vec(&info).map_err(|e| Error::software(e.to_string()))?,
            0o600,
        )?;
        eprintln!(
            "{} moat router listening on {addr} (pid {})",
            moat_core::timefmt::now_rfc3339(),
            info.pid
        );
        let st = Arc::new(router::State { home, ca, port });
        let adm = crate::admit::Admission::new(1024);
        crate::accept_until_signal(&listener, &adm, |tcp, peer, slot| {
            let st = st.clone();
            tokio::spawn(router::serve_conn(st, tcp, peer, slot));
        })
        .await?;
        Ok::<_, Error>(st.home.clone())
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let home = res?;
    let _ = std::fs::remove_file(info_path(&home, port));
    eprintln!("{} moat router stopped", moat_core::timefmt::now_rfc3339());
    drop(lock);
    Ok(())
}

/// `start`: run the router detached, unless one already runs on the port.
pub fn start(port: u16) -> Result<()> {
    let home = MoatHome::from_env()?;
    fsutil::create_private_dir(&proxy_dir(&home))?;
    if let Some(i) = running(&home, port)? {
        eprintln!(
            "moat-proxy: the router already runs on {} (pid {})",
            i.addr, i.pid
        );
        return Ok(());
    }
    let log = log_path(&home, port);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
    let f2 = f
        .try_clone()
        .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("finding moat-proxy", e))?;
    let mut child = std::process::Command::new(exe)
        .args(["router", "--port", &port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(f)
        .stderr(f2)
        // Its own process group: a terminal's Ctrl-C for the starter does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io("starting the router", e))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(i) = running(&home, port)?
            && i.pid == child.id()
        {
            eprintln!(
                "moat-proxy: the router listens on {} (pid {}); log: {}",
                i.addr,
                i.pid,
                log.display()
            );
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            // Lost a race with another starter? Then that one serves.
            if let Some(i) = running(&home, port)? {
                eprintln!(
                    "moat-proxy: the router already runs on {} (pid {})",
                    i.addr, i.pid
                );
                return Ok(());
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let last = text
                .lines()
                .rev()
                .find(|l| l.starts_with("moat-proxy:"))
                .unwrap_or("")
                .to_string();
            return Err(Error::unavailable(format!(
                "the router on port {port} exited at start ({st}): {}",
                last.trim_start_matches("moat-proxy: ")
            ))
            .with_hint(format!("see {}", log.display())));
        }
        if Instant::now() > deadline {
            return Err(Error::unavailable(format!(
                "the router on port {port} did not start listening within 15s"
            ))
            .with_hint(format!("see {}", log.display())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `stop`: end the router on the port; waits (bounded) until it has let go of the port.
pub fn stop(port: u16) -> Result<()> {
    let home = MoatHome::from_env()?;
    let Some(i) = running(&home, port)? else {
        eprintln!("moat-proxy: no router runs on port {port}");
        return Ok(());
    };
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &i.pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Err(Error::unavailable(format!(
            "could not signal the router (pid {})",
            i.pid
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(&home, port)?.is_some() {
        if Instant::now() > deadline {
            return Err(Error::unavailable(format!(
                "the router (pid {}) did not stop within 10s",
                i.pid
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("moat-proxy: stopped the router on {}", i.addr);
    Ok(())
}

/// `status`: the routers (all, or the one on `port`) and the live routes. Exit 1 when no
/// router runs.
pub fn status(port: Option<u16>, json: bool) -> Result<()> {
    let home = MoatHome::from_env()?;
    let routers = match port {
        Some(p) => running(&home, p)?.into_iter().collect(),
        None => all_running(&home)?,
    };
    let shown_port = routers
        .first()
        .map(|i| i.port)
        .or(port)
        .unwrap_or(resolve_port(None).unwrap_or(routes::DEFAULT_ROUTER_PORT));
    let live = routes::live(&home);
    let url = |ep: &str, name: &str| format!("https://{ep}.{name}.localhost:{shown_port}/");
    if json {
        let rs: Vec<_> = live
            .iter()
            .map(|r| {
                let eps: serde_json::Map<_, _> = r
                    .endpoints
                    .iter()
                    .map(|(e, a)| {
                        (
                            e.clone(),
                            serde_json::json!({"target": a.to_string(), "url": url(e, &r.name)}),
                        )
                    })
                    .collect();
                serde_json::json!({"name": r.name, "run_id": r.run_id, "endpoints": eps})
            })
            .collect();
        let v = serde_json::json!({
            "running": !routers.is_empty(),
            "routers": routers,
            "routes": rs,
            "ca": routing_ca_dir(&home).join("ca.crt"),
        });
        cli::write_stdout(format!("{v}\n").as_bytes())?;
    } else {
        let mut out = String::new();
        if routers.is_empty() {
            out.push_str(&match port {
                Some(p) => format!("router: not running on port {p}\n"),
                None => "router: not running\n".into(),
            });
        }
        for i in &routers {
            out.push_str(&format!(
                "router: running on {} (pid {}, since {})\n",
                i.addr, i.pid, i.started_at
            ));
        }
        out.push_str(&format!(
            "CA: {}\n",
            routing_ca_dir(&home).join("ca.crt").display()
        ));
        if live.is_empty() {
            out.push_str("routes: none (runs with ports: appear here)\n");
        } else {
            let mut rows = vec![[
                "NAME".to_string(),
                "ENDPOINT".into(),
                "URL".into(),
                "TARGET".into(),
                "RUN ID".into(),
            ]];
            for r in &live {
                for (e, a) in &r.endpoints {
                    rows.push([
                        r.name.clone(),
                        e.clone(),
                        url(e, &r.name),
                        a.to_string(),
                        r.run_id.clone(),
                    ]);
                }
            }
            let w: Vec<usize> = (0..5)
                .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
                .collect();
            for r in rows {
                let line: Vec<String> = r
                    .iter()
                    .enumerate()
                    .map(|(c, s)| format!("{s:<w$}", w = w[c]))
                    .collect();
                out.push_str(line.join("  ").trim_end());
                out.push('\n');
            }
        }
        cli::write_stdout(out.as_bytes())?;
    }
    if routers.is_empty() {
        return Err(Error::new(moat_core::exit::NO, "no router is running"));
    }
    Ok(())
}

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_resolve() {
        assert_eq!(resolve_port(Some("9000".into())).unwrap(), 9000);
        for bad in ["0", "65536", "x", "", "-1"] {
            let e = resolve_port(Some(bad.into())).unwrap_err();
            assert!(e.msg.contains("--port"), "{}", e.msg);
            assert_eq!(e.code, moat_core::exit::USAGE);
        }
    }
}
