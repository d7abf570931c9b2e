//! Load generator and HTTPS origin for bench/proxy.sh.
//!
//! `loadgen origin --name bench.test --ca-out FILE` serves /small, /1m and /sse over TLS
//! (HTTP/1.1) with a certificate from a CA made at start (written to FILE) and prints
//! `ADDR` on stdout. `loadgen load --url https://bench.test/small (--direct ADDR | --proxy
//! HOST:PORT [--token T]) --cacert FILE --concurrency N --seconds S [--new-conn] [--sse]`
//! runs workers for S seconds and prints one JSON line of results. `loadgen relay
//! --upstream ADDR --cacert FILE --ca-out FILE [--name bench.test] [--plain]` is a bare TLS
//! relay to the origin (the floor for any intercepting proxy; see [`relay`]), or with
//! `--plain` a TCP relay, reached with `load --direct`. `load --upload-kib N` POSTs N KiB
//! per request (to /upload, which the origin reads and answers `ok`) and counts the bytes
//! sent.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("origin") => origin(&args).await,
        Some("load") => load(&args).await,
        Some("relay") => relay(&args).await,
        _ => eprintln!("usage: loadgen origin|relay|load ..."),
    }
}

/// A TLS server configuration for `name`, its certificate signed by a CA made here and
/// written to `ca_out`.
fn server_config(name: String, ca_out: &str) -> rustls::ServerConfig {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut cp = rcgen::CertificateParams::default();
    cp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    cp.distinguished_name
        .push(rcgen::DnType::CommonName, "bench test CA");
    let ca = cp.self_signed(&ca_key).unwrap();
    std::fs::write(ca_out, ca.pem()).unwrap();
    let issuer = rcgen::Issuer::new(cp, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap()
}

fn client_config(ca_file: &str, alpn: &[u8]) -> rustls::ClientConfig {
    let ca = std::fs::read(ca_file).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg
}

/// The least any intercepting proxy does: end the client's TLS, open TLS to the origin,
/// and pass the bytes between the two (decrypt, re-encrypt), with no HTTP, policy,
/// injection, masking or tracing. Its throughput is the ceiling for a proxy that must
/// read what passes through it, on this machine. With `--plain` it passes the TCP bytes
/// alone (the client's TLS reaches the origin): the cost of a third process on the path,
/// with no cryptography at all.
async fn relay(args: &[String]) {
    let name = arg(args, "--name").unwrap_or("bench.test".into());
    let upstream = arg(args, "--upstream").expect("--upstream");
    let plain = args.iter().any(|a| a == "--plain");
    let tls = (!plain).then(|| {
        (
            tokio_rustls::TlsAcceptor::from(Arc::new(server_config(
                name.clone(),
                &arg(args, "--ca-out").expect("--ca-out"),
            ))),
            tokio_rustls::TlsConnector::from(Arc::new(client_config(
                &arg(args, "--cacert").expect("--cacert"),
                b"http/1.1",
            ))),
        )
    });
    let l = tokio::net::TcpListener::bind(arg(args, "--listen").unwrap_or("127.0.0.1:0".into()))
        .await
        .unwrap();
    println!("{}", l.local_addr().unwrap());
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            continue;
        };
        let (tls, name, upstream) = (tls.clone(), name.clone(), upstream.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(up) = tokio::net::TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let Some((acc, conn)) = tls else {
                pipe(tcp, up).await;
                return;
            };
            let Ok(down) = acc.accept(tcp).await else {
                return;
            };
            let up = tokio::io::BufReader::with_capacity(64 * 1024, up);
            let Ok(up) = conn.connect(name.try_into().unwrap(), up).await else {
                return;
            };
            pipe(down, up).await;
        });
    }
}

/// Copy both ways, 64 KiB at a time, until both sides are done.
async fn pipe<A, B>(mut a: A, mut b: B)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 64 * 1024, 64 * 1024).await;
}

