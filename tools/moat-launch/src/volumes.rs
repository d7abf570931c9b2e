//! `volumes:`: state kept per agent name across runs. `type: bind` (the default) is a directory
//! MOAT_HOME/volumes/<agent>/<volume>; `type: volume` is a Docker named volume
//! `moat_<agent>_<volume>`, created by moat with the labels `moat.volume=1`, `moat.agent`,
//! `moat.volume.name` and `moat.home`, so `ls`, `rm` and `prune` only ever see moat's own.

use crate::args::VolumesCmd;
use crate::docker::{self, LABEL_HOME};
use crate::store::{Metadata, Store};
use bollard::Docker;
use moat_core::{Error, Result, cli};
use std::collections::{BTreeSet, HashMap};

pub const LABEL_VOLUME: &str = "moat.volume";
pub const LABEL_AGENT: &str = "moat.agent";
pub const LABEL_VOLUME_NAME: &str = "moat.volume.name";

pub fn docker_name(agent: &str, volume: &str) -> String {
    format!("moat_{agent}_{volume}")
}

/// Create the named volume with moat's labels unless it exists; a same-named volume that
/// moat did not make is refused rather than adopted.
pub async fn ensure(d: &Docker, home: &str, agent: &str, volume: &str) -> Result<String> {
    let name = docker_name(agent, volume);
    match d.inspect_volume(&name).await {
        Ok(v) => {
            if v.labels.get(LABEL_VOLUME).map(String::as_str) != Some("1") {
                return Err(Error::config(format!(
                    "Docker volume {name} exists but moat did not create it; rename the volume in moat.yaml or remove it"
                )));
            }
            Ok(name)
        }
        Err(e) if docker::is_not_found(&e) => {
            let labels = HashMap::from([
                (LABEL_VOLUME.to_string(), "1".to_string()),
                (LABEL_AGENT.to_string(), agent.to_string()),
                (LABEL_VOLUME_NAME.to_string(), volume.to_string()),
                (LABEL_HOME.to_string(), home.to_string()),
            ]);
            let opts = bollard::models::VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(labels),
                ..Default::default()
            };
            d.create_volume(opts)
                .await
                .map_err(|e| docker::err(format!("creating volume {name}"), e))?;
            Ok(name)
        }
        Err(e) => Err(docker::err(format!("inspecting volume {name}"), e)),
    }
}

#[derive(Debug, Clone)]
struct Row {
    agent: String,
    volume: String,
    kind: &'static str,
    /// Directory path or Docker volume name.
    location: String,
    bytes: Option<u64>,
}

async fn docker_rows(d: &Docker, home: &str) -> Result<Vec<Row>> {
    let opts = bollard::query_parameters::ListVolumesOptions {
        filters: Some(docker::label_filter([
            format!("{LABEL_VOLUME}=1"),
            format!("{LABEL_HOME}={home}"),
        ])),
    };
    let r = d
        .list_volumes(Some(opts))
        .await
        .map_err(|e| docker::err("listing volumes", e))?;
    Ok(r.volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| Row {
            agent: v.labels.get(LABEL_AGENT).cloned().unwrap_or_default(),
            volume: v.labels.get(LABEL_VOLUME_NAME).cloned().unwrap_or_default(),
            kind: "volume",
            location: v.name,
            bytes: v
                .usage_data
                .map(|u| u.size)
                .filter(|s| *s >= 0)
                .map(|s| s as u64),
        })
        .collect())
}

fn all_rows(store: &Store, d: Option<&Docker>, rt: &tokio::runtime::Runtime) -> Result<Vec<Row>> {
    let root = store.home.volumes_dir();
    let mut rows = vec![];
    for agent in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let a = agent.file_name().to_string_lossy().to_string();
        for v in std::fs::read_dir(agent.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            rows.push(Row {
                agent: a.clone(),
                volume: v.file_name().to_string_lossy().to_string(),
                kind: "bind",
                location: v.path().display().to_string(),
                bytes: Some(crate::commands::dir_size(&v.path())),
            });
        }
    }
    if let Some(d) = d {
        let home = store.home.root().display().to_string();
        rows.extend(rt.block_on(docker_rows(d, &home))?);
    }
    rows.sort_by(|a, b| (&a.agent, &a.volume, a.kind).cmp(&(&b.agent, &b.volume, b.kind)));
    Ok(rows)
}

fn users<'a>(runs: &'a [Metadata], agent: &str) -> Vec<&'a Metadata> {
    runs.iter().filter(|m| m.agent == agent).collect()
}

fn confirm(question: &str, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    if !cli::stdin_is_terminal() {
        return Err(Error::usage(format!(
            "{question}: not asked without a terminal; pass --force"
        )));
    }
    crate::commands::ask(question)
}

