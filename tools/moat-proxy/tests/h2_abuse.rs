//! HTTP/2 abuse against the intercepting listener (THREATS D4), with a raw HTTP/2 client
//! that writes frames by hand over TLS: Rapid Reset, CONTINUATION floods, SETTINGS and PING
//! floods, and the concurrent-stream limit. Each attack must end in GOAWAY and a closed
//! connection, cost the proxy bounded CPU and memory, open few upstream requests, and leave
//! other clients served (a curl through the proxy during the attack succeeds). Every loop
//! is bounded in count and time.

mod common;
use common::*;
use moat_testkit::TestEnv;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut v = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    v.extend(stream.to_be_bytes());
    v.extend(payload);
    v
}

/// HPACK integer with an N-bit prefix (RFC 7541 5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, bits: u32, mut v: usize) {
    let max = (1usize << bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header field without indexing, new name (RFC 7541 6.2.2).
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend(value.as_bytes());
}

fn request_block(host: &str, path: &str) -> Vec<u8> {
    let mut b = Vec::new();
    literal(&mut b, ":method", "GET");
    literal(&mut b, ":scheme", "https");
    literal(&mut b, ":path", path);
    literal(&mut b, ":authority", host);
    b
}

#[derive(Default)]
struct Seen {
    /// (type, flags, stream) of every frame from the proxy
    frames: Mutex<Vec<(u8, u8, u32)>>,
    goaway: Mutex<Option<u32>>,
    /// the last stream the proxy says it processed, from its GOAWAY
    last_stream: Mutex<u32>,
    closed: AtomicBool,
    bytes: AtomicUsize,
}

impl Seen {
    fn count(&self, kind: u8) -> usize {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.0 == kind)
            .count()
    }
    fn goaway(&self) -> Option<u32> {
        *self.goaway.lock().unwrap()
    }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

struct H2 {
    w: WriteHalf<Tls>,
    seen: Arc<Seen>,
}

