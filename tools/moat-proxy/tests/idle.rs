//! Connections that do nothing must not crowd out those that work (THREATS K1; the fd
//! budget side of K2). A flood of 10,000 stalled connections (half a `CONNECT` that never
//! sends a ClientHello, half a request header cut off midway; for the router half a TLS
//! record header that never completes) is held against a real `moat-proxy serve` and a real
//! `moat-proxy router`, and meanwhile 200 real requests go through each: all succeed with a
//! p99 under 1 s (a robustness bound with a wide margin, not a benchmark), the proxy's RSS
//! stays under 200 MiB and its open files under its connection limit, and every stalled
//! connection is closed by the proxy within its deadline plus a margin. A proxy that stops
//! accepting at `--max-connections` (as moat-proxy did) leaves the real requests in the
//! listen queue behind the stalled ones and fails the p99; one that keeps idle tunnels for
//! the 30 s header timeout fails the deadline.

mod common;

use common::*;
use moat_testkit::TestEnv;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STALLED: usize = 10_000;
const REAL: usize = 200;
const RSS_BOUND_MIB: u64 = 200;
/// Longest the test waits for one stalled connection to be closed by the proxy.
const CAP: Duration = Duration::from_secs(25);

/// This process needs ~10,000 descriptors and the proxy (a child, which inherits the limit)
/// its own 1,024 connections and more: raise the soft limit to the hard one.
fn raise_nofile() {
    let pid = std::process::id().to_string();
    let hard = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid,
            "--nofile",
            "--output",
            "HARD",
            "--noheadings",
        ])
        .output()
        .unwrap();
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status()
        .unwrap();
    assert!(st.success());
    let n: u64 = if hard == "unlimited" {
        u64::MAX
    } else {
        hard.parse().unwrap()
    };
    assert!(
        n >= STALLED as u64 + 2048,
        "the hard RLIMIT_NOFILE ({hard}) is too low for this test"
    );
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// Samples a process's RSS and open descriptors every 100 ms until stopped; returns the peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    h: std::thread::JoinHandle<(u64, u64)>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let h = std::thread::spawn(move || {
            let (mut rss, mut fds) = (0, 0);
            // bounded: at most 120 s of samples
            for _ in 0..1200 {
                rss = rss.max(status_kib(pid, "VmRSS:"));
                fds = fds.max(open_fds(pid));
                if s2.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (rss, fds)
        });
        Sampler { stop, h }
    }
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.h.join().unwrap()
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// Two lines of a request header, never its end.
    CutHeader,
    /// CONNECT (answered 200), then nothing: no ClientHello.
    IdleTunnel,
    /// The first bytes of a TLS record, then nothing (the router's TLS side).
    StalledTls,
}

struct Outcome {
    kind: Kind,
    /// From the last byte sent until the proxy closed the connection; None: the test's
    /// own cap ran out first.
    lifetime: Option<Duration>,
}

/// Open one stalled connection from `src` and send its few bytes; `None` when it could not
/// even be opened.
async fn open(
    kind: Kind,
    to: SocketAddr,
    src: IpAddr,
    auth: &str,
) -> Option<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::new(src, 0)).ok()?;
    let mut s = tokio::time::timeout(Duration::from_secs(10), sock.connect(to))
        .await
        .ok()?
        .ok()?;
    let msg = match kind {
        Kind::CutHeader => "GET http://stalled.test/ HTTP/1.1\r\nHost: stalled.test\r\nX-Cut: "
            .to_string()
            .into_bytes(),
        Kind::IdleTunnel => format!(
            "CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
        )
        .into_bytes(),
        Kind::StalledTls => vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
    };
    s.write_all(&msg).await.ok()?;
    Some(s)
}

/// Wait (at most CAP) for the proxy to close a stalled connection.
async fn closed(kind: Kind, mut s: tokio::net::TcpStream) -> Outcome {
    let t0 = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at((t0 + CAP).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Outcome {
                    kind,
                    lifetime: Some(t0.elapsed()),
                };
            }
            Ok(Ok(_)) => continue,
            Err(_) => {
                return Outcome {
                    kind,
                    lifetime: None,
                };
            }
        }
    }
}

/// Open STALLED stalled connections, at most 256 being opened at a time (kinds
/// alternating, sources spread over 127.0.0.2-11), and wait for each to be closed.
/// Returns the handle to every outcome and the count that failed to open.
fn flood(
    to: SocketAddr,
    kinds: [Kind; 2],
    auth: String,
    opened: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<(Vec<Outcome>, usize)> {
    rt().spawn(async move {
        let gate = Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..STALLED {
            let (gate, auth, opened) = (gate.clone(), auth.clone(), opened.clone());
            let kind = kinds[i % 2];
            let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 10) as u8));
            tasks.spawn(async move {
                // connect and send under the gate; the wait for the close is not
                let conn = {
                    let _g = gate.acquire().await.unwrap();
                    open(kind, to, src, &auth).await
                };
                opened.fetch_add(1, Ordering::Relaxed);
                match conn {
                    Some(s) => Some(closed(kind, s).await),
                    None => None,
                }
            });
        }
        let mut all = vec![];
        let mut failed = 0;
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Some(o) => all.push(o),
                None => failed += 1,
            }
        }
        (all, failed)
    })
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99).div_ceil(100) - 1]
}

