//! The hostname-routing table: one file per running agent, `MOAT_HOME/routes/NAME.json`,
//! written atomically by moat-launch when a run with `ports:` starts and removed when it
//! ends; read by moat-proxy's router on every request. A route names the run it belongs to,
//! so the router can refuse routes whose run is no longer running.
//!
//! Also the rules for the names that become host names: a run name and an endpoint name
//! must each be one DNS label (`a-z`, `0-9`, `-`, not at either end, at most 63).

use crate::error::{Error, Result};
use crate::{MoatHome, fsutil};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Route {
    /// The run's name: `NAME.localhost`.
    pub name: String,
    pub run_id: String,
    /// Endpoint name → the container's address on its run network and the container port.
    pub endpoints: BTreeMap<String, SocketAddr>,
}

/// The router's port when nothing picks another.
pub const DEFAULT_ROUTER_PORT: u16 = 8080;

/// The router's port: `flag` (the value of `--port`) over `MOAT_PROXY_PORT` over 8080, one
/// rule for the launcher (which writes the URLs) and the router (which listens). The error
/// names where the bad value came from.
pub fn router_port(flag: Option<&str>) -> std::result::Result<u16, String> {
    let (v, what) = match flag {
        Some(v) => (v.to_string(), "--port"),
        None => match std::env::var("MOAT_PROXY_PORT") {
            Ok(v) if !v.is_empty() => (v, "MOAT_PROXY_PORT"),
            _ => return Ok(DEFAULT_ROUTER_PORT),
        },
    };
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{what}: {v:?} is not a port number (1-65535)")),
    }
}

pub fn dir(home: &MoatHome) -> PathBuf {
    home.root().join("routes")
}

pub fn path(home: &MoatHome, name: &str) -> PathBuf {
    dir(home).join(format!("{name}.json"))
}

/// Is `s` one DNS label as moat uses them (lowercase)? Returns what is wrong.
pub fn check_label(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!("{s:?} must be 1-63 characters long"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "{s:?} may hold only lowercase letters, digits and '-' (it becomes part of a host name)"
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(format!("{s:?} may not start or end with '-'"));
    }
    Ok(())
}

/// Register (or replace) a route; the caller checks that no other live run holds the name.
pub fn register(home: &MoatHome, r: &Route) -> Result<()> {
    check_label(&r.name).map_err(|m| Error::usage(format!("run name: {m}")))?;
    for ep in r.endpoints.keys() {
        check_label(ep).map_err(|m| Error::config(format!("ports: {m}")))?;
    }
    let d = dir(home);
    fsutil::create_private_dir(&d)?;
    let body = serde_json::to_vec_pretty(r).map_err(|e| Error::software(e.to_string()))?;
    fsutil::write_atomic(&path(home, &r.name), &body, 0o600)
}

/// Read the route registered for `name`, if any (a broken file reads as none).
pub fn load(home: &MoatHome, name: &str) -> Option<Route> {
    if check_label(name).is_err() {
        return None;
    }
    let b = std::fs::read(path(home, name)).ok()?;
    let r: Route = serde_json::from_slice(&b).ok()?;
    (r.name == name).then_some(r)
}

/// Remove `name`'s route if it belongs to `run_id` (a newer run of the same name keeps its own).
pub fn unregister(home: &MoatHome, name: &str, run_id: &str) {
    if let Some(r) = load(home, name)
        && r.run_id == run_id
    {
        let _ = std::fs::remove_file(path(home, name));
    }
}

/// Every well-formed route file, by name.
pub fn all(home: &MoatHome) -> Vec<Route> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(dir(home)) else {
        return out;
    };
    for e in rd.flatten() {
        let f = e.file_name();
        let Some(stem) = f.to_str().and_then(|f| f.strip_suffix(".json")) else {
            continue;
        };
        if let Some(r) = load(home, stem) {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Is the run a route names still running (its metadata says `starting` or `running`)?
pub fn run_is_live(home: &MoatHome, run_id: &str) -> bool {
    if !run_id.starts_with("run_") || run_id.contains('/') {
        return false;
    }
    let Ok(b) = std::fs::read(home.run_dir(run_id).join("metadata.json")) else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) else {
        return false;
    };
    matches!(v["state"].as_str(), Some("running" | "starting"))
}

/// The routes whose runs are live: what a router may serve.
pub fn live(home: &MoatHome) -> Vec<Route> {
    all(home)
        .into_iter()
        .filter(|r| run_is_live(home, &r.run_id))
        .collect()
}

/// `MOAT_URL_WEB`-style name for an endpoint: uppercase, '-' as '_'.
pub fn env_suffix(endpoint: &str) -> String {
    endpoint.to_ascii_uppercase().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_router_port_flag_is_checked_and_named() {
        assert_eq!(router_port(Some("9000")), Ok(9000));
        for bad in ["0", "65536", "x", ""] {
            let e = router_port(Some(bad)).unwrap_err();
            assert!(e.starts_with("--port: "), "{e}");
        }
    }

    #[test]
    fn labels() {
        for ok in ["web", "a", "dark-mode", "x1", &"a".repeat(63)] {
            check_label(ok).unwrap();
        }
        for bad in ["", "Web", "a_b", "a.b", "-a", "a-", &"a".repeat(64), "é"] {
            assert!(check_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn register_load_unregister_only_own() {
        let d = tempfile::tempdir().unwrap();
        let home = MoatHome::at(d.path());
        let r = Route {
            name: "dark-mode".into(),
            run_id: "run_000000000001".into(),
            endpoints: BTreeMap::from([("web".into(), "172.18.0.2:3000".parse().unwrap())]),
        };
        register(&home, &r).unwrap();
        assert_eq!(load(&home, "dark-mode"), Some(r.clone()));
        assert_eq!(all(&home).len(), 1);
        assert!(live(&home).is_empty(), "no metadata: not live");
        unregister(&home, "dark-mode", "run_000000000002");
        assert!(load(&home, "dark-mode").is_some());
        unregister(&home, "dark-mode", "run_000000000001");
        assert!(load(&home, "dark-mode").is_none());
        let bad = Route {
            name: "Bad.Name".into(),
            ..r
        };
        assert!(register(&home, &bad).is_err());
        assert_eq!(env_suffix("my-api"), "MY_API");
    }
}
