//! moat-proxy serve through real clients: curl over HTTP/1.1 and HTTP/2, injection only for
//! granted hosts, proxy authentication, authority checks, policy denials, SSRF refusals,
//! streaming and draining. Every scenario greps the proxy's artifacts for the canary.

mod common;
use common::*;
use moat_testkit::TestEnv;

const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2", b"http/1.1"];

/// `curl -i` through a proxy prints the CONNECT response first; keep the last response.
fn last_response(s: &str) -> String {
    let i = s.rfind("\r\n\r\nHTTP/").map(|i| i + 4).unwrap_or(0);
    s[i..].to_string()
}

#[test]
fn curl_http1_gets_the_credential_injected_and_nothing_else() {
    let (env, up, p, secret) = setup(H1, &[]);
    let ca = p.ca.to_str().unwrap().to_string();
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            &ca,
            "-H",
            "Authorization: Bearer ghp_placeholder",
            "-H",
            "authorization: token second-copy",
            "https://api.github.com/user?x=1",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    seen[0].assert_bearer(&secret);
    assert!(seen[0].header_all("proxy-authorization").is_empty());
    assert_eq!(seen[0].target, "/user?x=1");
    let t = p.wait_trace(1);
    assert_eq!(t[0]["grant"], "github");
    assert_eq!(t[0]["status"], 200);
    assert_eq!(t[0]["url"], "https://api.github.com/user?x=1");
    assert_eq!(t[0]["policy"], "allowed");
    assert!(t[0]["bytes_out"].as_u64().unwrap() > 0);
    let ev = p.events();
    let used: Vec<_> = ev
        .iter()
        .filter(|e| e["type"] == "credential_used")
        .collect();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0]["grant"], "github");
    assert_eq!(used[0]["host"], "api.github.com");
    assert_eq!(used[0]["request_id"], t[0]["request_id"]);
    p.assert_no_leak(&secret);
    p.assert_no_leak(&p.token);
}