/// Check the flood's outcomes: every stalled connection was closed by the proxy, within its
/// kind's deadline plus a margin.
fn assert_closed_in_time(outcomes: &[Outcome], failed: usize, deadline: impl Fn(Kind) -> Duration) {
    assert!(
        outcomes.len() >= STALLED,
        "only {} stalled connections opened ({failed} failed to open)",
        outcomes.len()
    );
    let margin = Duration::from_secs(5);
    let mut worst = std::collections::BTreeMap::new();
    for o in outcomes {
        let Some(l) = o.lifetime else {
            panic!(
                "a stalled {:?} connection was still open after {CAP:?}",
                o.kind
            );
        };
        let w = worst.entry(format!("{:?}", o.kind)).or_insert(l);
        *w = (*w).max(l);
        assert!(
            l <= deadline(o.kind) + margin,
            "a stalled {:?} connection stayed open {l:?}, past its deadline {:?} + {margin:?}",
            o.kind,
            deadline(o.kind)
        );
    }
    eprintln!(
        "{} stalled connections, {failed} failed to open; longest open: {worst:?}",
        outcomes.len()
    );
}

/// The run's proxy: 200 real HTTPS requests through CONNECT, each injected, while 10,000
/// stalled connections come in.
#[test]
fn stalled_connections_do_not_crowd_out_real_requests_through_the_runs_proxy() {
    raise_nofile();
    let env = TestEnv::new();
    let secret = canary();
    let (up, ca) = granted_upstream(&env, "api.github.com", &[b"http/1.1"]);
    let rules = bearer_rule("github", &["api.github.com"], &secret);
    let ct = format!("api.github.com:443:127.0.0.1:{}", up.port());
    let p = Proxy::start(
        &env,
        &rules,
        &[
            "--connect-to",
            &ct,
            "--extra-ca",
            ca.to_str().unwrap(),
            "--header-timeout",
            "5",
        ],
    );
    let pid = p.child.id();
    let to: SocketAddr = p.addr.parse().unwrap();
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("moat:{}", p.token))
    };
    let real = |n: usize| -> Vec<Duration> {
        (0..n)
            .map(|i| {
                let out = curl(
                    &env,
                    &[
                        "--proxy",
                        &p.url(),
                        "--cacert",
                        p.ca.to_str().unwrap(),
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code} %{time_total}",
                        &format!("https://api.github.com/repos/o/r/{i}"),
                    ],
                );
                let (code, t) = out.stdout.split_once(' ').unwrap_or(("", "0"));
                assert_eq!(code, "200", "request {i}: {} {}", out.stdout, out.stderr);
                Duration::from_secs_f64(t.parse().unwrap())
            })
            .collect()
    };
    real(5);
    let rss_idle = status_kib(pid, "VmRSS:") / 1024;
    let sampler = Sampler::start(pid);
    let opened = Arc::new(AtomicU64::new(0));
    let fl = flood(
        to,
        [Kind::IdleTunnel, Kind::CutHeader],
        auth,
        opened.clone(),
    );
    // the real requests start once the flood is well under way
    let t0 = Instant::now();
    while opened.load(Ordering::Relaxed) < (STALLED / 2) as u64 && t0.elapsed() < CAP {
        std::thread::sleep(Duration::from_millis(20));
    }
    let lat = real(REAL);
    let (outcomes, failed) = rt().block_on(fl).unwrap();
    let (rss_peak, fds_peak) = sampler.finish();
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = status_kib(pid, "VmRSS:") / 1024;
    let fds_after = open_fds(pid);
    let p99 = p99(lat.clone());
    eprintln!(
        "run's proxy: {} stalled connections opened; real p99 {p99:?}, max {:?}; RSS idle {rss_idle} MiB, peak {} MiB, after {rss_after} MiB; fds peak {fds_peak}, after {fds_after}",
        opened.load(Ordering::Relaxed),
        lat.iter().max().unwrap(),
        rss_peak / 1024
    );
    assert!(p99 < Duration::from_secs(1), "real requests' p99 {p99:?}");
    assert!(
        rss_peak / 1024 < RSS_BOUND_MIB,
        "RSS peaked at {} MiB",
        rss_peak / 1024
    );
    // the connection limit holds: 1,024, and at most half as many again evicted ones whose
    // tasks have not ended yet; the rest are the listener, the trace, the pipes and
    // upstream connections
    assert!(
        fds_peak <= 1024 + 512 + 64,
        "the proxy held {fds_peak} descriptors"
    );
    assert!(fds_after < 64, "{fds_after} descriptors still open");
    assert_closed_in_time(&outcomes, failed, |k| match k {
        // --handshake-timeout default, counted from the CONNECT's 200
        Kind::IdleTunnel => Duration::from_secs(5),
        // --header-timeout 5, counted by hyper from the first byte
        _ => Duration::from_secs(5),
    });
    // every real request was injected; nothing else reached the upstream
    let seen = up.seen();
    assert_eq!(seen.len(), REAL + 5);
    for s in &seen {
        assert_eq!(
            s.header_all("authorization"),
            vec![format!("Bearer {secret}")]
        );
    }
    p.assert_no_leak(&secret);
}

