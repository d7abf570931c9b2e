//! The lifecycle commands around runs: list, status, logs, trace, stop, destroy, clean; and
//! reconciliation, which every one of them does first: a run whose supervisor died is
//! reconciled with Docker (container and network removed, proxy ended, state recorded), so
//! nothing is left orphaned.

use crate::docker::{self, LABEL_IMAGE};
use crate::store::{Metadata, State, Store, supervisor_alive, supervisor_gone};
use bollard::Docker;
use moat_core::{Error, MoatHome, Result, cli};
use std::io::{BufRead, Write};
use std::time::{Duration, SystemTime};

/// A one-thread runtime for a command's Docker calls.
pub(crate) fn rt() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the runtime", e))
}

pub fn store() -> Result<Store> {
    Ok(Store::new(MoatHome::from_env()?))
}

fn is_orphan(m: &Metadata) -> bool {
    if m.state.is_terminal() {
        return false;
    }
    match m.supervisor_pid {
        Some(pid) => supervisor_gone(pid, &m.id),
        // A run that never got a supervisor: give the starting CLI a moment.
        None => moat_core::timefmt::parse_rfc3339(&m.created_at)
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > Duration::from_secs(30)),
    }
}

pub fn reconcile_all(store: &Store) -> Result<()> {
    reconciled(store).map(|_| ())
}

/// Every run, after reconciling the orphans: each record is read once (list and status with
/// a thousand runs), and again only if it was reconciled.
pub fn reconciled(store: &Store) -> Result<Vec<Metadata>> {
    let mut all = store.all()?;
    for m in all.iter_mut() {
        if is_orphan(m) {
            reconcile_one(store, &m.id)?;
            *m = store.load(&m.id)?;
        }
    }
    Ok(all)
}