async fn origin(args: &[String]) {
    let name = arg(args, "--name").unwrap_or("bench.test".into());
    let cfg = server_config(name, &arg(args, "--ca-out").expect("--ca-out"));
    let acc = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind(arg(args, "--listen").unwrap_or("127.0.0.1:0".into()))
        .await
        .unwrap();
    println!("{}", l.local_addr().unwrap());
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    let (model_json, model_sse) = model_answers();
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            continue;
        };
        let acc = acc.clone();
        let big = big.clone();
        let (model_json, model_sse) = (model_json.clone(), model_sse.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(tls) = acc.accept(tcp).await else {
                return;
            };
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let big = big.clone();
                    let (model_json, model_sse) = (model_json.clone(), model_sse.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let stream = req.uri().query() == Some("stream");
                        if path == "/upload" {
                            let _ = req.into_body().collect().await;
                        }
                        let body = match path.as_str() {
                            "/1m" => Full::new(big).map_err(|n| match n {}).boxed_unsync(),
                            // Model-API-shaped answers (Anthropic Messages) with usage, for
                            // measuring the proxy's usage accounting: a small JSON answer,
                            // or with ?stream a 1 MiB event stream of text deltas.
                            "/v1/messages" if stream => {
                                let mut r = hyper::Response::new(
                                    Full::new(model_sse).map_err(|n| match n {}).boxed_unsync(),
                                );
                                r.headers_mut().insert(
                                    "content-type",
                                    http::HeaderValue::from_static("text/event-stream"),
                                );
                                return Ok::<_, Infallible>(r);
                            }
                            "/v1/messages" => {
                                let mut r = hyper::Response::new(
                                    Full::new(model_json).map_err(|n| match n {}).boxed_unsync(),
                                );
                                r.headers_mut().insert(
                                    "content-type",
                                    http::HeaderValue::from_static("application/json"),
                                );
                                return Ok::<_, Infallible>(r);
                            }
                            "/sse" => {
                                let s = futures_util::stream::unfold(0u8, |i| async move {
                                    match i {
                                        0 => Some((
                                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(
                                                b"data: first\n\n",
                                            ))),
                                            1,
                                        )),
                                        1 => {
                                            tokio::time::sleep(Duration::from_millis(200)).await;
                                            Some((
                                                Ok(Frame::data(Bytes::from_static(
                                                    b"data: end\n\n",
                                                ))),
                                                2,
                                            ))
                                        }
                                        _ => None,
                                    }
                                });
                                StreamBody::new(s).boxed_unsync()
                            }
                            _ => Full::new(Bytes::from_static(b"ok\n"))
                                .map_err(|n| match n {})
                                .boxed_unsync(),
                        };
                        Ok::<_, Infallible>(hyper::Response::new(body))
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// An Anthropic Messages answer with usage, as JSON and as a 1 MiB event stream.
fn model_answers() -> (Bytes, Bytes) {
    let json = br#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello from the bench origin."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1200,"cache_creation_input_tokens":0,"cache_read_input_tokens":800,"output_tokens":42}}"#;
    let mut sse = Vec::with_capacity((1 << 20) + 4096);
    sse.extend_from_slice(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":1200,\"cache_read_input_tokens\":800,\"output_tokens\":1}}}\n\n");
    let delta = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"some streamed words of an answer \"}}\n\n";
    while sse.len() < 1 << 20 {
        sse.extend_from_slice(delta);
    }
    sse.extend_from_slice(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9000}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    (Bytes::from_static(json), Bytes::from(sse))
}