impl H2 {
    /// CONNECT through the proxy, TLS with ALPN h2, the preface and SETTINGS exchange.
    async fn open(addr: &str, token: &str, ca: &[u8], host: &str) -> H2 {
        let tls = connect_tls(addr, token, ca, host).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut r, mut w) = tokio::io::split(tls);
        let seen = Arc::new(Seen::default());
        let s2 = seen.clone();
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(60);
            let mut h = [0u8; 9];
            while Instant::now() < end {
                if r.read_exact(&mut h).await.is_err() {
                    break;
                }
                let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                let mut p = vec![0u8; len];
                if r.read_exact(&mut p).await.is_err() {
                    break;
                }
                s2.bytes.fetch_add(9 + len, Ordering::Relaxed);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                if h[3] == GOAWAY && len >= 8 {
                    *s2.goaway.lock().unwrap() = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                    *s2.last_stream.lock().unwrap() =
                        u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
                }
                s2.frames.lock().unwrap().push((h[3], h[4], stream));
            }
            s2.closed.store(true, Ordering::Release);
        });
        w.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        w.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        let mut h2 = H2 { w, seen };
        assert!(
            h2.wait(5, |s| s
                .frames
                .lock()
                .unwrap()
                .iter()
                .any(|f| f.0 == SETTINGS && f.1 & ACK == 0))
                .await,
            "the proxy sends its SETTINGS"
        );
        h2.send(&frame(SETTINGS, ACK, 0, &[])).await;
        h2
    }

    /// Write; false once the proxy has closed the connection.
    async fn send(&mut self, b: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.w.write_all(b)).await,
            Ok(Ok(()))
        )
    }

    async fn wait(&mut self, secs: u64, f: impl Fn(&Seen) -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if f(&self.seen) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f(&self.seen)
    }

    /// GOAWAY arrived and the connection ended soon after.
    async fn goes_away(&mut self) -> Option<u32> {
        self.wait(10, |s| {
            s.goaway().is_some() && s.closed.load(Ordering::Acquire)
        })
        .await;
        assert!(
            self.seen.closed.load(Ordering::Acquire),
            "the proxy closes the connection"
        );
        self.seen.goaway()
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s.rsplit_once(')').unwrap().1.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

struct Setup {
    env: TestEnv,
    up: Upstream,
    p: Proxy,
    ca_file: std::path::PathBuf,
    moat_ca: Vec<u8>,
    ct: String,
}

fn setup(alpn: &[&[u8]]) -> Setup {
    let env = TestEnv::new();
    let (up, ca_file) = granted_upstream(&env, "api.github.com", alpn);
    let ct = format!("api.github.com:443:127.0.0.1:{}", up.port());
    let p = Proxy::start(
        &env,
        "",
        &["--connect-to", &ct, "--extra-ca", ca_file.to_str().unwrap()],
    );
    let moat_ca = std::fs::read(&p.ca).unwrap();
    Setup {
        env,
        up,
        p,
        ca_file,
        moat_ca,
        ct,
    }
}

impl Setup {
    /// Run `attack` while curl fetches through the proxy in parallel; every curl succeeds.
    fn under_attack<T: Send + 'static>(
        &self,
        attack: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let env_path = self.env.path().to_path_buf();
        let url = self.p.url();
        let ca = self.p.ca.clone();
        let ct = self.ct.clone();
        let _ = (&self.ca_file, &env_path);
        let curls = std::thread::spawn(move || {
            let env = TestEnv::new();
            let mut results = Vec::new();
            // at least one request, at most 50, while the attack runs
            for i in 0..50 {
                if i > 0 && stop2.load(Ordering::Acquire) {
                    break;
                }
                let o = curl(
                    &env,
                    &[
                        "-x",
                        &url,
                        "--cacert",
                        ca.to_str().unwrap(),
                        "--max-time",
                        "5",
                        "-w",
                        "%{http_code}",
                        "-o",
                        "/dev/null",
                        "https://api.github.com/during-attack",
                    ],
                );
                results.push((o.code, o.stdout, o.stderr));
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = ct;
            results
        });
        let out = rt().block_on(async move {
            tokio::time::timeout(Duration::from_secs(60), attack)
                .await
                .expect("attack bounded in time")
        });
        stop.store(true, Ordering::Release);
        let results = curls.join().unwrap();
        assert!(!results.is_empty());
        for (code, stdout, stderr) in &results {
            assert_eq!(
                (*code, stdout.as_str()),
                (0, "200"),
                "a parallel client is served: {stderr}"
            );
        }
        out
    }

    fn pid(&self) -> u32 {
        self.p.child.id()
    }

    fn upstream_requests(&self, path: &str) -> usize {
        self.up
            .seen()
            .iter()
            .filter(|s| s.target.contains(path))
            .count()
    }
}

const RSS_CAP_KIB: u64 = 64 * 1024;

#[test]
fn rapid_reset_ends_in_goaway_with_few_upstream_requests() {
    // An HTTP/1.1 upstream is the costly case: a cancelled request loses its connection.
    let s = setup(&[b"http/1.1"]);
    let (addr, token, ca) = (s.p.addr.clone(), s.p.token.clone(), s.moat_ca.clone());
    let cpu0 = cpu_ticks(s.pid());
    let (sent, goaway) = s.under_attack(async move {
        let mut h = H2::open(&addr, &token, &ca, "api.github.com").await;
        let block = request_block("api.github.com", "/rapid-reset");
        let mut sent = 0u32;
        let end = Instant::now() + Duration::from_secs(20);
        // up to 20,000 streams, opened and cancelled at once, in batches of 100
        'out: for batch in 0..200u32 {
            let mut b = Vec::new();
            for i in 0..100u32 {
                let id = 2 * (batch * 100 + i) + 1;
                b.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
                b.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
            }
            if !h.send(&b).await || h.seen.closed.load(Ordering::Acquire) {
                break 'out;
            }
            sent += 100;
            if Instant::now() > end {
                break;
            }
        }
        let fast = (
            sent,
            h.goes_away().await,
            *h.seen.last_stream.lock().unwrap(),
        );
        // The same, but each batch of 50 is cancelled only after the proxy has had time to
        // accept the streams and start their upstream requests.
        let mut h = H2::open(&addr, &token, &ca, "api.github.com").await;
        let mut sent = 0u32;
        for batch in 0..400u32 {
            let ids: Vec<u32> = (0..50).map(|i| 2 * (batch * 50 + i) + 1).collect();
            let mut b = Vec::new();
            for id in &ids {
                b.extend(frame(HEADERS, END_HEADERS | END_STREAM, *id, &block));
            }
            if !h.send(&b).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            let mut b = Vec::new();
            for id in &ids {
                b.extend(frame(RST_STREAM, 0, *id, &8u32.to_be_bytes()));
            }
            if !h.send(&b).await || h.seen.closed.load(Ordering::Acquire) {
                break;
            }
            sent += 50;
            if Instant::now() > end {
                break;
            }
        }
        let slow = (
            sent,
            h.goes_away().await,
            *h.seen.last_stream.lock().unwrap(),
        );
        (fast, slow)
    });
    let ((sent, goaway, last), (sent_slow, goaway_slow, last_slow)) = (sent, goaway);
    let cpu = cpu_ticks(s.pid()) - cpu0;
    let upstream = s.upstream_requests("/rapid-reset");
    eprintln!(
        "rapid reset: {sent} streams written before the close, {upstream} upstream requests, {} upstream connections, {cpu} ticks of proxy CPU, GOAWAY {goaway:?}",
        *s.up.conns.lock().unwrap()
    );
    eprintln!(
        "rapid reset after accept: {sent_slow} streams, GOAWAY {goaway_slow:?}; last streams processed {last}, {last_slow}"
    );
    assert!(
        goaway.is_some() && goaway_slow.is_some(),
        "GOAWAY before the close"
    );
    // Whatever the socket buffers took in, the proxy stopped processing early (stream
    // ids are odd: 2n+1 for the n-th stream; the guard's burst is 1,000 frames).
    assert!(last < 2 * 1_500, "processed up to stream {last}");
    assert!(last_slow < 2 * 1_500, "processed up to stream {last_slow}");
    assert!(upstream <= 300, "{upstream} upstream requests");
    assert!(*s.up.conns.lock().unwrap() <= 300);
    // 50 curl requests and the attack, in less than 3 s of proxy CPU
    assert!(cpu < 300, "{cpu} ticks");
    assert!(rss_kib(s.pid()) < RSS_CAP_KIB);
}