/// Bring a supervisor-less run's record in line with Docker and release what it held.
pub fn reconcile_one(store: &Store, id: &str) -> Result<()> {
    let m = store.load(id)?;
    if m.state.is_terminal() {
        return Ok(());
    }
    let exit = rt()?.block_on(async {
        let Ok(d) = docker::connect().await else {
            return None;
        };
        let mut exit = None;
        if let Some(c) = &m.container_id {
            if let Ok(i) = d
                .inspect_container(
                    c,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            {
                let st = i.state.unwrap_or_default();
                if st.running != Some(true) {
                    exit = st.exit_code;
                }
            }
            let _ = docker::force_remove(&d, c).await;
        }
        // Service sidecars (and anything else labelled with the run) go before the network.
        let rest = crate::services::containers_of(&d, &m.id).await;
        crate::services::remove(&d, &rest).await;
        if let Some(n) = &m.network {
            crate::network::remove(&d, n).await;
        }
        exit
    });
    if let Some(pid) = m.proxy_pid
        && proxy_alive(pid)
    {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
    moat_core::routes::unregister(&store.home, &m.name, &m.id);
    let stopping = m.state == State::Stopping;
    store.update(id, |m| {
        if m.state.is_terminal() {
            return;
        }
        m.exit_code = exit.or(m.exit_code);
        if stopping || exit == Some(0) {
            m.state = State::Stopped;
            m.reason = Some("stopped".into());
        } else {
            m.state = State::Failed;
            m.reason = Some(
                "its moat-launch supervisor exited unexpectedly; reconciled with Docker".into(),
            );
        }
        m.stopped_at = Some(moat_core::timefmt::now_rfc3339());
    })?;
    Ok(())
}

fn age(m: &Metadata) -> String {
    moat_core::timefmt::parse_rfc3339(&m.created_at)
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(moat_core::timefmt::short_age)
        .unwrap_or_else(|| "-".into())
}

pub fn list(json: bool, promoted: bool) -> Result<()> {
    let store = store()?;
    if promoted {
        return crate::promote::list(&store, json);
    }
    let runs = reconciled(&store)?;
    let mut out = String::new();
    if json {
        for m in &runs {
            out.push_str(&moat_core::jsonl::line(
                "run",
                &serde_json::json!({
                    "id": m.id, "name": m.name, "state": m.state.as_str(), "services": m.services,
                    "created_at": m.created_at, "image": m.image, "exit_code": m.exit_code,
                    "reason": m.reason, "workspace": m.workspace,
                    "worktree_branch": m.worktree_branch, "endpoints": m.endpoints,
                    "usage": m.usage,
                }),
            )?);
        }
    } else {
        if runs.is_empty() {
            eprintln!("no runs; start one with `moat run`");
            return Ok(());
        }
        let w = runs.iter().map(|m| m.name.len()).max().unwrap_or(4).max(4);
        let joined = |v: Vec<&str>| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        let rows: Vec<(String, String)> = runs
            .iter()
            .map(|m| {
                (
                    joined(m.services.iter().map(String::as_str).collect()),
                    joined(m.endpoints.keys().map(String::as_str).collect()),
                )
            })
            .collect();
        let sw = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(8);
        let ew = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(9);
        out.push_str(&format!(
            "{:<w$}  {:<16}  {:<8}  {:<sw$}  {:<ew$}  {:<9}  AGE\n",
            "NAME", "RUN ID", "STATE", "SERVICES", "ENDPOINTS", "SPEND"
        ));
        for (m, (svc, eps)) in runs.iter().zip(&rows) {
            out.push_str(&format!(
                "{:<w$}  {:<16}  {:<8}  {:<sw$}  {:<ew$}  {:<9}  {}\n",
                m.name,
                m.id,
                m.state.as_str(),
                svc,
                eps,
                crate::budget::spend_cell(m),
                age(m)
            ));
        }
    }
    cli::write_stdout(out.as_bytes())
}

pub fn logs(run: Option<&str>, lines: Option<usize>, follow: bool) -> Result<()> {
    let store = store()?;
    reconcile_all(&store)?;
    let m = store.resolve(run)?;
    let path = store.dir(&m.id).join("logs.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = lines.map(|n| all.len().saturating_sub(n)).unwrap_or(0);
    let mut out = String::new();
    for l in &all[start..] {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
            out.push_str(v["line"].as_str().unwrap_or_default());
            out.push('\n');
        }
    }
    cli::write_stdout(out.as_bytes())?;
    if follow && !m.state.is_terminal() {
        let mut offset = text.len() as u64;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let mut f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(_) => continue,
            };
            use std::io::{Read, Seek, SeekFrom};
            let _ = f.seek(SeekFrom::Start(offset));
            let mut buf = String::new();
            let _ = f.read_to_string(&mut buf);
            let upto = buf.rfind('\n').map(|i| i + 1).unwrap_or(0);
            offset += upto as u64;
            let mut out = String::new();
            for l in buf[..upto].lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                    out.push_str(v["line"].as_str().unwrap_or_default());
                    out.push('\n');
                }
            }
            cli::write_stdout(out.as_bytes())?;
            let m = store.load(&m.id)?;
            if m.state.is_terminal() {
                break;
            }
            if m.supervisor_pid.is_some_and(|p| supervisor_gone(p, &m.id)) {
                reconcile_one(&store, &m.id)?;
            }
        }
    }
    Ok(())
}

pub fn trace(run: Option<&str>, verbose: bool, json: bool) -> Result<()> {
    let store = store()?;
    let m = store.resolve(run)?;
    let path = store.dir(&m.id).join("network.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut out = String::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if json {
            let mut v = v;
            if let Some(o) = v.as_object_mut() {
                o.entry("v").or_insert(1.into());
                o.entry("type").or_insert("request".into());
            }
            out.push_str(&serde_json::to_string(&v)?);
            out.push('\n');
            continue;
        }
        out.push_str(&trace_line(&v, verbose));
    }
    if !json && out.is_empty() {
        eprintln!("no network requests recorded for {} ({})", m.name, m.id);
    }
    cli::write_stdout(out.as_bytes())
}

/// `[HH:MM:SS.mmm] METHOD URL STATUS (Nms)`
pub fn trace_line(v: &serde_json::Value, verbose: bool) -> String {
    let ts = v["ts"].as_str().unwrap_or_default();
    let clock = ts
        .split_once('T')
        .map(|(_, t)| t.get(..12).unwrap_or(t))
        .unwrap_or(ts);
    let status = v
        .get("status")
        .or_else(|| v.get("status_code"))
        .and_then(|s| s.as_i64());
    let status = status.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
    let dur = v["duration_ms"]
        .as_f64()
        .map(|d| format!("{}ms", d.round() as i64))
        .unwrap_or_else(|| "-".into());
    // An AWS request the proxy signed: its service and action after the duration.
    let aws = v["aws"]
        .as_str()
        .map(|a| format!(" {a}"))
        .unwrap_or_default();
    let mut s = format!(
        "[{clock}] {} {} {status} ({dur}){aws}\n",
        v["method"].as_str().unwrap_or("-"),
        v["url"].as_str().unwrap_or("-")
    );
    if verbose {
        for k in ["grant", "policy", "error"] {
            if let Some(x) = v.get(k).filter(|x| !x.is_null()) {
                let x = x
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| x.to_string());
                s.push_str(&format!("    {k}: {x}\n"));
            }
        }
    }
    s
}

