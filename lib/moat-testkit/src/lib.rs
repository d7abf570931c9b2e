//! Test support: a hermetic environment (temporary HOME and MOAT_HOME, cleared environment)
//! in which tests run the real moat binaries and assert on exit code, stdout records and
//! stderr. Binaries are found in the cargo target directory the test itself was built in.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The directory holding the workspace's built binaries (target/debug or target/release).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of one of the workspace's binaries; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built; run the tests with `cargo nextest run --workspace` (or build it first)",
        p.display()
    );
    p
}

/// The workspace root (for `man/`, `../shared` and fixtures).
pub fn workspace_root() -> PathBuf {
    let mut d = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    d.pop();
    d.pop();
    d
}

/// `../shared` beside the workspace.
pub fn shared_dir() -> PathBuf {
    workspace_root().join("..").join("shared")
}

/// A hermetic environment: a temporary directory with `home/` and `home/.moat`.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub moat_home: PathBuf,
    extra_env: Vec<(String, String)>,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("moat-test-")
            .tempdir()
            .expect("tempdir");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let moat_home = home.join(".moat");
        TestEnv {
            dir,
            home,
            moat_home,
            extra_env: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Set an environment variable for every command made from now on.
    pub fn env(&mut self, k: &str, v: impl AsRef<OsStr>) -> &mut Self {
        self.extra_env
            .push((k.into(), v.as_ref().to_string_lossy().into_owned()));
        self
    }

    /// A command for a workspace binary with a cleared environment: PATH (the binary
    /// directory first, so `moat` finds its tools), HOME, MOAT_HOME, MOAT_KEYRING=file,
    /// plus whatever [`TestEnv::env`] set.
    pub fn cmd(&self, name: &str) -> Command {
        let mut c = Command::new(bin(name));
        self.prepare(&mut c);
        c
    }

    /// Any program (curl, git, ssh) in the same environment.
    pub fn program(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(prog);
        self.prepare(&mut c);
        c
    }

    fn prepare(&self, c: &mut Command) {
        let path = format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
        );
        c.env_clear()
            .env("PATH", path)
            .env("HOME", &self.home)
            .env("MOAT_HOME", &self.moat_home)
            .env("MOAT_KEYRING", "file")
            .env("LANG", "C.UTF-8")
            .current_dir(self.dir.path());
        for v in ["DOCKER_HOST", "TMPDIR"] {
            if let Ok(x) = std::env::var(v) {
                c.env(v, x);
            }
        }
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
    }

    /// Run a workspace binary with args and no stdin; returns the checked output.
    pub fn run(&self, name: &str, args: &[&str]) -> Run {
        let out = self
            .cmd(name)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn");
        Run::new(format!("{name} {}", args.join(" ")), out)
    }

    /// Run with the given bytes on stdin.
    pub fn run_stdin(&self, name: &str, args: &[&str], input: &[u8]) -> Run {
        use std::io::Write;
        let mut child = self
            .cmd(name)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child.stdin.take().unwrap().write_all(input).expect("stdin");
        let out = child.wait_with_output().expect("wait");
        Run::new(format!("{name} {}", args.join(" ")), out)
    }

    /// Run the shell command `cmd` on a real pseudo-terminal (script(1) from util-linux, in
    /// this environment, bounded by timeout(1)); once `prompt` shows on the terminal (or the
    /// wait in `how` is over), type `input`. Returns the exit code and the terminal's text
    /// followed by stderr.
    pub fn on_terminal(
        &self,
        cmd: &str,
        prompt: &str,
        input: &str,
        how: &Terminal,
    ) -> (i32, String) {
        self.on_terminal_dialog(cmd, &[(prompt, input)], how)
    }

    /// As [`TestEnv::on_terminal`], with several questions: for each `(prompt, input)` in turn,
    /// wait until `prompt` shows after what was typed before (or each wait in `how` is over),
    /// then type `input`.
    pub fn on_terminal_dialog(
        &self,
        cmd: &str,
        steps: &[(&str, &str)],
        how: &Terminal,
    ) -> (i32, String) {
        use std::io::{Read, Write};
        use std::time::{Duration, Instant};
        let mut c = self.program("timeout");
        c.args([
            &how.limit_secs.to_string(),
            "script",
            "-qec",
            cmd,
            "/dev/null",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(d) = how.dir {
            c.current_dir(d);
        }
        let mut child = c.spawn().expect("script (Debian util-linux / bsdutils)");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let mut stdin = child.stdin.take().unwrap();
        for (prompt, input) in steps {
            // Only what the terminal showed after the previous answer counts.
            let from = seen.len();
            let deadline = Instant::now() + Duration::from_secs(how.prompt_secs);
            while !String::from_utf8_lossy(&seen[from..]).contains(prompt) {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(chunk) => seen.extend(chunk),
                    Err(_) => break,
                }
            }
            stdin.write_all(input.as_bytes()).unwrap();
            stdin.flush().unwrap();
        }
        let status = if how.hold_input {
            // script(1) ends the session when its input closes: keep it open until the end.
            let status = child.wait().unwrap();
            drop(stdin);
            status
        } else {
            std::thread::sleep(Duration::from_millis(300));
            drop(stdin);
            child.wait().unwrap()
        };
        reader.join().unwrap();
        while let Ok(chunk) = rx.try_recv() {
            seen.extend(chunk);
        }
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        (
            status.code().unwrap_or(-1),
            String::from_utf8_lossy(&seen).to_string() + &err,
        )
    }

    /// Every byte under the environment's directory containing `needle`, as file paths.
    pub fn files_containing(&self, needle: &[u8]) -> Vec<PathBuf> {
        files_containing(self.dir.path(), needle)
    }
}