#[test]
fn continuation_floods_end_in_goaway() {
    let s = setup(&[b"h2"]);
    let (addr, token, ca) = (s.p.addr.clone(), s.p.token.clone(), s.moat_ca.clone());
    let (small, big) = s.under_attack(async move {
        // Many empty CONTINUATION frames without END_HEADERS.
        let mut h = H2::open(&addr, &token, &ca, "api.github.com").await;
        let block = request_block("api.github.com", "/continuation");
        h.send(&frame(HEADERS, 0, 1, &block)).await;
        let mut n = 0;
        for _ in 0..10_000 {
            if !h.send(&frame(CONTINUATION, 0, 1, &[])).await
                || h.seen.closed.load(Ordering::Acquire)
            {
                break;
            }
            n += 1;
        }
        let small = (n, h.goes_away().await);
        // Full 16 KiB CONTINUATION frames of header fields, up to 64 MiB.
        let mut h = H2::open(&addr, &token, &ca, "api.github.com").await;
        h.send(&frame(HEADERS, 0, 1, &block)).await;
        let mut junk = Vec::new();
        let mut i = 0;
        while junk.len() < 16 * 1024 - 200 {
            literal(&mut junk, &format!("x-junk-{i}"), &"v".repeat(100));
            i += 1;
        }
        let mut n = 0;
        for _ in 0..4096 {
            if !h.send(&frame(CONTINUATION, 0, 1, &junk)).await
                || h.seen.closed.load(Ordering::Acquire)
            {
                break;
            }
            n += 1;
        }
        (small, (n, h.goes_away().await))
    });
    eprintln!("continuation: small {small:?}, big {big:?}");
    assert!(small.1.is_some() && big.1.is_some());
    // 64 MiB of header block cannot hide in socket buffers
    assert!(big.0 < 4096);
    assert_eq!(s.upstream_requests("/continuation"), 0);
    assert!(rss_kib(s.pid()) < RSS_CAP_KIB);
}

