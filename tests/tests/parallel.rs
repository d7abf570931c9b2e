//! Runs side by side (issue #24): 8 `moat run -d` started at once, each with its own grant
//! (a distinct canary token, to a host of its own), each making a request to its own host and
//! one to the next run's host. THREATS F3 (cross-run credential use in a shared daemon: a
//! run's proxy never hands it another run's credential), B3 (a non-granted host gets no
//! token), B5 (no token in any run's artifacts, output or trace), E2 (each run reaches only its
//! own proxy: the trace of each run holds only its own requests); and the lifecycle of many
//! runs at once: all start, `moat list` shows each, `moat stop` and `moat clean` leave no
//! container, guard, network or process behind.

use moat_e2e::{Moat, agents::canary, docker_ready, run_with_deadline};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

const N: usize = 8;

/// One request as the upstream saw it: (Host, path, X-Api-Key).
type Seen = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

/// A plain-HTTP upstream on loopback for every `pN.test:8080`: records each request's Host,
/// path and `X-Api-Key`, and answers 200 without echoing anything.
fn upstream() -> (u16, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::new(Mutex::new(vec![]));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let seen = s2.clone();
            std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(20)));
                let mut r = BufReader::new(c.try_clone().unwrap());
                loop {
                    let mut first = String::new();
                    if r.read_line(&mut first).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (mut host, mut key) = (String::new(), None);
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            match k.trim().to_ascii_lowercase().as_str() {
                                "host" => host = v.trim().to_string(),
                                "x-api-key" => key = Some(v.trim().to_string()),
                                _ => {}
                            }
                        }
                    }
                    seen.lock().unwrap().push((host, path, key));
                    if c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

fn docker_out(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn alive(pid: u64, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// Every process whose command line names `id` (supervisor, audit writer, anything else).
fn processes_naming(id: &str) -> Vec<String> {
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(id) {
                found.push(format!("{name}: {c}"));
            }
        }
    }
    found
}

