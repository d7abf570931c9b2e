//! Protocols through the real binary: WebSocket (ws:// and wss://; masked frames when the
//! upgrade carried a credential), a gRPC-style HTTP/2 exchange with trailers, git cloning over HTTPS from a
//! smart-HTTP server that requires the injected Basic credential, a smuggling corpus, and
//! slow clients.

mod common;
use common::*;
use moat_testkit::TestEnv;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

const WS_CLIENT: &str = r#"
import socket, ssl, sys, base64, os
host, port, token, mode, target, cafile, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
auth = base64.b64encode(("moat:" + token).encode()).decode()
s = socket.create_connection((host, port), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
if mode == "wss":
    s.sendall(("CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\nProxy-Authorization: Basic %s\r\n\r\n" % (target, target, auth)).encode())
    resp = b""
    while b"\r\n\r\n" not in resp:
        resp += s.recv(1)
    assert resp.startswith(b"HTTP/1.1 200"), resp
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    s = ctx.wrap_socket(s, server_hostname=target)
    req = "GET %s HTTP/1.1\r\nHost: %s\r\n" % (path, target)
else:
    req = "GET http://%s%s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n" % (target, path, target, auth)
req += "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\nAuthorization: Bearer ghp_placeholder\r\n\r\n" % key
s.sendall(req.encode())
resp = b""
while b"\r\n\r\n" not in resp:
    resp += s.recv(1)
head = resp.decode()
assert head.startswith("HTTP/1.1 101"), head
if path == "/ws-auth":
    # Read every frame the server sends until it closes; print the head and the payloads.
    raw = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        raw += b
    print(head)
    msg = b""
    while len(raw) >= 2:
        op, n = raw[0] & 0x0f, raw[1] & 0x7f
        p = raw[2:2 + n]
        raw = raw[2 + n:]
        if op in (0, 1):
            msg += p
        else:
            print("control %d: %s" % (op, p.decode("latin-1")))
    print("message: " + msg.decode("latin-1"))
    sys.exit(0)
for i in range(3):
    msg = ("hello %d" % i).encode()
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += s.recv(100)
    assert got == msg, got
print("ok")
"#;

/// THREATS D3, B4: a WebSocket whose upgrade got a credential (wss:// to a granted host,
/// ws:// to an `http://` grant) has the credential masked in the 101's headers and in the
/// upstream's frames: a text message split across fragments with a ping between them, the
/// ping's payload, the close frame. No compression is negotiated for it. An upgrade without
/// a credential passes through untouched.
#[test]
fn websocket_frames_of_a_credentialed_upgrade_are_masked() {
    let env = TestEnv::new();
    let secret = canary();
    let (tls_up, ca) = granted_upstream(&env, "api.github.com", &[b"http/1.1"]);
    let plain = plain_upstream();
    let mut rules = bearer_rule("github", &["api.github.com"], &secret);
    rules += &bearer_rule("wsplain", &["http://wscred.example:80"], &secret);
    let ct1 = format!("api.github.com:443:127.0.0.1:{}", tls_up.port());
    let ct2 = format!("ws.example:80:127.0.0.1:{}", plain.port());
    let ct3 = format!("wscred.example:80:127.0.0.1:{}", plain.port());
    let p = Proxy::start(
        &env,
        &rules,
        &[
            "--connect-to",
            &ct1,
            "--connect-to",
            &ct2,
            "--connect-to",
            &ct3,
            "--extra-ca",
            ca.to_str().unwrap(),
        ],
    );
    let (host, port) = p.addr.rsplit_once(':').unwrap();
    let stars = "*".repeat(secret.len());
    for (mode, target, path) in [
        ("wss", "api.github.com", "/ws-auth"),
        ("ws", "wscred.example", "/ws-auth"),
        ("ws", "ws.example", "/ws"),
    ] {
        let out = env
            .program("python3")
            .args([
                "-c",
                WS_CLIENT,
                host,
                port,
                &p.token,
                mode,
                target,
                p.ca.to_str().unwrap(),
                path,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode} {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!stdout.contains(&secret), "{stdout}");
        if path == "/ws-auth" {
            assert!(
                stdout.contains(&format!("message: you sent Bearer {stars} ok")),
                "{stdout}"
            );
            assert!(
                stdout.contains(&format!("control 9: Bearer {stars}")),
                "{stdout}"
            );
            assert!(stdout.contains("control 8: "), "{stdout}");
            assert!(
                stdout
                    .to_ascii_lowercase()
                    .contains(&format!("x-echo: bearer {stars}")),
                "{stdout}"
            );
        }
    }
    let tls_seen = tls_up.seen();
    assert_eq!(tls_seen.len(), 1);
    let plain_seen = plain.seen();
    assert_eq!(plain_seen.len(), 2);
    for s in [&tls_seen[0], &plain_seen[0]] {
        s.assert_bearer(&secret);
        assert!(s.header_all("sec-websocket-extensions").is_empty(), "{s:?}");
    }
    // Without a credential: the client's headers pass as sent.
    assert_eq!(plain_seen[1].header_all("upgrade"), vec!["websocket"]);
    assert_eq!(
        plain_seen[1].header_all("authorization"),
        vec!["Bearer ghp_placeholder"]
    );
    assert_eq!(
        plain_seen[1].header_all("sec-websocket-extensions"),
        vec!["permessage-deflate"]
    );
    let t = p.wait_trace(3);
    assert!(t.iter().all(|r| r["status"] == 101), "{t:?}");
    p.assert_no_leak(&secret);
    // Other upgrades (h2c smuggling) are refused and never reach the upstream.
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--http1.1",
            "-H",
            "Upgrade: h2c",
            "-H",
            "Connection: Upgrade, HTTP2-Settings",
            "-H",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://ws.example/",
        ],
    );
    assert_eq!(r.stdout, "400");
    assert_eq!(plain.seen().len(), 2);
}