/// Ask Docker to stop the run's container; the supervisor finishes the rest.
pub fn stop_run(store: &Store, id: &str) -> Result<()> {
    let m = store.load(id)?;
    if m.state.is_terminal() {
        return Ok(());
    }
    store.set_state(id, State::Stopping, None)?;
    if let Some(c) = &m.container_id {
        rt()?.block_on(async {
            let d = docker::connect().await?;
            let opts = bollard::query_parameters::StopContainerOptions {
                t: Some(10),
                ..Default::default()
            };
            match d.stop_container(c, Some(opts)).await {
                Ok(()) => Ok(()),
                Err(e) if docker::is_not_found(&e) => Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 304, ..
                }) => Ok(()),
                Err(e) => Err(docker::err("stopping the container", e)),
            }
        })?;
    }
    // The supervisor records the end and releases the container and network; wait for it
    // (bounded), or reconcile if it is gone.
    for _ in 0..400 {
        let m = store.load(id)?;
        if m.state.is_terminal() {
            if m.supervisor_pid.is_some_and(|p| supervisor_alive(p, id)) {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            return Ok(());
        }
        if m.supervisor_pid.is_none_or(|p| supervisor_gone(p, id)) {
            return reconcile_one(store, id);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reconcile_one(store, id)
}

pub fn stop(run: Option<&str>) -> Result<()> {
    let store = store()?;
    reconcile_all(&store)?;
    let m = store.resolve(run)?;
    if m.state.is_terminal() {
        eprintln!(
            "moat: {} ({}) is already {}",
            m.name,
            m.id,
            m.state.as_str()
        );
        return Ok(());
    }
    stop_run(&store, &m.id)?;
    eprintln!("moat: stopped {} ({})", m.name, m.id);
    Ok(())
}

pub fn destroy(run: Option<&str>) -> Result<()> {
    let store = store()?;
    reconcile_all(&store)?;
    let m = store.resolve(run)?;
    if !m.state.is_terminal() {
        stop_run(&store, &m.id)?;
    }
    store.remove_dir(&m.id)?;
    eprintln!("moat: destroyed {} ({})", m.name, m.id);
    Ok(())
}

/// This home's moat images that no container uses. Several homes may share the engine: an
/// image another home built (label `moat.home`) is theirs to clean.
async fn unused_images(d: &Docker, home: &MoatHome) -> Result<Vec<String>> {
    let filters = docker::label_filter([
        format!("{LABEL_IMAGE}=1"),
        format!("{}={}", docker::LABEL_HOME, home.root().display()),
    ]);
    let opts = bollard::query_parameters::ListImagesOptions {
        filters: Some(filters),
        ..Default::default()
    };
    let images = d
        .list_images(Some(opts))
        .await
        .map_err(|e| docker::err("listing images", e))?;
    let copts = bollard::query_parameters::ListContainersOptions {
        all: true,
        ..Default::default()
    };
    let used: Vec<String> = d
        .list_containers(Some(copts))
        .await
        .map_err(|e| docker::err("listing containers", e))?
        .into_iter()
        .filter_map(|c| c.image_id)
        .collect();
    Ok(images
        .into_iter()
        .filter(|i| !used.contains(&i.id))
        .map(|i| i.id)
        .collect())
}

/// Ask `question? [y/N]` on stderr and read the answer from stdin; anything but yes is
/// "nothing removed" (exit 1).
pub(crate) fn ask(question: &str) -> Result<()> {
    eprint!("{question}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::io("reading the answer", e))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::no("nothing removed"))
    }
}

pub fn clean(force: bool) -> Result<()> {
    let store = store()?;
    reconcile_all(&store)?;
    let runs: Vec<Metadata> = store
        .all()?
        .into_iter()
        .filter(|m| m.state.is_terminal())
        .collect();
    let rt = rt()?;
    let images = rt.block_on(async {
        match docker::connect().await {
            Ok(d) => unused_images(&d, &store.home).await.map(|i| (Some(d), i)),
            Err(_) => Ok((None, vec![])),
        }
    })?;
    let (d, images) = images;
    if runs.is_empty() && images.is_empty() {
        eprintln!("moat: nothing to clean");
        return Ok(());
    }
    if !force {
        ask(&format!(
            "Remove {} stopped run(s) and {} unused moat image(s)",
            runs.len(),
            images.len()
        ))?;
    }
    let progress =
        crate::progress::Progress::start("clean: removing stopped runs and unused images");
    for m in &runs {
        store.remove_dir(&m.id)?;
    }
    let mut removed = 0;
    if let Some(d) = d {
        rt.block_on(async {
            // Containers a removed run left behind (a sidecar a killed supervisor missed).
            for m in &runs {
                let left = crate::services::containers_of(&d, &m.id).await;
                crate::services::remove(&d, &left).await;
            }
            crate::network::remove_spares(&d).await;
            for i in &images {
                let opts = bollard::query_parameters::RemoveImageOptions {
                    force: false,
                    noprune: false,
                    ..Default::default()
                };
                if d.remove_image(i, Some(opts), None).await.is_ok() {
                    removed += 1;
                }
            }
        });
    }
    drop(progress);
    eprintln!(
        "moat: removed {} run(s) and {removed} image(s); volumes are kept",
        runs.len()
    );
    Ok(())
}

/// `snapshot [RUN]`, `snapshot list [RUN]`, `snapshot restore RUN SNAPSHOT`.
pub fn snapshot(cmd: crate::args::SnapshotCmd) -> Result<()> {
    use crate::args::SnapshotCmd;
    use crate::snapshot as snap;
    let store = store()?;
    reconcile_all(&store)?;
    let spec_of = |id: &str| -> crate::config::SnapshotSpec {
        std::fs::read(store.dir(id).join("spec.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<crate::config::RunSpec>(&b).ok())
            .map(|s| s.snapshots)
            .unwrap_or_default()
    };
    match cmd {
        SnapshotCmd::Create { run, label } => {
            let m = store.resolve(run.as_deref())?;
            if !m.workspace.is_dir() {
                return Err(Error::noinput(format!(
                    "the workspace of {} ({}) is gone: {}",
                    m.name,
                    m.id,
                    m.workspace.display()
                )));
            }
            let s = snap::create(
                &store.dir(&m.id),
                &m.id,
                &m.workspace,
                &spec_of(&m.id),
                "manual",
                label,
            )?;
            eprintln!(
                "moat: snapshot {} of {} ({}): {} file(s), {}",
                s.id,
                m.name,
                m.id,
                s.files,
                mb(s.bytes)
            );
            cli::write_stdout(format!("{}\n", s.id).as_bytes())
        }
        SnapshotCmd::List { run, json } => {
            let m = store.resolve(run.as_deref())?;
            let all = snap::list(&store.dir(&m.id))?;
            let mut out = String::new();
            if json {
                for s in &all {
                    out.push_str(&moat_core::jsonl::line(
                        "snapshot",
                        &serde_json::json!({"id": s.id, "run": m.id, "kind": s.kind, "label": s.label, "created_at": s.created_at, "files": s.files, "bytes": s.bytes}),
                    )?);
                }
            } else if all.is_empty() {
                eprintln!(
                    "no snapshots of {} ({}); `moat snapshot {}` takes one",
                    m.name, m.id, m.id
                );
            } else {
                out.push_str(&format!(
                    "{:<17}  {:<8}  {:<24}  {:>6}  {:>9}  LABEL\n",
                    "SNAPSHOT", "TYPE", "CREATED", "FILES", "SIZE"
                ));
                for s in &all {
                    out.push_str(&format!(
                        "{:<17}  {:<8}  {:<24}  {:>6}  {:>9}  {}\n",
                        s.id,
                        s.kind,
                        s.created_at,
                        s.files,
                        mb(s.bytes),
                        s.label.as_deref().unwrap_or("")
                    ));
                }
            }
            cli::write_stdout(out.as_bytes())
        }
        SnapshotCmd::Restore {
            run,
            snapshot,
            force,
            json,
        } => {
            let m = store.resolve(Some(&run))?;
            // Checked before the run's state, so a wrong id is said first.
            snap::load(&store.dir(&m.id), &snapshot)?;
            // Any run in that workspace counts, not only the one the snapshot came from.
            let busy = store
                .all()?
                .into_iter()
                .filter(|r| !r.state.is_terminal() && r.workspace == m.workspace)
                .max_by_key(|r| r.id == m.id);
            if let Some(r) = busy
                && !force
            {
                return Err(Error::new(
                    moat_core::exit::TEMPFAIL,
                    format!(
                        "{} ({}) is {} in {}: restoring under it would race its processes",
                        r.name,
                        r.id,
                        r.state.as_str(),
                        m.workspace.display()
                    ),
                )
                .with_hint(format!(
                    "`moat stop {}` first, or --force to restore anyway",
                    r.id
                )));
            }
            if !m.workspace.is_dir() {
                return Err(Error::noinput(format!(
                    "the workspace {} is gone",
                    m.workspace.display()
                )));
            }
            let progress = crate::progress::Progress::start("restoring the snapshot");
            let ch = snap::restore(&store.dir(&m.id), &m.id, &m.workspace, &snapshot);
            drop(progress);
            let ch = ch?;
            let mut out = String::new();
            if json {
                out.push_str(&moat_core::jsonl::line("snapshot_restored", &ch)?);
            } else {
                for p in &ch.restored {
                    out.push_str(&format!("restored  {p}\n"));
                }
                for p in &ch.created {
                    out.push_str(&format!("created   {p}\n"));
                }
                for p in &ch.removed {
                    out.push_str(&format!("removed   {p}\n"));
                }
            }
            cli::write_stdout(out.as_bytes())?;
            eprintln!(
                "moat: restored {} into {}: {} restored, {} created, {} removed, {} unchanged; the state before is snapshot {}",
                ch.snapshot,
                m.workspace.display(),
                ch.restored.len(),
                ch.created.len(),
                ch.removed.len(),
                ch.unchanged,
                ch.safety_snapshot.as_deref().unwrap_or("-")
            );
            Ok(())
        }
    }
}

/// Is `pid` still a moat-proxy (pids get reused)?
fn proxy_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("moat-proxy"))
        .unwrap_or(false)
}

/// A size for people: "12.3 MB".
pub(crate) fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Bytes of the files below `p` (0 when unreadable).
pub(crate) fn dir_size(p: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

pub fn status(json: bool) -> Result<()> {
    let store = store()?;
    let runs = reconciled(&store)?;
    let active: Vec<&Metadata> = runs.iter().filter(|m| !m.state.is_terminal()).collect();
    let stopped = runs.len() - active.len();
    // The disk figures walk every run's directory: beside the engine's answers.
    let sizes = {
        let (runs_dir, promoted) = (store.home.runs_dir(), store.home.root().join("promoted"));
        std::thread::spawn(move || (dir_size(&runs_dir), dir_size(&promoted)))
    };
    let (docker_ok, docker_msg, images, containers, runsc) = rt()?.block_on(async {
        match docker::connect().await {
            Ok(d) => {
                // The engine's answers, asked for at once; no container sizes (status does
                // not show them, and they are the engine's slowest answer).
                let (v, images, containers, runsc) = tokio::join!(
                    d.version(),
                    crate::system::images(&d, &store, &runs, false),
                    crate::system::containers(&d, &store, &runs, false, false),
                    docker::has_runsc(&d),
                );
                let v = v.ok().and_then(|v| v.version).unwrap_or_default();
                let images = images.unwrap_or_default();
                let containers = containers.unwrap_or_default();
                let runsc = runsc.unwrap_or(false);
                (true, format!("ok (engine {v})"), images, containers, runsc)
            }
            Err(e) => (false, e.msg, vec![], vec![], false),
        }
    });
    let image_bytes: u64 = images.iter().map(|i| i.bytes).sum();
    let running = containers.iter().filter(|c| c.state == "running").count();
    let (disk, promoted) = sizes.join().unwrap_or((0, 0));
    let ca = store.home.ca_dir().join("ca.crt");
    let ca_ok = ca.exists();
    if json {
        let l = moat_core::jsonl::line(
            "status",
            &serde_json::json!({
                "active_runs": active.iter().map(|m| serde_json::json!({"id": m.id, "name": m.name, "state": m.state.as_str(), "proxy_up": m.proxy_pid.is_some_and(proxy_alive)})).collect::<Vec<_>>(),
                "stopped_runs": stopped, "images": images.len(), "images_bytes": image_bytes,
                "containers": containers.len(), "containers_running": running,
                "promoted_disk_bytes": promoted, "docker": {"ok": docker_ok, "message": docker_msg},
                "gvisor": runsc, "ca": {"ok": ca_ok, "path": ca}, "runs_disk_bytes": disk,
            }),
        )?;
        return cli::write_stdout(l.as_bytes());
    }
    let mut s = String::new();
    s.push_str(&format!("Docker:   {docker_msg}\n"));
    s.push_str(&format!(
        "gVisor:   {}\n",
        if runsc {
            "runsc registered"
        } else {
            "not registered (runs use runc)"
        }
    ));
    s.push_str(&format!(
        "CA:       {}\n",
        if ca_ok {
            ca.display().to_string()
        } else {
            "not created yet (the first run creates it)".into()
        }
    ));
    s.push_str(&format!(
        "Runs:     {} active, {stopped} stopped, {} on disk\n",
        active.len(),
        mb(disk)
    ));
    for m in &active {
        let proxy = match m.proxy_pid {
            Some(pid) if proxy_alive(pid) => {
                format!("proxy {} up", m.proxy_addr.as_deref().unwrap_or("?"))
            }
            Some(_) => "proxy DOWN (the run has no network)".to_string(),
            None => "proxy not started".to_string(),
        };
        s.push_str(&format!(
            "  {} ({}) {} {}, {proxy}\n",
            m.name,
            m.id,
            m.state.as_str(),
            age(m)
        ));
    }
    s.push_str(&format!(
        "Images:   {} moat image(s), {} (`moat system images`)\n",
        images.len(),
        mb(image_bytes)
    ));
    s.push_str(&format!(
        "Containers: {} moat container(s), {running} running (`moat system containers`)\n",
        containers.len()
    ));
    if promoted > 0 {
        s.push_str(&format!(
            "Promoted: {} (`moat list --promoted`)\n",
            mb(promoted)
        ));
    }
    cli::write_stdout(s.as_bytes())?;
    if !docker_ok {
        return Err(Error::unavailable("Docker is not reachable"));
    }
    Ok(())
}

/// `moat claude|codex|gemini sessions`: the runs whose session logs were kept, newest last.
pub fn sessions(cli_name: &str, json: bool) -> Result<()> {
    let store = store()?;
    // A session whose supervisor died shows as ended, as in `list`.
    reconcile_all(&store)?;
    let (_, sub) = crate::agent::log_dir(cli_name);
    let mut out = String::new();
    let mut any = false;
    for m in store.all()? {
        let dir = store.dir(&m.id).join(sub);
        let files = count_files(&dir);
        if files == 0 {
            continue;
        }
        any = true;
        if json {
            out.push_str(&moat_core::jsonl::line(
                "session",
                &serde_json::json!({"run": m.id, "name": m.name, "agent": cli_name, "state": m.state.as_str(), "created_at": m.created_at, "logs": dir, "files": files}),
            )?);
        } else {
            out.push_str(&format!(
                "{}  {:<20} {:<8} {}  {}\n",
                m.id,
                m.name,
                m.state.as_str(),
                m.created_at,
                dir.display()
            ));
        }
    }
    if !any && !json {
        eprintln!(
            "moat-launch: no {cli_name} sessions kept yet (a `moat {cli_name}` run with sync_logs keeps them)"
        );
    }
    cli::write_stdout(out.as_bytes())
}

fn count_files(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_have_the_documented_shape() {
        let v = serde_json::json!({"ts":"2026-11-22T03:04:05.678Z","method":"GET","url":"https://api.github.com/user","status":200,"duration_ms":12.4,"grant":"github"});
        assert_eq!(
            trace_line(&v, false),
            "[03:04:05.678] GET https://api.github.com/user 200 (12ms)\n"
        );
        assert!(trace_line(&v, true).contains("grant: github"));
        let v = serde_json::json!({"ts":"2026-11-22T03:04:05.678Z","method":"POST","url":"https://sts.us-east-1.amazonaws.com/","status":200,"duration_ms":3,"grant":"aws","aws":"sts:GetCallerIdentity"});
        assert_eq!(
            trace_line(&v, false),
            "[03:04:05.678] POST https://sts.us-east-1.amazonaws.com/ 200 (3ms) sts:GetCallerIdentity\n"
        );
    }
}
