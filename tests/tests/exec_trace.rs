//! Exec tracing (`tracing.disable_exec`, on by default): every command a run executes is
//! recorded in the run's exec.jsonl with its exit code, with the run's secrets masked, and
//! the agent (moatuser, no capabilities) can neither forge a record nor stop the tracer.

use moat_e2e::{Moat, docker_ready};
use serde_json::Value;

fn records(m: &Moat, id: &str) -> Vec<Value> {
    let r = m.launch(&["trace", "--exec", id, "--json"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    r.stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn argv(r: &Value) -> Vec<String> {
    r["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The exec record whose program is `prog`, and its exit record.
fn find<'a>(recs: &'a [Value], prog: &str) -> (&'a Value, &'a Value) {
    let exec = recs
        .iter()
        .find(|r| r["event"] == "exec" && argv(r)[0].ends_with(prog))
        .unwrap_or_else(|| panic!("no exec of {prog} in {recs:#?}"));
    let exit = recs
        .iter()
        .find(|r| r["event"] == "exit" && r["pid"] == exec["pid"] && argv(r) == argv(exec))
        .unwrap_or_else(|| panic!("no exit of {prog} in {recs:#?}"));
    (exec, exit)
}

/// ls exits 0, false exits 1, a background child's sleep is traced; a `secrets:` value in
/// an argv is masked and appears nowhere in exec.jsonl; the table shows the same.
#[test]
fn a_runs_commands_are_traced_with_exit_codes_and_secrets_masked() {
    if !docker_ready() {
        return;
    }
    let mut m = Moat::new();
    let secret = moat_e2e::agents::canary("exec_");
    let bin = moat_e2e::stand_in_op(m.env.path(), &[("tok", &secret)]);
    m.env.env(
        "PATH",
        format!(
            "{}:{}:{}",
            moat_testkit::bin_dir().display(),
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    m.write_config("secrets:\n  TOK: op://Dev/tok/field\n");
    m.trust(None);
    let r = m.sh(
        "ls / >/dev/null; /bin/false; sleep 0.1 & wait; /bin/echo \"x$TOK\" >/dev/null; exit 0",
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = m.newest_run();
    let recs = records(&m, &id);
    for r in &recs {
        assert_eq!(r["v"], 1);
        assert_eq!(r["type"], "exec");
        assert!(r["ts"].as_str().unwrap().contains('T'), "{r}");
    }
    let (sh, sh_exit) = find(&recs, "sh");
    assert_eq!(argv(sh)[1], "-c");
    assert_eq!(sh_exit["exit_code"], 0);
    let (ls, ls_exit) = find(&recs, "ls");
    assert_eq!(argv(ls), ["ls", "/"]);
    assert_eq!(ls_exit["exit_code"], 0);
    assert_eq!(ls["ppid"], sh["pid"]);
    let (_, f_exit) = find(&recs, "/bin/false");
    assert_eq!(f_exit["exit_code"], 1);
    assert_eq!(f_exit["signal"], Value::Null);
    // `sleep 0.1 &`: a child the shell forked, which then exec'd sleep.
    let (sleep, sleep_exit) = find(&recs, "sleep");
    assert_eq!(argv(sleep), ["sleep", "0.1"]);
    assert_ne!(sleep["pid"], sh["pid"]);
    assert_eq!(sleep["ppid"], sh["pid"]);
    assert_eq!(sleep_exit["exit_code"], 0);
    let (echo, _) = find(&recs, "/bin/echo");
    assert_eq!(argv(echo), ["/bin/echo", "x[masked]"]);
    // The canary is nowhere in the file, nor the tracer's own setpriv.
    let raw = std::fs::read_to_string(m.run_dir(&id).join("exec.jsonl")).unwrap();
    assert!(!raw.contains(&secret), "the secret is in exec.jsonl");
    assert!(!raw.contains("setpriv"), "{raw}");
    // The table.
    let t = m.launch(&["trace", "--exec", &id]);
    assert_eq!(t.code(), 0, "{}", t.stderr());
    let out = t.stdout();
    assert!(out.starts_with("TIME"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.ends_with(" /bin/false") && l.split_whitespace().nth(2) == Some("1")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.ends_with(" ls /") && l.split_whitespace().nth(2) == Some("0")),
        "{out}"
    );
}

/// The agent tries to forge records and to stop or take over the tracer: it cannot signal
/// it, ptrace it (even after PR_SET_PTRACER), read its environment or descriptors, write
/// where the trace is kept, or speak for it on its socket. Its commands after the attempts
/// are still traced, and no forged record appears.
#[test]
fn the_agent_cannot_forge_records_or_stop_the_tracer() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let forged = moat_e2e::agents::canary("forged_");
    // perl: syscall(2) for ptrace (101) and prctl (157) on x86_64, aarch64 differs.
    let script = r#"t=$PPID
echo "tracer=$(tr '\0' ' ' </proc/$t/cmdline)"
kill -9 $t 2>/dev/null && echo kill=ok || echo kill=denied
kill -STOP $t 2>/dev/null && echo stop=ok || echo stop=denied
cat /proc/$t/environ >/dev/null 2>&1 && echo environ=ok || echo environ=denied
cat /proc/1/environ >/dev/null 2>&1 && echo initenv=ok || echo initenv=denied
readlink /proc/$t/fd/3 >/dev/null 2>&1 && echo fd=ok || echo fd=denied
echo "uids=$(id -u) $(awk '/^Uid:/ {print $2}' /proc/$t/status)"
echo x >/run/moat/exec/exec.jsonl 2>/dev/null && echo write=ok || echo write=denied
perl -e '
  use Socket;
  my ($t, $f) = @ARGV;
  my $arch = `uname -m`; chomp $arch;
  my ($ptrace, $prctl) = $arch eq "x86_64" ? (101, 157) : (117, 167);
  syscall($prctl, 0x59616d61, -1, 0, 0, 0);
  my $r = syscall($ptrace, 16, $t + 0, 0, 0);
  print "attach=", ($r == 0 ? "ok" : "denied:$!"), "\n";
  $r = syscall($ptrace, 0x4206, $t + 0, 0, 0);
  print "seize=", ($r == 0 ? "ok" : "denied:$!"), "\n";
  my $line = "{\"event\":\"exec\",\"ts_ns\":1,\"pid\":424242,\"ppid\":1,\"argv\":[\"$f\"]}\n";
  for my $tok ("", "0" x 64, "guess") {
    socket(my $s, AF_UNIX, SOCK_STREAM, 0) or die;
    if (connect($s, pack_sockaddr_un("/run/moat/exec/exec.sock"))) {
      syswrite($s, "$tok\n$line$line"); close $s; print "socket=sent\n";
    } else { print "socket=refused:$!\n" }
  }
' $t "$F"
/bin/echo after-attacks"#;
    let r = m.launch(&[
        "run",
        "--no-sandbox",
        "-e",
        &format!("F={forged}"),
        "--",
        "sh",
        "-c",
        script,
    ]);
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert!(
        out.contains("tracer=/run/moat/moat-exectrace --agent-uid "),
        "{out}"
    );
    // The tracer never shares the agent's uid (65534 when moatuser is root's uid 0).
    let uids = out
        .lines()
        .find_map(|l| l.strip_prefix("uids="))
        .expect("uids");
    let (agent, tracer) = uids.split_once(' ').unwrap();
    assert_ne!(agent, tracer, "{out}");
    for want in [
        "kill=denied",
        "stop=denied",
        "environ=denied",
        "initenv=denied",
        "fd=denied",
        "write=denied",
        "attach=denied",
        "seize=denied",
        "after-attacks",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let id = m.newest_run();
    let recs = records(&m, &id);
    let (_, echo_exit) = find(&recs, "/bin/echo");
    assert_eq!(echo_exit["exit_code"], 0);
    assert!(
        recs.iter().all(|r| r["pid"] != 424242),
        "a forged record: {recs:#?}"
    );
    assert!(
        !recs.iter().any(|r| r["argv"]
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0] == forged.as_str())),
        "a forged record: {recs:#?}"
    );
    // The perl attempt itself is in the trace.
    find(&recs, "perl");
}

/// `tracing.disable_exec: true`: no exec.jsonl, and `trace --exec` says why. `false`: traced.
#[test]
fn disable_exec_turns_tracing_off_and_false_requires_it() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    m.write_config("tracing:\n  disable_exec: true\n");
    // Switching the record off is the user's decision, not the workspace's.
    let r = m.sh("/bin/true");
    assert_ne!(
        r.code(),
        0,
        "an unapproved disable_exec ran: {}",
        r.stderr()
    );
    assert!(
        r.stderr().contains("tracing.disable_exec"),
        "{}",
        r.stderr()
    );
    m.trust(None);
    let r = m.sh("/bin/true");
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = m.newest_run();
    assert!(!m.run_dir(&id).join("exec.jsonl").exists());
    let t = m.launch(&["trace", "--exec", &id]);
    assert_eq!(t.code(), 0, "{}", t.stderr());
    assert!(t.stderr().contains("no exec trace"), "{}", t.stderr());

    m.write_config("tracing:\n  disable_exec: false\n");
    let r = m.sh("/bin/true");
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = m.newest_run();
    let recs = records(&m, &id);
    find(&recs, "/bin/true");

    m.write_config("tracing:\n  disable_exec: maybe\n");
    let r = m.sh("/bin/true");
    assert_eq!(r.code(), 78, "{}", r.stderr());
    assert!(
        r.stderr().contains("tracing.disable_exec"),
        "{}",
        r.stderr()
    );
}

/// When tracing cannot start (here: the container's seccomp profile refuses ptrace), the
/// tracer fails the run with 125 if tracing is required (MOAT_EXEC_REQUIRED=1, from
/// `tracing.disable_exec: false`), else warns, sends an `untraced` record and runs the
/// command. The real tracer binary in the base image, with a real socket listener.
#[test]
fn a_tracer_that_cannot_trace_fails_closed_when_required_and_warns_otherwise() {
    if !docker_ready() {
        return;
    }
    let _m = Moat::new(); // the base image
    let dir = tempfile::tempdir().unwrap();
    let sock_dir = dir.path().join("exec");
    std::fs::create_dir(&sock_dir).unwrap();
    let profile = dir.path().join("seccomp.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["ptrace"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let bin = moat_testkit::bin_dir().join("moat-exectrace");
    let run = |required: bool| {
        let sock = sock_dir.join("exec.sock");
        let _ = std::fs::remove_file(&sock);
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let got = std::thread::spawn(move || {
            use std::io::Read;
            let (mut c, _) = l.accept().unwrap();
            let mut s = String::new();
            let _ = c.read_to_string(&mut s);
            s
        });
        let o = std::process::Command::new("docker")
            .args(["run", "--rm", "--init", "--security-opt"])
            .arg(format!("seccomp={}", profile.display()))
            .arg("-v")
            .arg(format!("{}:/run/moat/exec", sock_dir.display()))
            .arg("-v")
            .arg(format!("{}:/run/moat/moat-exectrace:ro", bin.display()))
            .args(["-e", "MOAT_EXEC_TOKEN=tok"])
            .args(["-e", &format!("MOAT_EXEC_REQUIRED={}", u8::from(required))])
            .args([
                "debian:bookworm-slim",
                "/run/moat/moat-exectrace",
                "--",
                "sh",
                "-c",
                "echo ran; exit 3",
            ])
            .output()
            .unwrap();
        let sent = got.join().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            sent,
        )
    };
    let (code, out, err, sent) = run(true);
    assert_eq!(code, Some(125), "{out}{err}");
    assert!(!out.contains("ran"), "{out}");
    assert!(err.contains("PTRACE_TRACEME"), "{err}");
    assert!(sent.starts_with("tok\n"), "{sent}");
    let (code, out, err, sent) = run(false);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(out.contains("ran"), "{out}");
    assert!(err.contains("WARNING: exec tracing cannot start"), "{err}");
    assert!(sent.contains("\"event\":\"untraced\""), "{sent}");
}
