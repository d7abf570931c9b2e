//! Attacks that try to walk around injection, masking and path rules through the real
//! binary: a credentialed response that comes back compressed anyway, a trailer echoing
//! the credential, a plain-HTTP request to a host granted with only a port, and other
//! spellings of a denied path and method. Every scenario greps what the client got and
//! the proxy's artifacts for the canary.

mod common;
use common::*;
use moat_testkit::TestEnv;

const H1: &[&[u8]] = &[b"http/1.1"];

fn basic(token: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("moat:{token}"))
    )
}

/// THREATS B4: an upstream that ignores `Accept-Encoding: identity` and echoes the
/// credential in a gzip body is refused with a readable 502, so the agent cannot decode
/// the unmasked credential itself; a response to a request without a credential keeps
/// its compression.
#[test]
fn a_compressed_echo_of_a_credentialed_request_is_refused() {
    let env = TestEnv::new();
    let secret = canary();
    let (up, ca) = granted_upstream(&env, "api.github.com", H1);
    let plain = plain_upstream();
    let rules = bearer_rule("github", &["api.github.com"], &secret);
    let p = Proxy::routed(
        &env,
        &rules,
        &[
            ("api.github.com:443", up.port()),
            ("free.example:80", plain.port()),
        ],
        &[&ca],
    );
    let pca = p.ca.to_str().unwrap().to_string();
    let purl = p.url();
    for extra in [&["--compressed"][..], &[], &["--http2"]] {
        let mut args = vec!["-x", &purl, "--cacert", &pca, "-i"];
        args.extend_from_slice(extra);
        args.push("https://api.github.com/gzip-anyway");
        let r = curl(&env, &args);
        assert!(
            r.stdout.contains("HTTP/1.1 502") || r.stdout.contains("HTTP/2 502"),
            "{extra:?}: {}{}",
            r.stdout,
            r.stderr
        );
        assert!(
            r.stdout
                .contains("moat cannot mask it, so the response is refused"),
            "{}",
            r.stdout
        );
        assert!(!r.stdout.contains(&secret) && !r.stderr.contains(&secret));
        assert!(
            !r.stdout.contains("\u{1f}\u{fffd}"),
            "gzip bytes reached the client"
        );
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        s.assert_bearer(&secret);
        assert_eq!(s.header_all("accept-encoding"), vec!["identity"]);
    }
    let t = p.wait_trace(3);
    assert!(
        t.iter()
            .filter(|r| r["status"] == 502)
            .all(|r| r["error"].to_string().contains("cannot be masked")),
        "{t:?}"
    );
    // No credential: the compressed body passes as the upstream sent it.
    let r = curl(
        &env,
        &["-x", &p.url(), "-i", "http://free.example/gzip-anyway"],
    );
    assert!(r.stdout.starts_with("HTTP/1.1 200"), "{}", r.stdout);
    assert!(
        r.stdout
            .to_ascii_lowercase()
            .contains("content-encoding: gzip"),
        "{}",
        r.stdout
    );
    p.assert_no_leak(&secret);
}

/// THREATS B4: a streamed HTTP/2 response whose trailer and header echo the credential
/// reaches the client with both masked.
#[test]
fn trailers_of_a_credentialed_response_are_masked() {
    let (_env, up, p, secret) = setup(&[b"h2"], &[]);
    let client = p.h2_client("api.github.com");
    let (head, trailers) = rt().block_on(async move {
        use http_body_util::BodyExt;
        let mut send = client.await;
        let req = http::Request::get("https://api.github.com/trailer-echo")
            .header("te", "trailers")
            .header("authorization", "Bearer ghp_placeholder")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let res = send.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let head = format!("{:?}", res.headers());
        let collected = res.into_body().collect().await.unwrap();
        (head, collected.trailers().cloned())
    });
    let trailers = trailers.expect("the trailer arrives");
    let stars = "*".repeat(secret.len());
    assert_eq!(trailers["x-echo"], format!("Bearer {stars}").as_str());
    assert!(head.contains(&format!("Bearer {stars}")), "{head}");
    assert!(!head.contains(&secret), "{head}");
    up.seen()[0].assert_bearer(&secret);
    p.assert_no_leak(&secret);
}

