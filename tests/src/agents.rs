//! What the agent end-to-end tests share: unique canary credentials, a run environment
//! pointed at the provider stand-ins, grants, and the checks that a CLI printed the
//! stand-in's streamed answer and that no credential is left anywhere.

use crate::Moat;
use moat_standins::{Options, Standin};
use moat_testkit::Run;
use std::time::{SystemTime, UNIX_EPOCH};

/// What every stand-in streams back.
pub const ANSWER: &str = "Hello from the moat stand-in, streamed in pieces.";

/// A credential no other test or run has: `prefix`, a timestamp and a fixed tail.
pub fn canary(prefix: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}E2eCanary{n:x}DoNotLeak0123456789abcdefABCDEF")
}

/// Milliseconds since the epoch, `secs` from now.
pub fn epoch_ms_in(secs: i64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    now + secs * 1000
}

/// A stand-in started with `opts`, and a moat whose proxies reach it (connect-to and its CA).
pub fn with_standin(opts: Options) -> (Moat, Standin) {
    let st = Standin::start_with(opts);
    let mut m = Moat::new();
    m.env
        .env("MOAT_PROXY_CONNECT_TO", st.connect_to().join(","))
        .env("MOAT_PROXY_EXTRA_CA", st.ca_pem_path());
    (m, st)
}

/// `moat grant ARGS... --token-stdin --no-validate` with `secret` on stdin.
pub fn grant_token(m: &Moat, args: &[&str], secret: &str) {
    let mut c = m.env.cmd("moat");
    c.arg("grant")
        .args(args)
        .args(["--token-stdin", "--no-validate"]);
    let r = crate::run_with_deadline(
        c,
        format!("moat grant {}", args.join(" ")),
        Some(secret.as_bytes()),
        60,
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
}

/// `moat grant PROVIDER` importing a sign-in: `file` (relative to the test's HOME) is
/// written with `content`, imported, and its directory removed, so that from then on the
/// token lives only in moat's store.
pub fn grant_signed_in(m: &Moat, provider: &str, file: &str, content: &serde_json::Value) {
    let f = m.env.home.join(file);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, content.to_string()).unwrap();
    let mut c = m.env.cmd("moat");
    c.args(["grant", provider, "--no-validate"]);
    let r = crate::run_with_deadline(c, format!("moat grant {provider}"), None, 60);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    std::fs::remove_dir_all(f.parent().unwrap()).unwrap();
}

/// `moat CLI --no-sandbox -p "say hello"`, asserted to succeed with the stand-in's answer.
pub fn says_hello(m: &Moat, st: &Standin, cli: &str) -> Run {
    let r = m.run_timeout("moat", &[cli, "--no-sandbox", "-p", "say hello"], None, 900);
    assert_eq!(
        r.code(),
        0,
        "stdout: {}\nstderr: {}\n{}",
        r.stdout(),
        r.stderr(),
        st.request_lines()
    );
    assert!(
        r.stdout().contains(ANSWER),
        "stdout: {}\nstderr: {}\nrequests:\n{}",
        r.stdout(),
        r.stderr(),
        st.request_lines()
    );
    r
}

/// The stand-in answered a request to `host` whose path `path_ok` accepts and which carried
/// `secret` (the proxy injected it): the provider's real endpoint was reached with the grant.
pub fn assert_reached(st: &Standin, host: &str, path_ok: impl Fn(&str) -> bool, secret: &str) {
    assert!(
        st.requests()
            .iter()
            .any(|q| q.host == host && path_ok(q.path_only()) && q.contains(secret)),
        "no request to {host} carried the credential:\n{}",
        st.request_lines()
    );
}

/// Nothing under MOAT_HOME holds `secret` (logs, traces, audit, spec, staged files).
pub fn no_artifact_holds(m: &Moat, secret: &str) {
    let hits = moat_testkit::files_containing(m.moat_home(), secret.as_bytes());
    assert!(hits.is_empty(), "{secret} found in {hits:?}");
}

/// Neither the run's output nor anything under MOAT_HOME holds `secret`.
pub fn leaves_no_trace(r: &Run, m: &Moat, secret: &str) {
    r.leaks_nothing(secret);
    no_artifact_holds(m, secret);
}

/// The container `name` holds `placeholder` (so `docker exec` worked and the CLI was given
/// the placeholder) and none of `secrets`: not in its processes' environments and command
/// lines, nor in the CLIs' credential files, nor anywhere in its files (one `docker export`,
/// searched for every secret at once).
pub fn container_holds_none(name: &str, placeholder: &str, secrets: &[&str]) {
    use std::process::Command;
    let procs = Command::new("docker")
        .args([
            "exec",
            name,
            "sh",
            "-c",
            "cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'; cd /home/moatuser && cat .claude/.credentials.json .codex/auth.json .gemini/oauth_creds.json 2>/dev/null",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&procs.stdout);
    assert!(
        out.contains("HTTPS_PROXY=") && out.contains(placeholder),
        "docker exec worked and the placeholder {placeholder} is there: {out}{}",
        String::from_utf8_lossy(&procs.stderr)
    );
    for s in secrets {
        assert!(!out.contains(s), "token in the container's processes");
    }
    let pats: Vec<String> = secrets.iter().map(|s| format!("-e '{s}'")).collect();
    let export = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker export {name} > /dev/null && docker export {name} | grep -a -c -F {} || true",
            pats.join(" ")
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&export.stdout).trim(),
        "0",
        "token in the container's files {}",
        String::from_utf8_lossy(&export.stderr)
    );
}
