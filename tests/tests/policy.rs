//! `moat policy suggest` and `moat policy check` end to end (issue #21): a real run under the
//! permissive default reaches two loopback HTTPS echo servers (through the run's proxy,
//! `MOAT_PROXY_CONNECT_TO` and `MOAT_PROXY_EXTRA_CA`); the suggestion learned from its trace,
//! put in moat.yaml and approved, lets the same requests through and blocks a new host and a
//! path the run never used, with the proxy's own 403 and a denial in the trace; `check`
//! replays a trace against a narrower policy and names what it would block, with exit 1.

use moat_e2e::{Moat, docker_ready};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

const NAMES: [&str; 3] = ["one.policy.test", "two.policy.test", "three.policy.test"];

/// An HTTPS server on loopback for `NAMES` answering 200 to everything; records
/// `Host path` of every request. Returns the port, the CA's PEM and the record.
fn echo() -> (u16, String, Arc<Mutex<Vec<String>>>) {
    let mut cap = CertificateParams::default();
    cap.distinguished_name
        .push(DnType::CommonName, "policy test CA");
    cap.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    cap.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ck = KeyPair::generate().unwrap();
    let ca_pem = cap.self_signed(&ck).unwrap().pem();
    let issuer = Issuer::new(cap, ck);
    let lp =
        CertificateParams::new(NAMES.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let lk = KeyPair::generate().unwrap();
    let leaf = lp.signed_by(&lk, &issuer).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(lk.serialize_der()));
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(leaf.der().to_vec())], key)
        .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(tcp) = c else { continue };
            let (seen, cfg) = (s2.clone(), cfg.clone());
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)));
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut s = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let host = head
                    .lines()
                    .find_map(|l| l.strip_prefix("host: ").or(l.strip_prefix("Host: ")))
                    .unwrap_or("")
                    .to_string();
                // Read the body too: closing with it unread would reset the connection.
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; len.min(1 << 20)];
                let _ = s.read_exact(&mut body);
                seen.lock().unwrap().push(format!("{host} {path}"));
                let body = b"echo ok\n";
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(body);
                s.conn.send_close_notify();
                let _ = s.flush();
            });
        }
    });
    (port, ca_pem, seen)
}

/// What the agent does in both runs: two hosts, a couple of paths, GET and POST.
const SAME: &str = r#"
c() { n=$1; shift; curl -s -o /dev/null -w "$n=%{http_code}\n" "$@"; }
c A https://one.policy.test/repos/acme/widgets/pulls
c B https://one.policy.test/repos/acme/widgets/issues
c C https://one.policy.test/user
c D -X POST -d x=1 https://two.policy.test/upload
c E https://two.policy.test/
"#;

fn codes(out: &str) -> Vec<String> {
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| l.len() > 2 && l.as_bytes()[1] == b'=')
        .map(String::from)
        .collect();
    v.sort();
    v
}

