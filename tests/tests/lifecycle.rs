//! Runs from a workspace's moat.yaml (mounts, volumes, env, pre_run, command) and the
//! lifecycle commands around them: -d, attach, stop, logs -n, list, destroy, clean, exit codes.

use moat_e2e::{Moat, docker_ready, run_with_deadline};
use std::time::Duration;

#[test]
fn moat_yaml_mounts_volumes_env_and_pre_run() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    std::fs::create_dir_all(m.ws.join("data")).unwrap();
    std::fs::write(m.ws.join("data/x.txt"), "from-the-host\n").unwrap();
    std::fs::write(
        m.ws.join("moat.yaml"),
        r#"name: e2e-agent
env:
  GREETING: "hello from env"
mounts:
  - ./data:/data:ro
volumes:
  - name: state
    target: /home/moatuser/.state
hooks:
  pre_run: echo pre-ran > /workspace/pre_run.txt
network:
  policy: permissive
command: ["sh", "-c", "cat /data/x.txt; echo $GREETING; cat /workspace/pre_run.txt; cat /home/moatuser/.state/count 2>/dev/null || echo no-state; echo one >> /home/moatuser/.state/count; touch /data/nope 2>/dev/null && echo WRITABLE || echo READONLY; echo home=$HOME"]
"#,
    )
    .unwrap();
    m.trust(None);
    let r = m.launch(&["run", "--no-sandbox", "-e", "EXTRA=1"]);
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    for want in [
        "from-the-host",
        "hello from env",
        "pre-ran",
        "no-state",
        "READONLY",
        "home=/home/moatuser",
    ] {
        assert!(
            out.contains(want),
            "missing {want:?} in:\n{out}\n{}",
            r.stderr()
        );
    }
    assert!(m.ws.join("pre_run.txt").exists());
    // The volume persists for the next run of the same agent.
    let r = m.launch(&["run", "--no-sandbox"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stdout().contains("one"), "{}", r.stdout());
    assert!(m.moat_home().join("volumes/e2e-agent/state/count").exists());
    let id = m.run_ids().pop().unwrap();
    let dir = m.moat_home().join("runs").join(&id);
    assert!(dir.join("Dockerfile").exists());
    let meta = m.metadata(&id);
    assert_eq!(meta["name"], "e2e-agent");
    assert_eq!(meta["state"], "stopped");
    assert_eq!(meta["exit_code"], 0);
    let logs = std::fs::read_to_string(dir.join("logs.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(logs.lines().next().unwrap()).unwrap();
    assert!(
        first["ts"].is_string() && first["stream"] == "stdout" && first["line"].is_string(),
        "{first}"
    );
    let v = m.launch(&["volumes", "ls"]);
    assert!(v.stdout().contains("e2e-agent  state"), "{}", v.stdout());
    // Destroying the runs keeps the volumes; volumes rm deletes them.
    for id in m.run_ids() {
        assert_eq!(m.launch(&["destroy", &id]).code(), 0);
    }
    assert!(m.moat_home().join("volumes/e2e-agent/state/count").exists());
    assert_eq!(m.launch(&["volumes", "rm", "e2e-agent"]).code(), 0);
    assert!(!m.moat_home().join("volumes/e2e-agent").exists());
}

#[test]
fn a_bad_config_is_a_clear_error_before_anything_starts() {
    let m = moat_e2e::Moat::new();
    std::fs::write(m.ws.join("moat.yaml"), "name: x\nnetwork:\n  policy: lax\n").unwrap();
    let r = m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_eq!(r.code(), 78, "{}", r.stderr());
    assert!(
        r.stderr()
            .contains("moat.yaml:3: network.policy: must be permissive or strict"),
        "{}",
        r.stderr()
    );
    assert!(m.run_ids().is_empty());
    std::fs::write(m.ws.join("moat.yaml"), "name: x\ngrnats: [github]\n").unwrap();
    if docker_ready() {
        let r = m.launch(&["run", "--no-sandbox", "--", "true"]);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        assert!(
            r.stderr().contains("unknown field \"grnats\"")
                && r.stderr().contains("did you mean \"grants\""),
            "{}",
            r.stderr()
        );
    }
}

#[test]
fn the_exit_code_is_the_commands() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let r = m.launch_sh(&[], "echo out; echo err >&2; exit 7");
    assert_eq!(r.code(), 7, "{}", r.stderr());
    r.stdout_has("out").stderr_has("err");
    let id = m.run_ids().pop().unwrap();
    let meta = m.metadata(&id);
    assert_eq!(meta["state"], "failed");
    assert_eq!(meta["exit_code"], 7);
}

#[test]
fn detach_attach_logs_list_stop_destroy_clean() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let r = m.launch_sh(
        &["-d", "-n", "bg"],
        "i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo line$i; sleep 0.1; done",
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = r.stdout().trim().to_string();
    assert!(id.starts_with("run_"), "{id}");
    m.wait_log(&id, "line5", 60);

    let l = m.launch(&["list"]);
    assert_eq!(l.code(), 0);
    let row = l
        .stdout()
        .lines()
        .find(|x| x.contains(&id))
        .unwrap_or_default()
        .to_string();
    assert!(
        row.starts_with("bg") && row.contains("running"),
        "{}",
        l.stdout()
    );
    assert!(l.stdout().starts_with("NAME"), "{}", l.stdout());
    let j = m.launch(&["list", "--json"]);
    let rec: serde_json::Value = serde_json::from_str(j.stdout().lines().next().unwrap()).unwrap();
    assert_eq!(rec["type"], "run");
    assert_eq!(rec["name"], "bg");

    // attach follows by name; a stop from elsewhere ends it.
    let mut c = m.env.cmd("moat-launch");
    c.args(["attach", "bg"]).current_dir(&m.ws);
    let attach = std::thread::spawn(move || run_with_deadline(c, "attach bg".into(), None, 90));
    std::thread::sleep(Duration::from_secs(2));
    let s = m.launch(&["stop", "bg"]);
    assert_eq!(s.code(), 0, "{}", s.stderr());
    let a = attach.join().unwrap();
    assert!(
        a.stdout().contains("line"),
        "attach printed nothing: {}",
        a.stderr()
    );
    assert_eq!(m.metadata(&id)["state"], "stopped");

    let n = m.launch(&["logs", "-n", "3", "bg"]);
    assert_eq!(n.code(), 0);
    let lines: Vec<String> = n.stdout().lines().map(String::from).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("line")), "{lines:?}");
    let all = m.launch(&["logs", &id[..8]]);
    assert!(all.stdout().lines().count() > 3);

    // Docker holds nothing of the run any more.
    let ps = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("name=moat-{id}")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ps.stdout).trim().is_empty());
    let network = m.metadata(&id)["network"].as_str().unwrap().to_string();
    let net = std::process::Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name=^{network}$"),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&net.stdout).trim().is_empty());

    let d = m.launch(&["destroy", "bg"]);
    assert_eq!(d.code(), 0, "{}", d.stderr());
    assert!(m.run_ids().is_empty());

    // clean asks first, and removes stopped runs.
    let r = m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let no = m.run_timeout("moat-launch", &["clean"], Some(b"n\n"), 60);
    assert_eq!(no.code(), 1, "{}", no.stderr());
    assert_eq!(m.run_ids().len(), 1);
    let yes = m.run_timeout("moat-launch", &["clean"], Some(b"y\n"), 60);
    assert_eq!(yes.code(), 0, "{}", yes.stderr());
    assert!(m.run_ids().is_empty());
    let r = m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_eq!(r.code(), 0);
    let f = m.launch(&["clean", "--force"]);
    assert_eq!(f.code(), 0, "{}", f.stderr());
    assert!(m.run_ids().is_empty());
}

