//! `moat report`: one self-contained HTML file about a run, checked from a real run (a
//! granted request through the proxy, a request the strict policy denies, log lines) and
//! from synthetic run directories written in the documented record formats (10,000
//! requests; hostile strings). The file is opened in headless Chromium: the script runs,
//! the rows are in the DOM, screenshots at desktop and phone widths, and axe-core finds no
//! serious accessibility violation.

use moat_e2e::github::GithubStandIn;
use moat_e2e::{Moat, docker_ready, run_with_deadline};
use moat_testkit::TestEnv;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOKEN: &str = "ghp_ReportCanaryT0kenDoNotLeak0123456789";

/// Under `MOAT_REQUIRE_DOCKER=1` (scripts/test, CI) a missing tool fails the test.
fn required() -> bool {
    std::env::var("MOAT_REQUIRE_DOCKER").as_deref() == Ok("1")
}

fn chromium_ready() -> bool {
    let ok = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !required(),
            "chromium is not installed (scripts/test installs it)"
        );
        eprintln!("SKIPPED: no chromium");
    }
    ok
}

/// Headless Chromium on `file` with `args`; its stdout.
fn chromium(file: &Path, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(format!("file://{}", file.display()));
    let r = run_with_deadline(c, format!("chromium {args:?}"), None, 120);
    assert_eq!(r.code(), 0, "chromium: {}", r.stderr());
    r.stdout()
}

fn dump_dom(file: &Path) -> String {
    chromium(file, &["--virtual-time-budget=5000", "--dump-dom"])
}

fn screenshot(file: &Path, out: &Path, size: &str) -> Vec<u8> {
    chromium(
        file,
        &[
            &format!("--screenshot={}", out.display()),
            &format!("--window-size={size}"),
        ],
    );
    let png = std::fs::read(out).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    png
}

/// No `src=`, `href=` or CSS `url(` in the file names anything outside it.
fn assert_no_external_reference(html: &str) {
    let lower = html.to_ascii_lowercase();
    for attr in ["src=", "href=", "url(", "@import", "srcset="] {
        for (i, _) in lower.match_indices(attr) {
            let after: String = lower[i + attr.len()..]
                .trim_start_matches(['"', '\'', ' '])
                .chars()
                .take(8)
                .collect();
            assert!(
                !(after.starts_with("http:")
                    || after.starts_with("https:")
                    || after.starts_with("//")
                    || after.starts_with("ftp:")),
                "an external reference: {}",
                &html[i..(i + 80).min(html.len())]
            );
            assert!(
                after.starts_with('#') || after.starts_with("data:") || !after.contains(':'),
                "a reference that leaves the file: {}",
                &html[i..(i + 80).min(html.len())]
            );
        }
    }
}

