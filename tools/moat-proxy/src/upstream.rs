//! Dialing upstreams. The connector resolves the canonical host, refuses every address in
//! a loopback, private, link-local, CGNAT, metadata or otherwise special range (unless the
//! host is `--allow`ed with its port, or a `--connect-to` target), dials the address it
//! checked (no second resolution), and verifies the upstream certificate against the OS
//! store plus `--extra-ca` for the canonical name before the client's request is written.
//! Connections are pooled by hyper-util's client; HTTP/2 is used when the upstream offers it.

use crate::config::ConnectTo;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use moat_core::host::canonical_host;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error(
        "{host} resolves to {addr}, a {why} address; the proxy does not connect there (allow it with --allow {host}:{port})"
    )]
    Forbidden {
        host: String,
        port: u16,
        addr: IpAddr,
        why: &'static str,
    },
    #[error("bad upstream host: {0}")]
    BadHost(String),
    #[error("resolving {0}: {1}")]
    Dns(String, String),
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
}

/// Why an address is not a public destination, or None if it is.
pub fn special_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [127, ..] => "loopback",
        [0, ..] => "unspecified",
        [10, ..] | [192, 168, ..] => "private",
        [172, b, ..] if (16..32).contains(&b) => "private",
        [169, 254, 169, 254] => "cloud metadata",
        [169, 254, ..] => "link-local",
        [100, b, ..] if (64..128).contains(&b) => "carrier-grade NAT",
        [192, 0, 0, _] => "IETF protocol",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking",
        [a, ..] if a >= 224 => "multicast or reserved",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4).or(Some("IPv4-mapped"));
    }
    Some(match s {
        [0xfd00, 0x0ec2, ..] => "cloud metadata",
        [a, ..] if a & 0xfe00 == 0xfc00 => "unique local (private)",
        [a, ..] if a & 0xffc0 == 0xfe80 => "link-local",
        [a, ..] if a & 0xffc0 == 0xfec0 => "site-local",
        [a, ..] if a & 0xff00 == 0xff00 => "multicast",
        [0x64, 0xff9b, ..] => "NAT64",
        [0x2002, ..] => "6to4",
        [0x2001, 0, ..] => "Teredo",
        [0x2001, 0xdb8, ..] => "documentation",
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible",
        _ => return None,
    })
}

/// May this host and port resolve to a private address?
pub type PrivateOk = dyn Fn(&str, u16) -> bool + Send + Sync;

pub struct DialPolicy {
    pub connect_to: Vec<ConnectTo>,
    /// Hosts the user allowed with an explicit port: may resolve to private addresses.
    pub private_ok: Box<PrivateOk>,
}

#[derive(Clone)]
pub struct Connector {
    dial: Arc<DialPolicy>,
    tls: TlsConnector,
}

impl Connector {
    pub fn new(dial: Arc<DialPolicy>, tls: Arc<ClientConfig>) -> Connector {
        Connector {
            dial,
            tls: TlsConnector::from(tls),
        }
    }
}

