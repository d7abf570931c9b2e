//! A small HTTPS client for what moat-grant asks services: "is this credential good?" and
//! "here is a refresh token, give me new tokens". One request per connection, HTTP/1.1
//! over rustls with the ring provider, trusting the OS store (`SSL_CERT_FILE` honoured)
//! plus `--extra-ca` files. `--connect-to` and `MOAT_PROXY_CONNECT_TO` send a host's
//! connections elsewhere (curl's semantics), so tests and split-horizon setups share one
//! setting with moat-proxy. Failures are short phrases that never carry a header or body.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use moat_core::{Error, Result};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The most of a response body read; services answer these calls in a few KiB.
const MAX_BODY: usize = 1 << 20;

/// `HOST:PORT:ADDR:PORT2`: connections for HOST:PORT go to ADDR:PORT2. An empty HOST or
/// PORT matches any; an empty ADDR or PORT2 keeps the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub addr: Option<String>,
    pub addr_port: Option<u16>,
}

/// Parse one `--connect-to` value. HOST and ADDR may be bracketed IPv6 literals.
pub fn parse_connect_to(s: &str) -> std::result::Result<ConnectTo, String> {
    let mut fields = Vec::new();
    let mut rest = s;
    for i in 0..4 {
        let (field, after) = if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or("unclosed [")?;
            let after = &r[end + 1..];
            (&r[..end], after)
        } else {
            match rest.find(':') {
                Some(j) => (&rest[..j], &rest[j..]),
                None => (rest, ""),
            }
        };
        fields.push(field);
        if i < 3 {
            rest = after
                .strip_prefix(':')
                .ok_or("expected HOST:PORT:ADDR:PORT2")?;
        } else if !after.is_empty() {
            return Err("expected HOST:PORT:ADDR:PORT2".into());
        }
    }
    let host = |h: &str| -> std::result::Result<Option<String>, String> {
        if h.is_empty() {
            Ok(None)
        } else {
            moat_core::host::canonical_host(h)
                .map(Some)
                .map_err(|e| e.to_string())
        }
    };
    let port = |p: &str| -> std::result::Result<Option<u16>, String> {
        if p.is_empty() {
            return Ok(None);
        }
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!("bad port {p:?}")),
        }
    };
    Ok(ConnectTo {
        host: host(fields[0])?,
        port: port(fields[1])?,
        addr: host(fields[2])?,
        addr_port: port(fields[3])?,
    })
}

/// Where requests go and whom they trust.
#[derive(Debug, Clone, Default)]
pub struct Net {
    pub connect_to: Vec<ConnectTo>,
    pub extra_ca: Vec<PathBuf>,
}