#[test]
fn grpc_style_h2_exchange_keeps_trailers_and_refuses_coalescing() {
    let (_env, up, p, secret) = setup(&[b"h2"], &[]);
    let client = p.h2_client("api.github.com");
    let (trailers, misdirected) = rt().block_on(async move {
        use http_body_util::BodyExt;
        let mut send = client.await;
        let req = http::Request::post("https://api.github.com/grpc")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"\0\0\0\0\x02hi",
            )))
            .unwrap();
        let res = send.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let collected = res.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        // Same connection, another :authority (connection coalescing): 421.
        let req = http::Request::get("https://other.example/")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let res = send.send_request(req).await.unwrap();
        (trailers, res.status().as_u16())
    });
    let trailers = trailers.expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok-trailer");
    assert_eq!(misdirected, 421);
    let s = &up.seen()[0];
    assert_eq!(s.version, "HTTP/2.0");
    assert_eq!(s.header_all("te"), vec!["trailers"]);
    s.assert_bearer(&secret);
    assert_eq!(up.seen().len(), 1);
    p.assert_no_leak(&secret);
}

#[test]
fn git_clones_over_https_with_the_injected_basic_credential() {
    let env = TestEnv::new();
    let secret = canary();
    let root = env.path().join("git-root");
    let repo = root.join("test/repo.git");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str], dir: &std::path::Path| {
        let o = env
            .program("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    git(&["init", "--bare", "-q", "."], &repo);
    let work = env.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&["init", "-q", "."], &work);
    std::fs::write(work.join("README"), "hello from the smart-HTTP server\n").unwrap();
    git(&["add", "README"], &work);
    git(&["commit", "-q", "-m", "first"], &work);
    git(
        &["push", "-q", repo.to_str().unwrap(), "HEAD:refs/heads/main"],
        &work,
    );

    let test_ca = Ca::new("git root");
    let (leaf, key) = test_ca.leaf(leaf_params(&["github.com"]));
    let cred = basic("x-access-token", &secret);
    let up = tls_upstream_with(
        Upstream {
            basic_required: Some(cred.clone()),
            git_root: Some(root.clone()),
            ..Default::default()
        },
        vec![leaf],
        key,
        &[b"h2", b"http/1.1"],
    );
    let trust = test_ca.write(&env.path().join("git-ca.pem"));
    let rules = inject_rule("github", &["github.com"], "Authorization", &cred);
    let p = Proxy::to_upstream(&env, &rules, "github.com", up.port(), &trust);
    let dest = env.path().join("clone");
    let o = env
        .program("git")
        .args([
            "-c",
            &format!("http.proxy={}", p.url()),
            "-c",
            "http.proxyAuthMethod=basic",
            "-c",
            &format!("http.sslCAInfo={}", p.ca.display()),
            "clone",
            "-q",
            "https://github.com/test/repo.git",
            dest.to_str().unwrap(),
        ])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git clone: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("README")).unwrap(),
        "hello from the smart-HTTP server\n"
    );
    assert!(
        up.seen()
            .iter()
            .all(|s| s.header_all("authorization") == vec![cred.clone()])
    );
    assert!(
        p.events()
            .iter()
            .any(|e| e["type"] == "credential_used" && e["host"] == "github.com")
    );
    // Nothing in the clone (config, packs) holds the credential either.
    assert!(moat_testkit::files_containing(&dest, secret.as_bytes()).is_empty());
    p.assert_no_leak(&secret);
}

fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn smuggling_corpus_never_desyncs() {
    let env = TestEnv::new();
    let secret = canary();
    let up = plain_upstream();
    let rules = inject_rule("plain", &["http://plain.example:80"], "X-Api-Key", &secret);
    let ct = format!("plain.example:80:127.0.0.1:{}", up.port());
    let p = Proxy::start(
        &env,
        &rules,
        &["--connect-to", &ct, "--header-timeout", "2"],
    );
    let auth = basic("moat", &p.token);
    let smuggled = "GET http://plain.example/smuggled HTTP/1.1\r\nHost: plain.example\r\n\r\n";
    let head = |extra: &str| {
        format!(
            "POST http://plain.example/ HTTP/1.1\r\nHost: plain.example\r\nProxy-Authorization: {auth}\r\n{extra}"
        )
    };
    let corpus: Vec<String> = vec![
        head("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") + smuggled,
        head("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n") + smuggled,
        head("Content-Length: 0\r\nContent-Length: 60\r\n\r\n") + smuggled,
        head("Content-Length: 60\r\nContent-Length: 0\r\n\r\n") + smuggled,
        head("Content-Length: +0\r\n\r\n") + smuggled,
        head("Content-Length: 0x0\r\n\r\n") + smuggled,
        head("Content-Length: -1\r\n\r\n") + smuggled,
        head("Content-Length: 0 0\r\n\r\n") + smuggled,
        head("Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n") + smuggled,
        head("Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n") + smuggled,
        head("Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n") + smuggled,
        head("Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n") + smuggled,
        head("Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n") + smuggled,
        head("X-Fold: a\r\n b\r\nContent-Length: 0\r\n\r\n") + smuggled,
        head("Transfer-Encoding: chunked\r\n\r\nG\r\n\r\n") + smuggled,
        head("Transfer-Encoding: chunked\r\n\r\n-1\r\n\r\n") + smuggled,
        head("Transfer-Encoding: chunked\r\n\r\n0x1\r\na\r\n0\r\n\r\n") + smuggled,
        head("Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n") + smuggled,
        head("Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n") + smuggled,
        head("Transfer-Encoding: chunked\r\n\r\n1\nx\n0\n\n") + smuggled,
        head("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n")
            + smuggled,
        head("Content-Length: 4\r\n\r\n") + "1234" + &smuggled.replace("/smuggled", "/second"),
        format!(
            "POST http://plain.example/ HTTP/1.1\nHost: plain.example\nProxy-Authorization: {auth}\nContent-Length: 0\n\n"
        ) + smuggled,
        head("X-Nul: a\0b\r\nContent-Length: 0\r\n\r\n") + smuggled,
        head("NoColonHeader\r\nContent-Length: 0\r\n\r\n") + smuggled,
        head("Content-Length:\r\n\r\n") + smuggled,
        head("Content-Length: 99999999999999999999999\r\n\r\n") + smuggled,
        format!(
            "POST http://plain.example/ HTTP/1.0\r\nHost: plain.example\r\nProxy-Authorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ) + smuggled,
        format!(
            "POST  http://plain.example/ HTTP/1.1\r\nHost: plain.example\r\nProxy-Authorization: {auth}\r\n\r\n"
        ) + smuggled,
        format!(
            "POST http://plain.example/ HTTP/1.1\r\n Host: plain.example\r\nProxy-Authorization: {auth}\r\n\r\n"
        ) + smuggled,
        format!(
            "GET http://plain.example/ HTTP/1.1\r\nHost: plain.example\r\nHost: other.example\r\nProxy-Authorization: {auth}\r\n\r\n"
        ) + smuggled,
        format!(
            "GET http://plain.example/\r\nHost: plain.example\r\nProxy-Authorization: {auth}\r\n\r\n"
        ),
        format!(
            "GET http://plain.example/ HTTP/1.1\r\nHost: plain.example\r\nProxy-Authorization: {auth}\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        ),
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_string(),
        "\x16\x03\x01\x00\x05hello".to_string(),
        "garbage garbage garbage\r\n\r\n".to_string(),
    ];
    assert!(corpus.len() >= 35);
    for (i, c) in corpus.iter().enumerate() {
        let before = up.seen().len();
        let out = raw(&p.addr, c.as_bytes());
        let seen = up.seen();
        let new = &seen[before..];
        assert!(
            new.iter().all(|s| !s.target.contains("smuggled")),
            "#{i}: smuggled request reached the upstream: {c:?}\n{out}"
        );
        let responses = out.matches("HTTP/1.1 ").count() + out.matches("HTTP/1.0 ").count();
        assert!(
            new.len() <= responses.max(1),
            "#{i}: the upstream saw {} requests for {} responses: {c:?}\n{out}",
            new.len(),
            responses
        );
    }
    // Still healthy.
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://plain.example/ok",
        ],
    );
    assert_eq!(r.stdout, "200");
    p.assert_no_leak(&secret);
    p.assert_no_leak(&p.token);
}

