//! Support for the end-to-end tests: a moat environment bound to a real Docker engine (with
//! timeouts and cleanup of whatever the runs left), the offline base image, and a loopback
//! stand-in for the GitHub API that answers only when it receives the real token.
#![forbid(unsafe_code)]

use moat_testkit::{Run, TestEnv};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Is a Docker engine reachable? Tests that need one skip (loudly) when it is not, unless
/// `MOAT_REQUIRE_DOCKER=1` (which `scripts/test`, and so CI, sets): then a missing engine
/// fails the test instead of letting it pass without having run.
pub fn docker_ready() -> bool {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("MOAT_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "no Docker engine reachable, and MOAT_REQUIRE_DOCKER=1 says this test must run"
        );
        eprintln!("SKIPPED: no Docker engine reachable");
    }
    ok
}

/// A hermetic moat environment with a workspace, whose runs are cleaned up on drop.
pub struct Moat {
    pub env: TestEnv,
    pub ws: PathBuf,
}

impl Default for Moat {
    fn default() -> Self {
        Self::new()
    }
}

impl Moat {
    pub fn new() -> Self {
        let mut env = TestEnv::new();
        env.env("TERM", "dumb");
        let ws = env.path().join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        let m = Moat { env, ws };
        // The base image, built offline once for every test process (idempotent, locked).
        let r = m.run_timeout("moat-launch", &["image", "bootstrap"], None, 600);
        assert_eq!(r.code(), 0, "image bootstrap failed: {}", r.stderr());
        m
    }

    /// Run a tool in the workspace with a deadline (seconds); stdin from `input` or nothing.
    pub fn run_timeout(&self, tool: &str, args: &[&str], input: Option<&[u8]>, secs: u64) -> Run {
        let mut c = self.env.cmd(tool);
        c.args(args).current_dir(&self.ws);
        run_with_deadline(c, format!("{tool} {}", args.join(" ")), input, secs)
    }

    pub fn launch(&self, args: &[&str]) -> Run {
        self.run_timeout("moat-launch", args, None, 300)
    }

    /// `moat-launch run --no-sandbox -- sh -c SCRIPT` in the workspace, allowing for an
    /// image build (ten minutes).
    pub fn sh(&self, script: &str) -> Run {
        self.run_timeout(
            "moat-launch",
            &["run", "--no-sandbox", "--", "sh", "-c", script],
            None,
            600,
        )
    }

    /// `moat-launch run --no-sandbox OPTS... -- sh -c SCRIPT` in the workspace, with
    /// [`Moat::launch`]'s deadline.
    pub fn launch_sh(&self, opts: &[&str], script: &str) -> Run {
        let mut all = vec!["run", "--no-sandbox"];
        all.extend_from_slice(opts);
        all.extend_from_slice(&["--", "sh", "-c", script]);
        self.launch(&all)
    }

    /// `moat-launch run -d --no-sandbox ARGS...`, asserted to succeed; the new run's id once
    /// it is running.
    pub fn detached(&self, args: &[&str]) -> String {
        let before = self.run_ids();
        let mut all = vec!["run", "-d", "--no-sandbox"];
        all.extend_from_slice(args);
        let r = self.launch(&all);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        let id = self
            .run_ids()
            .into_iter()
            .find(|i| !before.contains(i))
            .expect("a new run");
        self.wait_state(&id, &["running"], 60);
        id
    }

