//! `--tunnel HOST:PORT`: CONNECT to a listed target (SSH to a granted host) passes through
//! as raw bytes, after proxy authentication and under the same address checks as any
//! upstream; anything else stays intercepted.

mod common;
use common::*;
use moat_testkit::TestEnv;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A server that greets like an SSH server and then echoes, upper-cased.
fn banner_server() -> (u16, std::sync::mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(b"SSH-2.0-moat_test\r\n").unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_ok() {
                    let _ = tx.send(line.clone());
                    let _ = s.write_all(line.to_uppercase().as_bytes());
                }
            });
        }
    });
    (port, rx)
}

/// CONNECT through the proxy; the status line, the body of a refusal (by its
/// Content-Length) and the stream after the response.
fn connect(p: &Proxy, target: &str, token: Option<&str>) -> (String, BufReader<TcpStream>) {
    let (status, _, r) = connect_body(p, target, token);
    (status, r)
}

fn connect_body(
    p: &Proxy,
    target: &str,
    token: Option<&str>,
) -> (String, String, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| {
            use base64::Engine;
            let b = base64::engine::general_purpose::STANDARD.encode(format!("moat:{t}"));
            format!("Proxy-Authorization: Basic {b}\r\n")
        })
        .unwrap_or_default();
    write!(
        s,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut len = 0;
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap() == 0 || l == "\r\n" {
            break;
        }
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned(), r)
}

#[test]
fn a_listed_target_is_a_raw_tunnel_and_is_traced() {
    let env = TestEnv::new();
    let (port, seen) = banner_server();
    let ct = format!("git.test:22:127.0.0.1:{port}");
    let p = Proxy::start(&env, "", &["--tunnel", "git.test:22", "--connect-to", &ct]);

    let (status, mut r) = connect(&p, "git.test:22", Some(&p.token));
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut banner = String::new();
    r.read_line(&mut banner).unwrap();
    assert_eq!(banner, "SSH-2.0-moat_test\r\n");
    r.get_mut().write_all(b"hello through\n").unwrap();
    let mut echo = String::new();
    r.read_line(&mut echo).unwrap();
    assert_eq!(echo, "HELLO THROUGH\n");
    assert_eq!(
        seen.recv_timeout(Duration::from_secs(5)).unwrap(),
        "hello through\n"
    );
    drop(r);

    let t = p.wait_trace(1);
    let rec = t
        .iter()
        .find(|r| r["url"] == "tcp://git.test:22")
        .unwrap_or_else(|| panic!("no tunnel record: {t:?}"));
    assert_eq!(rec["method"], "CONNECT");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["policy"], "tunnel");
    assert_eq!(rec["bytes_in"], 14, "{rec}");
    assert_eq!(rec["bytes_out"], 19 + 14, "{rec}");
    p.assert_no_leak(&p.token);
}

/// Bulk data both ways at once, as a clone over SSH: 4 MiB out and the same echoed back while
/// it is still being sent, arriving whole and in order, with a half-close passed on, and the
/// trace counting every byte.
#[test]
fn a_tunnel_carries_bulk_data_both_ways_at_once() {
    const N: usize = 4 << 20;
    let env = TestEnv::new();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        // echo until the client's half-close, then close
        std::io::copy(&mut &s, &mut w).unwrap();
    });
    let ct = format!("bulk.test:22:127.0.0.1:{port}");
    let p = Proxy::start(&env, "", &["--tunnel", "bulk.test:22", "--connect-to", &ct]);
    let (status, r) = connect(&p, "bulk.test:22", Some(&p.token));
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(r.buffer().is_empty());
    let mut s = r.into_inner();
    let data: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        for chunk in sent.chunks(100_000) {
            w.write_all(chunk).unwrap();
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), N);
    assert!(back == data, "the echo differs from what was sent");

    let t = p.wait_trace(1);
    let rec = t
        .iter()
        .find(|r| r["url"] == "tcp://bulk.test:22")
        .unwrap_or_else(|| panic!("no tunnel record: {t:?}"));
    assert_eq!(rec["bytes_in"], N, "{rec}");
    assert_eq!(rec["bytes_out"], N, "{rec}");
}

#[test]
fn a_tunnel_needs_the_token_and_obeys_the_address_checks() {
    let env = TestEnv::new();
    let (port, seen) = banner_server();
    // Listed, but with no --connect-to it resolves to loopback: refused before a 200.
    let p = Proxy::start(
        &env,
        "",
        &[
            "--tunnel",
            "localhost:22",
            "--tunnel",
            &format!("127.0.0.1:{port}"),
        ],
    );
    let (status, body, _) = connect_body(&p, &format!("127.0.0.1:{port}"), None);
    assert!(status.starts_with("HTTP/1.1 407"), "{status}");
    assert!(!body.contains("SSH-2.0"), "{body}");

    let (status, body, _) = connect_body(&p, &format!("127.0.0.1:{port}"), Some(&p.token));
    assert!(status.starts_with("HTTP/1.1 502"), "{status}");
    assert!(body.contains("loopback"), "{body}");
    assert!(seen.try_recv().is_err());

    let t = p.wait_trace(2);
    assert!(
        t.iter()
            .any(|r| r["status"] == 502 && r["error"]["side"] == "upstream"),
        "{t:?}"
    );
}

#[test]
fn an_unlisted_target_is_intercepted_not_passed_through() {
    let env = TestEnv::new();
    let (port, seen) = banner_server();
    let ct = format!("git.test:22:127.0.0.1:{port}");
    let p = Proxy::start(&env, "", &["--connect-to", &ct]);
    let (status, mut r) = connect(&p, "git.test:22", Some(&p.token));
    // The proxy answers 200 and waits for TLS; plain SSH gets nothing from the server.
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    r.get_mut().write_all(b"SSH-2.0-client\r\n").unwrap();
    let mut got = String::new();
    let _ = r.read_to_string(&mut got);
    assert!(!got.contains("SSH-2.0-moat_test"), "{got}");
    assert!(seen.try_recv().is_err(), "bytes reached the server");
}

#[test]
fn bad_tunnel_options_are_usage_errors() {
    let env = TestEnv::new();
    for bad in ["github.com", "github.com:0", "github.com:x", ":22"] {
        let mut c = env.cmd("moat-proxy");
        c.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-auth",
            "--tunnel",
            bad,
        ]);
        let o = c.output().unwrap();
        assert_eq!(o.status.code(), Some(64), "{bad}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--tunnel"), "{bad}: {err}");
    }
}
