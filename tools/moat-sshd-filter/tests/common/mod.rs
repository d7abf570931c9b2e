//! A small world of real OpenSSH for the filter's tests: user keys in a real `ssh-agent`,
//! `sshd`s on loopback ports with their own host keys, the filter itself reading rules on
//! stdin, and a hand-crafted agent client. Every process started here is killed on drop.
#![allow(dead_code)]

pub mod client;

use moat_core::jsonl::Record;
use moat_testkit::TestEnv;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child process killed (and reaped) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll `f` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_ok(c: &mut Command) -> String {
    let out = c.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key pair made by `ssh-keygen`, with its public line and OpenSSH's own fingerprint.
#[derive(Clone)]
pub struct Key {
    pub path: PathBuf,
    pub pub_path: PathBuf,
    pub pub_line: String,
    pub fingerprint: String,
}

impl Key {
    pub fn generate(dir: &Path, name: &str, kind: &str) -> Key {
        let path = dir.join(name);
        let mut c = Command::new("ssh-keygen");
        c.args(["-q", "-N", "", "-C", name, "-t", kind]);
        if kind == "rsa" {
            c.args(["-b", "2048"]);
        }
        run_ok(c.arg("-f").arg(&path));
        let pub_path = dir.join(format!("{name}.pub"));
        let pub_line = std::fs::read_to_string(&pub_path)
            .unwrap()
            .trim()
            .to_string();
        let fp = run_ok(
            Command::new("ssh-keygen")
                .args(["-E", "sha256", "-lf"])
                .arg(&pub_path),
        );
        let fingerprint = fp.split_whitespace().nth(1).unwrap().to_string();
        assert!(fingerprint.starts_with("SHA256:"), "{fp}");
        Key {
            path,
            pub_path,
            pub_line,
            fingerprint,
        }
    }

    /// The public key blob.
    pub fn blob(&self) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = self.pub_line.split_whitespace().nth(1).unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    /// `TYPE BASE64` without the comment.
    pub fn pub_key(&self) -> String {
        let mut w = self.pub_line.split_whitespace();
        format!("{} {}", w.next().unwrap(), w.next().unwrap())
    }

    pub fn private(&self) -> ssh_key::PrivateKey {
        ssh_key::PrivateKey::read_openssh_file(&self.path).unwrap()
    }
}

/// A real `ssh-agent -D` holding some keys.
pub struct Agent {
    pub sock: PathBuf,
    _proc: Proc,
}

impl Agent {
    pub fn start(dir: &Path, keys: &[&Key]) -> Agent {
        let sock = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent (Debian package openssh-client)");
        let proc = Proc(child);
        assert!(
            wait_until(Duration::from_secs(10), || sock.exists()),
            "ssh-agent did not create its socket"
        );
        for k in keys {
            run_ok(
                Command::new("ssh-add")
                    .env("SSH_AUTH_SOCK", &sock)
                    .arg("-q")
                    .arg(&k.path),
            );
        }
        Agent { sock, _proc: proc }
    }
}

/// The user name the tests log in as (root on our machines).
pub fn user() -> String {
    run_ok(Command::new("id").arg("-un")).trim().to_string()
}

/// An `sshd` on a loopback port with its own host key, accepting `authorized` keys.
pub struct Sshd {
    pub port: u16,
    pub host_key: Key,
    pub log: PathBuf,
    _proc: Proc,
}

impl Sshd {
    pub fn start(dir: &Path, name: &str, host_key_type: &str, authorized: &[&Key]) -> Sshd {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let host_key = Key::generate(&d, "host_key", host_key_type);
        let ak = d.join("authorized_keys");
        let lines: Vec<String> = authorized.iter().map(|k| k.pub_line.clone()).collect();
        std::fs::write(&ak, lines.join("\n") + "\n").unwrap();
        // sshd wants its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = d.join("sshd.log");
        for _attempt in 0..5 {
            let port = free_port();
            let cfg = d.join("sshd_config");
            std::fs::write(
                &cfg,
                format!(
                    "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nPidFile none\n\
                     AuthorizedKeysFile {}\nStrictModes no\nUsePAM no\n\
                     PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     LogLevel DEBUG1\n",
                    host_key.path.display(),
                    ak.display()
                ),
            )
            .unwrap();
            let logf = std::fs::File::create(&log).unwrap();
            let child = Command::new("/usr/sbin/sshd")
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(logf)
                .spawn()
                .expect("sshd (Debian package openssh-server)");
            let mut proc = Proc(child);
            let up = wait_until(Duration::from_secs(10), || {
                matches!(proc.0.try_wait(), Ok(None))
                    && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if up {
                return Sshd {
                    port,
                    host_key,
                    log,
                    _proc: proc,
                };
            }
        }
        panic!(
            "sshd did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The line for a known_hosts file.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_key.pub_key())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An `ssh` rule record as `moat-grant rules` prints it.
pub fn rule(host: &str, key: &Key, host_keys: &[&Key], namespaces: &[&str]) -> String {
    let hk: Vec<String> = host_keys.iter().map(|k| k.pub_line.clone()).collect();
    let mut v = serde_json::json!({
        "v": 1, "type": "ssh", "grant": format!("ssh:{host}"), "host": host,
        "fingerprint": key.fingerprint, "host_keys": hk,
    });
    if !namespaces.is_empty() {
        v["sshsig_namespaces"] = serde_json::json!(namespaces);
    }
    v.to_string() + "\n"
}

/// A running `moat-sshd-filter serve`, its stdout records gathered as they come.
pub struct Filter {
    pub sock: PathBuf,
    pub child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    pub stderr_path: PathBuf,
}

impl Filter {
    pub fn start(env: &TestEnv, rules: &str, upstream: &Path) -> Filter {
        let sock = env.path().join("filter.sock");
        let stderr_path = env.path().join("filter.stderr");
        let mut child = env
            .cmd("moat-sshd-filter")
            .arg("serve")
            .arg("--socket")
            .arg(&sock)
            .arg("--rules")
            .arg("-")
            .arg("--upstream")
            .arg(upstream)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn moat-sshd-filter");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(rules.as_bytes()).unwrap();
        drop(stdin);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                l2.lock().unwrap().push(l);
            }
        });
        let f = Filter {
            sock,
            child: Some(child),
            lines,
            stderr_path,
        };
        assert!(
            wait_until(Duration::from_secs(10), || !f.lines().is_empty()),
            "the filter did not start: {}",
            f.stderr()
        );
        f
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn records(&self) -> Vec<Record> {
        self.lines()
            .iter()
            .filter_map(|l| moat_core::jsonl::parse(l).expect("a record line"))
            .collect()
    }

    /// All records, once no new line has come for 50 ms (a decision is written before its
    /// reply is sent, so after a reply it is already in the pipe).
    pub fn settled_records(&self) -> Vec<Record> {
        let mut n = self.lines().len();
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let m = self.lines().len();
            if m == n || Instant::now() > end {
                return self.records();
            }
            n = m;
        }
    }

    /// Records of one type, waiting a moment for `n` of them to arrive.
    pub fn wait_records(&self, kind: &str, n: usize) -> Vec<Record> {
        wait_until(Duration::from_secs(5), || {
            self.records().iter().filter(|r| r.kind == kind).count() >= n
        });
        self.records()
            .into_iter()
            .filter(|r| r.kind == kind)
            .collect()
    }

    /// Send SIGTERM and wait for the exit status (at most 10 s).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `ssh` with no config files, trusting only `known_hosts`, using `agent` as its agent.
pub fn ssh(env: &TestEnv, agent: &Path, known_hosts: &Path, port: u16) -> Command {
    let mut c = env.program("ssh");
    c.args(ssh_options(agent, known_hosts))
        .arg("-p")
        .arg(port.to_string());
    c
}

pub fn ssh_options(agent: &Path, known_hosts: &Path) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-o".into(),
        format!("IdentityAgent={}", agent.display()),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "ConnectTimeout=10".into(),
        "-o".into(),
        "PasswordAuthentication=no".into(),
    ]
}

/// Run a command with a time limit; returns (exit code, stdout, stderr).
pub fn run_limited(c: &mut Command, limit: Duration) -> (i32, String, String) {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let end = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