struct Opts {
    url: http::Uri,
    direct: Option<String>,
    proxy: Option<String>,
    token: Option<String>,
    tls: tokio_rustls::TlsConnector,
    new_conn: bool,
    sse: bool,
    /// `--upload-kib N`: POST N KiB per request.
    upload: Option<Bytes>,
    /// `--post`: POST (with an empty body) instead of GET.
    post: bool,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(o: &Opts) -> Sender {
    let host = o.url.host().unwrap().to_string();
    let port = o.url.port_u16().unwrap_or(443);
    let mut tcp =
        tokio::net::TcpStream::connect(o.direct.as_deref().or(o.proxy.as_deref()).unwrap())
            .await
            .unwrap();
    tcp.set_nodelay(true).unwrap();
    if o.proxy.is_some() {
        let auth = o.token.as_ref().map(|t| {
            use base64::Engine;
            format!(
                "Proxy-Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("moat:{t}"))
            )
        });
        tcp.write_all(
            format!(
                "CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n{}\r\n",
                auth.unwrap_or_default()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tcp.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
    }
    let tls = o.tls.connect(host.try_into().unwrap(), tcp).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn load(args: &[String]) {
    let cfg = client_config(&arg(args, "--cacert").expect("--cacert"), b"http/1.1");
    let o = Arc::new(Opts {
        url: arg(args, "--url").expect("--url").parse().unwrap(),
        direct: arg(args, "--direct"),
        proxy: arg(args, "--proxy"),
        token: arg(args, "--token"),
        tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        new_conn: args.iter().any(|a| a == "--new-conn"),
        sse: args.iter().any(|a| a == "--sse"),
        upload: arg(args, "--upload-kib").map(|k| {
            let n: usize = k.parse().expect("--upload-kib N");
            // Text-like bytes (not one repeated byte), so a scanner sees varied input.
            let text = b"etaoinshrdlu{}\":,0123456789";
            Bytes::from(
                (0..n * 1024)
                    .map(|i| text[i % text.len()])
                    .collect::<Vec<u8>>(),
            )
        }),
        post: args.iter().any(|a| a == "--post"),
    });
    let conc: usize = arg(args, "--concurrency")
        .map(|s| s.parse().unwrap())
        .unwrap_or(1);
    let secs: f64 = arg(args, "--seconds")
        .map(|s| s.parse().unwrap())
        .unwrap_or(5.0);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let o = o.clone();
        tasks.push(tokio::spawn(async move {
            let mut lats = Vec::new();
            let mut bytes = 0u64;
            let mut send: Option<Sender> = None;
            while Instant::now() < end {
                let t0 = Instant::now();
                if o.new_conn || send.is_none() {
                    send = Some(connect(&o).await);
                }
                let mut s = send.as_mut().unwrap();
                // The connection takes the next request once the last response is done
                // with; under load that can be a moment after its body was read.
                if s.ready().await.is_err() {
                    send = Some(connect(&o).await);
                    s = send.as_mut().unwrap();
                }
                let pq = o.url.path_and_query().map_or("/", |p| p.as_str());
                let req = match &o.upload {
                    Some(b) => {
                        bytes += b.len() as u64;
                        http::Request::post(pq)
                            .header("host", o.url.host().unwrap())
                            .body(Full::new(b.clone()))
                            .unwrap()
                    }
                    None => http::Request::builder()
                        .method(if o.post {
                            http::Method::POST
                        } else {
                            http::Method::GET
                        })
                        .uri(pq)
                        .header("host", o.url.host().unwrap())
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                };
                let res = s.send_request(req).await.unwrap();
                let mut body = res.into_body();
                if o.sse {
                    // time to the first event
                    let f = body.frame().await.unwrap().unwrap();
                    bytes += f.data_ref().map(|d| d.len() as u64).unwrap_or(0);
                    lats.push(t0.elapsed());
                    while let Some(Ok(f)) = body.frame().await {
                        bytes += f.data_ref().map(|d| d.len() as u64).unwrap_or(0);
                    }
                    continue;
                }
                while let Some(f) = body.frame().await {
                    bytes += f.unwrap().data_ref().map(|d| d.len() as u64).unwrap_or(0);
                }
                lats.push(t0.elapsed());
            }
            (lats, bytes)
        }));
    }
    let mut lats = Vec::new();
    let mut bytes = 0;
    for t in tasks {
        let (l, b) = t.await.unwrap();
        lats.extend(l);
        bytes += b;
    }
    let wall = start.elapsed().as_secs_f64();
    lats.sort();
    let pct = |p: f64| {
        lats.get(((lats.len() as f64 * p) as usize).min(lats.len().saturating_sub(1)))
            .map(|d| d.as_micros())
            .unwrap_or(0)
    };
    println!(
        "{{\"requests\":{},\"rps\":{:.1},\"p50_us\":{},\"p99_us\":{},\"bytes\":{},\"mib_per_s\":{:.1}}}",
        lats.len(),
        lats.len() as f64 / wall,
        pct(0.5),
        pct(0.99),
        bytes,
        bytes as f64 / wall / 1048576.0
    );
}
