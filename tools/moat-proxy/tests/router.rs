//! The hostname router as a background service, without Docker: loopback backends stand in
//! for containers, and route files and run metadata are written as moat-launch writes them.
//! Two routers on two ports serve the same routes side by side; a route whose run is not
//! running is not served; a route added while a router runs is served at once; a taken port
//! fails `start` clearly; `stop` ends only its own router.

use moat_testkit::TestEnv;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback HTTP server answering every request with `tag`.
fn backend(tag: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = vec![];
            let mut b = [0u8; 1024];
            while !buf.ends_with(b"\r\n\r\n") {
                match c.read(&mut b) {
                    Ok(n) if n > 0 => buf.extend_from_slice(&b[..n]),
                    _ => break,
                }
            }
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{tag}",
                tag.len()
            );
        }
    });
    port
}

fn add_route(env: &TestEnv, name: &str, run: &str, state: &str, port: u16) {
    let rd = env.moat_home.join("runs").join(run);
    std::fs::create_dir_all(&rd).unwrap();
    std::fs::write(
        rd.join("metadata.json"),
        format!("{{\"state\":\"{state}\"}}"),
    )
    .unwrap();
    let routes = env.moat_home.join("routes");
    std::fs::create_dir_all(&routes).unwrap();
    std::fs::write(
        routes.join(format!("{name}.json")),
        format!(
            "{{\"name\":\"{name}\",\"run_id\":\"{run}\",\"endpoints\":{{\"web\":\"127.0.0.1:{port}\"}}}}"
        ),
    )
    .unwrap();
}

/// One plain-HTTP request with a given Host; returns the status line and body.
fn get(port: u16, host: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.lines().next().unwrap_or("").to_string();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

struct Routers<'a>(&'a TestEnv, Vec<u16>);
impl Drop for Routers<'_> {
    fn drop(&mut self) {
        for p in &self.1 {
            let _ = self
                .0
                .run("moat-proxy", &["stop", "--port", &p.to_string()]);
        }
    }
}

#[test]
fn two_routers_serve_live_routes_and_stop_apart() {
    let env = TestEnv::new();
    let (p1, p2) = (free_port(), free_port());
    let _g = Routers(&env, vec![p1, p2]);
    let b1 = backend("backend-one");
    add_route(&env, "one", "run_000000000001", "running", b1);
    // A route left behind by a run that is no longer running.
    add_route(
        &env,
        "stale",
        "run_000000000002",
        "failed",
        backend("stale"),
    );
    for p in [p1, p2] {
        let r = env.run("moat-proxy", &["start", "--port", &p.to_string()]);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        assert!(
            r.stderr().contains(&format!("listens on 127.0.0.1:{p}")),
            "{}",
            r.stderr()
        );
    }
    // Starting again is a no-op.
    let r = env.run("moat-proxy", &["start", "--port", &p1.to_string()]);
    assert_eq!(r.code(), 0);
    assert!(r.stderr().contains("already runs"), "{}", r.stderr());
    for p in [p1, p2] {
        let (st, body) = get(p, &format!("web.one.localhost:{p}"));
        assert!(st.contains(" 200 "), "{st}");
        assert_eq!(body, "backend-one");
        let (st, body) = get(p, &format!("web.stale.localhost:{p}"));
        assert!(st.contains(" 404 "), "{st} {body}");
        assert!(body.contains("running: one"), "{body}");
    }
    // A route added while the routers run is served at once.
    add_route(
        &env,
        "two",
        "run_000000000003",
        "running",
        backend("backend-two"),
    );
    let (st, body) = get(p2, "two.localhost");
    assert!(st.contains(" 200 "), "{st}");
    assert_eq!(body, "backend-two");
    let (_, body) = get(p1, "localhost");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["agents"].as_array().unwrap().len(), 2, "{body}");

    // A taken port: a clear failure, exit 69.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let tp = taken.local_addr().unwrap().port();
    let r = env.run("moat-proxy", &["start", "--port", &tp.to_string()]);
    assert_eq!(r.code(), 69, "{}", r.stderr());
    assert!(
        r.stderr().contains(&format!("127.0.0.1:{tp}")),
        "{}",
        r.stderr()
    );

    let r = env.run("moat-proxy", &["status", "--json"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let v: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    let ports: Vec<u64> = v["routers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["port"].as_u64().unwrap())
        .collect();
    let mut want = vec![u64::from(p1), u64::from(p2)];
    want.sort();
    assert_eq!(ports, want);

    // Stopping one leaves the other.
    let r = env.run("moat-proxy", &["stop", "--port", &p1.to_string()]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(TcpStream::connect(("127.0.0.1", p1)).is_err());
    let (st, _) = get(p2, "web.one.localhost");
    assert!(st.contains(" 200 "), "{st}");
    let r = env.run("moat-proxy", &["status", "--port", &p1.to_string()]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stdout().contains(&format!("not running on port {p1}")),
        "{}",
        r.stdout()
    );
    let r = env.run("moat-proxy", &["status", "--port", &p2.to_string()]);
    assert_eq!(r.code(), 0);
    assert!(r.stdout().contains("web.one.localhost"), "{}", r.stdout());

    // Bad ports are usage errors.
    let r = env.run("moat-proxy", &["start", "--port", "0"]);
    assert_eq!(r.code(), 64, "{}", r.stderr());
    assert!(r.stderr().contains("--port"), "{}", r.stderr());
}