#[test]
fn eight_runs_at_once_each_with_only_its_own_credential_and_traffic() {
    if !docker_ready() {
        return;
    }
    let (port, seen) = upstream();
    let mut m = Moat::new();
    let connect: Vec<String> = (1..=N)
        .map(|i| format!("p{i}.test:8080:127.0.0.1:{port}"))
        .collect();
    m.env.env("MOAT_PROXY_CONNECT_TO", connect.join(","));
    let tokens: Vec<String> = (1..=N).map(|i| canary(&format!("tok{i}_"))).collect();
    for (i, t) in tokens.iter().enumerate() {
        let mut c = m.env.cmd("moat");
        c.args([
            "grant",
            "http",
            &format!("par{}", i + 1),
            "--host",
            &format!("http://p{}.test:8080", i + 1),
            "--header",
            "X-Api-Key",
            "--token-stdin",
            "--no-validate",
        ]);
        let g = run_with_deadline(c, "moat grant http".into(), Some(t.as_bytes()), 60);
        assert_eq!(g.code(), 0, "{}", g.stderr());
    }
    // Warm the images (run and guard) once, so the 8 start together rather than build.
    let w = m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_eq!(w.code(), 0, "{}", w.stderr());

    // All 8 at once, each granted only its own token.
    let starts: Vec<_> = (1..=N)
        .map(|i| {
            let next = i % N + 1;
            let script = format!(
                "curl -sS -o /dev/null -w 'own=%{{http_code}}\\n' http://p{i}.test:8080/from-{i}/own\n\
                 curl -sS -o /dev/null -w 'other=%{{http_code}}\\n' http://p{next}.test:8080/from-{i}/other\n\
                 echo done-{i}; sleep 300\n"
            );
            let mut c = m.env.cmd("moat-launch");
            c.current_dir(&m.ws).args([
                "run",
                "-d",
                "--no-sandbox",
                "-n",
                &format!("par-{i}"),
                "--grant",
                &format!("par{i}"),
                "--",
                "sh",
                "-c",
                &script,
            ]);
            std::thread::spawn(move || run_with_deadline(c, format!("run {i}"), None, 120))
        })
        .collect();
    let mut ids = vec![];
    for (i, s) in starts.into_iter().enumerate() {
        let r = s.join().unwrap();
        assert_eq!(r.code(), 0, "run {} did not start: {}", i + 1, r.stderr());
        for t in &tokens {
            r.leaks_nothing(t);
        }
        ids.push(r.stdout().trim().to_string());
    }
    for (i, id) in ids.iter().enumerate() {
        m.wait_log(id, &format!("done-{}", i + 1), 120);
    }

    // `moat list` shows the 8, each running under its own name; each has its own network
    // and proxy.
    let l = m.run_timeout("moat", &["list", "--json"], None, 60);
    assert_eq!(l.code(), 0, "{}", l.stderr());
    let listed: HashMap<String, (String, String)> = l
        .stdout()
        .lines()
        .filter_map(|x| serde_json::from_str::<serde_json::Value>(x).ok())
        .map(|v| {
            (
                v["id"].as_str().unwrap_or("").to_string(),
                (
                    v["name"].as_str().unwrap_or("").to_string(),
                    v["state"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect();
    let mut nets = std::collections::HashSet::new();
    let mut proxies = std::collections::HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            listed.get(id),
            Some(&(format!("par-{}", i + 1), "running".to_string())),
            "{}",
            l.stdout()
        );
        let md = m.metadata(id);
        assert!(nets.insert(md["network"].as_str().unwrap().to_string()));
        assert!(proxies.insert(md["proxy_addr"].as_str().unwrap().to_string()));
    }

    // The upstream: each run's own request carried its own token and nobody else's; its
    // request to the next run's host carried no token at all.
    let got = seen.lock().unwrap().clone();
    for i in 1..=N {
        let mine: Vec<_> = got
            .iter()
            .filter(|(_, p, _)| p.starts_with(&format!("/from-{i}/")))
            .collect();
        let own = format!("/from-{i}/own");
        let other = format!("/from-{i}/other");
        assert_eq!(mine.len(), 2, "run {i}: {got:?}");
        for (host, path, key) in mine {
            let h = host.split(':').next().unwrap_or("");
            if *path == own {
                assert_eq!(h, format!("p{i}.test"), "{got:?}");
                assert_eq!(key.as_deref(), Some(tokens[i - 1].as_str()), "{got:?}");
            } else {
                assert_eq!(*path, other, "{got:?}");
                assert_eq!(h, format!("p{}.test", i % N + 1), "{got:?}");
                assert_eq!(*key, None, "run {i} got a token for another run's host");
            }
        }
    }

    // Each run's trace holds its own requests only, and no token anywhere in its directory
    // or output.
    for (i, id) in ids.iter().enumerate() {
        let n = i + 1;
        let trace = std::fs::read_to_string(m.run_dir(id).join("network.jsonl")).unwrap();
        assert!(trace.contains(&format!("/from-{n}/own")), "{trace}");
        for j in (1..=N).filter(|j| *j != n) {
            assert!(
                !trace.contains(&format!("/from-{j}/")),
                "run {n}'s trace has run {j}'s request: {trace}"
            );
        }
        let logs = m.launch(&["logs", id]);
        assert!(logs.stdout().contains("own=200"), "{}", logs.stdout());
        for t in &tokens {
            logs.leaks_nothing(t);
        }
    }
    for t in &tokens {
        let holders = m.env.files_containing(t.as_bytes());
        assert!(holders.is_empty(), "a token in {holders:?}");
    }

    // Stop them all at once; then clean. Nothing is left: no container (run, guard, spare
    // guard of its network), no network, no process.
    let stops: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut c = m.env.cmd("moat");
            c.current_dir(&m.ws).args(["stop", id]);
            std::thread::spawn(move || run_with_deadline(c, "moat stop".into(), None, 120))
        })
        .collect();
    for s in stops {
        let r = s.join().unwrap();
        assert_eq!(r.code(), 0, "{}", r.stderr());
    }
    let metas: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| m.wait_state(id, &["stopped"], 60))
        .collect();
    let c = m.run_timeout("moat", &["clean", "--force"], None, 120);
    assert_eq!(c.code(), 0, "{}", c.stderr());
    assert!(m.run_ids().is_empty(), "{:?}", m.run_ids());
    for (id, md) in ids.iter().zip(metas.iter()) {
        assert_eq!(
            docker_out(&["ps", "-aq", "--filter", &format!("label=moat.run={id}")]),
            "",
            "{id} left a container"
        );
        assert_eq!(
            docker_out(&["ps", "-aq", "--filter", &format!("name=moat-{id}")]),
            "",
            "{id} left a container"
        );
        let net = md["network"].as_str().unwrap();
        let left = Command::new("docker")
            .args(["network", "inspect", net])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!left.success(), "{id} left its network {net}");
        assert_eq!(
            docker_out(&["ps", "-aq", "--filter", &format!("name={net}-guard")]),
            "",
            "{id} left a guard on {net}"
        );
        for k in ["supervisor_pid", "proxy_pid"] {
            let pid = md[k].as_u64().unwrap();
            assert!(
                !alive(pid, if k == "proxy_pid" { "moat-proxy" } else { id }),
                "{id}: {k} {pid} still runs"
            );
        }
        assert_eq!(processes_naming(id), Vec::<String>::new(), "{id}");
    }
}