#[test]
fn settings_and_ping_floods_end_in_goaway() {
    let s = setup(&[b"h2"]);
    let (addr, token, ca) = (s.p.addr.clone(), s.p.token.clone(), s.moat_ca.clone());
    let cpu0 = cpu_ticks(s.pid());
    let out = s.under_attack(async move {
        let mut out = Vec::new();
        for (kind, payload) in [(PING, vec![7u8; 8]), (SETTINGS, vec![])] {
            let mut h = H2::open(&addr, &token, &ca, "api.github.com").await;
            let mut sent = 0;
            // up to 100,000 frames, 1,000 per write
            for _ in 0..100 {
                let one = frame(kind, 0, 0, &payload);
                let b: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
                if !h.send(&b).await || h.seen.closed.load(Ordering::Acquire) {
                    break;
                }
                sent += 1000;
            }
            let goaway = h.goes_away().await;
            out.push((kind, sent, h.seen.count(kind), goaway));
        }
        out
    });
    let cpu = cpu_ticks(s.pid()) - cpu0;
    eprintln!("floods (kind, written, answered, goaway): {out:?}; {cpu} ticks");
    for (kind, _, answered, goaway) in out {
        assert!(goaway.is_some(), "GOAWAY for frame type {kind}");
        // the guard allows a burst of 1,000 (plus what arrived in the same reads)
        assert!(answered < 5_000, "{answered} answers to frame type {kind}");
    }
    assert!(cpu < 300, "{cpu} ticks");
    assert!(rss_kib(s.pid()) < RSS_CAP_KIB);
}

#[test]
fn concurrent_streams_are_limited() {
    let s = setup(&[b"h2"]);
    let (addr, token, ca) = (s.p.addr.clone(), s.p.token.clone(), s.moat_ca.clone());
    let (refused, answered) = s.under_attack(async move {
        let mut h = H2::open(&addr, &token, &ca, "api.github.com").await;
        // 400 requests whose bodies never end: at most 128 may be open at once.
        let block = request_block("api.github.com", "/discard");
        let mut b = Vec::new();
        for i in 0..400u32 {
            b.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
        }
        assert!(h.send(&b).await);
        h.wait(5, |s| {
            s.frames
                .lock()
                .unwrap()
                .iter()
                .filter(|f| f.0 == RST_STREAM)
                .count()
                >= 400 - 128
        })
        .await;
        let reset: Vec<u32> = h
            .seen
            .frames
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.0 == RST_STREAM)
            .map(|f| f.2)
            .collect();
        let refused = reset.len();
        // End the open ones: each gets its answer.
        let mut b = Vec::new();
        for i in 0..400u32 {
            if !reset.contains(&(2 * i + 1)) {
                b.extend(frame(DATA, END_STREAM, 2 * i + 1, &[]));
            }
        }
        h.send(&b).await;
        h.wait(10, |s| s.count(HEADERS) >= 128).await;
        (refused, h.seen.count(HEADERS))
    });
    eprintln!("concurrency: {refused} streams refused, {answered} answered");
    assert!(refused >= 400 - 128, "{refused} refused");
    assert!(answered <= 128 && answered > 0, "{answered} answered");
    assert!(s.upstream_requests("/discard") <= 128);
}
