//! `moat system images|containers`: what moat made in Docker, found by its labels
//! (`moat.image` on images it builds, `moat.run` on containers, `moat.home` on both), with the
//! run each belongs to. Several MOAT_HOMEs can share one engine: by default only this home's
//! objects show (labelled with it, or belonging to one of its runs); `--all` shows every one.

use crate::commands::mb;
use crate::docker::{self, LABEL_HOME, LABEL_IMAGE, LABEL_RUN};
use crate::store::{Metadata, Store};
use bollard::Docker;
use moat_core::{Result, cli};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct ImageRow {
    pub id: String,
    pub tags: Vec<String>,
    pub bytes: u64,
    pub created: i64,
    pub home: Option<String>,
    /// This home's runs that used it.
    pub runs: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ContainerRow {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
    pub status: String,
    pub created: i64,
    pub bytes: Option<u64>,
    pub run: String,
    pub run_name: Option<String>,
    pub home: Option<String>,
}

fn age(created: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(created.max(0) as u64);
    SystemTime::now()
        .duration_since(t)
        .map(moat_core::timefmt::short_age)
        .unwrap_or_else(|_| "-".into())
}

pub async fn images(
    d: &Docker,
    store: &Store,
    runs: &[Metadata],
    all: bool,
) -> Result<Vec<ImageRow>> {
    let opts = bollard::query_parameters::ListImagesOptions {
        filters: Some(docker::label_filter([format!("{LABEL_IMAGE}=1")])),
        ..Default::default()
    };
    let list = d
        .list_images(Some(opts))
        .await
        .map_err(|e| docker::err("listing images", e))?;
    let home = store.home.root().display().to_string();
    let mut out = vec![];
    for i in list {
        let tags: Vec<String> = i
            .repo_tags
            .into_iter()
            .filter(|t| t != "<none>:<none>")
            .collect();
        let used: Vec<String> = runs
            .iter()
            .filter(|m| {
                m.image
                    .as_ref()
                    .is_some_and(|im| tags.contains(im) || *im == i.id)
            })
            .map(|m| m.id.clone())
            .collect();
        let h = i.labels.get(LABEL_HOME).cloned();
        if !all && used.is_empty() && h.as_deref() != Some(home.as_str()) {
            continue;
        }
        out.push(ImageRow {
            id: i.id,
            tags,
            bytes: i.size.max(0) as u64,
            created: i.created,
            home: h,
            runs: used,
        });
    }
    out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    Ok(out)
}

pub async fn containers(
    d: &Docker,
    store: &Store,
    runs: &[Metadata],
    all: bool,
    size: bool,
) -> Result<Vec<ContainerRow>> {
    let opts = bollard::query_parameters::ListContainersOptions {
        all: true,
        size,
        filters: Some(docker::label_filter([LABEL_RUN])),
        ..Default::default()
    };
    let mut list = d
        .list_containers(Some(opts))
        .await
        .map_err(|e| docker::err("listing containers", e))?;
    let home = store.home.root().display().to_string();
    let mut out = vec![];
    // A run that claimed a spare guard (guard.rs) joins a container made before the run,
    // without its labels: it is the run's all the same.
    let spares = d
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            size,
            filters: Some(docker::label_filter([format!(
                "{}=spare",
                crate::guard::LABEL_GUARD
            )])),
            ..Default::default()
        }))
        .await
        .map_err(|e| docker::err("listing containers", e))?;
    let joined: Vec<(String, String, Option<String>)> = list
        .iter()
        .filter_map(|c| {
            let target = c
                .host_config
                .as_ref()?
                .network_mode
                .as_deref()?
                .strip_prefix("container:")?
                .to_string();
            let labels = c.labels.as_ref()?;
            Some((
                target,
                labels.get(LABEL_RUN)?.clone(),
                labels.get(LABEL_HOME).cloned(),
            ))
        })
        .collect();
    for mut c in spares {
        let Some(cid) = c.id.clone() else { continue };
        if let Some((_, run, h)) = joined.iter().find(|(t, _, _)| *t == cid) {
            let labels = c.labels.get_or_insert_with(Default::default);
            labels.insert(LABEL_RUN.to_string(), run.clone());
            if let Some(h) = h {
                labels.insert(LABEL_HOME.to_string(), h.clone());
            }
            list.push(c);
        }
    }
    for c in list {
        let labels = c.labels.unwrap_or_default();
        let run = labels.get(LABEL_RUN).cloned().unwrap_or_default();
        let h = labels.get(LABEL_HOME).cloned();
        let mine = runs.iter().find(|m| m.id == run);
        if !all && mine.is_none() && h.as_deref() != Some(home.as_str()) {
            continue;
        }
        out.push(ContainerRow {
            id: c.id.unwrap_or_default(),
            name: c
                .names
                .and_then(|n| n.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default(),
            image: c.image.unwrap_or_default(),
            state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            status: c.status.unwrap_or_default(),
            created: c.created.unwrap_or(0),
            bytes: c.size_rw.map(|s| s.max(0) as u64),
            run,
            run_name: mine.map(|m| m.name.clone()),
            home: h,
        });
    }
    out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    Ok(out)
}

fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

pub fn command(store: &Store, want_containers: bool, json: bool, all: bool) -> Result<()> {
    let runs = store.all()?;
    let rt = crate::commands::rt()?;
    let mut out = String::new();
    if want_containers {
        let rows = rt.block_on(async {
            let d = docker::connect().await?;
            containers(&d, store, &runs, all, true).await
        })?;
        if json {
            for r in &rows {
                out.push_str(&moat_core::jsonl::line(
                    "container",
                    &serde_json::json!({"id": r.id, "name": r.name, "image": r.image, "state": r.state, "status": r.status, "created": r.created, "bytes": r.bytes, "run": r.run, "run_name": r.run_name, "home": r.home}),
                )?);
            }
        } else if rows.is_empty() {
            eprintln!("no moat containers");
        } else {
            out.push_str(&format!(
                "{:<12}  {:<20}  {:<16}  {:<10}  {:<9}  {:<6}  IMAGE\n",
                "CONTAINER", "NAME", "RUN", "STATE", "SIZE", "AGE"
            ));
            for r in &rows {
                out.push_str(&format!(
                    "{:<12}  {:<20}  {:<16}  {:<10}  {:<9}  {:<6}  {}\n",
                    short(&r.id),
                    r.run_name.as_deref().unwrap_or("-"),
                    r.run,
                    r.state,
                    r.bytes.map(mb).unwrap_or_else(|| "-".into()),
                    age(r.created),
                    r.image
                ));
            }
        }
    } else {
        let rows = rt.block_on(async {
            let d = docker::connect().await?;
            images(&d, store, &runs, all).await
        })?;
        if json {
            for r in &rows {
                out.push_str(&moat_core::jsonl::line(
                    "image",
                    &serde_json::json!({"id": r.id, "tags": r.tags, "bytes": r.bytes, "created": r.created, "home": r.home, "runs": r.runs}),
                )?);
            }
        } else if rows.is_empty() {
            eprintln!("no moat images");
        } else {
            out.push_str(&format!(
                "{:<12}  {:<28}  {:<9}  {:<6}  RUNS\n",
                "IMAGE ID", "TAG", "SIZE", "AGE"
            ));
            for r in &rows {
                let runs = if r.runs.is_empty() {
                    "-".to_string()
                } else {
                    r.runs.join(",")
                };
                out.push_str(&format!(
                    "{:<12}  {:<28}  {:<9}  {:<6}  {runs}\n",
                    short(&r.id),
                    r.tags.first().map(String::as_str).unwrap_or("<none>"),
                    mb(r.bytes),
                    age(r.created),
                ));
            }
        }
    }
    cli::write_stdout(out.as_bytes())
}
