//! A loopback stand-in for the GitHub API: TLS with a certificate for api.github.com signed by a
//! CA made at test time. `GET /user` answers 200 with a login only when the request carries
//! `Authorization: Bearer <token>`; anything else gets 401. The proxy reaches it through
//! `MOAT_PROXY_CONNECT_TO` and trusts it through `MOAT_PROXY_EXTRA_CA`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const LOGIN: &str = "moat-e2e-octocat";

pub struct GithubStandIn {
    pub port: u16,
    pub ca_file: PathBuf,
    /// Requests that carried the right token.
    pub authorized: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

impl GithubStandIn {
    pub fn start(token: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "moat e2e test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_params =
            rcgen::CertificateParams::new(vec!["api.github.com".to_string()]).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let ca_file = dir.path().join("test-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();

        let certs = vec![leaf.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let want = format!("Bearer {token}");
        let authorized = Arc::new(AtomicUsize::new(0));
        let auth2 = authorized.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let want = want.clone();
                let authorized = auth2.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let ok = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            == Some(want.as_str());
                        if ok {
                            authorized.fetch_add(1, Ordering::SeqCst);
                        }
                        let (status, body) = match (ok, req.uri().path()) {
                            (true, "/user") => {
                                (200, format!("{{\"login\":\"{LOGIN}\",\"id\":1}}\n"))
                            }
                            (true, _) => (404, "{\"message\":\"Not Found\"}\n".to_string()),
                            (false, _) => (401, "{\"message\":\"Bad credentials\"}\n".to_string()),
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                });
            }
        });
        GithubStandIn {
            port,
            ca_file,
            authorized,
            _dir: dir,
            _rt: rt,
        }
    }

    pub fn connect_to(&self) -> String {
        format!("api.github.com:443:127.0.0.1:{}", self.port)
    }
}