#[test]
fn curl_http2_both_sides() {
    let (env, up, p, secret) = setup(H2, &[]);
    let ca = p.ca.to_str().unwrap().to_string();
    let r = curl(
        &env,
        &[
            "--http2",
            "-x",
            &p.url(),
            "--cacert",
            &ca,
            "-w",
            "\nclient=%{http_version}",
            "https://api.github.com/a",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.ends_with("client=2"), "{}", r.stdout);
    let seen = up.seen();
    assert_eq!(seen[0].version, "HTTP/2.0");
    seen[0].assert_bearer(&secret);
    // Several requests on one client connection, pooled upstream connection.
    let r = curl(
        &env,
        &[
            "--http2",
            "-x",
            &p.url(),
            "--cacert",
            &ca,
            "https://api.github.com/1",
            "https://api.github.com/2",
            "https://api.github.com/3",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(up.seen().len(), 4);
    assert!(
        *up.conns.lock().unwrap() <= 2,
        "upstream connections are pooled"
    );
    p.assert_no_leak(&secret);
}

#[test]
fn other_hosts_get_nothing_and_see_the_placeholder_only() {
    let env = TestEnv::new();
    let secret = canary();
    let (up, ca) = granted_upstream(&env, "other.example", H1);
    let rules = bearer_rule("github", &["api.github.com", "*.github.com"], &secret);
    let p = Proxy::to_upstream(&env, &rules, "other.example", up.port(), &ca);
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            p.ca.to_str().unwrap(),
            "-H",
            "Authorization: Bearer ghp_placeholder",
            "https://other.example/",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let seen = up.seen();
    assert_eq!(
        seen[0].header_all("authorization"),
        vec!["Bearer ghp_placeholder"]
    );
    assert!(!seen[0].raw().contains(&secret));
    assert!(p.events().iter().all(|e| e["type"] != "credential_used"));
    assert_eq!(p.wait_trace(1)[0]["grant"], serde_json::Value::Null);
    p.assert_no_leak(&secret);
}

#[test]
fn placeholders_in_body_query_and_path_are_never_replaced() {
    let (env, up, p, secret) = setup(H1, &[]);
    let ca = p.ca.to_str().unwrap().to_string();
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            &ca,
            "--data",
            "token=ghp_placeholder&echo=Bearer ghp_placeholder",
            "https://api.github.com/repos/ghp_placeholder/issues?access_token=ghp_placeholder",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = &up.seen()[0];
    assert_eq!(
        s.target,
        "/repos/ghp_placeholder/issues?access_token=ghp_placeholder"
    );
    assert_eq!(
        String::from_utf8_lossy(&s.body),
        "token=ghp_placeholder&echo=Bearer ghp_placeholder"
    );
    // The upstream echoes the request, injected header included; the proxy masks the
    // credential in the response, so the client never reads it back.
    assert_eq!(r.stdout.matches(&secret).count(), 0, "{}", r.stdout);
    assert!(
        r.stdout
            .contains(&format!("Bearer {}", "*".repeat(secret.len()))),
        "{}",
        r.stdout
    );
    let t = p.wait_trace(1);
    assert_eq!(
        t[0]["url"],
        "https://api.github.com/repos/ghp_placeholder/issues?access_token=REDACTED"
    );
    p.assert_no_leak(&secret);
}

#[test]
fn reflections_in_a_large_body_are_masked_wherever_reads_split_them() {
    // A body of about 1.5 MiB crosses the proxy in many reads and chunks (TLS records,
    // the upstream read buffer, hand-offs to the client's connection); the credential is
    // reflected so densely (a third of the bytes) that many of those boundaries cut one.
    let (env, _up, p, secret) = setup(H1, &[]);
    let ca = p.ca.to_str().unwrap().to_string();
    let n = 16_000;
    let mut body = Vec::new();
    for i in 0..n {
        body.extend(std::iter::repeat_n(b'q', 50 + i % 23));
        body.extend_from_slice(secret.as_bytes());
    }
    let filler = body.iter().filter(|b| **b == b'q').count();
    let file = env.path().join("reflect.txt");
    std::fs::write(&file, &body).unwrap();
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            &ca,
            "-H",
            "content-type: text/plain",
            "--data-binary",
            &format!("@{}", file.display()),
            "https://api.github.com/echo",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout.matches(&secret).count(),
        0,
        "the credential came back"
    );
    // every reflection masked in place (plus the echoed Authorization header), nothing
    // lost or repeated at a boundary
    let stars = "*".repeat(secret.len());
    assert_eq!(r.stdout.matches(&stars).count(), n + 1);
    assert_eq!(r.stdout.bytes().filter(|b| *b == b'q').count(), filler);
    p.assert_no_leak(&secret);
}

#[test]
fn proxy_auth_is_required() {
    let (env, up, p, secret) = setup(H1, &[]);
    let ca = p.ca.to_str().unwrap().to_string();
    for proxy in [
        format!("http://{}", p.addr),
        format!("http://moat:wrong-token-0000000000000@{}", p.addr),
        format!("http://moat:{}x@{}", p.token, p.addr),
    ] {
        let r = curl(
            &env,
            &[
                "-x",
                &proxy,
                "--cacert",
                &ca,
                "-o",
                "/dev/null",
                "-w",
                "%{http_connect}",
                "https://api.github.com/",
            ],
        );
        assert_eq!(r.stdout, "407", "{proxy}: {}", r.stderr);
        let r = curl(&env, &["-x", &proxy, "-i", "http://plain.example/"]);
        assert!(r.stdout.starts_with("HTTP/1.1 407"), "{}", r.stdout);
        assert!(
            r.stdout
                .to_ascii_lowercase()
                .contains("proxy-authenticate: basic"),
            "{}",
            r.stdout
        );
    }
    // Bearer works too.
    let r = curl(
        &env,
        &[
            "-x",
            &format!("http://{}", p.addr),
            "--proxy-header",
            &format!("Proxy-Authorization: Bearer {}", p.token),
            "--cacert",
            &ca,
            "https://api.github.com/",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(up.seen().len(), 1);
    p.assert_no_leak(&secret);
    p.assert_no_leak(&p.token);
}

#[test]
fn no_auth_needs_loopback_and_token_file_must_be_private() {
    let env = TestEnv::new();
    env.run(
        "moat-proxy",
        &["serve", "--listen", "0.0.0.0:0", "--no-auth"],
    )
    .exit(64)
    .stderr_has("loopback");
    env.run("moat-proxy", &["serve", "--listen", "127.0.0.1:0"])
        .exit(64)
        .stderr_has("--token-file");
    let f = env.path().join("tok");
    std::fs::write(&f, "0123456789abcdef0123").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.run(
        "moat-proxy",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            f.to_str().unwrap(),
        ],
    )
    .exit(77)
    .stderr_has("chmod 600");
}

#[test]
fn proxy_and_hop_by_hop_headers_never_go_upstream() {
    let (env, up, p, secret) = setup(H1, &[]);
    let ca = p.ca.to_str().unwrap().to_string();
    let r = curl(
        &env,
        &[
            "--http1.1",
            "-x",
            &p.url(),
            "--cacert",
            &ca,
            "-H",
            "Proxy-Foo: x",
            "-H",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "-H",
            "Connection: keep-alive, X-Drop-Me",
            "-H",
            "X-Drop-Me: 1",
            "-H",
            "Keep-Alive: 5",
            "-H",
            "X-Keep: yes",
            "https://api.github.com/",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = &up.seen()[0];
    for (k, _) in &s.headers {
        assert!(
            !k.starts_with("proxy-") && k != "x-drop-me" && k != "keep-alive",
            "{k} reached the upstream"
        );
    }
    assert_eq!(s.header_all("x-keep"), vec!["yes"]);
    p.assert_no_leak(&secret);
}

#[test]
fn connect_sni_and_host_must_name_one_host() {
    let env = TestEnv::new();
    let secret = canary();
    let (up, ca) = granted_upstream(&env, "api.github.com", H2);
    let (other, ca2) = granted_upstream(&env, "other.example", H1);
    let rules = bearer_rule("github", &["api.github.com"], &secret);
    let p = Proxy::routed(
        &env,
        &rules,
        &[
            ("api.github.com:443", up.port()),
            ("other.example:443", other.port()),
        ],
        &[&ca, &ca2],
    );
    let pca = p.ca.to_str().unwrap().to_string();
    let code = |args: &[&str]| {
        let mut a = vec![
            "-x",
            p.url().leak() as &str,
            "--cacert",
            pca.as_str(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ];
        a.extend_from_slice(args);
        curl(&env, &a).stdout
    };
    // Host differs from the CONNECT authority and SNI (domain fronting): 421, HTTP/1.1 and HTTP/2.
    for h in [
        "Host: other.example",
        "Host: api.github.com.evil.com",
        "Host: api.github.com:8443",
        "Host: api.github.com@other.example",
        "Host: 127.0.0.1",
    ] {
        assert_eq!(
            code(&["--http1.1", "-H", h, "https://api.github.com/"]),
            "421",
            "{h}"
        );
        assert_eq!(
            code(&["--http2", "-H", h, "https://api.github.com/"]),
            "421",
            "{h} over h2"
        );
    }
    // Same host in another spelling is fine.
    assert_eq!(
        code(&["-H", "Host: API.GitHub.com.", "https://api.github.com/"]),
        "200"
    );
    assert_eq!(
        code(&["-H", "Host: api.github.com:443", "https://api.github.com/"]),
        "200"
    );
    // SNI differs from CONNECT: curl asks the proxy for api.github.com but says other.example in TLS and Host.
    assert_eq!(
        code(&[
            "-k",
            "--connect-to",
            "other.example:443:api.github.com:443",
            "https://other.example/"
        ]),
        "421"
    );
    // CONNECT to the other host with Host naming the granted one.
    assert_eq!(
        code(&[
            "-k",
            "--connect-to",
            "api.github.com:443:other.example:443",
            "-H",
            "Host: api.github.com",
            "https://api.github.com/"
        ]),
        "421"
    );
    assert_eq!(
        up.seen().len(),
        2,
        "only the two agreeing requests reached the granted upstream"
    );
    assert!(other.seen().is_empty());
    // Absolute-form plain HTTP with a Host naming another host.
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "-H",
            "Host: api.github.com",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://other.example/",
        ],
    );
    assert_eq!(r.stdout, "421");
    p.assert_no_leak(&secret);
}

#[test]
fn strict_policy_denies_inside_the_tunnel_with_a_readable_message() {
    let env = TestEnv::new();
    let secret = canary();
    let (up, ca) = granted_upstream(&env, "api.github.com", H1);
    let (other, ca2) = granted_upstream(&env, "evil.example", H1);
    let mut rules = bearer_rule("github", &["api.github.com"], &secret);
    rules.push_str(r#"{"v":1,"type":"net_rule","host":"api.github.com","rules":["allow GET /repos/**","deny * /**"]}"#);
    rules.push('\n');
    rules.push_str(
        r#"{"v":1,"type":"ssh","grant":"x","host":"h","fingerprint":"f","host_keys":[]}"#,
    );
    rules.push('\n');
    let ct1 = format!("api.github.com:443:127.0.0.1:{}", up.port());
    let ct2 = format!("evil.example:443:127.0.0.1:{}", other.port());
    let p = Proxy::start(
        &env,
        &rules,
        &[
            "--policy",
            "strict",
            "--connect-to",
            &ct1,
            "--connect-to",
            &ct2,
            "--extra-ca",
            ca.to_str().unwrap(),
            "--extra-ca",
            ca2.to_str().unwrap(),
        ],
    );
    let pca = p.ca.to_str().unwrap().to_string();
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            &pca,
            "-i",
            "https://evil.example/steal",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = CurlOut {
        stdout: last_response(&r.stdout),
        ..r
    };
    assert!(
        r.stdout.starts_with("HTTP/1.1 403") || r.stdout.starts_with("HTTP/2 403"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .to_ascii_lowercase()
            .contains("x-moat-blocked: host-not-allowed")
    );
    assert!(r.stdout.contains("Moat: request blocked by network policy.\nHost \"evil.example\" is not in the allow list.\nAdd it to network.allow in moat.yaml, or use --allow evil.example.\n"), "{}", r.stdout);
    assert!(other.seen().is_empty());
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            &pca,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://api.github.com/repos/a/b",
        ],
    );
    assert_eq!(r.stdout, "200");
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            &pca,
            "-X",
            "DELETE",
            "https://api.github.com/repos/a/b",
        ],
    );
    assert!(r.stdout.contains("deny * /**"), "{}", r.stdout);
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            &pca,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--path-as-is",
            "https://api.github.com/repos/../admin",
        ],
    );
    assert_eq!(r.stdout, "403");
    assert_eq!(up.seen().len(), 1);
    let denied: Vec<_> = p
        .events()
        .into_iter()
        .filter(|e| e["type"] == "policy_denied")
        .collect();
    assert_eq!(denied.len(), 3);
    assert_eq!(denied[0]["host"], "evil.example");
    assert_eq!(denied[0]["path"], "/steal");
    assert_eq!(denied[1]["rule"], "deny * /**");
    let t = p.wait_trace(4);
    assert!(
        t.iter()
            .any(|r| r["policy"] == "strict: host not in allow list" && r["status"] == 403)
    );
    p.assert_no_leak(&secret);
}