fn remove(store: &Store, d: Option<&Docker>, rt: &tokio::runtime::Runtime, r: &Row) -> Result<()> {
    if r.kind == "bind" {
        let p = std::path::PathBuf::from(&r.location);
        // Only ever below MOAT_HOME/volumes.
        if !p.starts_with(store.home.volumes_dir()) {
            return Err(Error::software(format!(
                "{} is not a moat volume",
                p.display()
            )));
        }
        std::fs::remove_dir_all(&p)
            .map_err(|e| Error::io(format!("removing {}", p.display()), e))?;
        let agent_dir = store.home.volumes_dir().join(&r.agent);
        let _ = std::fs::remove_dir(agent_dir); // when empty
        return Ok(());
    }
    let d = d.ok_or_else(|| Error::unavailable("Docker is not reachable"))?;
    rt.block_on(async {
        d.remove_volume(
            &r.location,
            None::<bollard::query_parameters::RemoveVolumeOptions>,
        )
        .await
        .map_err(|e| docker::err(format!("removing volume {}", r.location), e))
    })
}

pub fn command(store: &Store, cmd: VolumesCmd) -> Result<()> {
    let runs = store.all()?;
    let rt = crate::commands::rt()?;
    let d = rt.block_on(docker::connect()).ok();
    let rows = all_rows(store, d.as_ref(), &rt)?;
    match cmd {
        VolumesCmd::Ls { json } => {
            let mut out = String::new();
            if json {
                for r in &rows {
                    let u = users(&runs, &r.agent);
                    let ws: BTreeSet<String> = u
                        .iter()
                        .map(|m| m.workspace.display().to_string())
                        .collect();
                    out.push_str(&moat_core::jsonl::line(
                        "volume",
                        &serde_json::json!({"agent": r.agent, "volume": r.volume, "kind": r.kind, "location": r.location, "path": if r.kind == "bind" { Some(&r.location) } else { None }, "bytes": r.bytes, "runs": u.len(), "workspaces": ws}),
                    )?);
                }
            } else if rows.is_empty() {
                eprintln!("no volumes");
            } else {
                out.push_str("AGENT  VOLUME  TYPE  SIZE  RUNS  WORKSPACE\n");
                for r in &rows {
                    let u = users(&runs, &r.agent);
                    let ws = u
                        .last()
                        .map(|m| m.workspace.display().to_string())
                        .unwrap_or_else(|| "-".into());
                    out.push_str(&format!(
                        "{}  {}  {}  {}  {}  {ws}\n",
                        r.agent,
                        r.volume,
                        r.kind,
                        r.bytes
                            .map(crate::commands::mb)
                            .unwrap_or_else(|| "-".into()),
                        u.len()
                    ));
                }
            }
            cli::write_stdout(out.as_bytes())
        }
        VolumesCmd::Rm { names, force } => {
            let mut chosen: Vec<Row> = vec![];
            for n in &names {
                let (agent, vol) = match n.split_once('/') {
                    Some((a, v)) => (a, Some(v)),
                    None => (n.as_str(), None),
                };
                if agent.is_empty()
                    || agent.starts_with('.')
                    || vol.is_some_and(|v| v.is_empty() || v.contains('/'))
                {
                    return Err(Error::usage(format!(
                        "{n:?} is neither an agent name nor AGENT/VOLUME"
                    )));
                }
                let hits: Vec<Row> = rows
                    .iter()
                    .filter(|r| r.agent == agent && vol.is_none_or(|v| r.volume == v))
                    .cloned()
                    .collect();
                if hits.is_empty() {
                    return Err(Error::noinput(format!("no volume {n:?}"))
                        .with_hint("`moat volumes ls` lists them"));
                }
                if let Some(m) = users(&runs, agent)
                    .into_iter()
                    .find(|m| !m.state.is_terminal())
                    && !force
                {
                    return Err(Error::new(
                        moat_core::exit::TEMPFAIL,
                        format!("{} ({}) is using the volumes of {agent}", m.name, m.id),
                    )
                    .with_hint(format!("stop it first (`moat stop {}`)", m.id)));
                }
                chosen.extend(hits);
            }
            for r in &chosen {
                remove(store, d.as_ref(), &rt, r)?;
                eprintln!("moat: removed {} volume {}/{}", r.kind, r.agent, r.volume);
            }
            Ok(())
        }
        VolumesCmd::Prune { force, all } => {
            let active: BTreeSet<&str> = runs
                .iter()
                .filter(|m| !m.state.is_terminal())
                .map(|m| m.agent.as_str())
                .collect();
            let known: BTreeSet<&str> = runs.iter().map(|m| m.agent.as_str()).collect();
            let doomed: Vec<&Row> = rows
                .iter()
                .filter(|r| !active.contains(r.agent.as_str()))
                .filter(|r| all || !known.contains(r.agent.as_str()))
                .collect();
            if doomed.is_empty() {
                eprintln!(
                    "moat: nothing to prune{}",
                    if all {
                        ""
                    } else {
                        " (every volume belongs to a recorded run; --all removes those too)"
                    }
                );
                return Ok(());
            }
            confirm(&format!("Remove {} volume(s)", doomed.len()), force)?;
            for r in &doomed {
                remove(store, d.as_ref(), &rt, r)?;
                eprintln!("moat: removed {} volume {}/{}", r.kind, r.agent, r.volume);
            }
            Ok(())
        }
    }
}