/// How [`TestEnv::on_terminal`] drives the terminal.
pub struct Terminal<'a> {
    /// The working directory (the environment's own when `None`).
    pub dir: Option<&'a Path>,
    /// timeout(1)'s bound on the whole session, in seconds.
    pub limit_secs: u64,
    /// How long to wait for the prompt before typing anyway, in seconds.
    pub prompt_secs: u64,
    /// Keep the input open until the command ends (script(1) ends the session when its input
    /// closes); otherwise close it 300 ms after typing.
    pub hold_input: bool,
}

/// Every regular file under `root` whose bytes contain `needle`.
pub fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file()
                && let Ok(b) = std::fs::read(&p)
                && contains(&b, needle)
            {
                hits.push(p);
            }
        }
    }
    hits
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A finished command with chainable assertions.
pub struct Run {
    pub what: String,
    pub out: Output,
}

impl Run {
    pub fn new(what: String, out: Output) -> Self {
        Run { what, out }
    }
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn describe(&self) -> String {
        format!(
            "`{}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }
    #[track_caller]
    pub fn success(&self) -> &Self {
        assert!(
            self.out.status.success(),
            "expected success: {}",
            self.describe()
        );
        self
    }
    #[track_caller]
    pub fn exit(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            code,
            "unexpected exit code: {}",
            self.describe()
        );
        self
    }
    #[track_caller]
    pub fn stdout_has(&self, s: &str) -> &Self {
        assert!(
            self.stdout().contains(s),
            "stdout lacks {s:?}: {}",
            self.describe()
        );
        self
    }
    #[track_caller]
    pub fn stderr_has(&self, s: &str) -> &Self {
        assert!(
            self.stderr().contains(s),
            "stderr lacks {s:?}: {}",
            self.describe()
        );
        self
    }
    #[track_caller]
    pub fn stdout_lacks(&self, s: &str) -> &Self {
        assert!(
            !self.stdout().contains(s),
            "stdout has {s:?}: {}",
            self.describe()
        );
        self
    }
    #[track_caller]
    pub fn stderr_lacks(&self, s: &str) -> &Self {
        assert!(
            !self.stderr().contains(s),
            "stderr has {s:?}: {}",
            self.describe()
        );
        self
    }
    #[track_caller]
    pub fn stdout_empty(&self) -> &Self {
        assert!(
            self.out.stdout.is_empty(),
            "stdout not empty: {}",
            self.describe()
        );
        self
    }
    /// Every stdout line parsed as a JSON-lines record (panics on a bad line).
    #[track_caller]
    pub fn records(&self) -> Vec<moat_core::jsonl::Record> {
        self.stdout()
            .lines()
            .filter_map(|l| {
                moat_core::jsonl::parse(l)
                    .unwrap_or_else(|e| panic!("bad record line {l:?}: {e}: {}", self.describe()))
            })
            .collect()
    }
    /// The output contains nothing of `secret` anywhere.
    #[track_caller]
    pub fn leaks_nothing(&self, secret: &str) -> &Self {
        assert!(
            !contains(&self.out.stdout, secret.as_bytes())
                && !contains(&self.out.stderr, secret.as_bytes()),
            "secret leaked in output of {}",
            self.what
        );
        self
    }
}
