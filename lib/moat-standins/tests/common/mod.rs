//! Shared harness: the agent CLIs installed once per target directory, the real
//! moat-proxy started with rules on stdin and routed to a stand-in, and CLI runs with a
//! timeout in a HOME that holds placeholders only.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moat_standins::Standin;

pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// The directory holding node_modules/.bin/{claude,codex,gemini}; installs them with
/// install-agent-clis.sh (under a lock, once per target directory). Fails the test
/// with the installer's output when that is impossible.
pub fn agent_clis() -> PathBuf {
    let dir = moat_testkit::bin_dir()
        .parent()
        .expect("target dir")
        .join("agent-clis");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("install-agent-clis.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run install-agent-clis.sh");
    assert!(
        out.status.success(),
        "installing the agent CLIs with {} failed (needs npm and the npm registry): {}\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("node_modules").join(".bin")
}

/// A running moat-proxy; killed on drop.
pub struct Proxy {
    pub child: Child,
    pub addr: String,
    pub ca: PathBuf,
    pub token: String,
    pub trace: PathBuf,
    pub stdout: Arc<Mutex<Vec<u8>>>,
    pub stderr: Arc<Mutex<Vec<u8>>>,
}

fn drain(mut r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut b = [0u8; 8192];
        while let Ok(n) = r.read(&mut b) {
            if n == 0 {
                break;
            }
            buf.lock().unwrap().extend_from_slice(&b[..n]);
        }
    });
}