/// Build the upstream TLS configuration: OS store (SSL_CERT_FILE honoured) plus extra CAs;
/// the bundled webpki roots only when the OS store is empty.
pub fn client_tls(
    extra_ca: &[std::path::PathBuf],
    alpn_h2: bool,
) -> moat_core::Result<ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    for f in extra_ca {
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(f)
            .map_err(|e| moat_core::Error::config(format!("--extra-ca {}: {e}", f.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| moat_core::Error::config(format!("--extra-ca {}: {e}", f.display())))?;
        if certs.is_empty() {
            return Err(moat_core::Error::config(format!(
                "--extra-ca {}: no certificates",
                f.display()
            )));
        }
        for c in certs {
            roots.add(c).map_err(|e| {
                moat_core::Error::config(format!("--extra-ca {}: {e}", f.display()))
            })?;
        }
    }
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let mut cfg = ClientConfig::builder_with_provider(crate::tlsprov::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| moat_core::Error::software(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = if alpn_h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(cfg)
}

/// Bytes read from an upstream socket at once. rustls reads at most one TLS record (about
/// 16 KiB) per call; reading through this buffer turns four such reads of a large body
/// into one system call. Pages are only touched as far as reads fill them.
const UPSTREAM_READ_BUF: usize = 64 * 1024;

/// The most an upstream HTTP/1 connection buffers (response head, body read ahead); the
/// response head must fit. hyper's default (about 400 KiB) lets its read buffer grow past
/// glibc's 128 KiB mmap threshold: each buffer a large body is read into is then a fresh
/// mapping, faulted in page by page, unmapped when the chunks cut from it are written out,
/// and colder in cache. Capped below the threshold the buffers are recycled from the heap:
/// the proxy's CPU per MiB of a 1 MiB download fell by about a sixth (bench/proxy.sh).
pub const UPSTREAM_MAX_BUF: usize = 120 * 1024;

type Tcp = tokio::io::BufReader<TcpStream>;

pub enum Stream {
    Plain(TokioIo<Tcp>),
    Tls(Box<TokioIo<Fill<TlsStream<Tcp>>>>),
}

/// A reader that, once a read has returned data, keeps reading while more is ready at
/// once and the caller's buffer has room. A TLS stream hands out one record (at most
/// 16 KiB) per read; filling hyper's (adaptive, bounded) read buffer from several records
/// makes body chunks larger, so a large body crosses from the upstream connection's task
/// to the client's in fewer, larger hand-offs and leaves in fewer, larger writes. It
/// never waits for more: what is ready goes on at once (event streams are not delayed).
pub struct Fill<S> {
    inner: S,
    /// An error met after some data was returned; reported by the next read.
    err: Option<io::Error>,
}

impl<S> Fill<S> {
    pub fn new(inner: S) -> Self {
        Fill { inner, err: None }
    }
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Fill<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.err.take() {
            return Poll::Ready(Err(e));
        }
        let start = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let mut last = buf.filled().len();
        // An empty first read is the end of the stream: report it as such.
        while last > start && buf.remaining() > 0 {
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() > last => last = buf.filled().len(),
                Poll::Ready(Ok(())) | Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    this.err = Some(e);
                    break;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

writes_pass_through!(Fill);

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(_) => Connected::new(),
            Stream::Tls(t) => {
                let (_, c) = t.inner().get_ref().get_ref();
                if c.alpn_protocol() == Some(b"h2") {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
        }
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// Resolve and check the addresses for a canonical host and port.
pub async fn resolve(
    dial: &DialPolicy,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, DialError> {
    if let Some(c) = dial
        .connect_to
        .iter()
        .find(|c| c.host == host && c.port == port)
    {
        let addrs = lookup(&c.addr, c.addr_port).await?;
        return Ok(addrs);
    }
    let addrs = lookup(host, port).await?;
    if !(dial.private_ok)(host, port) {
        for a in &addrs {
            if let Some(why) = special_address(a.ip()) {
                return Err(DialError::Forbidden {
                    host: host.to_string(),
                    port,
                    addr: a.ip(),
                    why,
                });
            }
        }
    }
    Ok(addrs)
}

async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, DialError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let r = tokio::time::timeout(DIAL_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| DialError::Dns(host.into(), "timed out".into()))?
        .map_err(|e| DialError::Dns(host.into(), moat_core::error::io_msg(&e)))?;
    let v: Vec<SocketAddr> = r.collect();
    if v.is_empty() {
        return Err(DialError::Dns(host.into(), "no addresses".into()));
    }
    Ok(v)
}

pub async fn dial_tcp(addrs: &[SocketAddr], host: &str) -> Result<TcpStream, DialError> {
    let mut last = String::from("no addresses");
    for a in addrs {
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = moat_core::error::io_msg(&e),
            Err(_) => last = "timed out".into(),
        }
    }
    Err(DialError::Connect(host.into(), last))
}

fn tls_message(e: &io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!("the upstream certificate is not acceptable: {c:?}")
        }
        Some(r) => r.to_string(),
        None => moat_core::error::io_msg(e),
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, DialError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let raw = uri
                .host()
                .ok_or_else(|| DialError::BadHost("no host".into()))?;
            let host = canonical_host(raw).map_err(|e| DialError::BadHost(e.to_string()))?;
            let tls = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let addrs = resolve(&me.dial, &host, port).await?;
            let tcp = tokio::io::BufReader::with_capacity(
                UPSTREAM_READ_BUF,
                dial_tcp(&addrs, &host).await?,
            );
            if !tls {
                return Ok(Stream::Plain(TokioIo::new(tcp)));
            }
            let name = match host.parse::<IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => ServerName::try_from(host.clone())
                    .map_err(|e| DialError::BadHost(e.to_string()))?,
            };
            let mut s = tokio::time::timeout(DIAL_TIMEOUT, me.tls.connect(name, tcp))
                .await
                .map_err(|_| DialError::Tls(host.clone(), "handshake timed out".into()))?
                .map_err(|e| DialError::Tls(host.clone(), tls_message(&e)))?;
            s.get_mut()
                .1
                .set_buffer_limit(Some(crate::proxy::TLS_SEND_BUF));
            Ok(Stream::Tls(Box::new(TokioIo::new(Fill::new(s)))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_ranges() {
        for a in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:0:1::1",
            "ff02::1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(special_address(ip).is_some(), "{a} should be refused");
        }
        for a in [
            "1.1.1.1",
            "140.82.112.5",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(special_address(ip).is_none(), "{a} is public");
        }
    }
}
