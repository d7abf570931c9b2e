//! `secrets:` values are delivered at start, never through the container's configuration
//! (issue #17 part 7; THREATS B5: no secret in any artifact, here the engine's own stored
//! state). Written as the attack: unique canary values resolved through a stand-in 1Password
//! CLI (`op`); while the run runs, `docker inspect`, the engine's directory for the container,
//! the container's writable layer, its exported filesystem, the image's configuration and
//! history, MOAT_HOME and the launcher's output are searched for each value, raw and in the
//! base64 form the supervisor sends it in. The command and the pre_run hook must still get
//! every value byte for byte (spaces, quotes, `$`, backquotes, newlines, trailing newlines),
//! and the endpoint that served them must refuse a second fetch.

use moat_e2e::{Moat, docker_ready};
use std::path::Path;
use std::process::{Command, Stdio};

/// A plain value, and one that breaks naive shell handling in every way a value can.
const SIMPLE: &str = "simple-Canary-3b9d71";
const TRICKY: &str =
    " -n a  b 'single' \"double\" $HOME `id` \\back\\slash;\ntricky-Canary-e05c4a\n\n";
/// What to look for: the unique part of each value.
const NEEDLES: &[&str] = &["simple-Canary-3b9d71", "tricky-Canary-e05c4a"];

fn pipe(cmd: &str, input: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input).unwrap();
    let o = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn sha256(v: &str) -> String {
    let d = pipe("sha256sum | cut -d' ' -f1", v.as_bytes());
    assert_eq!(d.len(), 64, "{d:?}");
    d
}

/// Every form of every value a search must not find.
fn forms() -> Vec<String> {
    let mut f: Vec<String> = NEEDLES.iter().map(|s| s.to_string()).collect();
    for v in [SIMPLE, TRICKY] {
        f.push(pipe("base64 -w0", v.as_bytes()));
    }
    f
}

