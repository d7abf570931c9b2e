//! The client verifies HTTPS endpoints: a loopback TLS server with a CA made here is trusted
//! through AWS_CA_BUNDLE and refused without it, before any request byte is sent.

use moat_secrets::aws::{Endpoint, Service};
use moat_secrets::creds::{Credentials, Source};
use moat_secrets::env::Env;
use moat_secrets::http::{HttpClient, HttpError};
use moat_secrets::sts;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const IDENTITY: &str = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/tls</Arn><UserId>AIDATLS</UserId><Account>123456789012</Account></GetCallerIdentityResult></GetCallerIdentityResponse>"#;

struct Server {
    port: u16,
    ca_pem: String,
    /// Requests that got past the handshake.
    requests: Arc<AtomicUsize>,
}

async fn serve() -> Server {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then the Content-Length body.
                loop {
                    let n = match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            break;
                        }
                    }
                    if buf.len() > 1 << 20 {
                        return;
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{IDENTITY}",
                    IDENTITY.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Server {
        port,
        ca_pem: ca.pem(),
        requests,
    }
}

fn creds() -> Credentials {
    Credentials::new("AKIDTLS", "tls-secret", None, Source::Static)
}

#[tokio::test]
async fn https_endpoint_trusted_through_aws_ca_bundle() {
    let s = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, &s.ca_pem).unwrap();
    let env = Env::from_pairs([("AWS_CA_BUNDLE", bundle.display().to_string())]);
    let client = HttpClient::new(&env).unwrap();
    let ep = Endpoint::new(
        Service::Sts,
        &format!("https://localhost:{}", s.port),
        "us-east-1",
    )
    .unwrap();
    let id = sts::get_caller_identity(&client, &creds(), &ep)
        .await
        .unwrap();
    assert_eq!(id.arn, "arn:aws:iam::123456789012:user/tls");
    assert_eq!(id.account, "123456789012");
    assert_eq!(s.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_before_the_request() {
    let s = serve().await;
    let client = HttpClient::new(&Env::default()).unwrap();
    let ep = Endpoint::new(
        Service::Sts,
        &format!("https://localhost:{}", s.port),
        "us-east-1",
    )
    .unwrap();
    let err = sts::get_caller_identity(&client, &creds(), &ep)
        .await
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.starts_with(&format!("connecting to https://localhost:{}", s.port))
            && msg.to_lowercase().contains("certificate"),
        "{msg}"
    );
    assert_eq!(err.exit_code(), moat_core::exit::UNAVAILABLE);
    assert_eq!(s.requests.load(Ordering::SeqCst), 0);
    assert!(!format!("{msg} {err:?}").contains("tls-secret"));
}

#[test]
fn a_bad_ca_bundle_is_a_config_error() {
    let env = Env::from_pairs([("AWS_CA_BUNDLE", "/nonexistent/ca.pem")]);
    let err = HttpClient::new(&env).unwrap_err();
    assert!(matches!(err, HttpError::CaBundle { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("reading AWS_CA_BUNDLE /nonexistent/ca.pem")
    );
    assert_eq!(err.exit_code(), moat_core::exit::CONFIG);
}