#[test]
fn an_orphaned_run_is_reconciled_by_the_next_command() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let r = m.launch(&["run", "--no-sandbox", "-d", "--", "sleep", "120"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = r.stdout().trim().to_string();
    let pid = m.metadata(&id)["supervisor_pid"].as_u64().unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(300));
    let l = m.launch(&["list"]);
    assert_eq!(l.code(), 0, "{}", l.stderr());
    let meta = m.metadata(&id);
    assert_eq!(meta["state"], "failed", "{meta}");
    assert!(
        meta["reason"].as_str().unwrap().contains("reconciled"),
        "{meta}"
    );
    let ps = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("name=moat-{id}")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ps.stdout).trim().is_empty(),
        "container left behind"
    );
}

#[test]
fn volumes_rm_reconciles_an_orphaned_run_before_judging_it_busy() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    std::fs::write(
        m.ws.join("moat.yaml"),
        "name: orphan-vol\nvolumes:\n  - name: state\n    target: /srv/state\n",
    )
    .unwrap();
    m.trust(None);
    let r = m.launch(&["run", "--no-sandbox", "-d", "--", "sleep", "120"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = r.stdout().trim().to_string();
    assert!(m.moat_home().join("volumes/orphan-vol/state").is_dir());
    let pid = m.metadata(&id)["supervisor_pid"].as_u64().unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(300));
    // The run's supervisor is gone: its record must not keep the volume "in use".
    let rm = m.launch(&["volumes", "rm", "orphan-vol"]);
    assert_eq!(rm.code(), 0, "{}", rm.stderr());
    assert_eq!(m.metadata(&id)["state"], "failed");
    assert!(!m.moat_home().join("volumes/orphan-vol").exists());
}

