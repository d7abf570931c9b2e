//! A real terminal for the interactive tests: a tmux server of the test's own (its socket in
//! the test's directory, started in the moat environment so the commands it runs see that
//! environment), one detached 200x50 session, keys typed with `send-keys`, the screen read
//! with `capture-pane`. The server is killed on drop.

use crate::Moat;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// A session running `cmd` (a shell command line) in the workspace of `m`. The pane stays
    /// after `cmd` ends, so its last screen can still be read.
    pub fn start(m: &Moat, cmd: &str) -> Tmux {
        let socket = m.env.path().join("tmux.sock");
        let t = Tmux { socket };
        let ws = m.ws.to_string_lossy().into_owned();
        let mut c = m.env.program("tmux");
        c.arg("-S")
            .arg(&t.socket)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "200",
                "-y",
                "50",
            ])
            .args(["-c", &ws, cmd])
            .stdin(Stdio::null());
        let o = c.output().expect("tmux (the tmux package)");
        assert!(
            o.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        t.tmux(&["set-option", "-g", "remain-on-exit", "on"]);
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).stdin(Stdio::null());
        c
    }

    fn tmux(&self, args: &[&str]) -> String {
        let o = self.cmd().args(args).output().expect("tmux");
        assert!(
            o.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The active pane's screen, as text.
    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p"])
    }

    /// Type `text` literally.
    pub fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-l", text]);
    }

    /// Press keys by tmux's names (`Enter`, `C-_`, `d`).
    pub fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys"];
        a.extend_from_slice(keys);
        self.tmux(&a);
    }

    /// Type a message and press Enter a moment later (the CLIs take text arriving at once
    /// as a paste, and an Enter inside a paste as a new line).
    pub fn say(&self, text: &str) {
        self.type_text(text);
        std::thread::sleep(Duration::from_millis(600));
        self.keys(&["Enter"]);
    }

    /// Wait (at most `secs`) until `ready` accepts the screen, failing at once when
    /// `refuse` names something on it. The last screen is returned.
    pub fn wait_for(
        &self,
        what: &str,
        secs: u64,
        ready: impl Fn(&str) -> bool,
        refuse: &[&str],
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if let Some(bad) = refuse.iter().find(|q| s.contains(*q)) {
                panic!("{what}: the screen shows {bad:?}:\n{s}");
            }
            if ready(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not there after {secs}s; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Wait (at most `secs`) until the screen contains `needle`.
    pub fn wait_text(&self, needle: &str, secs: u64) -> String {
        self.wait_for(needle, secs, |s| s.contains(needle), &[])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
