//! Run directories and `metadata.json`: written atomically under the run's lock, so the CLI,
//! the supervisor and `moat stop` never tear a write. Also resolves what a person typed
//! (id, id prefix, name; nothing = latest) to a run.

use moat_core::fsutil::write_atomic;
use moat_core::lock::FileLock;
use moat_core::{Error, MoatHome, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Created,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

impl State {
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Stopped | State::Failed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub v: u32,
    pub id: String,
    pub name: String,
    pub agent: String,
    pub workspace: PathBuf,
    pub grants: Vec<String>,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// moat-launch's own exit code when the run failed before its command ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_pid: Option<u32>,
    pub runtime: String,
    pub sandbox: bool,
    pub interactive: bool,
    pub detached: bool,
    #[serde(default)]
    pub services: Vec<String>,
    /// `ports:` endpoints and their URLs through the hostname router.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub endpoints: std::collections::BTreeMap<String, String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
    /// The audit log as moat-audit left it when the run ended, kept apart from the log so
    /// a log later cut back behind it can be noticed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditRecord>,
    /// `--worktree`: the branch, and the main checkout the worktree belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree_branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree_repo: Option<PathBuf>,
    /// Model usage so far (budget.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::budget::Spend>,
}

/// `audit` in metadata.json: the seal, or `"disabled"` for a run started with `--no-audit`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum AuditRecord {
    Sealed(AuditSeal),
    Off(AuditOff),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum AuditOff {
    Disabled,
}

/// From moat-audit's `audit_closed` record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditSeal {
    pub tree_size: u64,
    pub root: String,
}

pub struct Store {
    pub home: MoatHome,
}

impl Store {
    pub fn new(home: MoatHome) -> Self {
        Store { home }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.home.run_dir(id)
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("metadata.json")
    }

    fn lock(&self, id: &str) -> Result<FileLock> {
        FileLock::exclusive(&self.dir(id).join(".metadata.lock"))
    }

    pub fn create(&self, m: &Metadata) -> Result<()> {
        self.home.ensure_dir(&self.home.runs_dir())?;
        self.home.ensure_dir(&self.dir(&m.id))?;
        let _l = self.lock(&m.id)?;
        self.write(m)?;
        moat_core::run_names::record(&self.home, &m.id, &m.name);
        Ok(())
    }

    fn write(&self, m: &Metadata) -> Result<()> {
        let mut s = serde_json::to_vec_pretty(m)?;
        s.push(b'\n');
        write_atomic(&self.meta_path(&m.id), &s, 0o600)
    }

    pub fn load(&self, id: &str) -> Result<Metadata> {
        let p = self.meta_path(id);
        let b = std::fs::read(&p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
        serde_json::from_slice(&b).map_err(|e| Error::data(format!("{}: {e}", p.display())))
    }

    /// Read-modify-write under the run's lock.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Metadata)) -> Result<Metadata> {
        let _l = self.lock(id)?;
        let mut m = self.load(id)?;
        f(&mut m);
        self.write(&m)?;
        Ok(m)
    }

    /// Move to `state` unless the run already ended (a late writer never resurrects a run).
    pub fn set_state(&self, id: &str, state: State, reason: Option<String>) -> Result<Metadata> {
        self.update(id, |m| {
            if m.state.is_terminal() && !state.is_terminal() {
                return;
            }
            if m.state.is_terminal() && state.is_terminal() {
                return;
            }
            m.state = state;
            if reason.is_some() {
                m.reason = reason;
            }
            if state.is_terminal() && m.stopped_at.is_none() {
                m.stopped_at = Some(moat_core::timefmt::now_rfc3339());
            }
        })
    }