fn trace(m: &Moat, id: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(m.run_dir(id).join("network.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Issue #21, THREATS A5 (rules enforced on what the agent sends), L1 (the learned
/// network: section applies only once approved): from permissive to strict in two
/// commands; the learned policy allows exactly what the run did.
#[test]
fn a_policy_learned_from_a_run_lets_it_run_again_and_blocks_what_is_new() {
    if !docker_ready() {
        return;
    }
    let (port, ca_pem, seen) = echo();
    let mut m = Moat::new();
    let ca = m.env.path().join("policy-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let to: Vec<String> = NAMES
        .iter()
        .map(|n| format!("{n}:443:127.0.0.1:{port}"))
        .collect();
    m.env
        .env("MOAT_PROXY_CONNECT_TO", to.join(","))
        .env("MOAT_PROXY_EXTRA_CA", &ca);

    // 1. Permissive (no moat.yaml): everything goes through.
    let r = m.launch_sh(&[], SAME);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert_eq!(
        codes(&r.stdout()),
        ["A=200", "B=200", "C=200", "D=200", "E=200"],
        "{}",
        r.stdout()
    );
    let first = m.newest_run();

    // 2. suggest, through the porcelain.
    let mut c = m.env.cmd("moat");
    c.args(["policy", "suggest", &first, "-o", "policy.yaml"])
        .current_dir(&m.ws);
    let s = moat_e2e::run_with_deadline(c, "moat policy suggest".into(), None, 120);
    assert_eq!(s.code(), 0, "{}", s.stderr());
    assert!(s.stderr().contains("moat trust"), "{}", s.stderr());
    let yaml = std::fs::read_to_string(m.ws.join("policy.yaml")).unwrap();
    assert!(yaml.contains("policy: strict"), "{yaml}");
    assert!(yaml.contains("`moat trust` will ask"), "{yaml}");
    for want in [
        "- \"one.policy.test\":",
        "- \"allow GET /repos/acme/**\"",
        "- \"allow GET /user\"",
        "- \"two.policy.test\":",
        "- \"allow POST /upload\"",
        "- \"allow GET /\"",
        "- \"deny * /**\"",
        "# 3 request(s)",
        "# 2 request(s)",
    ] {
        assert!(yaml.contains(want), "{want:?} missing:\n{yaml}");
    }
    assert!(!yaml.contains("three.policy.test"), "{yaml}");

    // 3. Into moat.yaml; check says the run would pass unblocked.
    m.write_config(&format!("name: policy-e2e\n{yaml}"));
    let chk = m.run_timeout("moat-launch", &["policy", "check", &first], None, 120);
    assert_eq!(chk.code(), 0, "{}\n{}", chk.stdout(), chk.stderr());
    assert!(
        chk.stdout().contains("nothing of run") && chk.stdout().contains("requests checked"),
        "{}",
        chk.stdout()
    );

    // 4. Network settings are privileged: approved, then the same commands run again, and a
    // new host and a path the first run never used are refused by the proxy.
    let r = m.launch_sh(&[], "true");
    assert_eq!(
        r.code(),
        77,
        "an unapproved network: section ran: {}",
        r.stderr()
    );
    m.trust(None);
    let before = seen.lock().unwrap().len();
    let script = format!(
        "{SAME}\nc F -D - https://three.policy.test/ | tr -d '\\r' | grep -i -e '^x-moat-blocked' -e '^F='\nc G https://one.policy.test/admin\n"
    );
    let r = m.launch_sh(&[], &script);
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert_eq!(
        codes(&out),
        [
            "A=200", "B=200", "C=200", "D=200", "E=200", "F=403", "G=403"
        ],
        "{out}"
    );
    assert!(out.contains("x-moat-blocked: host-not-allowed"), "{out}");
    let second = m.newest_run();
    assert_ne!(first, second);
    let reached: Vec<String> = seen.lock().unwrap()[before..].to_vec();
    assert_eq!(reached.len(), 5, "{reached:?}");
    assert!(
        !reached
            .iter()
            .any(|r| r.starts_with("three.") || r.ends_with("/admin")),
        "{reached:?}"
    );
    let t = trace(&m, &second);
    let denied: Vec<&serde_json::Value> = t
        .iter()
        .filter(|r| r["policy"].as_str() != Some("allowed"))
        .filter(|r| r["url"].as_str().unwrap_or("").contains(".policy.test/"))
        .collect();
    assert_eq!(denied.len(), 2, "{t:?}");
    assert!(
        denied
            .iter()
            .any(|r| r["url"] == "https://three.policy.test/"
                && r["policy"] == "strict: host not in allow list")
    );
    assert!(
        denied
            .iter()
            .any(|r| r["url"] == "https://one.policy.test/admin" && r["policy"] == "deny * /**")
    );

    // 5. check against a narrower policy: two.policy.test's requests would be blocked.
    std::fs::write(
        m.ws.join("narrow.yaml"),
        "network:\n  policy: strict\n  allow:\n    - one.policy.test\n",
    )
    .unwrap();
    let chk = m.run_timeout(
        "moat",
        &["policy", "check", &first, "--config", "narrow.yaml"],
        None,
        120,
    );
    let o = chk.stdout();
    assert_eq!(chk.code(), 1, "{o}\n{}", chk.stderr());
    assert!(o.contains("would block "), "{o}");
    assert!(
        o.contains(
            "\"POST\" \"two.policy.test\" \"/upload\"  1 time(s)  rule \"strict: host not in allow list\""
        ),
        "{o}"
    );
    assert!(o.contains("\"GET\" \"two.policy.test\" \"/\""), "{o}");
    assert!(!o.contains("one.policy.test"), "{o}");
    // The second run replayed against its own (learned) policy: the two refusals again.
    let chk = m.run_timeout("moat-launch", &["policy", "check", &second], None, 120);
    assert_eq!(chk.code(), 1, "{}", chk.stdout());
    assert!(
        chk.stdout().contains("\"three.policy.test\" \"/\""),
        "{}",
        chk.stdout()
    );
    assert!(chk.stdout().contains("\"/admin\""), "{}", chk.stdout());
}

/// `moat policy` refuses what it cannot use with a one-line error and a sysexits code.
#[test]
fn bad_policy_invocations_are_refused() {
    let env = moat_testkit::TestEnv::new();
    let run = |args: &[&str]| {
        let mut c = env.cmd("moat-launch");
        c.args(args);
        moat_e2e::run_with_deadline(c, args.join(" "), None, 60)
    };
    let r = run(&["policy"]);
    assert_eq!(r.code(), 64, "{}", r.stderr());
    let r = run(&["policy", "widen"]);
    assert_eq!(r.code(), 64, "{}", r.stderr());
    let r = run(&["policy", "check", "--output", "x"]);
    assert_eq!(r.code(), 64, "{}", r.stderr());
    let r = run(&["policy", "suggest", "nosuchrun"]);
    assert_eq!(r.code(), 66, "{}", r.stderr());
}

/// Issue #21 part 3, THREATS A8 (no wildcard over a public suffix), L6 (the trace is the
/// agent's doing): a crafted trace earns no wildcard over a public suffix, no allowance for
/// a host it was denied, and no YAML of its own; a trace whose denial the suggestion would
/// let through gets no suggestion at all.
#[test]
fn a_crafted_trace_cannot_widen_the_suggestion() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let r = m.launch_sh(&[], "true");
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = m.newest_run();
    let rec = |method: &str, url: &str, policy: &str| {
        serde_json::json!({"v":1,"type":"request","request_id":"req_0","method":method,"url":url,"status":200,"policy":policy,"grant":null})
            .to_string()
    };
    let mut lines = vec![];
    for h in ["evil1", "evil2", "evil3"] {
        for i in 0..6 {
            lines.push(rec(
                "GET",
                &format!("https://{h}.github.io/p{i}"),
                "allowed",
            ));
        }
    }
    lines.push(rec(
        "GET",
        "https://inj.example.com/a\n  policy: permissive\n  allow: [\"*.com\"]\n#",
        "allowed",
    ));
    lines.push(rec(
        "POST",
        "https://inj.example.com/b: c\n- \"x\"",
        "deny * /b: c",
    ));
    lines.push(rec(
        "GET",
        "https://blocked.example.com/",
        "strict: host not in allow list",
    ));
    let trace = m.run_dir(&id).join("network.jsonl");
    std::fs::write(&trace, lines.join("\n") + "\n").unwrap();
    let s = m.run_timeout(
        "moat-launch",
        &["policy", "suggest", &id, "-o", "s.yaml"],
        None,
        120,
    );
    assert_eq!(s.code(), 0, "{}", s.stderr());
    let yaml = std::fs::read_to_string(m.ws.join("s.yaml")).unwrap();
    assert!(!yaml.contains("*.github.io"), "{yaml}");
    assert!(!yaml.contains("\"*.com\"\n"), "{yaml}");
    assert!(yaml.contains("public suffix"), "{yaml}");
    // The replay through the proxy names what the suggestion does not allow.
    assert!(
        yaml.contains("# Allowed in the run but not by this policy")
            && yaml.contains("#   \"GET\" \"inj.example.com\" \"/a\\x0A  policy: permissive"),
        "{yaml}"
    );
    for l in yaml.lines() {
        assert!(
            l.starts_with('#') || l == "network:" || l.starts_with("  "),
            "{l:?}\n{yaml}"
        );
    }
    let keys: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.trim_start().starts_with("policy:"))
        .collect();
    assert_eq!(keys, ["  policy: strict"], "{yaml}");
    // The suggestion parses as a moat.yaml, and under it the denied host stays blocked.
    let chk = m.run_timeout(
        "moat-launch",
        &["policy", "check", &id, "--config", "s.yaml"],
        None,
        120,
    );
    let o = chk.stdout();
    assert_eq!(chk.code(), 1, "{o}\n{}", chk.stderr());
    assert!(o.contains("\"blocked.example.com\" \"/\""), "{o}");
    assert!(o.contains("\"POST\" \"inj.example.com\""), "{o}");
    assert!(!o.contains("github.io"), "{o}");

    // A denial the suggestion's exact rules would let through (another spelling of an
    // allowed path): the replay through the proxy catches it, and nothing is written.
    let crafted = [
        rec("GET", "https://h.example.com/a", "allowed"),
        rec("GET", "https://h.example.com/a;x", "deny GET /a;x"),
    ];
    std::fs::write(&trace, crafted.join("\n") + "\n").unwrap();
    let s = m.run_timeout(
        "moat-launch",
        &["policy", "suggest", &id, "-o", "t.yaml"],
        None,
        120,
    );
    assert_eq!(s.code(), 70, "{}", s.stderr());
    assert!(
        s.stderr()
            .contains("would allow 1 request(s) the run was denied"),
        "{}",
        s.stderr()
    );
    assert!(!m.ws.join("t.yaml").exists());
}

/// `moat-proxy policy-check` takes no credential on its input, and rules cut short are not
/// a policy: one-line errors with sysexits codes, nothing decided.
#[test]
fn policy_check_refuses_credentials_and_unended_rules() {
    let env = moat_testkit::TestEnv::new();
    let run = |input: &str| {
        let mut c = env.cmd("moat-proxy");
        c.args(["policy-check", "--policy", "strict"]);
        moat_e2e::run_with_deadline(
            c,
            "moat-proxy policy-check".into(),
            Some(input.as_bytes()),
            60,
        )
    };
    let req = r#"{"v":1,"type":"request","method":"GET","url":"https://a.example.com/","policy":"allowed"}"#;
    let r = run(&format!(
        "{{\"v\":1,\"type\":\"inject\",\"grant\":\"g\",\"hosts\":[\"a.example.com\"],\"header\":\"X\",\"value\":\"SECRET-canary\"}}\n{{\"v\":1,\"type\":\"rules_end\"}}\n{req}\n"
    ));
    assert_eq!(r.code(), 64, "{}", r.stderr());
    assert!(r.stdout().is_empty() && !r.stderr().contains("SECRET-canary"));
    assert_eq!(r.stderr().trim().lines().count(), 1, "{}", r.stderr());
    let r = run("{\"v\":1,\"type\":\"net_rule\",\"host\":\"a.example.com\",\"rules\":[]}\n");
    assert_eq!(r.code(), 65, "{}", r.stderr());
    let r = run(&format!(
        "{{\"v\":1,\"type\":\"net_rule\",\"host\":\"a.example.com\",\"rules\":[]}}\n{{\"v\":1,\"type\":\"rules_end\"}}\n{req}\n{}\n",
        "x".repeat(70 * 1024)
    ));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let v: Vec<serde_json::Value> = r
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v.len(), 2, "{}", r.stdout());
    assert_eq!(v[0]["type"], "verdict");
    assert_eq!(v[0]["verdict"], "allow");
    assert_eq!(v[1]["verdict"], "skip");
}