/// axe-core (from npm, `MOAT_TEST_AXE` names axe.min.js) run on a copy of the report: no
/// violation whose impact is serious or critical.
fn assert_accessible(report: &Path, dir: &Path) {
    let Some(axe) = std::env::var_os("MOAT_TEST_AXE") else {
        assert!(
            !required(),
            "MOAT_TEST_AXE is not set (scripts/test installs axe-core and sets it)"
        );
        eprintln!("SKIPPED: the accessibility check (no MOAT_TEST_AXE)");
        return;
    };
    let axe = std::fs::read_to_string(&axe).expect("axe.min.js at MOAT_TEST_AXE");
    let html = std::fs::read_to_string(report).unwrap();
    // The report's policy allows only inline scripts; axe is inlined, and the runner writes
    // its result into the DOM.
    let runner = format!(
        "<script>{axe}</script><script>axe.run(document, {{resultTypes: ['violations']}}).then(function (r) {{ var p = document.createElement('pre'); p.id = 'axe-result'; p.textContent = JSON.stringify(r.violations.map(function (v) {{ return {{id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help}}; }})); document.body.appendChild(p); }}, function (e) {{ var p = document.createElement('pre'); p.id = 'axe-error'; p.textContent = String(e); document.body.appendChild(p); }});</script></body>"
    );
    let copy = dir.join("report-axe.html");
    std::fs::write(&copy, html.replace("</body>", &runner)).unwrap();
    let dom = chromium(&copy, &["--virtual-time-budget=20000", "--dump-dom"]);
    let start = dom.find("<pre id=\"axe-result\">").unwrap_or_else(|| {
        panic!(
            "axe did not finish: {}",
            &dom[dom.len().saturating_sub(2000)..]
        )
    });
    let rest = &dom[start + "<pre id=\"axe-result\">".len()..];
    let json = &rest[..rest.find("</pre>").unwrap()];
    let json = json
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let bad: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| matches!(x["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    assert!(bad.is_empty(), "axe: serious violations: {bad:?}");
}

fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// THREATS B5 (the report is an artifact like any other: canary-tested), J1 (recording the
/// report keeps the audit log verifiable), L6 (the run's records are hostile input).
///
/// A real run: a granted request (the proxy injects the canary token), a request the strict
/// policy denies, log lines. The report holds the rows (host, status, grant, the denial and
/// its rule, the log lines), the audit verdict with the tree size and root `moat audit
/// --json` gives, no external reference and no canary; `moat audit` afterwards lists the
/// report's SHA-256 and still verifies. Headless Chromium runs its script (rows in the DOM),
/// screenshots it at desktop and phone widths, and axe-core finds no serious violation.
#[test]
fn a_real_runs_report_shows_requests_denials_logs_and_the_audit_verdict() {
    if !docker_ready() || !chromium_ready() {
        return;
    }
    let gh = GithubStandIn::start(TOKEN);
    let m = Moat::with_github(&gh, TOKEN);
    let r = m.launch(&[
        "run",
        "--no-sandbox",
        "--grant",
        "github",
        "--policy",
        "strict",
        "--allow-host",
        "api.github.com",
        "--",
        "sh",
        "-c",
        "echo report-line-one; curl -s https://api.github.com/user; echo; \
         curl -s -o /dev/null -w 'denied-status:%{http_code}\\n' https://denied.example.org/forbidden-path; \
         /bin/false || echo report-false-failed; echo report-line-two",
    ]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stdout().contains("report-line-two"), "{}", r.stdout());
    let id = m.newest_run();
    let network = std::fs::read_to_string(m.run_dir(&id).join("network.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = network
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let denied = recs
        .iter()
        .find(|v| {
            v["url"]
                .as_str()
                .unwrap_or("")
                .contains("denied.example.org")
        })
        .expect("the denied request in network.jsonl");
    let rule = denied["policy"].as_str().unwrap().to_string();
    assert_ne!(rule, "allowed");
    let granted = recs
        .iter()
        .find(|v| v["grant"].as_str() == Some("github"))
        .expect("the granted request in network.jsonl");

    let a = m.run_timeout("moat", &["audit", &id, "--json"], None, 60);
    assert_eq!(a.code(), 0, "{}", a.stderr());
    let before: serde_json::Value = serde_json::from_str(a.stdout().trim()).unwrap();
    let tree = before["tree_size"].as_u64().unwrap();
    let root = before["root"].as_str().unwrap().to_string();

    let out = m.env.path().join("report.html");
    let rep = m.run_timeout(
        "moat",
        &["report", &id, "-o", out.to_str().unwrap()],
        None,
        120,
    );
    assert_eq!(rep.code(), 0, "{}", rep.stderr());
    rep.leaks_nothing(TOKEN);
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(!html.contains(TOKEN), "the canary token is in the report");
    assert!(
        !html.contains(&TOKEN[4..20]),
        "part of the canary is in the report"
    );
    for want in [
        "api.github.com",
        "/user",
        "denied.example.org",
        "/forbidden-path",
        &rule,
        "report-line-one",
        "report-line-two",
        "credential_used",
        "audit log verifies.",
        &format!("<th scope=\"row\">Tree size</th><td>{tree}</td>"),
        &format!("<th scope=\"row\">Root</th><td>{root}</td>"),
        &format!("moat audit {id}"),
    ] {
        assert!(html.contains(want), "the report lacks {want:?}");
    }
    // The exec trace's panel: the programs the run executed, and the one that failed.
    assert!(html.contains("<section id=\"exec\""), "no exec trace panel");
    assert!(
        html.contains(
            "<tr><th scope=\"row\">curl</th><td class=\"n\">2</td><td class=\"n\">0</td></tr>"
        ),
        "no row for curl's two runs"
    );
    assert!(
        html.contains("<td><code>/bin/false</code></td><td>exit 1</td>"),
        "the failed command is not listed"
    );
    // The granted request's row: its host, status and grant, server-side.
    let status = granted["status"].as_i64().unwrap().to_string();
    assert!(
        html.contains(&format!(
            "<td>api.github.com</td><td>GET /user</td><td>{status}</td>"
        )),
        "no row for the granted request"
    );
    assert!(
        html.contains("<th scope=\"row\">github</th><td>api.github.com</td><td class=\"n\">1</td>")
    );
    assert_no_external_reference(&html);

    // The report's hash is in the audit log, which still verifies; `moat audit` lists it.
    let sha = sha256(&out);
    let after = m.run_timeout("moat", &["audit", &id], None, 60);
    assert_eq!(after.code(), 0, "{}\n{}", after.stdout(), after.stderr());
    assert!(
        after
            .stdout()
            .contains(&format!("report_written: sha256 {sha}")),
        "moat audit does not list the report: {}",
        after.stdout()
    );
    let j = m.run_timeout("moat", &["audit", &id, "--json"], None, 60);
    let now: serde_json::Value = serde_json::from_str(j.stdout().trim()).unwrap();
    assert_eq!(now["verdict"], "intact");
    assert_eq!(now["tree_size"].as_u64().unwrap(), tree + 1);

    // In a browser: the script ran and the rows are in the DOM.
    let dom = dump_dom(&out);
    assert!(dom.contains("data-ready=\""), "the script did not finish");
    assert!(dom.contains("<svg"), "no timeline drawn");
    for want in [
        "denied.example.org",
        "report-line-two",
        &rule,
        "Commands run",
    ] {
        assert!(dom.contains(want), "the DOM lacks {want:?}");
    }
    let desk = screenshot(&out, &m.env.path().join("desk.png"), "1280,900");
    let phone = screenshot(&out, &m.env.path().join("phone.png"), "390,844");
    assert!(
        desk.len() > 20_000,
        "desktop screenshot of {} bytes",
        desk.len()
    );
    assert!(
        phone.len() > 10_000,
        "phone screenshot of {} bytes",
        phone.len()
    );
    assert_ne!(desk, phone);
    if let Some(p) = std::env::var_os("MOAT_REPORT_SCREENSHOT") {
        std::fs::write(&p, &desk).unwrap();
        std::fs::copy(&out, std::path::Path::new(&p).with_extension("html")).unwrap();
    }
    assert_accessible(&out, m.env.path());

    // A log changed after the run: the report says it does not verify, and is not recorded
    // (the log is left as it was).
    let log = m.run_dir(&id).join("audit/log.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"run_started\""));
    let forged = text.replacen("\"run_started\"", "\"run_startex\"", 1);
    std::fs::write(&log, &forged).unwrap();
    let out2 = m.env.path().join("report2.html");
    let rep = m.run_timeout(
        "moat",
        &["report", &id, "-o", out2.to_str().unwrap()],
        None,
        120,
    );
    assert_eq!(rep.code(), 0, "{}", rep.stderr());
    assert!(rep.stderr().contains("not recorded"), "{}", rep.stderr());
    let html2 = std::fs::read_to_string(&out2).unwrap();
    assert!(
        html2.contains("audit log does NOT verify"),
        "the report misses the fault"
    );
    assert!(!html2.contains("audit log verifies."));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), forged);

    // Nothing under the test's directory holds the token in the clear.
    assert!(m.env.files_containing(TOKEN.as_bytes()).is_empty());
}

/// A run directory written by hand in the documented formats: metadata.json and `lines`
/// as network.jsonl, `logs` as logs.jsonl, `other` as usage.jsonl.
fn synthetic_run(env: &TestEnv, id: &str, network: &str, logs: &str, other: &str) -> PathBuf {
    let dir = env.moat_home.join("runs").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let meta = serde_json::json!({
        "v": 1, "id": id, "name": "synthetic", "agent": "run", "workspace": "/nonexistent/ws",
        "grants": ["github"], "state": "stopped", "exit_code": 0, "runtime": "docker",
        "sandbox": false, "interactive": false, "detached": false,
        "created_at": "2026-12-01T10:00:00.000Z", "started_at": "2026-12-01T10:00:01.000Z",
        "stopped_at": "2026-12-01T10:20:00.000Z", "audit": "disabled"
    });
    std::fs::write(dir.join("metadata.json"), meta.to_string()).unwrap();
    std::fs::write(dir.join("network.jsonl"), network).unwrap();
    std::fs::write(dir.join("logs.jsonl"), logs).unwrap();
    std::fs::write(dir.join("usage.jsonl"), other).unwrap();
    dir
}

fn request(
    i: usize,
    host: &str,
    path: &str,
    status: u16,
    grant: Option<&str>,
    policy: &str,
) -> String {
    let ts = format!(
        "2026-12-01T10:{:02}:{:02}.{:03}Z",
        1 + i / 60_000 % 18,
        i / 1000 % 60,
        i % 1000
    );
    serde_json::json!({
        "v": 1, "type": "request", "ts": ts, "request_id": format!("req_{i:016x}"),
        "method": "GET", "url": format!("https://{host}{path}"), "status": status,
        "duration_ms": 12.5, "ttfb_ms": 3.0, "bytes_in": 0, "bytes_out": 1234,
        "grant": grant, "policy": policy, "error": null
    })
    .to_string()
        + "\n"
}

/// THREATS L6 (size limits on what a run wrote). 10,000 requests over four hosts: the report is under 1 MiB, and its server-side (no
/// JavaScript) host table has each host's exact count.
#[test]
fn ten_thousand_requests_fit_in_under_a_mebibyte_with_exact_counts() {
    let env = TestEnv::new();
    let hosts = [
        ("api.github.com", 5000, Some("github")),
        ("registry.example.net", 3000, None),
        ("pypi.example.org", 1999, None),
        ("blocked.example.com", 1, None),
    ];
    let mut net = String::new();
    let mut i = 0;
    for (h, n, g) in hosts {
        for _ in 0..n {
            let policy = if h.starts_with("blocked") {
                "strict: host not in allow list"
            } else {
                "allowed"
            };
            net.push_str(&request(i, h, &format!("/v1/items/{i}"), 200, g, policy));
            i += 1;
        }
    }
    assert_eq!(i, 10_000);
    let logs = "{\"ts\":\"2026-12-01T10:00:02.000Z\",\"stream\":\"stdout\",\"line\":\"hello\"}\n";
    let id = "run_0123456789ab";
    synthetic_run(&env, id, &net, logs, "");
    let out = env.path().join("big.html");
    let r = env.run("moat-launch", &["report", id, "-o", out.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stderr().contains("not recorded"), "{}", r.stderr());
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.len() < 1 << 20, "the report has {} bytes", html.len());
    eprintln!("report of 10,000 requests: {} bytes", html.len());
    for (h, n, _) in hosts {
        assert!(
            html.contains(&format!(
                "<tr><th scope=\"row\">{h}</th><td class=\"n\">{n}</td>"
            )),
            "the host table lacks {h} with {n} requests"
        );
    }
    assert!(
        html.contains(
            "<th scope=\"row\">github</th><td>api.github.com</td><td class=\"n\">5000</td>"
        )
    );
    assert!(html.contains("Rows 1 to 100 of 10001"));
    assert!(html.contains("--no-audit"));
    // The file's own policy forbids every fetch.
    assert!(html.contains("content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\""));
    assert_no_external_reference(&html);
    if chromium_ready() {
        let dom = dump_dom(&out);
        assert!(
            dom.contains("data-ready=\"10001\""),
            "the script did not run over all rows"
        );
        // The filters, paging and zoom, driven as a person would (select, click).
        let probe = "<script>(function () { function $(i) { return document.getElementById(i); } function cap() { return $('row-caption').textContent; } function marks() { return document.querySelectorAll('#chart svg rect').length; } var r = {}; var h = $('f-host'); for (var i = 0; i < h.options.length; i++) if (h.options[i].textContent === 'blocked.example.com') h.value = h.options[i].value; h.dispatchEvent(new Event('change')); r.host = cap(); r.hostRow = $('row-body').textContent; h.value = ''; h.dispatchEvent(new Event('change')); $('p-next').click(); r.next = cap(); $('f-status').value = 'denied'; $('f-status').dispatchEvent(new Event('change')); r.denied = cap(); $('f-status').value = ''; $('f-status').dispatchEvent(new Event('change')); r.before = marks(); $('z-in').click(); $('z-in').click(); r.zoomed = marks(); $('z-all').click(); r.all = marks(); var p = document.createElement('pre'); p.id = 'probe'; p.textContent = JSON.stringify(r); document.body.appendChild(p); })();</script></body>";
        let copy = env.path().join("probe.html");
        std::fs::write(&copy, html.replace("</body>", probe)).unwrap();
        let dom = dump_dom(&copy);
        let at = dom.find("<pre id=\"probe\">").expect("the probe ran") + 16;
        let text = &dom[at..at + dom[at..].find("</pre>").unwrap()];
        let r: serde_json::Value = serde_json::from_str(&text.replace("&quot;", "\"")).unwrap();
        assert_eq!(r["host"], "Rows 1 to 1 of 1 (filtered from 10001)");
        assert!(
            r["hostRow"].as_str().unwrap().contains("/v1/items/9999"),
            "{r}"
        );
        assert_eq!(r["next"], "Rows 101 to 200 of 10001");
        assert_eq!(r["denied"], "Rows 1 to 1 of 1 (filtered from 10001)");
        let (before, zoomed) = (r["before"].as_u64().unwrap(), r["zoomed"].as_u64().unwrap());
        assert!(
            zoomed < before,
            "zooming in showed {zoomed} of {before} marks"
        );
        assert_eq!(r["all"], r["before"]);
    }
}

/// THREATS L6: hostile run records. A host, a path, a log line and an unknown event kind each
/// carry `</script><img src=x onerror=...>`: the report shows them as text, and the DOM
/// Chromium builds from it holds no injected element. An unknown event type still appears
/// by its type.
#[test]
fn hostile_records_are_text_not_markup() {
    let env = TestEnv::new();
    let evil = "</script><img src=x onerror=document.title='pwned'><b id=injected>x</b>\u{2028}";
    let mut net = request(
        0,
        "ok.example.com",
        &format!("/a?q={evil}"),
        200,
        None,
        "allowed",
    );
    net.push_str(&request(
        1,
        &format!("evil.example.com{evil}"),
        "/x",
        403,
        None,
        evil,
    ));
    let logs =
        serde_json::json!({"ts": "2026-12-01T10:00:03.000Z", "stream": "stdout", "line": evil})
            .to_string()
            + "\n";
    let other = serde_json::json!({"v": 1, "type": "decoy_tripped", "ts": "2026-12-01T10:00:04.000Z", "what": evil}).to_string()
        + "\n"
        + &serde_json::json!({"v": 1, "type": format!("odd{evil}"), "ts": "2026-12-01T10:00:05.000Z"}).to_string()
        + "\n";
    let other = other
        + &serde_json::json!({"v": 1, "type": "usage", "ts": "2026-12-01T10:00:06.000Z", "model": evil, "input_tokens": 10, "cost_usd": 0.25}).to_string()
        + "\n"
        + &serde_json::json!({"v": 1, "type": "usage", "ts": "2026-12-01T10:00:07.000Z", "input_tokens": 5, "cost_usd": 0.5}).to_string()
        + "\n";
    let id = "run_00000000beef";
    let dir = synthetic_run(&env, id, &net, &logs, &other);
    // The exec trace's argv is the run's to choose: a program named after the payload.
    let exec = serde_json::json!({"v": 1, "type": "exec", "event": "exec", "ts": "2026-12-01T10:00:08.000Z", "pid": 7, "ppid": 1, "argv": [format!("/tmp/{evil}"), evil]}).to_string()
        + "\n"
        + &serde_json::json!({"v": 1, "type": "exec", "event": "exit", "ts": "2026-12-01T10:00:09.000Z", "pid": 7, "argv": [format!("/tmp/{evil}"), evil], "exit_code": 3, "signal": null}).to_string()
        + "\n";
    std::fs::write(dir.join("exec.jsonl"), exec).unwrap();
    let out = env.path().join("hostile.html");
    let r = env.run("moat-launch", &["report", id, "-o", out.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(!html.contains("<img"), "an img element in the file");
    assert!(
        !html.contains("<b id=injected"),
        "an injected element in the file"
    );
    assert!(html.contains("&lt;/script&gt;&lt;img src=x onerror="));
    assert!(
        html.contains("decoy_tripped"),
        "an unknown event type is not shown"
    );
    assert!(
        html.contains("<section id=\"exec\"") && html.contains("<td>exit 3</td>"),
        "the hostile command is not in the exec panel"
    );
    // Usage records are summed by member, without JavaScript.
    assert!(html.contains("<tr><th scope=\"row\">input_tokens</th><td class=\"n\">15</td></tr>"));
    assert!(html.contains("<tr><th scope=\"row\">cost_usd</th><td class=\"n\">0.75</td></tr>"));
    assert_eq!(
        html.matches("</script>").count(),
        2,
        "a record closed a script"
    );
    assert_no_external_reference(&html.replace("src=x", ""));
    if chromium_ready() {
        let dom = dump_dom(&out);
        assert!(dom.contains("data-ready=\""), "the script did not finish");
        assert!(!dom.contains("<img"), "an img element was injected");
        assert!(!dom.contains("id=\"injected\""), "an element was injected");
        assert!(!dom.contains("<title>pwned"), "injected script ran");
        assert!(
            dom.contains("&lt;/script&gt;&lt;img src=x onerror="),
            "the text is not shown"
        );
    }
}

/// Where the report goes: standard output when it is not a terminal (and with `-o -`);
/// on a terminal, `moat-report-RUN.html` in the current directory, said on the terminal.
#[test]
fn the_report_goes_to_stdout_or_to_a_named_file_on_a_terminal() {
    let env = TestEnv::new();
    let id = "run_0000000000aa";
    let net = request(0, "api.example.com", "/x", 200, None, "allowed");
    synthetic_run(&env, id, &net, "", "");
    for args in [vec!["report", id], vec!["report", id, "-o", "-"]] {
        let r = env.run("moat-launch", &args);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        assert!(r.stdout().starts_with("<!DOCTYPE html>"), "{args:?}");
        assert!(r.stdout().contains("api.example.com"));
    }
    let dir = tempfile::tempdir().unwrap();
    let how = moat_testkit::Terminal {
        dir: Some(dir.path()),
        limit_secs: 60,
        prompt_secs: 0,
        hold_input: true,
    };
    let cmd = format!("{} report {id}", moat_testkit::bin("moat-launch").display());
    let (code, text) = env.on_terminal(&cmd, "", "", &how);
    assert_eq!(code, 0, "{text}");
    let name = format!("moat-report-{id}.html");
    assert!(text.contains(&format!("wrote {name}")), "{text}");
    assert!(!text.contains("<!DOCTYPE"), "the HTML went to the terminal");
    let html = std::fs::read_to_string(dir.path().join(&name)).unwrap();
    assert!(html.contains("api.example.com"));
}

/// A run that is still running: the report is written, and its hash is not recorded (the
/// run's audit writer owns the log); a warning says so, and so does the footer.
#[test]
fn a_running_runs_report_is_written_and_not_recorded() {
    let env = TestEnv::new();
    let id = "run_0000000000bb";
    let dir = synthetic_run(
        &env,
        id,
        &request(0, "api.example.com", "/x", 200, None, "allowed"),
        "",
        "",
    );
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("metadata.json")).unwrap()).unwrap();
    meta["state"] = "running".into();
    meta["created_at"] = moat_core::timefmt::now_rfc3339().into();
    meta.as_object_mut().unwrap().remove("stopped_at");
    meta.as_object_mut().unwrap().remove("audit");
    std::fs::write(dir.join("metadata.json"), meta.to_string()).unwrap();
    std::fs::create_dir_all(dir.join("audit")).unwrap();
    std::fs::write(dir.join("audit/log.jsonl"), "").unwrap();
    let out = env.path().join("running.html");
    let r = env.run("moat-launch", &["report", id, "-o", out.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(
        r.stderr()
            .contains("not recorded: the run is still running"),
        "{}",
        r.stderr()
    );
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("This report is not recorded in the run's audit log"));
    assert_eq!(std::fs::read(dir.join("audit/log.jsonl")).unwrap(), b"");
}

/// Bad input is refused with a usage error: an unknown option, `-o` without a value.
#[test]
fn report_refuses_bad_arguments() {
    let env = TestEnv::new();
    let r = env.run("moat-launch", &["report", "--bogus"]);
    assert_eq!(r.code(), 64, "{}", r.stderr());
    let r = env.run("moat-launch", &["report", "-o"]);
    assert_eq!(r.code(), 64, "{}", r.stderr());
    let r = env.run("moat-launch", &["report", "run_nosuchrun000"]);
    assert_eq!(r.code(), 66, "{}", r.stderr());
}