#[test]
fn interactive_runs_get_a_tty_and_stdin() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let r = m.run_timeout(
        "moat-launch",
        &[
            "run",
            "-i",
            "--no-sandbox",
            "--",
            "sh",
            "-c",
            "read x; echo got=$x; tty; exit 3",
        ],
        Some(b"hello\n"),
        120,
    );
    assert_eq!(r.code(), 3, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stdout().contains("got=hello"), "{}", r.stdout());
    assert!(r.stdout().contains("/dev/pts/"), "{}", r.stdout());
    let id = m.run_ids().pop().unwrap();
    assert_eq!(m.metadata(&id)["interactive"], true);
}

fn sigint(pid: u32) {
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn ctrl_c_detaches_and_twice_stops() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let script = "i=0; while [ $i -lt 900 ]; do i=$((i+1)); echo tick$i; sleep 0.1; done";
    let mut c = m.env.cmd("moat-launch");
    c.args(["run", "--no-sandbox", "-n", "fg", "--", "sh", "-c", script])
        .current_dir(&m.ws)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let id = loop {
        if let Some(id) = m.run_ids().pop()
            && m.moat_home()
                .join("runs")
                .join(&id)
                .join("logs.jsonl")
                .exists()
        {
            break id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    m.wait_log(&id, "tick3", 60);
    // One Ctrl+C: the CLI detaches, the run goes on.
    sigint(child.id());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the CLI did not detach"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("detached"), "{err}");
    assert_eq!(m.metadata(&id)["state"], "running");

    // Attached again, Ctrl+C twice within 500 ms stops it.
    let mut c = m.env.cmd("moat-launch");
    c.args(["attach", "fg"])
        .current_dir(&m.ws)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    sigint(child.id());
    std::thread::sleep(Duration::from_millis(100));
    sigint(child.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "attach did not end after the stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let meta = m.metadata(&id);
    assert_eq!(meta["state"], "stopped", "{meta}");
}

#[test]
fn container_resources_and_logs_follow() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    std::fs::write(
        m.ws.join("moat.yaml"),
        "container:\n  memory: 256\n  cpus: 1\n  dns: [\"192.0.2.53\"]\n",
    )
    .unwrap();
    let script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null; cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu.max 2>/dev/null; grep nameserver /etc/resolv.conf; for i in 1 2 3 4 5 6 7 8 9 10; do echo follow$i; sleep 0.3; done";
    let r = m.launch(&["run", "--no-sandbox", "-d", "--", "sh", "-c", script]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = r.stdout().trim().to_string();
    // container.dns goes to Docker, on the run's guard, whose namespace the container joins
    // (the run's firewall lets no DNS out anyway).
    let inspect = |name: &str, format: &str| {
        let o = std::process::Command::new("docker")
            .args(["inspect", "--format", format, name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let guard = format!("moat-{id}-guard");
    let dns = inspect(&guard, "{{json .HostConfig.Dns}}");
    assert!(dns.contains("192.0.2.53"), "{dns}");
    // The container joins the guard's namespace without NET_ADMIN or NET_RAW (THREATS E2, L4).
    let guard_id = inspect(&guard, "{{.Id}}");
    assert_eq!(
        inspect(
            &format!("moat-{id}"),
            "{{.HostConfig.NetworkMode}} {{json .HostConfig.CapDrop}} {{json .HostConfig.CapAdd}}"
        ),
        format!("container:{guard_id} [\"NET_RAW\",\"NET_ADMIN\"] null")
    );
    assert_eq!(
        inspect(
            &guard,
            "{{index .Config.Labels \"moat.run\"}} {{index .Config.Labels \"moat.guard\"}}"
        ),
        format!("{id} run")
    );
    // The guard's rules: OUTPUT dropped but for the proxy's address and port.
    let proxy = m.metadata(&id)["proxy_addr"].as_str().unwrap().to_string();
    let (pip, pport) = proxy.rsplit_once(':').unwrap();
    let rules = std::process::Command::new("docker")
        .args(["exec", &guard, "iptables-save"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(rules.contains(":OUTPUT DROP"), "{rules}");
    assert!(
        rules.contains(&format!(
            "-A OUTPUT -d {pip}/32 -p tcp -m tcp --dport {pport} -j ACCEPT"
        )),
        "{rules}"
    );
    // A guard that cannot set its rules (here: without NET_ADMIN) never says it is ready.
    let image = inspect(&guard, "{{.Config.Image}}");
    let o = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "-e",
            "MOAT_GUARD_MODE=run",
            "-e",
            &format!("MOAT_PROXY_ADDR={proxy}"),
            &image,
        ])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(125), "{out}{err}");
    assert!(
        !out.contains("ready") && err.contains("cannot set the firewall"),
        "{out}{err}"
    );
    // logs -f prints what exists and follows until the run ends.
    let f = m.launch(&["logs", "-f", &id]);
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let out = f.stdout();
    assert!(out.contains("follow1") && out.contains("follow10"), "{out}");
    assert!(
        out.contains(&(256u64 * 1024 * 1024).to_string()),
        "memory limit: {out}"
    );
    assert!(out.contains("100000"), "cpu quota: {out}");
}

#[test]
fn interactive_escape_keys_stop_the_run() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    // Ctrl-/ k on the run's input stops it.
    let r = m.run_timeout(
        "moat-launch",
        &[
            "run",
            "-i",
            "--no-sandbox",
            "--",
            "sh",
            "-c",
            "echo up; sleep 60",
        ],
        Some(b"\x1fk"),
        120,
    );
    assert!(r.stderr().contains("stopping"), "{}", r.stderr());
    let id = m.run_ids().pop().unwrap();
    assert_eq!(m.metadata(&id)["state"], "stopped");
}

#[test]
fn a_last_line_without_a_newline_is_kept_and_the_audit_seal_recorded() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let r = m.launch_sh(
        &[],
        "echo first; printf 'no-newline-err' >&2; printf 'no-newline-out'",
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stdout().contains("first"), "{}", r.stdout());
    assert!(r.stdout().contains("no-newline-out"), "{}", r.stdout());
    assert!(r.stderr().contains("no-newline-err"), "{}", r.stderr());
    let id = m.run_ids().pop().unwrap();
    let logs =
        std::fs::read_to_string(m.moat_home().join("runs").join(&id).join("logs.jsonl")).unwrap();
    assert!(
        logs.contains(r#""stream":"stdout","line":"no-newline-out""#),
        "{logs}"
    );
    assert!(
        logs.contains(r#""stream":"stderr","line":"no-newline-err""#),
        "{logs}"
    );

    // metadata.json keeps the audit log's size and root as moat-audit left them.
    let meta = m.metadata(&id);
    let log = std::fs::read_to_string(m.moat_home().join("runs").join(&id).join("audit/log.jsonl"))
        .unwrap();
    assert_eq!(
        meta["audit"]["tree_size"].as_u64(),
        Some(log.lines().count() as u64),
        "{meta}"
    );
    let root = meta["audit"]["root"].as_str().unwrap_or_default();
    assert_eq!(root.len(), 64, "{meta}");
    assert!(root.bytes().all(|b| b.is_ascii_hexdigit()), "{meta}");
}