/// `MOAT_TIMINGS=1` and `--timings`: each start-up stage is printed once, in the order start-up
/// waits for it, with its duration; without either, none is. (No timed assertion: the
/// figures are for people, bench/runs.sh measures.)
#[test]
fn timings_name_every_start_up_stage_once_in_order() {
    if !docker_ready() {
        return;
    }
    const STAGES: &[&str] = &[
        "config",
        "trust check",
        "network",
        "image check",
        "guard start",
        "audit start",
        "container create",
        "firewall ready",
        "proxy start",
        "container start",
        "first output",
    ];
    let mut m = Moat::new();
    // Warm: the images are built and the CA made, so the next runs take the plain path.
    let w = m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_eq!(w.code(), 0, "{}", w.stderr());
    let plain = m.launch(&["run", "--no-sandbox", "--", "echo", "hello"]);
    assert_eq!(plain.code(), 0, "{}", plain.stderr());
    assert!(
        !plain.stderr().contains("moat: timings:"),
        "{}",
        plain.stderr()
    );
    let stages = |stderr: &str| -> Vec<String> {
        stderr
            .lines()
            .filter_map(|l| l.strip_prefix("moat: timings: "))
            .map(|l| {
                let (name, rest) = l.split_once(" +").expect("a duration");
                assert!(rest.contains(" ms (at "), "{l}");
                name.to_string()
            })
            .collect()
    };
    let flag = m.launch(&["run", "--no-sandbox", "--timings", "--", "echo", "hello"]);
    assert_eq!(flag.code(), 0, "{}", flag.stderr());
    assert_eq!(stages(&flag.stderr()), STAGES, "{}", flag.stderr());
    m.env.env("MOAT_TIMINGS", "1");
    let env = m.launch(&["run", "--no-sandbox", "--", "echo", "hello"]);
    assert_eq!(env.code(), 0, "{}", env.stderr());
    assert_eq!(stages(&env.stderr()), STAGES, "{}", env.stderr());
    assert!(env.stdout().contains("hello"));
}

