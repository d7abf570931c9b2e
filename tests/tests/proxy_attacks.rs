//! Walking around the proxy's masking, injection and path rules from inside a real run
//! (`moat-launch run` in Docker, curl in the container), against loopback echo servers
//! the run's proxy reaches through `MOAT_PROXY_CONNECT_TO` and trusts through
//! `MOAT_PROXY_EXTRA_CA`. The credential is a canary stored with `moat grant http`; every
//! attack checks that it reaches neither the run's output, nor a file under `MOAT_HOME`,
//! nor `docker inspect`, nor (where the attack would send it in clear) the upstream.

use moat_e2e::agents::{canary, no_artifact_holds};
use moat_e2e::{Moat, docker_ready};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// An HTTP/1.1 echo server on loopback (TLS with `tls`): answers every request with its
/// head, in gzip with `Content-Encoding: gzip` whatever `Accept-Encoding` says when the
/// path is `/gzip-anyway`. Records every request head.
fn echo_server(tls: Option<Arc<rustls::ServerConfig>>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(tcp) = c else { continue };
            let seen = s2.clone();
            let tls = tls.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)));
                match tls {
                    Some(cfg) => {
                        let conn = rustls::ServerConnection::new(cfg).unwrap();
                        let mut s = rustls::StreamOwned::new(conn, tcp);
                        answer(&mut s, &seen);
                        s.conn.send_close_notify();
                        let _ = s.flush();
                    }
                    None => {
                        let mut s = tcp;
                        answer(&mut s, &seen);
                    }
                }
            });
        }
    });
    (port, seen)
}

fn answer(s: &mut (impl Read + Write), seen: &Mutex<Vec<String>>) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    seen.lock().unwrap().push(head.clone());
    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
    let (body, extra) = if path == "/gzip-anyway" {
        let mut c = Command::new("gzip")
            .arg("-c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(head.as_bytes()).unwrap();
        (
            c.wait_with_output().unwrap().stdout,
            "Content-Encoding: gzip\r\n",
        )
    } else {
        (head.into_bytes(), "")
    };
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(&body);
    let _ = s.flush();
}

/// A test CA (its PEM) and a server config with a leaf for `names`, signed by it.
fn tls_config(names: &[&str]) -> (String, Arc<rustls::ServerConfig>) {
    let mut cap = CertificateParams::default();
    cap.distinguished_name
        .push(DnType::CommonName, "proxy_attacks test CA");
    cap.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    cap.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ck = KeyPair::generate().unwrap();
    let ca_pem = cap.self_signed(&ck).unwrap().pem();
    let issuer = Issuer::new(cap, ck);
    let lp =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let lk = KeyPair::generate().unwrap();
    let leaf = lp.signed_by(&lk, &issuer).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(lk.serialize_der()));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![CertificateDer::from(leaf.der().to_vec())], key)
    .unwrap();
    (ca_pem, Arc::new(cfg))
}

/// THREATS B4 (a compressed echo of the credential), A6 (a credential over plain HTTP to
/// a host granted with only a port) and A5 (another spelling of a denied path), each from
/// inside a real run: the canary reaches neither the container's output, nor `MOAT_HOME`,
/// nor `docker inspect`, nor the plain-HTTP upstream; a grant stored with an explicit
/// `http://` host still injects over plain HTTP (and its echo is masked).
#[test]
fn credentials_cannot_be_walked_out_of_the_proxy() {
    if !docker_ready() {
        return;
    }
    let secret = canary("ak_");
    let (ca_pem, cfg) = tls_config(&["echo.test"]);
    let (tls_port, tls_seen) = echo_server(Some(cfg));
    let (plain_port, plain_seen) = echo_server(None);
    let (clear_port, clear_seen) = echo_server(None);
    let mut m = Moat::new();
    let ca = m.env.path().join("attacks-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    m.env
        .env(
            "MOAT_PROXY_CONNECT_TO",
            format!(
                "echo.test:443:127.0.0.1:{tls_port},npm.corp:8443:127.0.0.1:{plain_port},clear.test:8080:127.0.0.1:{clear_port}"
            ),
        )
        .env("MOAT_PROXY_EXTRA_CA", &ca);
    let mut c = m.env.cmd("moat");
    c.args([
        "grant",
        "http",
        "attack",
        "--host",
        "echo.test,npm.corp:8443,http://clear.test:8080",
        "--header",
        "X-Api-Key",
        "--token-stdin",
        "--no-validate",
    ]);
    let g = moat_e2e::run_with_deadline(c, "moat grant http".into(), Some(secret.as_bytes()), 60);
    assert_eq!(g.code(), 0, "{}", g.stderr());
    std::fs::write(
        m.ws.join("moat.yaml"),
        "network:\n  rules:\n    - echo.test: [\"deny * /secret\"]\n",
    )
    .unwrap();
    m.trust(None);
    let script = r#"
echo "== gzip"; curl -sS --compressed -w '\nGZ=%{http_code}\n' https://echo.test/gzip-anyway
echo "== plain"; curl -sS -i http://npm.corp:8443/pkg; echo
echo "== deny"; curl -sS -i --path-as-is https://echo.test/s%65cret; echo
echo "== clear"; curl -sS -w '\nCLEAR=%{http_code}\n' http://clear.test:8080/pkg
echo done; sleep 60
"#;
    let r = m.launch_sh(&["-d", "--grant", "attack"], script);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = r.stdout().trim().to_string();
    m.wait_log(&id, "done", 300);
    let inspect = Command::new("docker")
        .args(["inspect", &format!("moat-{id}")])
        .output()
        .unwrap();
    assert!(inspect.status.success());
    assert!(
        !String::from_utf8_lossy(&inspect.stdout).contains(&secret),
        "canary in docker inspect"
    );
    let logs = m.launch(&["logs", &id]);
    let out = logs.stdout();
    logs.leaks_nothing(&secret);
    r.leaks_nothing(&secret);
    // B4: the compressed echo is refused, readable, and its bytes never reach curl.
    assert!(out.contains("GZ=502"), "{out}");
    assert!(out.contains("moat cannot mask it"), "{out}");
    // A6: refused before anything is sent; the plain-HTTP upstream never saw a request.
    assert!(out.contains("HTTP/1.1 403"), "{out}");
    assert!(
        out.contains(
            "is injected only over HTTPS; use https:// or re-grant with an explicit http:// host"
        ),
        "{out}"
    );
    assert!(
        plain_seen.lock().unwrap().is_empty(),
        "the credential crossed plain HTTP: {:?}",
        plain_seen.lock().unwrap()
    );
    // A5: /s%65cret is /secret.
    assert!(
        out.contains("is denied by rule \"deny * /secret\""),
        "{out}"
    );
    let tls = tls_seen.lock().unwrap().clone();
    assert_eq!(
        tls.len(),
        1,
        "only the gzip request reaches echo.test: {tls:?}"
    );
    assert!(tls[0].starts_with("GET /gzip-anyway "), "{tls:?}");
    assert!(
        tls[0].contains(&secret),
        "the granted request carried the credential"
    );
    // An explicit http:// grant injects in clear, and the echo is masked.
    assert!(out.contains("CLEAR=200"), "{out}");
    assert!(out.contains(&"*".repeat(secret.len())), "{out}");
    assert!(clear_seen.lock().unwrap()[0].contains(&secret));
    let s = m.launch(&["stop", &id]);
    assert_eq!(s.code(), 0, "{}", s.stderr());
    no_artifact_holds(&m, &secret);
}