/// THREATS A6: a grant stored as `host:port` injects over HTTPS only; a plain-HTTP request
/// to that host and port is refused with a readable 403 before anything goes upstream.
/// Only a grant stored with an explicit `http://` injects into plain HTTP (and the echo
/// is masked).
#[test]
fn plain_http_to_a_port_pattern_is_refused_and_only_http_grants_inject_in_clear() {
    let env = TestEnv::new();
    let secret = canary();
    let plain = plain_upstream();
    let mut rules = bearer_rule("port", &["npm.corp:8443"], &secret);
    rules += &bearer_rule("plain", &["http://npm.plain:8080"], &secret);
    let p = Proxy::routed(
        &env,
        &rules,
        &[
            ("npm.corp:8443", plain.port()),
            ("npm.plain:8080", plain.port()),
        ],
        &[],
    );
    let r = curl(&env, &["-x", &p.url(), "-i", "http://npm.corp:8443/pkg"]);
    assert!(r.stdout.starts_with("HTTP/1.1 403"), "{}", r.stdout);
    assert!(
        r.stdout
            .to_ascii_lowercase()
            .contains("x-moat-blocked: https-only"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("The grant port for npm.corp:8443 is injected only over HTTPS; use https:// or re-grant with an explicit http:// host."),
        "{}",
        r.stdout
    );
    assert!(plain.seen().is_empty(), "the refused request went upstream");
    let r = curl(&env, &["-x", &p.url(), "-i", "http://npm.plain:8080/pkg"]);
    assert!(r.stdout.starts_with("HTTP/1.1 200"), "{}", r.stdout);
    assert!(!r.stdout.contains(&secret), "{}", r.stdout);
    assert!(r.stdout.contains(&"*".repeat(secret.len())), "{}", r.stdout);
    let seen = plain.seen();
    assert_eq!(seen.len(), 1);
    seen[0].assert_bearer(&secret);
    let t = p.wait_trace(2);
    assert!(
        t.iter()
            .any(|r| r["policy"] == "https-only: port" && r["status"] == 403),
        "{t:?}"
    );
    assert!(
        p.events()
            .iter()
            .any(|e| e["type"] == "policy_denied" && e["rule"] == "https-only: port")
    );
    p.assert_no_leak(&secret);
}

/// THREATS A5: a deny rule holds against other spellings of the same path and method
/// (percent-encoded unreserved characters, empty segments, `;` parameters, case, dot
/// segments, a lower-case method); none of them reaches the upstream, which would echo
/// the credential. An allow rule is matched exactly.
#[test]
fn deny_rules_hold_against_other_spellings() {
    let env = TestEnv::new();
    let secret = canary();
    let (up, ca) = granted_upstream(&env, "api.github.com", H1);
    let mut rules = bearer_rule("github", &["api.github.com"], &secret);
    rules.push_str(
        r#"{"v":1,"type":"net_rule","host":"api.github.com","rules":["allow GET /public/**","deny GET /secret","deny DELETE /**"]}"#,
    );
    rules.push('\n');
    let p = Proxy::to_upstream(&env, &rules, "api.github.com", up.port(), &ca);
    let pca = p.ca.to_str().unwrap().to_string();
    for (method, path) in [
        ("GET", "/secret"),
        ("GET", "/s%65cret"),
        ("GET", "//secret"),
        ("GET", "/secret;x"),
        ("GET", "/SECRET"),
        ("GET", "/public/../secret"),
        ("GET", "/public/%2e%2e/secret"),
        ("GET", "/public/..%2fsecret"),
        ("get", "/secret"),
        ("delete", "/public/x"),
    ] {
        let url = format!("https://api.github.com{path}");
        let r = curl(
            &env,
            &[
                "-x",
                &p.url(),
                "--cacert",
                &pca,
                "--http1.1",
                "--path-as-is",
                "-i",
                "-X",
                method,
                &url,
            ],
        );
        assert!(
            r.stdout.contains("\nHTTP/1.1 403"),
            "{method} {path}: {}{}",
            r.stdout,
            r.stderr
        );
        assert!(
            r.stdout
                .to_ascii_lowercase()
                .contains("x-moat-blocked: request-rule"),
            "{method} {path}: {}",
            r.stdout
        );
        assert!(!r.stdout.contains(&secret));
    }
    assert!(
        up.seen().is_empty(),
        "a denied spelling reached the upstream: {:?}",
        up.seen()
    );
    // The allowed path is forwarded as sent (not rewritten), and its echo masked.
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            &pca,
            "--http1.1",
            "-i",
            "https://api.github.com/public/a;b",
        ],
    );
    assert!(r.stdout.contains("HTTP/1.1 200"), "{}", r.stdout);
    assert!(!r.stdout.contains(&secret));
    assert_eq!(up.seen()[0].target, "/public/a;b");
    p.assert_no_leak(&secret);
}