/// A loopback HTTP backend answering every request with `tag` (keep-alive off).
fn backend(tag: &'static str) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
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

/// The routing proxy (`moat-proxy router`): 200 real requests to a running agent's
/// endpoint while 10,000 stalled connections come in.
#[test]
fn stalled_connections_do_not_crowd_out_real_requests_through_the_router() {
    raise_nofile();
    let env = TestEnv::new();
    let b = backend("backend-one");
    let rd = env.moat_home.join("runs").join("run_000000000001");
    std::fs::create_dir_all(&rd).unwrap();
    std::fs::write(rd.join("metadata.json"), "{\"state\":\"running\"}").unwrap();
    std::fs::create_dir_all(env.moat_home.join("routes")).unwrap();
    std::fs::write(
        env.moat_home.join("routes").join("one.json"),
        format!(
            "{{\"name\":\"one\",\"run_id\":\"run_000000000001\",\"endpoints\":{{\"web\":\"127.0.0.1:{b}\"}}}}"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = env
        .cmd("moat-proxy")
        .args(["router", "--port", &port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let get = || -> Duration {
        use std::io::{Read, Write};
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: web.one.localhost:{port}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        assert!(out.ends_with("backend-one"), "{out}");
        t.elapsed()
    };
    // wait for the router to listen (bounded)
    let t0 = Instant::now();
    while std::net::TcpStream::connect(to).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "router did not start"
        );
        if let Some(s) = child.try_wait().unwrap() {
            panic!("router exited: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let child = Kill(child);
    for _ in 0..5 {
        get();
    }
    let rss_idle = status_kib(pid, "VmRSS:") / 1024;
    let sampler = Sampler::start(pid);
    let opened = Arc::new(AtomicU64::new(0));
    let fl = flood(
        to,
        [Kind::StalledTls, Kind::CutHeader],
        String::new(),
        opened.clone(),
    );
    let t0 = Instant::now();
    while opened.load(Ordering::Relaxed) < (STALLED / 2) as u64 && t0.elapsed() < CAP {
        std::thread::sleep(Duration::from_millis(20));
    }
    let lat: Vec<Duration> = (0..REAL).map(|_| get()).collect();
    let (outcomes, failed) = rt().block_on(fl).unwrap();
    let (rss_peak, fds_peak) = sampler.finish();
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = status_kib(pid, "VmRSS:") / 1024;
    let fds_after = open_fds(pid);
    let p99 = p99(lat.clone());
    eprintln!(
        "router: {} stalled connections opened; real p99 {p99:?}, max {:?}; RSS idle {rss_idle} MiB, peak {} MiB, after {rss_after} MiB; fds peak {fds_peak}, after {fds_after}",
        opened.load(Ordering::Relaxed),
        lat.iter().max().unwrap(),
        rss_peak / 1024
    );
    assert!(p99 < Duration::from_secs(1), "real requests' p99 {p99:?}");
    assert!(
        rss_peak / 1024 < RSS_BOUND_MIB,
        "RSS peaked at {} MiB",
        rss_peak / 1024
    );
    assert!(
        fds_peak <= 1024 + 512 + 64,
        "the router held {fds_peak} descriptors"
    );
    assert!(fds_after < 64, "{fds_after} descriptors still open");
    assert_closed_in_time(&outcomes, failed, |k| match k {
        // the router's handshake deadline, from accept
        Kind::StalledTls => Duration::from_secs(5),
        // its header deadline (from the first byte)
        _ => Duration::from_secs(10),
    });
    drop(child);
}

/// `--handshake-timeout` refuses what it cannot honour: 0 (no time at all) and non-numbers.
#[test]
fn a_handshake_timeout_of_zero_or_not_a_number_is_a_usage_error() {
    let env = TestEnv::new();
    for v in ["0", "x", "-3"] {
        let r = env.run(
            "moat-proxy",
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--no-auth",
                "--handshake-timeout",
                v,
            ],
        );
        r.exit(64);
        assert_eq!(
            r.stderr()
                .lines()
                .next()
                .map(|l| l.starts_with("moat-proxy: ")),
            Some(true),
            "{}",
            r.stderr()
        );
    }
}