/// Spare guards (guard.rs): the guard a finished run leaves on the spare network is closed
/// before any run claims it (a container in its namespace reaches no host service, THREATS
/// E2), and the run that claims it gets exactly its own proxy as the way out (E2, E4: the run
/// container joins it without NET_ADMIN or NET_RAW and starts only after the rules are in).
#[test]
fn a_spare_guard_is_closed_until_a_run_claims_it_and_then_admits_only_that_runs_proxy() {
    if !docker_ready() {
        return;
    }
    let canary = canary("spare_");
    let (port, hits) = moat_e2e::host_service(&canary);
    let m = Moat::new();
    let probe = |ip: &str| {
        format!(
            "if timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/{port}; head -c 64 <&3' 2>/dev/null; then echo OPEN; else echo CLOSED; fi"
        )
    };
    // Runs may share spares with other homes on this engine: try a few times to get one.
    let mut claimed = None;
    let mut checked = 0;
    for _ in 0..3 {
        let w = m.launch(&["run", "--no-sandbox", "--", "true"]);
        assert_eq!(w.code(), 0, "{}", w.stderr());
        let image = m.metadata(&m.newest_run())["image"]
            .as_str()
            .unwrap()
            .to_string();
        // Every unclaimed spare guard on the engine: closed.
        for g in docker_out(&["ps", "-q", "--filter", "label=moat.guard=spare"]).lines() {
            let net = docker_out(&[
                "inspect",
                "--format",
                "{{index .Config.Labels \"moat.spare\"}}",
                g,
            ]);
            let gw = docker_out(&[
                "network",
                "inspect",
                "--format",
                "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
                &net,
            ]);
            if gw.is_empty() {
                continue;
            }
            let rules = docker_out(&["exec", g, "iptables-save"]);
            let o = Command::new("docker")
                .args([
                    "run",
                    "--rm",
                    "--network",
                    &format!("container:{g}"),
                    "--cap-drop",
                    "NET_RAW",
                    "--cap-drop",
                    "NET_ADMIN",
                    "--entrypoint",
                    "bash",
                    &image,
                    "-c",
                    &probe(&gw),
                ])
                .output()
                .unwrap();
            let out = String::from_utf8_lossy(&o.stdout).to_string();
            if out.trim().is_empty() {
                continue; // claimed and gone meanwhile
            }
            assert_eq!(
                out.trim(),
                "CLOSED",
                "spare guard {g} let a host service through"
            );
            assert!(!out.contains(&canary));
            // Unless a run claimed it meanwhile: closed but loopback.
            let run_rules = rules
                .lines()
                .any(|l| l.starts_with("-A OUTPUT -d ") && l.ends_with("-j ACCEPT"));
            if !rules.is_empty() && !run_rules {
                assert!(rules.contains(":OUTPUT DROP"), "{rules}");
                assert!(rules.contains(":INPUT DROP"), "{rules}");
                checked += 1;
            }
        }
        let id = m.detached(&["--", "sh", "-c", "sleep 120"]);
        let mode = docker_out(&[
            "inspect",
            "--format",
            "{{.HostConfig.NetworkMode}}",
            &format!("moat-{id}"),
        ]);
        let guard = mode.strip_prefix("container:").unwrap_or("").to_string();
        let name = docker_out(&["inspect", "--format", "{{.Name}}", &guard]);
        if name.starts_with("/moat-spare-") {
            claimed = Some((id, guard));
            break;
        }
        m.launch(&["stop", &id]);
    }
    assert!(checked > 0, "no unclaimed spare guard was there to probe");
    let (id, guard) = claimed.expect("no run took a spare guard in three tries");
    let md = m.metadata(&id);
    let proxy = md["proxy_addr"].as_str().unwrap();
    let (pip, pport) = proxy.rsplit_once(':').unwrap();
    let rules = docker_out(&["exec", &guard, "iptables-save"]);
    assert!(rules.contains(":OUTPUT DROP"), "{rules}");
    let accepts: Vec<&str> = rules
        .lines()
        .filter(|l| l.starts_with("-A OUTPUT") && l.contains("--dport"))
        .collect();
    assert_eq!(
        accepts,
        vec![format!("-A OUTPUT -d {pip}/32 -p tcp -m tcp --dport {pport} -j ACCEPT").as_str()],
        "{rules}"
    );
    assert_eq!(
        docker_out(&[
            "inspect",
            "--format",
            "{{json .HostConfig.CapDrop}} {{json .HostConfig.CapAdd}}",
            &format!("moat-{id}"),
        ]),
        "[\"NET_RAW\",\"NET_ADMIN\"] null"
    );
    // From inside the run: the host service through the gateway is closed, the proxy open.
    let x = Command::new("docker")
        .args([
            "exec",
            &format!("moat-{id}"),
            "bash",
            "-c",
            &format!(
                "{}; if timeout 3 bash -c 'exec 3<>/dev/tcp/{pip}/{pport}' 2>/dev/null; then echo PROXY-OPEN; fi",
                probe(pip)
            ),
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&x.stdout).to_string();
    assert!(
        out.contains("CLOSED") && out.contains("PROXY-OPEN"),
        "{out}"
    );
    assert!(!out.contains(&canary));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let s = m.launch(&["stop", &id]);
    assert_eq!(s.code(), 0, "{}", s.stderr());
    // The claimed spare guard went with the run.
    m.wait_state(&id, &["stopped"], 60);
    let gone = (0..150).any(|_| {
        let there = Command::new("docker")
            .args(["inspect", &guard])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if there {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        !there
    });
    assert!(gone, "the claimed guard {guard} is still there");
}