#[test]
fn ssrf_to_loopback_private_and_metadata_is_refused() {
    let env = TestEnv::new();
    let secret = canary();
    let up = plain_upstream();
    let rules = inject_rule(
        "local",
        &[&format!("http://127.0.0.1:{}", up.port())],
        "Authorization",
        &secret,
    );
    let p = Proxy::start(&env, &rules, &[]);
    let port = up.port().to_string();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[fd00:ec2::254]/".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://192.168.0.1/".to_string(),
        "http://100.64.0.1/".to_string(),
        "http://0.0.0.0/".to_string(),
    ] {
        let r = curl(&env, &["-x", &p.url(), "-i", &url]);
        assert!(
            r.stdout.starts_with("HTTP/1.1 403"),
            "{url}: {}{}",
            r.stdout,
            r.stderr
        );
        assert!(
            r.stdout
                .to_ascii_lowercase()
                .contains("x-moat-blocked: private-address"),
            "{url}"
        );
    }
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            p.ca.to_str().unwrap(),
            "-i",
            &format!("https://127.0.0.1:{port}/"),
        ],
    );
    let r = CurlOut {
        stdout: last_response(&r.stdout),
        ..r
    };
    assert!(
        r.stdout.starts_with("HTTP/1.1 403") || r.stdout.starts_with("HTTP/2 403"),
        "{}",
        r.stdout
    );
    assert!(up.seen().is_empty());
    assert_eq!(*up.conns.lock().unwrap(), 0);
    p.assert_no_leak(&secret);
    drop(p);
    // Explicitly allowed with its port: reachable, and the explicit-port rule injects over plain HTTP.
    let allow = format!("127.0.0.1:{port}");
    let p = Proxy::start(&env, &rules, &["--allow", &allow]);
    let r = curl(
        &env,
        &["-x", &p.url(), &format!("http://127.0.0.1:{port}/x")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        up.seen()[0].header_all("authorization"),
        vec![secret.clone()]
    );
    p.assert_no_leak(&secret);
}