    /// Every run, oldest first.
    pub fn all(&self) -> Result<Vec<Metadata>> {
        let dir = self.home.runs_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        let mut out = vec![];
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with("run_") {
                continue;
            }
            if let Ok(m) = self.load(&name) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Exact id > id prefix > name (latest with that name); none = the latest run.
    pub fn resolve(&self, what: Option<&str>) -> Result<Metadata> {
        let all = self.all()?;
        let Some(w) = what else {
            return all
                .into_iter()
                .next_back()
                .ok_or_else(|| Error::noinput("there are no runs"));
        };
        if let Some(m) = all.iter().find(|m| m.id == w) {
            return Ok(m.clone());
        }
        let by_prefix: Vec<&Metadata> = all
            .iter()
            .filter(|m| {
                m.id.starts_with(w) || m.id.strip_prefix("run_").is_some_and(|s| s.starts_with(w))
            })
            .collect();
        match by_prefix.len() {
            1 => return Ok(by_prefix[0].clone()),
            n if n > 1 => {
                return Err(Error::usage(format!(
                    "{w:?} matches {n} runs; give more of the id"
                )));
            }
            _ => {}
        }
        all.iter()
            .rev()
            .find(|m| m.name == w)
            .cloned()
            .ok_or_else(|| Error::noinput(format!("no run with id or name {w:?}")))
    }

    pub fn remove_dir(&self, id: &str) -> Result<()> {
        let d = self.dir(id);
        std::fs::remove_dir_all(&d).map_err(|e| Error::io(format!("removing {}", d.display()), e))
    }
}

/// Is `pid` a live supervisor of `run_id`? Pids get reused, so the command line must name
/// the run; but a process in the middle of exec (setsid becoming moat-launch) briefly shows
/// an empty command line, which counts as alive. A zombie is dead.
pub fn supervisor_alive(pid: u32, run_id: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next());
    if matches!(state, Some("Z" | "X")) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(c) if c.is_empty() => true,
        Ok(c) => {
            let s = String::from_utf8_lossy(&c);
            s.contains("__supervise") && s.contains(run_id)
        }
        Err(_) => false,
    }
}

/// Dead on two looks a tenth of a second apart: reconciliation kills what it finds, so a
/// transient reading must not count.
pub fn supervisor_gone(pid: u32, run_id: &str) -> bool {
    if supervisor_alive(pid, run_id) {
        return false;
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    !supervisor_alive(pid, run_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, name: &str, at: &str) -> Metadata {
        Metadata {
            v: 1,
            id: id.into(),
            name: name.into(),
            agent: name.into(),
            workspace: "/w".into(),
            grants: vec![],
            state: State::Created,
            reason: None,
            exit_code: None,
            error_code: None,
            image: None,
            container_id: None,
            network: None,
            proxy_addr: None,
            supervisor_pid: None,
            proxy_pid: None,
            runtime: "docker".into(),
            sandbox: false,
            interactive: false,
            detached: false,
            services: vec![],
            endpoints: Default::default(),
            created_at: at.into(),
            started_at: None,
            stopped_at: None,
            audit: None,
            worktree_branch: None,
            worktree_repo: None,
            usage: None,
        }
    }

    #[test]
    fn resolves_ids_prefixes_names_and_latest() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(MoatHome::at(d.path()));
        s.create(&meta("run_aaaaaaaaaaaa", "one", "2026-01-01T00:00:00.000Z"))
            .unwrap();
        s.create(&meta("run_abbbbbbbbbbb", "two", "2026-01-02T00:00:00.000Z"))
            .unwrap();
        assert_eq!(s.resolve(None).unwrap().name, "two");
        assert_eq!(s.resolve(Some("run_aaa")).unwrap().name, "one");
        assert_eq!(s.resolve(Some("abb")).unwrap().name, "two");
        assert!(s.resolve(Some("a")).is_err());
        assert_eq!(s.resolve(Some("one")).unwrap().id, "run_aaaaaaaaaaaa");
        assert!(s.resolve(Some("nope")).is_err());
    }

    #[test]
    fn ended_runs_stay_ended() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(MoatHome::at(d.path()));
        s.create(&meta("run_aaaaaaaaaaaa", "one", "x")).unwrap();
        s.set_state("run_aaaaaaaaaaaa", State::Stopped, None)
            .unwrap();
        let m = s
            .set_state("run_aaaaaaaaaaaa", State::Running, None)
            .unwrap();
        assert_eq!(m.state, State::Stopped);
        assert!(m.stopped_at.is_some());
    }
}
