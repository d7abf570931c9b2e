//! The supervisor's part of an agent run: stage the CLI's HOME files (placeholders only) in
//! the run directory for moat-init to copy, keep the session logs in the run directory
//! (`sync_logs`), continue a kept session (`--resume`), and route `claude.base_url` through
//! the proxy's relay with the Anthropic grant injected for the base URL's host too.

use crate::agent::{self, AgentSpec};
use crate::config::RunSpec;
use crate::run::GrantRules;
use crate::store::Store;
use moat_core::{Error, MoatHome, Result};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

pub type Transform = Arc<dyn Fn(Vec<String>) -> Vec<String> + Send + Sync>;

pub struct AgentRun {
    pub env: Vec<(String, String)>,
    /// `SRC:DST[:ro]` for the container.
    pub binds: Vec<String>,
    /// `relay` records for the proxy's rules pipe.
    pub relays: Vec<String>,
    /// The relay `ANTHROPIC_BASE_URL` goes through.
    pub base_relay: Option<String>,
    /// Applied to the grants' inject records (now and on every renewal).
    pub transform: Transform,
}

const BASE_RELAY: &str = "claude-base-url";

pub fn prepare(
    _home: &MoatHome,
    store: &Store,
    id: &str,
    spec: &RunSpec,
    a: &AgentSpec,
    rules: &GrantRules,
) -> Result<AgentRun> {
    let dir = store.dir(id);
    let si = agent::sign_in(&rules.inject, &rules.env);
    let local = spec
        .agent_mcp
        .iter()
        .map(|l| Ok((l.clone(), crate::local_mcp::resolve(l, &rules.env)?)))
        .collect::<Result<Vec<_>>>()?;
    let (mut files, env) = agent::home_files(a, &si, &local)?;
    if let Some(p) = &spec.claude_plugins {
        crate::plugins::apply(&mut files, p)?;
    }
    let stage = dir.join("agent-home");
    moat_core::fsutil::create_private_dir(&stage)?;
    for (rel, data) in &files {
        agent::write_staged(&stage, rel, data)?;
    }
    let mut binds = vec![format!("{}:{}:ro", stage.display(), agent::HOME_MOUNT)];
    let (in_home, sub) = agent::log_dir(&a.cli);
    if a.sync_logs || a.resume.is_some() {
        let logs = dir.join(sub);
        moat_core::fsutil::create_private_dir(&logs)?;
        if let Some(r) = &a.resume {
            let m = store.resolve(Some(r))?;
            let from = store.dir(&m.id).join(sub);
            if !from.is_dir() {
                return Err(Error::no(format!(
                    "run {} ({}) kept no {} session logs to resume",
                    m.name, m.id, a.cli
                ))
                .with_hint(format!("`moat {} sessions` lists the runs that did", a.cli)));
            }
            copy_tree(&from, &logs)?;
        }
        binds.push(format!("{}:/home/moatuser/{in_home}", logs.display()));
    }
    let mut relays = vec![];
    let mut base_relay = None;
    let mut base_host: Option<String> = None;
    if let Some(u) = &a.base_url {
        relays.push(moat_core::jsonl::line(
            "relay",
            &serde_json::json!({"name": BASE_RELAY, "url": u}),
        )?);
        base_relay = Some(BASE_RELAY.to_string());
        base_host = Some(base_inject_host(u).ok_or_else(|| {
            Error::config(format!("claude.base_url: {u:?} is not an http(s) URL"))
        })?);
    }
    let transform: Transform = match base_host {
        None => Arc::new(|v: Vec<String>| v),
        Some(h) => Arc::new(move |v: Vec<String>| with_base_host(v, &h)),
    };
    Ok(AgentRun {
        env,
        binds,
        relays,
        base_relay,
        transform,
    })
}

/// The host pattern the Anthropic grant is injected for: the base URL's `host:port`, with
/// `http://` kept for a plain-HTTP base URL (the proxy injects over plain HTTP only then).
fn base_inject_host(url: &str) -> Option<String> {
    let a = agent::url_authority(url)?;
    Some(if url.starts_with("http://") {
        format!("http://{a}")
    } else {
        a
    })
}

/// Every inject record for api.anthropic.com again, for the base URL's host.
fn with_base_host(lines: Vec<String>, host: &str) -> Vec<String> {
    let mut out = lines.clone();
    for l in &lines {
        let Ok(mut v) = serde_json::from_str::<Value>(l.trim()) else {
            continue;
        };
        let anthropic = v["hosts"]
            .as_array()
            .is_some_and(|h| h.iter().any(|x| x == "api.anthropic.com"));
        if anthropic {
            v["hosts"] = serde_json::json!([host]);
            out.push(format!("{v}\n"));
        }
    }
    out
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for e in
        std::fs::read_dir(from).map_err(|e| Error::io(format!("reading {}", from.display()), e))?
    {
        let e = e.map_err(|e| Error::io(format!("reading {}", from.display()), e))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e
            .file_type()
            .map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
        if ft.is_dir() {
            moat_core::fsutil::create_private_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)
                .map_err(|e| Error::io(format!("copying {}", src.display()), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::url_authority as authority;

    #[test]
    fn the_base_url_host_gets_the_anthropic_injection_too() {
        let l = "{\"v\":1,\"type\":\"inject\",\"grant\":\"anthropic\",\"hosts\":[\"api.anthropic.com\"],\"header\":\"x-api-key\",\"value\":\"K\"}\n".to_string();
        let other = "{\"v\":1,\"type\":\"inject\",\"grant\":\"github\",\"hosts\":[\"api.github.com\"],\"header\":\"Authorization\",\"value\":\"T\"}\n".to_string();
        let out = with_base_host(vec![l, other], "localhost:8787");
        assert_eq!(out.len(), 3);
        assert!(out[2].contains("\"localhost:8787\""));
        assert!(out[2].contains("\"grant\":\"anthropic\""));
        assert_eq!(
            authority("http://LocalHost:8787/x").unwrap(),
            "localhost:8787"
        );
        assert_eq!(authority("https://llm.example").unwrap(), "llm.example:443");
        assert!(authority("ftp://x").is_none());
        assert_eq!(
            base_inject_host("http://LocalHost:8787/x").as_deref(),
            Some("http://localhost:8787")
        );
        assert_eq!(
            base_inject_host("https://llm.example/v1").as_deref(),
            Some("llm.example:443")
        );
    }
}