    /// Write the workspace's moat.yaml.
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.ws.join("moat.yaml"), text).unwrap();
    }

    /// `moat-launch trust --yes PATH` (default: the workspace): the user approves what its
    /// moat.yaml asks for (grants, secrets, mounts outside it...), as a run without a
    /// terminal needs.
    pub fn trust(&self, path: Option<&Path>) {
        let p = path.unwrap_or(&self.ws).to_string_lossy().into_owned();
        let r = self.run_timeout("moat-launch", &["trust", "--yes", &p], None, 60);
        assert_eq!(r.code(), 0, "moat trust: {}", r.stderr());
    }

    pub fn moat_home(&self) -> &Path {
        &self.env.moat_home
    }

    /// The run's directory under MOAT_HOME (metadata, logs, trace, audit log).
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.moat_home().join("runs").join(id)
    }

    /// The latest run (run ids are random, so by creation time).
    pub fn newest_run(&self) -> String {
        self.run_ids()
            .into_iter()
            .max_by_key(|id| {
                self.metadata(id)["created_at"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .expect("a run")
    }

    /// A moat environment whose proxy reaches `gh` (the GitHub stand-in) instead of GitHub,
    /// with `moat grant github` done from `GH_TOKEN=token`.
    pub fn with_github(gh: &github::GithubStandIn, token: &str) -> Moat {
        let mut m = Moat::new();
        m.env
            .env("MOAT_PROXY_CONNECT_TO", gh.connect_to())
            .env("MOAT_PROXY_EXTRA_CA", &gh.ca_file);
        let mut c = m.env.cmd("moat");
        c.args(["grant", "github", "--no-validate"])
            .env("GH_TOKEN", token);
        let r = run_with_deadline(c, "moat grant github".into(), None, 60);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        m
    }

    /// Metadata of the latest run (or the one named).
    pub fn metadata(&self, id: &str) -> serde_json::Value {
        let p = self.run_dir(id).join("metadata.json");
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    }

    pub fn run_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.moat_home().join("runs"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with("run_"))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Wait (bounded) until the run's state is one of `states`.
    pub fn wait_state(&self, id: &str, states: &[&str], secs: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let m = self.metadata(id);
            if states.contains(&m["state"].as_str().unwrap_or_default()) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} never reached {states:?}: {m}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait (bounded) until the run's output contains `needle`.
    pub fn wait_log(&self, id: &str, needle: &str, secs: u64) {
        let p = self.run_dir(id).join("logs.jsonl");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if std::fs::read_to_string(&p)
                .unwrap_or_default()
                .contains(needle)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} never printed {needle:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Moat {
    fn drop(&mut self) {
        // Whatever a failed test left behind: the runs' containers and networks.
        for id in self.run_ids() {
            // The main container and any service sidecar: everything labelled with the run.
            let labelled = Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("label=moat.run={id}")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            let _ = Command::new("docker")
                .args(["rm", "-f", &format!("moat-{id}")])
                .args(labelled.split_whitespace())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("docker")
                .args(["network", "rm", &format!("moat-{id}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let m = self
                .moat_home()
                .join("runs")
                .join(&id)
                .join("metadata.json");
            if let Ok(b) = std::fs::read(m)
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
            {
                if let Some(n) = v["network"].as_str() {
                    let _ = Command::new("docker")
                        .args(["network", "rm", n])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
                for k in ["supervisor_pid", "proxy_pid"] {
                    if let Some(pid) = v[k].as_u64()
                        && std::fs::read(format!("/proc/{pid}/cmdline"))
                            .map(|c| {
                                let c = String::from_utf8_lossy(&c);
                                if k == "proxy_pid" {
                                    c.contains("moat-proxy")
                                } else {
                                    c.contains(&id)
                                }
                            })
                            .unwrap_or(false)
                    {
                        let _ = Command::new("kill").arg(pid.to_string()).status();
                    }
                }
            }
        }
    }
}

pub fn run_with_deadline(mut c: Command, what: String, input: Option<&[u8]>, secs: u64) -> Run {
    use std::io::{Read, Write};
    c.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    if let Some(i) = input {
        let _ = child.stdin.take().unwrap().write_all(i);
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut b = vec![];
        let _ = out.read_to_end(&mut b);
        b
    });
    let t2 = std::thread::spawn(move || {
        let mut b = vec![];
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {secs}s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = t1.join().unwrap();
    let stderr = t2.join().unwrap();
    Run::new(
        what,
        std::process::Output {
            status,
            stdout,
            stderr,
        },
    )
}

/// A host service on 0.0.0.0 that hands `canary` to whoever connects, and counts the
/// connections: what a run must not reach from its container.
pub fn host_service(canary: &str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (h2, canary) = (hits.clone(), canary.to_string());
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            h2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = c.write_all(canary.as_bytes());
        }
    });
    (port, hits)
}

pub mod agents;
pub mod github;

/// `docker ARGS`' standard output (empty when it fails).
pub fn docker_out(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A stand-in for the 1Password CLI: `op read op://Dev/NAME/field` prints the value given
/// for NAME (kept outside MOAT_HOME, under `root`) and a newline, as op does; anything else
/// fails as op does. Returns the directory to put first on PATH.
pub fn stand_in_op(root: &Path, values: &[(&str, &str)]) -> PathBuf {
    let bin = root.join("opbin");
    let dir = root.join("opvalues");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, value) in values {
        std::fs::write(dir.join(name), value).unwrap();
    }
    let op = bin.join("op");
    std::fs::write(
        &op,
        format!(
            "#!/bin/sh\n\
             if [ \"$1\" = read ]; then case \"$2\" in op://Dev/*/field)\n\
             n=${{2#op://Dev/}}; n=${{n%/field}}\n\
             if [ -f '{v}'/\"$n\" ]; then cat '{v}'/\"$n\"; printf '\\n'; exit 0; fi ;; esac; fi\n\
             echo \"[ERROR] could not read secret '$2'\" >&2; exit 1\n",
            v = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&op, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

pub mod tmux;