fn docker(args: &[&str]) -> (bool, String) {
    let o = Command::new("docker").args(args).output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn assert_absent(what: &str, text: &str) {
    for f in forms() {
        assert!(!text.contains(&f), "a secret value ({f:?}) in {what}");
    }
}

fn assert_no_file_has_it(dir: &Path) {
    assert!(dir.is_dir(), "{} is not there to search", dir.display());
    for f in forms() {
        let hits = moat_testkit::files_containing(dir, f.as_bytes());
        assert!(hits.is_empty(), "a secret value ({f:?}) in {hits:?}");
    }
}

/// THREATS B5 (no secret in any artifact: the engine's stored state, the image, MOAT_HOME)
/// and L1/L2's `secrets` delivery path: values arrive intact, the endpoint serves once.
#[test]
fn secrets_reach_the_command_and_hook_but_no_engine_state_holds_them() {
    if !docker_ready() {
        return;
    }
    let mut m = Moat::new();
    let bin = moat_e2e::stand_in_op(m.env.path(), &[("simple", SIMPLE), ("tricky", TRICKY)]);
    m.env.env(
        "PATH",
        format!(
            "{}:{}:{}",
            moat_testkit::bin_dir().display(),
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    m.write_config(
        "secrets:\n  SIMPLE: op://Dev/simple/field\n  TRICKY: op://Dev/tricky/field\n\
         hooks:\n  pre_run: 'printf %s \"$TRICKY\" | sha256sum > /tmp/pre-run.sha'\n",
    );
    m.trust(None);
    let r = m.launch_sh(
        &["-d"],
        // Digests, not the values: the run's output is an artifact too.
        "printf 'pre-run %s\\n' \"$(cut -d' ' -f1 /tmp/pre-run.sha)\"; \
         printf %s \"$SIMPLE\" | sha256sum; printf %s \"$TRICKY\" | sha256sum; \
         echo \"token-vars=$(env | grep -c MOAT_SECRETS)\"; echo ready; sleep 300",
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = r.stdout().trim().to_string();
    m.wait_log(&id, "ready", 600);
    let logs =
        std::fs::read_to_string(m.moat_home().join("runs").join(&id).join("logs.jsonl")).unwrap();
    // Intact, byte for byte, in the command and in the pre_run hook.
    assert!(logs.contains(&sha256(SIMPLE)), "{logs}");
    assert!(logs.contains(&sha256(TRICKY)), "{logs}");
    assert!(
        logs.contains(&format!("pre-run {}", sha256(TRICKY))),
        "{logs}"
    );
    // moat-init took the one-time token out of the command's environment.
    assert!(logs.contains("token-vars=0"), "{logs}");

    let name = format!("moat-{id}");
    let meta = m.metadata(&id);
    let cid = meta["container_id"]
        .as_str()
        .expect("a container id")
        .to_string();
    let image = meta["image"].as_str().expect("an image").to_string();

    // The engine's view and stored state of the running container.
    let (ok, inspect) = docker(&["inspect", &name]);
    assert!(ok, "{inspect}");
    assert_absent("docker inspect", &inspect);
    assert!(
        inspect.contains("MOAT_SECRETS_TOKEN"),
        "no token variable: the test is stale"
    );
    assert_no_file_has_it(&Path::new("/var/lib/docker/containers").join(&cid));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    if let Some(upper) = v[0]["GraphDriver"]["Data"]["UpperDir"].as_str() {
        assert_no_file_has_it(Path::new(upper));
    }
    let (ok, img) = docker(&["image", "inspect", &image]);
    assert!(ok, "{img}");
    assert_absent("docker image inspect", &img);
    let (ok, hist) = docker(&["history", "--no-trunc", &image]);
    assert!(ok, "{hist}");
    assert_absent("docker history", &hist);
    let mut grep = String::from("docker export ");
    grep.push_str(&name);
    grep.push_str(" | grep -a -c -F");
    for f in forms() {
        grep.push_str(&format!(" -e '{f}'"));
    }
    grep.push_str(" || true");
    let o = Command::new("sh").arg("-c").arg(&grep).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "0",
        "a secret value in the container's exported filesystem"
    );

    // The endpoint answered once: a second fetch with the token gets 410 and no value,
    // from root and from moatuser (the agent), and one without the token gets 401.
    let fetch = "curl -s -w ' status=%{http_code}' --unix-socket /run/moat/secrets/secrets.sock \
                 -H \"Authorization: Bearer $MOAT_SECRETS_TOKEN\" http://moat/secrets";
    let (_, again) = docker(&["exec", &name, "sh", "-c", fetch]);
    assert!(again.contains("status=410"), "{again}");
    assert_absent("a second fetch", &again);
    let (_, user) = docker(&["exec", "-u", "moatuser", &name, "sh", "-c", fetch]);
    assert!(!user.contains("status=200"), "{user}");
    assert_absent("moatuser's fetch", &user);
    let (_, anon) = docker(&[
        "exec",
        &name,
        "curl",
        "-s",
        "-w",
        " status=%{http_code}",
        "--unix-socket",
        "/run/moat/secrets/secrets.sock",
        "http://moat/secrets",
    ]);
    assert!(anon.contains("status=401"), "{anon}");

    let s = m.launch(&["stop", &id]);
    assert_eq!(s.code(), 0, "{}", s.stderr());
    m.wait_state(&id, &["stopped", "failed"], 60);
    // The record names the secrets, and nothing of the run's keeps a value.
    let audit = std::fs::read_to_string(
        m.moat_home()
            .join("runs")
            .join(&id)
            .join("audit")
            .join("log.jsonl"),
    )
    .unwrap();
    assert!(audit.contains("secret_resolved"), "{audit}");
    assert!(
        audit.contains("SIMPLE") && audit.contains("TRICKY"),
        "{audit}"
    );
    assert_no_file_has_it(m.moat_home());
    assert_absent(
        "moat-launch's output",
        &format!("{}{}", r.stdout(), r.stderr()),
    );
}

/// THREATS B5's other side: no silent run without the secrets. The run's real entrypoint,
/// given a secrets token but no endpoint to fetch from, refuses to start the command.
#[test]
fn the_entrypoint_refuses_to_start_without_its_secrets() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let r = m.sh("true");
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = m.run_ids().pop().expect("a run");
    let image = m.metadata(&id)["image"]
        .as_str()
        .expect("an image")
        .to_string();
    let o = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--cap-add",
            "NET_ADMIN",
            "-e",
            "MOAT_PROXY_ADDR=127.0.0.1:9",
            "-e",
            "MOAT_SECRETS_TOKEN=0123456789abcdef",
            &image,
            "sh",
            "-c",
            "echo the-command-ran",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{out}{err}");
    assert!(!out.contains("the-command-ran"), "{out}");
    assert!(err.contains("cannot fetch the run's secrets"), "{err}");
}