#[test]
fn slow_clients_time_out_and_others_are_served() {
    let env = TestEnv::new();
    let up = plain_upstream();
    let ct = format!("plain.example:80:127.0.0.1:{}", up.port());
    // Both deadlines at 1 s: a header that never ends, and a CONNECT whose TLS never starts.
    let p = Proxy::start(
        &env,
        "",
        &[
            "--connect-to",
            &ct,
            "--header-timeout",
            "1",
            "--handshake-timeout",
            "1",
        ],
    );
    let auth = basic("moat", &p.token);
    let mut slow = Vec::new();
    for i in 0..60 {
        let mut s = TcpStream::connect(&p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if i % 3 == 2 {
            // connects and sends nothing at all
        } else if i % 3 == 0 {
            // slowloris: a request line and then nothing
            s.write_all(b"GET http://plain.example/ HTTP/1.1\r\nHost: plain.ex")
                .unwrap();
        } else {
            // CONNECT accepted, then no ClientHello
            s.write_all(
                format!(
                    "CONNECT plain.example:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"
                )
                .as_bytes(),
            )
            .unwrap();
        }
        slow.push(s);
    }
    let t0 = Instant::now();
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://plain.example/",
        ],
    );
    assert_eq!(r.stdout, "200");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a legit request waited {:?}",
        t0.elapsed()
    );
    for (i, mut s) in slow.into_iter().enumerate() {
        let mut buf = Vec::new();
        let start = Instant::now();
        let _ = s.read_to_end(&mut buf);
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "#{i}: slow client kept for {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn fd_exhaustion_does_not_kill_the_accept_loop() {
    let env = TestEnv::new();
    let up = plain_upstream();
    let ct = format!("plain.example:80:127.0.0.1:{}", up.port());
    let p = Proxy::start_with(
        &env,
        Some(&["prlimit", "--nofile=48:48", "--"]),
        "",
        &["--connect-to", &ct, "--header-timeout", "30"],
    );
    // Hold more connections than the proxy has descriptors.
    let mut held = Vec::new();
    for _ in 0..80 {
        if let Ok(mut s) = TcpStream::connect(&p.addr) {
            std::thread::sleep(Duration::from_millis(5));
            let _ = s.write_all(b"GET http://plain.example/ HTTP/1.1\r\n");
            held.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let r = curl(
            &env,
            &[
                "-x",
                &p.url(),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://plain.example/",
            ],
        );
        if r.stdout == "200" {
            break;
        }
        assert!(
            Instant::now() < end,
            "the proxy did not recover: {} {}",
            r.stdout,
            r.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = p.stderr.lock().unwrap().clone();
    assert!(
        err.contains("accepting a connection"),
        "EMFILE was never hit; the test proves nothing: {err}"
    );
}
