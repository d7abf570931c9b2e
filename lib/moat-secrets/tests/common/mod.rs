//! A real moto server (PyPI `moto[server]`) on loopback for one test: started on a free port,
//! waited for, killed on drop. Setup (IAM users, a role, parameters) goes through the
//! library's own signer while moto's authentication is still off; `enable_auth` then makes
//! moto check every signature and IAM policy.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::Full;
use moat_secrets::aws::{self, Endpoint, Service};
use moat_secrets::creds::{Credentials, Source};
use moat_secrets::env::Env;
use moat_secrets::http::HttpClient;
use moat_secrets::secret::Secret;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub port: u16,
    log: tempfile::NamedTempFile,
    pub client: HttpClient,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    std::env::var("MOAT_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

impl Moto {
    pub fn start() -> Moto {
        let mut last = String::new();
        // A port picked free can be taken before moto binds it: try a few.
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = tempfile::NamedTempFile::new().unwrap();
            let child = Command::new(python())
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(log.reopen().unwrap())
                .stderr(log.reopen().unwrap())
                .spawn()
                .expect("running python3 (the moto tests need `pip install 'moto[server]'`)");
            let mut moto = Moto {
                child,
                port,
                log,
                client: HttpClient::with_timeouts(
                    &Env::default(),
                    Duration::from_secs(5),
                    Duration::from_secs(20),
                )
                .unwrap(),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            while Instant::now() < deadline {
                if let Ok(Some(_)) = moto.child.try_wait() {
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    // Someone else may hold the port and moto have died on bind: make sure
                    // it is ours that answers.
                    std::thread::sleep(Duration::from_millis(150));
                    if matches!(moto.child.try_wait(), Ok(None)) {
                        return moto;
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            last = std::fs::read_to_string(moto.log.path()).unwrap_or_default();
        }
        panic!(
            "moto server did not start (install it: pip install 'moto[server]'); its output:\n{last}"
        );
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn endpoint(&self, service: Service) -> Endpoint {
        Endpoint::new(service, &self.url(), "us-east-1").unwrap()
    }

    /// Variables that point the library at this server with `creds` as the host's.
    pub fn env(&self, creds: &Credentials) -> Env {
        let mut env = Env::from_pairs([
            ("AWS_ENDPOINT_URL", self.url()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", creds.access_key_id.clone()),
            (
                "AWS_SECRET_ACCESS_KEY",
                creds.secret_access_key().to_string(),
            ),
        ]);
        env.set("HOME", "/nonexistent");
        env
    }

    /// From now on moto checks signatures and IAM policies on every request.
    pub async fn enable_auth(&self) {
        let req = http::Request::post(format!("{}/moto-api/reset-auth", self.url()))
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"0")))
            .unwrap();
        let resp = self.client.send(req).await.unwrap();
        assert!(resp.status.is_success(), "reset-auth: {}", resp.status);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

/// What `setup` made: `alice` may assume the role and use SSM, `bob` may do nothing.
pub struct World {
    pub alice: Credentials,
    pub bob: Credentials,
    pub role_arn: String,
}

pub fn root() -> Credentials {
    Credentials::new("AKIAMOTOSETUP0000000", "setup-only", None, Source::Static)
}

async fn iam(m: &Moto, action: &'static str, params: &[(&str, &str)]) -> String {
    aws::query(
        &m.client,
        &root(),
        &m.endpoint(Service::Iam),
        action,
        "2010-05-08",
        params,
    )
    .await
    .unwrap_or_else(|e| panic!("iam {action}: {e}\n{}", m.log()))
}

fn xml_field(doc: &str, name: &str) -> String {
    let open = format!("<{name}>");
    let start = doc.find(&open).unwrap_or_else(|| panic!("{name} in {doc}")) + open.len();
    let end = doc[start..].find("</").unwrap() + start;
    doc[start..end].to_string()
}

async fn user(m: &Moto, name: &str, policy: Option<&str>) -> Credentials {
    iam(m, "CreateUser", &[("UserName", name)]).await;
    let doc = iam(m, "CreateAccessKey", &[("UserName", name)]).await;
    if let Some(p) = policy {
        iam(
            m,
            "PutUserPolicy",
            &[
                ("UserName", name),
                ("PolicyName", "p"),
                ("PolicyDocument", p),
            ],
        )
        .await;
    }
    Credentials::new(
        xml_field(&doc, "AccessKeyId"),
        Secret::new(xml_field(&doc, "SecretAccessKey")),
        None,
        Source::Static,
    )
}

pub async fn setup(m: &Moto) -> World {
    let allow = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["sts:AssumeRole","sts:GetCallerIdentity","ssm:GetParameter","ssm:PutParameter"],"Resource":"*"}]}"#;
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#;
    let alice = user(m, "alice", Some(allow)).await;
    let bob = user(m, "bob", None).await;
    let doc = iam(
        m,
        "CreateRole",
        &[("RoleName", "agent"), ("AssumeRolePolicyDocument", trust)],
    )
    .await;
    World {
        alice,
        bob,
        role_arn: xml_field(&doc, "Arn"),
    }
}
