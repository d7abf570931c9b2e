//! The record of a run is not optional (issue #17 part 6; DESIGN promise 10's last sentence
//! and promise 7): a run whose audit writer cannot start does not run, a writer killed
//! mid-run takes the run's network with it, `--no-audit` is said and recorded, and the run's
//! output is in the audit log as `log_chunk` hashes that `moat audit` checks (THREATS J1 for
//! logs.jsonl: an edited, cut or extended output file is detected).

use moat_e2e::{Moat, docker_ready};
use std::process::Command;
use std::time::{Duration, Instant};

/// The pids of `moat-audit append --run ID`.
fn audit_writers(id: &str) -> Vec<u32> {
    let want = format!("moat-audit\0append\0--run\0{id}\0");
    let mut pids = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&c).contains(&want)
        {
            pids.push(pid);
        }
    }
    pids
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// THREATS J (the record): a real failure of the real writer (a damaged signing key) stops
/// the run before any container exists, exit 70 with the reason; `--no-audit` is loud and
/// recorded, and a workspace's moat.yaml cannot turn the record off (L1).
#[test]
fn a_run_whose_audit_writer_cannot_start_does_not_run() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    // A real failure of the real writer: the machine's signing key is unreadable as a key.
    let audit = m.moat_home().join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    std::fs::write(audit.join("signing.key"), "not a signing key\n").unwrap();
    let r = m.launch_sh(&[], "echo the-command-ran");
    assert_eq!(r.code(), 70, "{}", r.stderr());
    let err = r.stderr();
    assert!(err.contains("the audit writer could not start"), "{err}");
    assert!(err.contains("signing.key"), "{err}");
    assert!(err.contains("--no-audit"), "{err}");
    assert!(!r.stdout().contains("the-command-ran"));
    let id = m.newest_run();
    let meta = m.metadata(&id);
    assert_eq!(meta["state"], "failed", "{meta}");
    assert!(
        meta["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("the audit writer could not start"),
        "{meta}"
    );
    assert!(meta.get("container_id").is_none(), "{meta}");

    // --no-audit: the run runs, says so loudly, and its metadata records it.
    let r = m.launch_sh(&["--no-audit"], "echo the-command-ran");
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stdout().contains("the-command-ran"));
    assert!(r.stderr().contains("WARNING: --no-audit"), "{}", r.stderr());
    let id = m.newest_run();
    assert_eq!(m.metadata(&id)["audit"], "disabled");
    assert!(!m.run_dir(&id).join("audit").join("log.jsonl").exists());

    // Only the flag turns the record off: a workspace's file cannot.
    std::fs::remove_file(audit.join("signing.key")).unwrap();
    m.write_config("no_audit: true\n");
    let r = m.launch(&["run", "--no-sandbox", "--", "true"]);
    let id = m.newest_run();
    if r.code() == 0 {
        let meta = m.metadata(&id);
        assert!(
            meta["audit"]["tree_size"].as_u64().unwrap_or(0) > 0,
            "{meta}"
        );
        assert!(
            !r.stderr().contains("WARNING: --no-audit"),
            "{}",
            r.stderr()
        );
    } else {
        assert!(r.stderr().contains("no_audit"), "{}", r.stderr());
    }
}

