//! Shell completion driven through the real shells, and the progress line of long
//! operations: bash with `complete -p` and its completion function, zsh and fish on a
//! pseudo-terminal (TAB typed, the edited line read back), fish's `complete --do-complete`;
//! candidates come from a MOAT_HOME holding a real run, a run directory written by hand as
//! moat-files(5) describes it, and a real `moat grant` of a canary credential.

use moat_e2e::{Moat, docker_ready};
use moat_testkit::{Terminal, TestEnv};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CANARY: &str = "ghp_CANARYcompl3t10nS3cretV4lue0000000001";

/// A run directory as moat-launch writes it (metadata.json, mode 0700/0600), in `state`.
fn synthetic_run(home: &Path, id: &str, name: &str, state: &str) {
    use std::os::unix::fs::PermissionsExt;
    let dir = home.join("runs").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let meta = serde_json::json!({
        "v": 1, "id": id, "name": name, "agent": "", "workspace": "/nonexistent",
        "grants": [], "state": state, "runtime": "docker", "sandbox": false,
        "interactive": false, "detached": false,
        "created_at": "2026-01-01T00:00:00.000Z", "stopped_at": "2026-01-01T00:00:01.000Z"
    });
    let p = dir.join("metadata.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `moat completions SHELL` written to a file in the environment.
fn script(env: &TestEnv, shell: &str, file: &str) -> PathBuf {
    let r = env.run("moat", &["completions", shell]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let p = env.path().join(file);
    std::fs::write(&p, r.stdout()).unwrap();
    p
}

/// bash's candidates for `line` (completing at its end), by calling the function that
/// `complete -p moat` names with COMP_WORDS, COMP_CWORD, COMP_LINE and COMP_POINT set.
fn bash_complete(env: &TestEnv, file: &Path, line: &str) -> Vec<String> {
    let mut words: Vec<String> = line.split(' ').map(|w| format!("'{w}'")).collect();
    if words.len() == 1 {
        words.push("''".into());
    }
    let prog = format!(
        "source '{}'\n\
         spec=$(complete -p moat) || exit 3\n\
         fn=${{spec#*-F }}; fn=${{fn%% *}}\n\
         COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n\
         COMP_WORDS=({}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n\
         \"$fn\" moat\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        file.display(),
        words.join(" ")
    );
    let out = env
        .program("bash")
        .args(["--norc", "--noprofile", "-c", &prog])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// B5, L6: bash completes commands, options, and from the live state run names and ids (a
/// real run and one written by hand), grant names after a real `moat grant`, providers and
/// dependency names; no candidate and no output carries the granted secret.
#[test]
fn bash_completes_commands_flags_and_live_state() {
    if !docker_ready() {
        return;
    }
    let mut m = Moat::new();
    m.env.env("MOAT_PROGRESS_DELAY_MS", "0");
    let r = m.launch(&["run", "--no-sandbox", "--name", "real-run", "--", "true"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    // Off a terminal a starting run prints no status line.
    assert!(!r.stderr().contains("starting run"), "{}", r.stderr());
    let real_id = m.newest_run();
    // On a terminal it does, while the run is created and started.
    let (code, out) = m.env.on_terminal(
        &format!(
            "cd '{}' && exec moat run --no-sandbox --name pty-run -- true",
            m.ws.display()
        ),
        "",
        "",
        &Terminal {
            dir: None,
            limit_secs: 300,
            prompt_secs: 0,
            hold_input: true,
        },
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" starting run pty-run ("), "{out:?}");
    synthetic_run(m.moat_home(), "run_0123456789ab", "handmade-run", "stopped");
    let r = m.env.run_stdin(
        "moat",
        &[
            "grant",
            "github",
            "--token-stdin",
            "--no-validate",
            "--name",
            "canary-grant",
        ],
        format!("{CANARY}\n").as_bytes(),
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());

    let file = script(&m.env, "bash", "moat.bash");
    let spec = m
        .env
        .program("bash")
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!("source '{}'; complete -p moat", file.display()))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&spec.stdout).trim(),
        "complete -F _moat moat"
    );

    let c = |line: &str| bash_complete(&m.env, &file, line);
    let cmds = c("moat ");
    for w in ["run", "logs", "grant", "revoke", "completions", "help"] {
        assert!(cmds.contains(&w.to_string()), "{w} not in {cmds:?}");
    }
    assert_eq!(c("moat lo"), ["logs"]);
    assert_eq!(c("moat run --g"), ["--grant"]);
    assert_eq!(c("moat help fil"), ["files"]);
    let runs = c("moat logs ");
    for w in [
        "real-run",
        "handmade-run",
        real_id.as_str(),
        "run_0123456789ab",
    ] {
        assert!(runs.contains(&w.to_string()), "{w} not in {runs:?}");
    }
    assert_eq!(c("moat attach real"), ["real-run"]);
    assert_eq!(c("moat logs pty"), ["pty-run"]);
    assert_eq!(c("moat revoke "), ["canary-grant"]);
    assert_eq!(c("moat run --grant can"), ["canary-grant"]);
    assert_eq!(
        c("moat grant "),
        [
            "anthropic",
            "aws",
            "claude",
            "decoy",
            "gemini",
            "github",
            "http",
            "mcp",
            "npm",
            "openai",
            "ssh"
        ]
    );
    let deps = c("moat deps info ");
    assert!(deps.contains(&"postgres".to_string()), "{deps:?}");
    assert_eq!(c("moat deps info postg"), ["postgres"]);

    // The run's pre-run snapshot completes after `snapshot restore RUN`, and restoring it
    // on a terminal shows the progress line.
    let snaps = c("moat snapshot restore real-run ");
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(snaps[0].starts_with("snap_"), "{snaps:?}");
    let t = m.env.on_terminal(
        &format!("moat snapshot restore real-run {}", snaps[0]),
        "",
        "",
        &Terminal {
            dir: None,
            limit_secs: 120,
            prompt_secs: 0,
            hold_input: true,
        },
    );
    let (code, out) = t;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("| restoring the snapshot ("), "{out:?}");

    // The canary: no completion of any kind, and no file completion reads, carries it.
    let mut all = String::new();
    for line in [
        "moat revoke ",
        "moat run -g ",
        "moat logs ",
        "moat grant github --name ",
        "moat audit ",
    ] {
        all.push_str(&c(line).join("\n"));
        let mut words: Vec<&str> = line.split(' ').collect();
        let cword = (words.len() - 1).to_string();
        words.insert(0, &cword);
        let mut args = vec!["__complete"];
        args.extend(words);
        let raw = m.env.run("moat", &args);
        assert_eq!(raw.code(), 0);
        all.push_str(&raw.stdout());
        all.push_str(&raw.stderr());
    }
    assert!(!all.contains(CANARY) && !all.contains("CANARY"), "{all}");
}

/// A program on a pseudo-terminal (script(1)): type into it and wait for text to show.
struct Pty {
    child: std::process::Child,
    input: Option<std::process::ChildStdin>,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    fn spawn(env: &TestEnv, cmd: &str, extra: &[(&str, &str)]) -> Pty {
        let mut c = env.program("timeout");
        c.args(["120", "script", "-qec", cmd, "/dev/null"])
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in extra {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("script (util-linux)");
        let mut out = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let input = child.stdin.take();
        Pty { child, input, seen }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Wait (bounded, generously: this is a deadline, not a measurement) for `needle` to
    /// appear after byte `from`; returns the offset just past it.
    fn expect(&self, needle: &str, from: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let t = self.text();
            if let Some(i) = t.get(from..).and_then(|s| s.find(needle)) {
                return from + i + needle.len();
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never showed; the terminal showed:\n{t:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn send(&mut self, s: &str) {
        let i = self.input.as_mut().unwrap();
        i.write_all(s.as_bytes()).unwrap();
        i.flush().unwrap();
    }

    fn finish(mut self) {
        drop(self.input.take());
        let _ = self.child.wait();
    }
}

fn env_with_runs() -> TestEnv {
    let env = TestEnv::new();
    synthetic_run(
        &env.moat_home,
        "run_0123456789ab",
        "handmade-run",
        "stopped",
    );
    synthetic_run(&env.moat_home, "run_0123456789ac", "other-run", "failed");
    env
}

/// zsh, with the script on fpath and compinit, on a terminal: `moat lo<TAB>` becomes
/// `moat logs `, and a TAB after it lists the runs.
#[test]
fn zsh_completes_on_a_terminal() {
    let env = env_with_runs();
    let fdir = env.path().join("zfunc");
    std::fs::create_dir_all(&fdir).unwrap();
    let f = script(&env, "zsh", "zfunc/_moat");
    assert!(f.exists());
    let zdot = env.path().join("zdot");
    std::fs::create_dir_all(&zdot).unwrap();
    std::fs::write(zdot.join(".zshenv"), "unsetopt GLOBAL_RCS\n").unwrap();
    std::fs::write(
        zdot.join(".zshrc"),
        format!(
            "bindkey -e\nfpath=('{}' $fpath)\nautoload -Uz compinit\ncompinit -u -D\nPS1='READY> '\n",
            fdir.display()
        ),
    )
    .unwrap();
    let zd = zdot.to_string_lossy().into_owned();
    let mut t = Pty::spawn(&env, "zsh -i", &[("ZDOTDIR", &zd)]);
    let at = t.expect("READY> ", 0);
    // TAB, then an X (zsh drops the space it adds when the next key is not text).
    t.send("moat lo\tX");
    // Read the edited line back: to the line's start, `print -r -- ${(U):-`, to its end, `}`.
    t.send("\x01print -r -- ${(U):-\x05}\r");
    let at = t.expect("MOAT LOGS X\r\n", at);
    let at = t.expect("READY> ", at);
    t.send("moat logs \t");
    t.expect("handmade-run", at);
    t.expect("other-run", at);
    t.send("\x03exit\r");
    t.finish();
}

/// fish, with the script sourced, on a terminal: `moat lo<TAB>` becomes `moat logs `, and
/// a TAB after it offers the runs; `complete --do-complete` gives the same candidates.
#[test]
fn fish_completes_on_a_terminal_and_with_do_complete() {
    let env = env_with_runs();
    let f = script(&env, "fish", "moat.fish");
    let r = env
        .program("fish")
        .args(["-N", "-c"])
        .arg(format!(
            "source '{}'; complete --do-complete 'moat logs '; complete --do-complete 'moat run --gr'",
            f.display()
        ))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let lines: Vec<&str> = out.lines().collect();
    for w in ["handmade-run", "other-run", "run_0123456789ab", "--grant"] {
        assert!(lines.contains(&w), "{w} not in {lines:?}");
    }

    let init = env.path().join("init.fish");
    std::fs::write(
        &init,
        format!(
            "source '{}'\n\
             function fish_prompt; echo -n 'READY> '; end\n\
             function fish_greeting; end\n\
             bind \\cx 'echo; echo BUF:(commandline | string upper); commandline -f repaint'\n",
            f.display()
        ),
    )
    .unwrap();
    let mut t = Pty::spawn(
        &env,
        &format!("fish -N -C 'source {}'", init.display()),
        &[],
    );
    let at = t.expect("READY> ", 0);
    t.send("moat lo\t");
    t.send("\x18");
    let at = t.expect("BUF:MOAT LOGS \r\n", at);
    t.send("\t");
    t.expect("handmade-run", at);
    t.expect("other-run", at);
    t.send("\x03exit\r");
    t.finish();
}

/// Long operations draw a status line (the stage, redrawn with \r) on a terminal and print
/// nothing extra otherwise: `moat clean` with the delay set to 0.
#[test]
fn progress_shows_on_a_terminal_only() {
    let mut env = TestEnv::new();
    env.env("MOAT_PROGRESS_DELAY_MS", "0");
    synthetic_run(&env.moat_home, "run_0123456789ab", "old-run", "stopped");
    let (code, out) = env.on_terminal(
        "moat clean --force",
        "",
        "",
        &Terminal {
            dir: None,
            limit_secs: 120,
            prompt_secs: 0,
            hold_input: true,
        },
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\r| clean: removing stopped runs and unused images (0s)"),
        "{out:?}"
    );
    assert!(out.contains("removed 1 run(s)"), "{out:?}");
    assert!(!env.moat_home.join("runs/run_0123456789ab").exists());

    synthetic_run(&env.moat_home, "run_0123456789ac", "old-run-2", "stopped");
    let r = env.run("moat", &["clean", "--force"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    r.stderr_has("removed 1 run(s)")
        .stderr_lacks("clean: removing");
    assert!(!r.stderr().contains('\r'), "{:?}", r.stderr());
}

/// `image bootstrap --force` shows its stage on a terminal while it works: here mmdebstrap is
/// not on PATH, so the stage ends at once with its error (exit 69) and the image is kept.
#[test]
fn progress_shows_for_image_bootstrap() {
    if !docker_ready() {
        return;
    }
    let mut env = TestEnv::new();
    env.env("MOAT_PROGRESS_DELAY_MS", "0");
    let launch = moat_testkit::bin("moat-launch");
    let (code, out) = env.on_terminal(
        &format!(
            "PATH=/nonexistent exec {} image bootstrap --force",
            launch.display()
        ),
        "",
        "",
        &Terminal {
            dir: None,
            limit_secs: 300,
            prompt_secs: 0,
            hold_input: true,
        },
    );
    assert_eq!(code, 69, "{out}");
    assert!(out.contains("| building debian:bookworm-slim ("), "{out:?}");
    assert!(out.contains("mmdebstrap is not installed"), "{out:?}");
}