#[test]
fn oversized_headers_get_431_and_garbage_gets_400() {
    let (env, up, p, secret) = setup(H1, &[]);
    let big = format!("X-Big: {}", "a".repeat(100 * 1024));
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &big,
            "http://plain.example/",
        ],
    );
    assert_eq!(r.stdout, "431", "{}", r.stderr);
    let r = curl(
        &env,
        &[
            "--http1.1",
            "-x",
            &p.url(),
            "--cacert",
            p.ca.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &big,
            "https://api.github.com/",
        ],
    );
    assert_eq!(r.stdout, "431", "{}", r.stderr);
    // HTTP/2 refuses the header block at the protocol level (the stream or connection is reset).
    let r = curl(
        &env,
        &[
            "--http2",
            "-x",
            &p.url(),
            "--cacert",
            p.ca.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &big,
            "https://api.github.com/",
        ],
    );
    assert_ne!(r.stdout, "200", "{}", r.stderr);
    assert!(up.seen().is_empty());
    p.assert_no_leak(&secret);
}

#[test]
fn sse_first_event_arrives_before_the_stream_ends() {
    let (env, _up, p, secret) = setup(H2, &[]);
    for http in ["--http1.1", "--http2"] {
        let mut child = env
            .program("curl")
            .args([
                "-sSN",
                "--max-time",
                "15",
                http,
                "-x",
                &p.url(),
                "--cacert",
                p.ca.to_str().unwrap(),
                "https://api.github.com/sse",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        use std::io::BufRead;
        out.read_line(&mut line).unwrap();
        let first = start.elapsed();
        assert_eq!(line, "data: first\n");
        assert!(
            first < std::time::Duration::from_millis(1200),
            "{http}: first event after {first:?}"
        );
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        assert!(rest.contains("data: second"));
        assert!(start.elapsed() >= std::time::Duration::from_millis(1400));
        child.wait().unwrap();
    }
    p.assert_no_leak(&secret);
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let (env, _up, mut p, secret) = setup(H1, &[]);
    let child = env
        .program("curl")
        .args([
            "-sSN",
            "--max-time",
            "15",
            "-x",
            &p.url(),
            "--cacert",
            p.ca.to_str().unwrap(),
            "https://api.github.com/sse",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    let st = p.stop();
    assert!(st.success(), "{st:?}");
    let out = child.wait_with_output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("data: second"),
        "the in-flight stream was cut: {s:?}"
    );
    p.assert_no_leak(&secret);
}

#[test]
fn two_proxies_starting_together_share_one_ca() {
    let env = TestEnv::new();
    let kids: Vec<_> = (0..4)
        .map(|_| env.cmd("moat-proxy").arg("ca-path").output().unwrap())
        .collect();
    // sequential spawn above still races with itself little; run concurrently too
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let mut c = env.cmd("moat-proxy");
            c.arg("ca-path");
            std::thread::spawn(move || c.output().unwrap())
        })
        .collect();
    let mut outs: Vec<String> = kids
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .collect();
    for h in hs {
        outs.push(String::from_utf8_lossy(&h.join().unwrap().stdout).into_owned());
    }
    assert!(
        outs.iter()
            .all(|o| o == &outs[0] && o.trim_end().ends_with("proxy/ca/ca.crt")),
        "{outs:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let dir = env.moat_home.join("proxy/ca");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn a_loose_or_symlinked_ca_key_is_refused() {
    let env = TestEnv::new();
    env.run("moat-proxy", &["ca-path"]).success();
    let key = env.moat_home.join("proxy/ca/ca.key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.run("moat-proxy", &["ca-path"])
        .exit(77)
        .stderr_has("chmod 600");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let real = env.path().join("elsewhere.key");
    std::fs::rename(&key, &real).unwrap();
    std::os::unix::fs::symlink(&real, &key).unwrap();
    env.run("moat-proxy", &["ca-path"])
        .exit(77)
        .stderr_has("symlink");
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn aborted_clients_give_their_descriptors_back() {
    let (env, _up, p, secret) = setup(H2, &[]);
    // warm up: pooled upstream connections and the leaf cache
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            p.ca.to_str().unwrap(),
            "https://api.github.com/",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let base = fd_count(p.child.id());
    for i in 0..10 {
        let http = if i % 2 == 0 { "--http1.1" } else { "--http2" };
        let mut c = env
            .program("curl")
            .args([
                "-sSN",
                http,
                "-x",
                &p.url(),
                "--cacert",
                p.ca.to_str().unwrap(),
                "https://api.github.com/sse",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150));
        c.kill().unwrap();
        c.wait().unwrap();
        // CONNECT and vanish, and half a ClientHello
        let mut s = std::net::TcpStream::connect(&p.addr).unwrap();
        use std::io::Write;
        let auth = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(format!("moat:{}", p.token))
        };
        s.write_all(format!("CONNECT api.github.com:443 HTTP/1.1\r\nProxy-Authorization: Basic {auth}\r\n\r\n\x16\x03\x01").as_bytes()).unwrap();
        drop(s);
    }
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n = fd_count(p.child.id());
        // the SSE upstream streams end by themselves after 1.5 s; pooled connections may remain
        if n <= base + 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "fds stayed at {n} (baseline {base})"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    p.assert_no_leak(&secret);
}

#[test]
fn every_option_in_help_is_in_the_man_page() {
    let env = TestEnv::new();
    let help = env.run("moat-proxy", &["--help"]).success().stdout();
    let page =
        std::fs::read_to_string(moat_testkit::workspace_root().join("man/moat-proxy.1")).unwrap();
    let mut n = 0;
    for line in help.lines() {
        let t = line.trim_start();
        let t = t
            .strip_prefix("-")
            .and_then(|r| r.split_once(", "))
            .map(|(_, r)| r)
            .unwrap_or(t);
        if let Some(opt) = t.strip_prefix("--") {
            let name = opt.split_whitespace().next().unwrap();
            assert!(
                page.contains(&format!("Fl -{name}")),
                "--{name} is not in man/moat-proxy.1"
            );
            n += 1;
        }
    }
    assert!(n >= 14, "{n}");
    let lint = std::process::Command::new("mandoc")
        .args(["-Tlint", "-Wwarning"])
        .arg(moat_testkit::workspace_root().join("man/moat-proxy.1"))
        .output();
    if let Ok(o) = lint {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    }
}

#[test]
fn credentials_on_multi_tenant_wildcards_are_refused() {
    let env = TestEnv::new();
    let secret = canary();
    for pattern in [
        "*.githubusercontent.com",
        "*.amazonaws.com",
        "*.s3.amazonaws.com",
    ] {
        let rules = inject_rule("g", &[pattern], "Authorization", &secret);
        let r = env.run_stdin(
            "moat-proxy",
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--no-auth",
                "--rules",
                "-",
            ],
            rules.as_bytes(),
        );
        r.exit(65)
            .stderr_has("public suffix")
            .leaks_nothing(&secret);
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn large_streams_do_not_grow_memory() {
    let (env, up, p, secret) = setup(H2, &[]);
    let ca = p.ca.to_str().unwrap().to_string();
    let pid = p.child.id();
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            &ca,
            "-o",
            "/dev/null",
            "https://api.github.com/",
        ],
    );
    assert_eq!(r.code, 0);
    let before = rss_kib(pid, "VmRSS:");
    // 256 MiB down and 256 MiB up, over HTTP/1.1 and HTTP/2.
    for http in ["--http1.1", "--http2"] {
        let r = curl(
            &env,
            &[
                http,
                "-x",
                &p.url(),
                "--cacert",
                &ca,
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                "https://api.github.com/stream/128",
            ],
        );
        assert_eq!(r.stdout, (128u64 << 20).to_string(), "{}", r.stderr);
        let mut c = env
            .program("curl")
            .args([
                "-sS",
                "--max-time",
                "60",
                http,
                "-x",
                &p.url(),
                "--cacert",
                &ca,
                "-T",
                "-",
                "-X",
                "POST",
                "https://api.github.com/discard",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut w = c.stdin.take().unwrap();
            let block = vec![b'u'; 1 << 20];
            for _ in 0..128 {
                w.write_all(&block).unwrap();
            }
        }
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            (128u64 << 20).to_string()
        );
    }
    let peak = rss_kib(pid, "VmHWM:");
    assert!(
        peak < before + 48 * 1024,
        "RSS grew from {before} KiB to a peak of {peak} KiB"
    );
    assert_eq!(up.seen().len(), 5);
    let t = p.wait_trace(5);
    assert!(t.iter().any(|r| r["bytes_in"].as_u64() == Some(128 << 20)));
    assert!(t.iter().any(|r| r["bytes_out"].as_u64() == Some(128 << 20)));
    p.assert_no_leak(&secret);
}

#[test]
fn the_intercepting_listener_speaks_tls_1_2_and_up_only() {
    let (env, _up, p, secret) = setup(H1, &[]);
    let run = |v: &[&str]| {
        env.program("openssl")
            .args([
                "s_client",
                "-connect",
                "api.github.com:443",
                "-proxy",
                &p.addr,
                "-proxy_user",
                "moat",
                "-proxy_pass",
                &format!("pass:{}", p.token),
                "-servername",
                "api.github.com",
                "-CAfile",
                p.ca.to_str().unwrap(),
            ])
            .args(v)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let old = run(&["-tls1_1"]);
    let out = String::from_utf8_lossy(&old.stdout);
    assert!(
        !old.status.success() && out.contains("Cipher is (NONE)"),
        "TLS 1.1 was accepted: {out}"
    );
    let mut outs = Vec::new();
    for v in ["-tls1_2", "-tls1_3"] {
        let o = run(&[v]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            out.contains("Verify return code: 0 (ok)"),
            "{v}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        outs.push(out);
    }
    // OpenSSL lists AES-256-GCM first; the proxy chooses AES-128-GCM (the cheaper cipher
    // on every byte it decrypts and encrypts again), and still serves a client that
    // offers AES-256-GCM only.
    assert!(
        outs[1].contains("Cipher is TLS_AES_128_GCM_SHA256"),
        "{}",
        outs[1]
    );
    let only256 = run(&["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"]);
    let out = String::from_utf8_lossy(&only256.stdout);
    assert!(
        out.contains("Cipher is TLS_AES_256_GCM_SHA384")
            && out.contains("Verify return code: 0 (ok)"),
        "{out}"
    );
    p.assert_no_leak(&secret);
}

#[test]
fn credentialed_requests_ask_for_uncompressed_answers_so_echoes_are_masked() {
    let (env, up, p, secret) = setup(H1, &[]);
    let ca = p.ca.to_str().unwrap().to_string();
    // The client asks for gzip; an upstream that echoes the request would hide the
    // injected credential from masking inside a compressed body.
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            &ca,
            "--compressed",
            "-H",
            "Authorization: Bearer ghp_placeholder",
            "https://api.github.com/echo-gzip",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("authorization"), "{}", r.stdout);
    assert_eq!(r.stdout.matches(&secret).count(), 0, "{}", r.stdout);
    assert!(r.stdout.contains(&"*".repeat(secret.len())), "{}", r.stdout);
    let s = &up.seen()[0];
    assert_eq!(s.header_all("accept-encoding"), vec!["identity"]);
    // Hosts without a grant keep the client's Accept-Encoding (and compression).
    let env2 = TestEnv::new();
    let (up2, ca2) = granted_upstream(&env2, "plain.example", H1);
    let ct = format!("plain.example:443:127.0.0.1:{}", up2.port());
    let p2 = Proxy::start(
        &env2,
        &bearer_rule("github", &["api.github.com"], &secret),
        &["--connect-to", &ct, "--extra-ca", ca2.to_str().unwrap()],
    );
    let r = curl(
        &env2,
        &[
            "-x",
            &p2.url(),
            "--cacert",
            p2.ca.to_str().unwrap(),
            "--compressed",
            "-D",
            "-",
            "https://plain.example/echo-gzip",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("content-encoding: gzip"), "{}", r.stdout);
    assert!(
        up2.seen()[0].header_all("accept-encoding")[0].contains("gzip"),
        "{:?}",
        up2.seen()[0]
    );
    p.assert_no_leak(&secret);
    p2.assert_no_leak(&secret);
}