/// THREATS J2/K (a writer killed mid-run must not leave an unrecorded run with a network):
/// kill -9 of `moat-audit append --run ID`; the proxy stops answering the container, the
/// proxy process is gone, the container is removed and the run is failed with the reason.
#[test]
fn killing_the_audit_writer_stops_the_runs_network_and_fails_the_run() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    // Strict policy: the proxy answers a request for an unallowed host itself (a denial),
    // so "the proxy serves" is visible without reaching anything outside.
    let r = m.launch_sh(&["-d", "--policy", "strict"], "echo started; sleep 300");
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = r.stdout().trim().to_string();
    m.wait_log(&id, "started", 600);
    let name = format!("moat-{id}");
    let probe = |name: &str| {
        let o = Command::new("docker")
            .args([
                "exec",
                name,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                "-w",
                "%{http_code}",
                "http://denied.invalid/",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let before = probe(&name);
    assert!(
        before.len() == 3 && before != "000",
        "the proxy did not answer before: {before:?}"
    );
    let proxy = m.metadata(&id)["proxy_pid"].as_u64().expect("a proxy pid");
    assert!(alive(proxy));

    let pids = audit_writers(&id);
    assert_eq!(pids.len(), 1, "moat-audit append for {id}: {pids:?}");
    let k = Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(k.success());

    // From the container, the proxy stops answering at once (or the container is gone).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = probe(&name);
        if after.is_empty() || after == "000" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy still answers {after} after the audit writer died"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let meta = m.wait_state(&id, &["failed", "stopped"], 60);
    assert_eq!(meta["state"], "failed", "{meta}");
    let reason = meta["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("the audit writer died"), "{reason}");
    assert!(reason.contains("SIGKILL"), "{reason}");
    assert!(reason.contains("network was stopped"), "{reason}");
    assert_eq!(meta["error_code"], 70, "{meta}");
    assert!(!alive(proxy), "the proxy {proxy} still runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Command::new("docker")
        .args(["inspect", &name])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the container is still there");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// THREATS J1/J2 for the run's output: a changed line, a line added after the run and a
/// cut tail of logs.jsonl each fail `moat audit` (exit 1); the untouched file verifies.
#[test]
fn the_runs_output_is_in_the_audit_log_and_a_changed_log_file_is_caught() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    // Under the strict policy a request for another host is refused: the refusal is in the
    // audit log too (README: every request the policy refused).
    let r = m.launch_sh(
        &["--policy", "strict"],
        "curl -s -o /dev/null http://refused.invalid/; \
         for i in $(seq 1 450); do echo out-line-$i; done; echo err-line >&2",
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = m.newest_run();
    let dir = m.run_dir(&id);
    let audit = std::fs::read_to_string(dir.join("audit").join("log.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["event"]["type"] == "policy_denied"
                && v["event"]["host"] == "refused.invalid"),
        "no policy_denied for refused.invalid in {audit}"
    );
    let chunks: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["event"].clone())
        .filter(|e| e["type"] == "log_chunk")
        .collect();
    let lines: u64 = chunks.iter().map(|c| c["lines"].as_u64().unwrap()).sum();
    assert_eq!(lines, 451, "{chunks:?}");
    assert!(chunks.len() >= 3, "{chunks:?}");
    let logs_path = dir.join("logs.jsonl");
    let original = std::fs::read_to_string(&logs_path).unwrap();
    let len: u64 = chunks.iter().map(|c| c["length"].as_u64().unwrap()).sum();
    assert_eq!(len, original.len() as u64);

    let a = m.run_timeout("moat", &["audit", &id], None, 60);
    assert_eq!(a.code(), 0, "{}{}", a.stdout(), a.stderr());
    assert!(
        a.stdout().contains("logs.jsonl: 451 lines in"),
        "{}",
        a.stdout()
    );

    // One line changed: caught, and named by its line range.
    std::fs::write(
        &logs_path,
        original.replace("out-line-300\"", "out-line-3OO\""),
    )
    .unwrap();
    let a = m.run_timeout("moat", &["audit", &id], None, 60);
    assert_eq!(a.code(), 1, "{}{}", a.stdout(), a.stderr());
    let said = format!("{}{}", a.stdout(), a.stderr());
    assert!(
        said.contains("logs.jsonl lines ")
            && said.contains("differ from what the audit log recorded"),
        "{said}"
    );

    // A line added after the run ended: caught.
    std::fs::write(
        &logs_path,
        format!("{original}{{\"ts\":\"x\",\"stream\":\"stdout\",\"line\":\"added\"}}\n"),
    )
    .unwrap();
    let a = m.run_timeout("moat", &["audit", &id], None, 60);
    assert_eq!(a.code(), 1, "{}{}", a.stdout(), a.stderr());
    let said = format!("{}{}", a.stdout(), a.stderr());
    assert!(said.contains("after the run ended"), "{said}");

    // Lines removed from the end: caught.
    let cut = &original[..original.len() - 40];
    std::fs::write(&logs_path, cut).unwrap();
    let a = m.run_timeout("moat", &["audit", &id], None, 60);
    assert_eq!(a.code(), 1, "{}{}", a.stdout(), a.stderr());
    let said = format!("{}{}", a.stdout(), a.stderr());
    assert!(said.contains("cut short"), "{said}");

    std::fs::write(&logs_path, &original).unwrap();
    let a = m.run_timeout("moat", &["audit", &id], None, 60);
    assert_eq!(a.code(), 0, "{}{}", a.stdout(), a.stderr());
}