impl Proxy {
    /// Start `moat-proxy serve` with `rules` (JSON lines) on stdin, every stand-in host
    /// routed to `standin`, its CA trusted upstream, its own CA and trace under `dir`.
    pub fn start(dir: &Path, rules: &str, standin: &Standin) -> Proxy {
        let pdir = dir.join("proxy");
        std::fs::create_dir_all(&pdir).unwrap();
        let token = "moat-test-proxy-token-0123456789".to_string();
        let token_file = pdir.join("token");
        std::fs::write(&token_file, &token).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let trace = pdir.join("trace.jsonl");
        let mut cmd = Command::new(moat_testkit::bin("moat-proxy"));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &pdir)
            .env("MOAT_HOME", pdir.join("moat-home"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--rules", "-"])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--trace")
            .arg(&trace)
            .arg("--ca-dir")
            .arg(pdir.join("ca"))
            .arg("--extra-ca")
            .arg(standin.ca_pem_path());
        for c in standin.connect_to() {
            cmd.arg("--connect-to").arg(c);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn moat-proxy");
        {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(rules.as_bytes()).unwrap();
        }
        let stderr = Arc::new(Mutex::new(Vec::new()));
        drain(child.stderr.take().unwrap(), stderr.clone());
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).expect("read listening record");
        let rec: serde_json::Value = serde_json::from_str(first.trim()).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!(
                "moat-proxy did not print a listening record ({e}): {first:?}; stderr: {}",
                String::from_utf8_lossy(&stderr.lock().unwrap())
            )
        });
        assert_eq!(rec["type"], "listening", "{first}");
        let stdout = Arc::new(Mutex::new(first.clone().into_bytes()));
        drain(out, stdout.clone());
        Proxy {
            child,
            addr: rec["addr"].as_str().unwrap().to_string(),
            ca: PathBuf::from(rec["ca"].as_str().unwrap()),
            token,
            trace,
            stdout,
            stderr,
        }
    }

    /// `http://moat:TOKEN@ADDR`, the proxy URL a client in a run gets.
    pub fn url(&self) -> String {
        format!("http://moat:{}@{}", self.token, self.addr)
    }

    pub fn trace_text(&self) -> String {
        std::fs::read_to_string(&self.trace).unwrap_or_default()
    }

    /// Everything the proxy wrote: stdout records, stderr, the trace.
    pub fn all_output(&self) -> String {
        format!(
            "{}\n{}\n{}",
            String::from_utf8_lossy(&self.stdout.lock().unwrap()),
            String::from_utf8_lossy(&self.stderr.lock().unwrap()),
            self.trace_text()
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One inject record for the proxy's rules pipe.
pub fn inject(
    grant: &str,
    hosts: &[&str],
    header: &str,
    value: &str,
    extra: &[(&str, &str)],
) -> String {
    let extra: Vec<serde_json::Value> = extra
        .iter()
        .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
        .collect();
    let mut rec = serde_json::json!({"v":1,"type":"inject","grant":grant,"hosts":hosts,
        "header":header,"value":value});
    if !extra.is_empty() {
        rec["extra_headers"] = serde_json::Value::Array(extra);
    }
    format!("{rec}\n")
}

/// A finished CLI run.
pub struct CliRun {
    pub what: String,
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    pub fn describe(&self) -> String {
        format!(
            "{}: exit {:?}{}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.code,
            if self.timed_out { " (timed out)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

/// An agent CLI run in a cleared environment: HOME, PATH (node, git), the proxy
/// variables and the moat CA, plus `env`.
pub fn run_cli(
    bin: &Path,
    args: &[&str],
    home: &Path,
    cwd: &Path,
    proxy: &Proxy,
    env: &[(&str, String)],
) -> CliRun {
    let mut cmd = Command::new(bin);
    let url = proxy.url();
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home)
        .env("LANG", "C.UTF-8")
        .env("TERM", "dumb")
        .env("HTTPS_PROXY", &url)
        .env("https_proxy", &url)
        .env("HTTP_PROXY", &url)
        .env("http_proxy", &url)
        .env("NO_PROXY", "")
        .env("no_proxy", "")
        .env("NODE_EXTRA_CA_CERTS", &proxy.ca)
        .env("SSL_CERT_FILE", &proxy.ca)
        .current_dir(cwd)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, CLI_TIMEOUT)
}

pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> CliRun {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    drain(child.stdout.take().unwrap(), out.clone());
    drain(child.stderr.take().unwrap(), err.clone());
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            // The CLI's own children (node, ripgrep) are in its process group.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Let the readers see end of file.
    std::thread::sleep(Duration::from_millis(100));
    let stdout = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err.lock().unwrap()).into_owned();
    CliRun {
        what,
        code: status.code(),
        timed_out,
        stdout,
        stderr,
    }
}

pub fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Assert the canary is nowhere under `root` (files), nor in `texts`.
pub fn assert_canary_absent(canary: &str, root: &Path, texts: &[(&str, &str)]) {
    let hits = moat_testkit::files_containing(root, canary.as_bytes());
    assert!(hits.is_empty(), "the real credential is in files: {hits:?}");
    for (what, t) in texts {
        assert!(!t.contains(canary), "the real credential is in {what}");
    }
}

/// A unique fake credential that must never leave the host side.
pub fn canary(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}REALCANARY{n:x}{:x}", std::process::id())
}

/// Milliseconds since the epoch, `days` from now.
pub fn epoch_ms_in(days: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    now + days * 24 * 3600 * 1000
}

/// One CLI run against one stand-in through one proxy, in a fresh environment.
pub struct Scenario {
    pub env: moat_testkit::TestEnv,
    pub standin: Standin,
    pub proxy: Proxy,
    pub ws: PathBuf,
}

impl Scenario {
    pub fn new(standin: Standin, rules: &str) -> Scenario {
        let env = moat_testkit::TestEnv::new();
        let proxy = Proxy::start(env.path(), rules, &standin);
        let ws = env.path().join("workspace");
        std::fs::create_dir_all(&ws).unwrap();
        Scenario {
            env,
            standin,
            proxy,
            ws,
        }
    }

    pub fn home(&self) -> &Path {
        &self.env.home
    }

    pub fn run(&self, bin: &Path, args: &[&str], env: &[(&str, String)]) -> CliRun {
        run_cli(bin, args, &self.env.home, &self.ws, &self.proxy, env)
    }

    /// Context for a failed assertion: the run, what the stand-in saw, the trace.
    pub fn context(&self, run: &CliRun) -> String {
        format!(
            "{}\n--- stand-in requests\n{}\n--- proxy\n{}",
            run.describe(),
            self.standin.request_lines(),
            self.proxy.all_output()
        )
    }

    /// The run printed the stand-in's answer; the model endpoint (`model_path` prefix
    /// on `host`) answered 200 with the real credential; no request to a host in
    /// `granted` carried the placeholder; the real credential is in no file of the
    /// environment (HOME, workspace, proxy trace) and in no output.
    pub fn assert_answered(
        &self,
        run: &CliRun,
        host: &str,
        model_path: &str,
        real: &str,
        placeholder: &str,
        granted: &[&str],
    ) {
        let ctx = || self.context(run);
        // What the CLI asked for, kept in the test's log (AGENTS.md is written from it).
        eprintln!("stand-in requests:\n{}", self.standin.request_lines());
        eprintln!("proxy trace:\n{}", self.proxy.trace_text());
        assert!(
            !run.timed_out && run.code == Some(0),
            "the CLI failed\n{}",
            ctx()
        );
        let answer = moat_standins::Options::new(self.standin.kind(), "").answer;
        assert!(
            run.stdout.contains(&answer),
            "the CLI did not print the stand-in's answer\n{}",
            ctx()
        );
        let reqs = self.standin.requests();
        let model: Vec<_> = reqs
            .iter()
            .filter(|r| r.host == host && r.path_only().starts_with(model_path))
            .collect();
        assert!(
            !model.is_empty(),
            "no request reached {host}{model_path}\n{}",
            ctx()
        );
        assert!(
            model
                .iter()
                .any(|r| (r.status == 200 || r.status == 101) && r.contains(real)),
            "the model endpoint never got the real credential\n{}",
            ctx()
        );
        for r in reqs.iter().filter(|r| granted.contains(&r.host.as_str())) {
            assert!(
                !r.contains(placeholder),
                "a request to a granted host carried the placeholder: {}\n{}",
                r.line(),
                ctx()
            );
        }
        assert_canary_absent(
            real,
            self.env.path(),
            &[
                ("the CLI's stdout", &run.stdout),
                ("the CLI's stderr", &run.stderr),
                ("the proxy's output and trace", &self.proxy.all_output()),
            ],
        );
    }
}