fn env_list(name: &str) -> Vec<String> {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// A finished exchange: the status and at most [`MAX_BODY`] bytes of body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// `x-ratelimit-remaining: 0`: a 403 that says "slow down", not "bad credential".
    pub rate_limited: bool,
    /// GitHub's `X-OAuth-Scopes`: a classic token's scopes (absent for other tokens).
    pub oauth_scopes: Option<String>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One request. `body` is (content type, bytes).
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: Vec<(&'a str, String)>,
    pub body: Option<(&'a str, Vec<u8>)>,
    pub timeout: Duration,
}

impl Net {
    /// Flags first (the more specific), then the environment moat-proxy reads too.
    pub fn new(connect_to: &[String], extra_ca: &[String]) -> Result<Net> {
        let mut ct = Vec::new();
        let flags = connect_to.iter().map(|s| ("--connect-to", s.clone()));
        let env = env_list("MOAT_PROXY_CONNECT_TO")
            .into_iter()
            .map(|s| ("MOAT_PROXY_CONNECT_TO", s));
        for (from, s) in flags.chain(env) {
            ct.push(parse_connect_to(&s).map_err(|e| Error::usage(format!("{from} {s:?}: {e}")))?);
        }
        let extra_ca = extra_ca
            .iter()
            .cloned()
            .chain(env_list("MOAT_PROXY_EXTRA_CA"))
            .map(PathBuf::from)
            .collect();
        Ok(Net {
            connect_to: ct,
            extra_ca,
        })
    }

    /// Where a connection for host:port really goes.
    fn target(&self, host: &str, port: u16) -> (String, u16) {
        for c in &self.connect_to {
            let hm = c.host.as_deref().is_none_or(|h| h == host);
            let pm = c.port.is_none_or(|p| p == port);
            if hm && pm {
                return (
                    c.addr.clone().unwrap_or_else(|| host.to_string()),
                    c.addr_port.unwrap_or(port),
                );
            }
        }
        (host.to_string(), port)
    }

    /// The TLS client configuration: OS store plus extra CAs (the bundled web roots only
    /// when the OS has none). A bad `--extra-ca` file is a configuration error.
    pub fn tls(&self) -> Result<Arc<ClientConfig>> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        for f in &self.extra_ca {
            let bad = |e: &dyn std::fmt::Display| {
                Error::config(format!("--extra-ca {}: {e}", f.display()))
            };
            let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(f)
                .map_err(|e| bad(&e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(&e))?;
            if certs.is_empty() {
                return Err(bad(&"no certificates"));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(&e))?;
            }
        }
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        let mut cfg =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::software(format!("TLS configuration: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Send one request. The outer `Result` is moat-grant's own failure (a bad CA file);
    /// the inner one is the service's reachability: `Err(reason)` when no answer came.
    pub fn send(
        &self,
        tls: &Arc<ClientConfig>,
        req: Request<'_>,
    ) -> Result<std::result::Result<Response, String>> {
        let (host, port, path) = split_url(req.url)?;
        let (addr, addr_port) = self.target(&host, port);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the HTTP client", e))?;
        let limit = req.timeout;
        let tls = tls.clone();
        let out = rt.block_on(async move {
            match tokio::time::timeout(
                limit,
                exchange(tls, &host, port, &addr, addr_port, &path, req),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
            }
        });
        // A name lookup still running on the blocking pool must not hold up the exit.
        rt.shutdown_background();
        Ok(out)
    }
}

/// `https://host[:port]/path?query` → (canonical host, port, path and query).
pub fn split_url(url: &str) -> Result<(String, u16, String)> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| Error::usage(format!("{url:?} is not an https URL")))?;
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = moat_core::host::canonical_authority(auth, 443)
        .map_err(|e| Error::usage(format!("{url:?}: {e}")))?;
    Ok((host, port, path.to_string()))
}

async fn exchange(
    tls: Arc<ClientConfig>,
    host: &str,
    port: u16,
    addr: &str,
    addr_port: u16,
    path: &str,
    req: Request<'_>,
) -> std::result::Result<Response, String> {
    let io_err = |e: std::io::Error| moat_core::error::io_msg(&e);
    let tcp = tokio::net::TcpStream::connect((addr, addr_port))
        .await
        .map_err(|e| format!("connecting to {addr}:{addr_port}: {}", io_err(e)))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {}", io_err(e)))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP with {host}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = if port == 443 {
        bracketed(host)
    } else {
        format!("{}:{port}", bracketed(host))
    };
    let mut b = hyper::Request::builder()
        .method(req.method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("moat-grant/", env!("CARGO_PKG_VERSION")),
        )
        .header(hyper::header::ACCEPT, "application/json");
    for (k, v) in &req.headers {
        b = b.header(*k, v.as_str());
    }
    let body = match req.body {
        Some((ctype, bytes)) => {
            b = b.header(hyper::header::CONTENT_TYPE, ctype);
            Bytes::from(bytes)
        }
        None => Bytes::new(),
    };
    // A header value that does not parse is ours to fix; say which header, not its value.
    let request = b
        .body(Full::new(body))
        .map_err(|_| "a request header is not valid".to_string())?;
    let resp = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP with {host}: {e}"))?;
    let status = resp.status().as_u16();
    let rate_limited = resp
        .headers()
        .get("x-ratelimit-remaining")
        .is_some_and(|v| v.as_bytes() == b"0");
    let oauth_scopes = resp
        .headers()
        .get("x-oauth-scopes")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 4096)
        .map(String::from);
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer from {host}: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(Response {
        status,
        body,
        rate_limited,
        oauth_scopes,
    })
}

fn bracketed(h: &str) -> String {
    if h.contains(':') {
        format!("[{h}]")
    } else {
        h.to_string()
    }
}

/// `application/x-www-form-urlencoded` for a list of pairs.
pub fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    let enc = |s: &str| {
        let mut o = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                o.push(b as char);
            } else {
                o.push_str(&format!("%{b:02X}"));
            }
        }
        o
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_to_forms() {
        let c = parse_connect_to("API.github.com:443:127.0.0.1:8443").unwrap();
        assert_eq!(
            c,
            ConnectTo {
                host: Some("api.github.com".into()),
                port: Some(443),
                addr: Some("127.0.0.1".into()),
                addr_port: Some(8443)
            }
        );
        let c = parse_connect_to("a.example:443:[::1]:9000").unwrap();
        assert_eq!(c.addr.as_deref(), Some("::1"));
        let any = parse_connect_to("::127.0.0.1:1").unwrap();
        assert_eq!((any.host, any.port), (None, None));
        for bad in [
            "a.example:443:127.0.0.1",
            "a.example:0:127.0.0.1:1",
            "a.example:443:127.0.0.1:1:2",
            "a:x:b:1",
        ] {
            assert!(parse_connect_to(bad).is_err(), "{bad}");
        }
        let net = Net {
            connect_to: vec![
                parse_connect_to("a.example:443:127.0.0.1:8443").unwrap(),
                parse_connect_to(":::9").unwrap(),
            ],
            extra_ca: Vec::new(),
        };
        assert_eq!(net.target("a.example", 443), ("127.0.0.1".into(), 8443));
        assert_eq!(net.target("b.example", 443), ("b.example".into(), 9));
    }

    #[test]
    fn urls_and_forms() {
        assert_eq!(
            split_url("https://Registry.Example:8443/a/-/whoami").unwrap(),
            ("registry.example".into(), 8443, "/a/-/whoami".into())
        );
        assert!(split_url("http://x.example/").is_err());
        assert_eq!(
            form(&[("a", "1//x y"), ("b", "c")]),
            b"a=1%2F%2Fx%20y&b=c".to_vec()
        );
    }
}