/// THREATS B4: over HTTP/1.1 (plain HTTP, an `http://` grant, the client asking for
/// trailers) a chunked response whose trailer and header echo the credential reaches the
/// client without the credential anywhere.
#[test]
fn http1_chunked_trailers_never_carry_the_credential() {
    use std::io::{Read, Write};
    let env = TestEnv::new();
    let secret = canary();
    let plain = plain_upstream();
    let rules = bearer_rule("plain", &["http://trailer.example"], &secret);
    let p = Proxy::routed(&env, &rules, &[("trailer.example:80", plain.port())], &[]);
    let mut s = std::net::TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET http://trailer.example/trailer-echo HTTP/1.1\r\nHost: trailer.example\r\nProxy-Authorization: {}\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        basic(&p.token)
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).to_string();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("body"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains(&format!("x-echo-head: bearer {}", "*".repeat(secret.len()))),
        "{out}"
    );
    assert!(!out.contains(&secret), "{out}");
    let seen = plain.seen();
    assert_eq!(seen[0].header_all("te"), vec!["trailers"]);
    seen[0].assert_bearer(&secret);
    p.assert_no_leak(&secret);
}

/// THREATS B4: a transfer coding other than chunked (`Transfer-Encoding: gzip, chunked`)
/// hides an echoed credential from masking just as a content coding does: refused with 502.
#[test]
fn a_gzip_transfer_coding_on_a_credentialed_response_is_refused() {
    use std::io::{Read, Write};
    let env = TestEnv::new();
    let secret = canary();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        let Ok((mut c, _)) = l.accept() else { return };
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        *s2.lock().unwrap() = String::from_utf8_lossy(&head).to_string();
        let mut gz = std::process::Command::new("gzip")
            .arg("-c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        gz.stdin.take().unwrap().write_all(&head).unwrap();
        let body = gz.wait_with_output().unwrap().stdout;
        let _ = write!(
            c,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n",
            body.len()
        );
        let _ = c.write_all(&body);
        let _ = c.write_all(b"\r\n0\r\n\r\n");
    });
    let rules = bearer_rule("plain", &["http://te.example"], &secret);
    let p = Proxy::routed(&env, &rules, &[("te.example:80", port)], &[]);
    let r = curl(&env, &["-x", &p.url(), "-i", "http://te.example/"]);
    assert!(
        r.stdout.starts_with("HTTP/1.1 502"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stdout.contains("(Transfer-Encoding: gzip)"),
        "{}",
        r.stdout
    );
    assert!(
        seen.lock().unwrap().contains(&secret),
        "the request carried the credential"
    );
    p.assert_no_leak(&secret);
}

/// THREATS B4: an upstream whose HTTP/1 status line echoes the credential as a non-standard
/// reason phrase (`401 Bearer <credential>`) does not hand it to the client: the reason
/// phrase of a response to a credentialed request is not forwarded.
#[test]
fn a_reason_phrase_echoing_the_credential_is_not_forwarded() {
    use std::io::{Read, Write};
    let env = TestEnv::new();
    let secret = canary();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let Ok((mut c, _)) = l.accept() else { return };
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        let h = String::from_utf8_lossy(&head).to_string();
        let auth = h
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("authorization: "))
            .map(|l| l["authorization: ".len()..].to_string())
            .unwrap_or_else(|| "none".into());
        let _ = write!(
            c,
            "HTTP/1.1 401 {auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    });
    let rules = bearer_rule("plain", &["http://reason.example"], &secret);
    let p = Proxy::routed(&env, &rules, &[("reason.example:80", port)], &[]);
    let mut s = std::net::TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET http://reason.example/ HTTP/1.1\r\nHost: reason.example\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        basic(&p.token)
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).to_string();
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(!out.contains(&secret), "{out}");
    p.assert_no_leak(&secret);
}
