//! AWS role grants and `secrets:` end to end, against a real moto server (PyPI `moto[server]`)
//! on loopback with its signature and IAM checks on, and the real AWS CLI (Debian's awscli,
//! from `dependencies: [aws]`) inside the run.
//!
//! How the container reaches moto: the CLI inside talks to the real AWS host names
//! (`https://sts.us-east-1.amazonaws.com`, `https://ssm.us-east-1.amazonaws.com`) through the
//! run's proxy, exactly as it would in production; the proxy's `MOAT_PROXY_CONNECT_TO` maps
//! those names to a small TLS terminator in this test (a certificate for the AWS names from a
//! CA made here, trusted by the proxy through `MOAT_PROXY_EXTRA_CA`) that pipes the bytes to
//! moto's plain HTTP port. Pointing `AWS_ENDPOINT_URL` inside the container at an http:// URL
//! instead would test a path production never takes (no TLS, no interception). The host side
//! (the supervisor's AssumeRole and SSM calls) reaches moto directly through
//! `AWS_ENDPOINT_URL`, as a private endpoint would be configured.
//!
//! Issue #23: the container's credential_process gives a placeholder; the proxy checks each
//! AWS request's signature against it and signs it again with the role's session. moto
//! verifies SigV4 signatures against the keys it issued (STS, SSM, S3), so a request the
//! proxy did not re-sign fails there (`InvalidClientTokenId`), and the tests check that the
//! placeholder itself is refused by moto from outside the run. The S3 names (path-style and
//! the test bucket's virtual-hosted name) go through the same terminator. A tap on the
//! supervisor's STS endpoint ([`ShortSessions`]) records the session credentials moto issues,
//! so the tests can look for them in the container.

use moat_e2e::{Moat, docker_ready, run_with_deadline};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const SSM_VALUE: &str = "postgres://e2e:Ssm-CanaryValue-7f3a9c@db/app";
const OP_VALUE: &str = "op-CanaryValue-51d0e2";
const BUCKET: &str = "moat-e2e-bucket";
const AWS_HOSTS: &[&str] = &[
    "sts.us-east-1.amazonaws.com",
    "sts.amazonaws.com",
    "ssm.us-east-1.amazonaws.com",
    "s3.us-east-1.amazonaws.com",
    "s3.amazonaws.com",
    "moat-e2e-bucket.s3.us-east-1.amazonaws.com",
    "moat-e2e-bucket.s3.amazonaws.com",
    "iam.amazonaws.com",
];

fn sha256(v: &str) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg("sha256sum | cut -d' ' -f1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(v.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let d = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(d.len(), 64, "sha256sum: {d:?}");
    d
}

/// moto on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    fn start() -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let f = std::fs::File::create(&log).unwrap();
            let mut child = Command::new("python3")
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .spawn()
                .expect("python3 (these tests need `pip install 'moto[server]'`)");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    std::thread::sleep(Duration::from_millis(150));
                    if matches!(child.try_wait(), Ok(None)) {
                        return Moto {
                            child,
                            port,
                            log,
                            _dir: dir,
                        };
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "moto did not start (pip install 'moto[server]'):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The host's AWS CLI against moto with setup credentials (auth is still off).
    fn aws(&self, args: &[&str]) -> serde_json::Value {
        let o = Command::new("aws")
            .args(args)
            .args(["--output", "json"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", "/nonexistent")
            .env("AWS_ACCESS_KEY_ID", "AKIAMOTOSETUP0000000")
            .env("AWS_SECRET_ACCESS_KEY", "setup-only")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", self.url())
            .output()
            .expect("the host's aws CLI (pip install awscli)");
        assert!(
            o.status.success(),
            "aws {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn enable_auth(&self) {
        let o = Command::new("curl")
            .args([
                "-sS",
                "-f",
                "--noproxy",
                "*",
                "-H",
                "content-type: text/plain",
            ])
            .args(["-X", "POST", "--data", "0"])
            .arg(format!("{}/moto-api/reset-auth", self.url()))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "moto reset-auth: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// What `setup` made in moto.
struct World {
    /// The host's long-lived key pair (alice may assume the role and read SSM).
    key_id: String,
    secret: String,
    /// A user with no permissions at all.
    bob_key_id: String,
    bob_secret: String,
    role_arn: String,
}

fn setup(m: &Moto) -> World {
    let allow = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["sts:AssumeRole","sts:GetCallerIdentity","ssm:GetParameter","kms:Decrypt"],"Resource":"*"}]}"#;
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#;
    let key = |user: &str| {
        m.aws(&["iam", "create-user", "--user-name", user]);
        let k = m.aws(&["iam", "create-access-key", "--user-name", user]);
        (
            k["AccessKey"]["AccessKeyId"].as_str().unwrap().to_string(),
            k["AccessKey"]["SecretAccessKey"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    let (key_id, secret) = key("alice");
    m.aws(&[
        "iam",
        "put-user-policy",
        "--user-name",
        "alice",
        "--policy-name",
        "p",
        "--policy-document",
        allow,
    ]);
    let (bob_key_id, bob_secret) = key("bob");
    let role = m.aws(&[
        "iam",
        "create-role",
        "--role-name",
        "agent",
        "--assume-role-policy-document",
        trust,
    ]);
    // What the role may do from inside a run.
    m.aws(&[
        "iam",
        "put-role-policy",
        "--role-name",
        "agent",
        "--policy-name",
        "p",
        "--policy-document",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["sts:GetCallerIdentity","ssm:GetParameter","kms:Decrypt","s3:*"],"Resource":"*"}]}"#,
    ]);
    m.aws(&["s3api", "create-bucket", "--bucket", BUCKET]);
    m.aws(&[
        "ssm",
        "put-parameter",
        "--name",
        "/e2e/db-url",
        "--type",
        "SecureString",
        "--value",
        SSM_VALUE,
    ]);
    m.enable_auth();
    World {
        key_id,
        secret,
        bob_key_id,
        bob_secret,
        role_arn: role["Role"]["Arn"].as_str().unwrap().to_string(),
    }
}

/// TLS for the AWS host names (a CA made here), each connection piped to moto's HTTP port.
struct Terminator {
    port: u16,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

impl Terminator {
    fn start(upstream: u16) -> Terminator {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "moat e2e aws test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_params = rcgen::CertificateParams::new(
            AWS_HOSTS.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let ca_file = dir.path().join("aws-test-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
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
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        Terminator {
            port,
            ca_file,
            _dir: dir,
            _rt: rt,
        }
    }

    fn connect_to(&self) -> String {
        AWS_HOSTS
            .iter()
            .map(|h| format!("{h}:443:127.0.0.1:{}", self.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// moto, the terminator, and a moat environment whose host AWS identity is alice, with
/// `dependencies: [aws]` in the workspace.
struct Aws {
    m: Moat,
    w: World,
    _t: Terminator,
    moto: Moto,
}

fn aws_env() -> Aws {
    let moto = Moto::start();
    let w = setup(&moto);
    let t = Terminator::start(moto.port);
    let mut m = Moat::new();
    m.env
        .env("AWS_ACCESS_KEY_ID", &w.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &w.secret)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", moto.url())
        .env("MOAT_PROXY_CONNECT_TO", t.connect_to())
        .env("MOAT_PROXY_EXTRA_CA", &t.ca_file);
    std::fs::write(m.ws.join("moat.yaml"), "dependencies: [aws]\n").unwrap();
    Aws { m, w, _t: t, moto }
}

impl Aws {
    fn grant(&self) {
        let r = self.m.run_timeout(
            "moat",
            &[
                "grant",
                "aws",
                "--role",
                &self.w.role_arn,
                "--region",
                "us-east-1",
            ],
            None,
            60,
        );
        assert_eq!(r.code(), 0, "moat grant aws: {}", r.stderr());
    }

    fn audit_log(&self, id: &str) -> String {
        std::fs::read_to_string(
            self.m
                .moat_home()
                .join("runs")
                .join(id)
                .join("audit/log.jsonl"),
        )
        .unwrap_or_default()
    }

    /// Nothing under MOAT_HOME or HOME holds the host's long-lived secret key.
    fn assert_no_host_key(&self) {
        let f = self.m.env.files_containing(self.w.secret.as_bytes());
        assert!(f.is_empty(), "the host's AWS secret key in {f:?}");
    }
}

#[test]
fn aws_cli_in_a_run_gets_the_role_through_credential_process() {
    if !docker_ready() {
        return;
    }
    let a = aws_env();
    a.grant();
    let r = a.m.run_timeout(
        "moat",
        &[
            "run",
            "--no-sandbox",
            "--grant",
            "aws",
            "--",
            "sh",
            "-c",
            "aws sts get-caller-identity --query Arn --output text; \
             a=$(/run/moat/aws/moat-aws-credentials); b=$(/run/moat/aws/moat-aws-credentials); \
             echo \"$a\" | grep -o '\"Version\": *1'; \
             echo \"first:$a\" | grep -o 'first:.*\"AccessKeyId\":\"[A-Z0-9]*\"' | sed 's/first:.*\"AccessKeyId\"/first/'; \
             echo \"second:$b\" | grep -o 'second:.*\"AccessKeyId\":\"[A-Z0-9]*\"' | sed 's/second:.*\"AccessKeyId\"/second/'; \
             curl -s --noproxy '*' --unix-socket /run/moat/aws/creds.sock -o /dev/null -w 'no-token:%{http_code}\\n' http://moat/credentials; \
             env | sort",
        ],
        None,
        900,
    );
    assert_eq!(
        r.code(),
        0,
        "stdout: {}\nstderr: {}\nmoto: {}",
        r.stdout(),
        r.stderr(),
        std::fs::read_to_string(&a.moto.log).unwrap_or_default()
    );
    let out = r.stdout();
    assert!(
        out.contains(":assumed-role/agent/moat-"),
        "not the role's identity:\n{out}\n{}",
        r.stderr()
    );
    assert!(out.contains("\"Version\""), "{out}");
    assert!(out.contains("no-token:401"), "{out}");
    // Both fetches give the run's one placeholder.
    let key = |tag: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{tag}:")))
            .unwrap_or_else(|| panic!("no {tag} key in {out}"))
            .to_string()
    };
    assert_eq!(key("first"), key("second"), "{out}");
    assert!(
        out.contains("AWS_CONFIG_FILE=/run/moat/aws/config"),
        "{out}"
    );
    assert!(out.contains("AWS_REGION=us-east-1"), "{out}");
    assert!(out.contains("AWS_CA_BUNDLE="), "{out}");
    assert!(
        !out.contains("AWS_ENDPOINT_URL"),
        "host endpoint leaked: {out}"
    );
    assert!(!out.contains(&a.w.key_id), "host key id inside: {out}");
    r.leaks_nothing(&a.w.secret);

    let id = a.m.newest_run();
    let log = a.audit_log(&id);
    let used: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v.to_string().contains("credential_used")
                && v.to_string().contains("credential_process")
        })
        .collect();
    assert!(used.len() >= 3, "credential_used events: {log}");
    assert!(log.contains(&a.w.role_arn), "{log}");
    let au = a.m.run_timeout("moat", &["audit", &id], None, 60);
    assert_eq!(au.code(), 0, "{}\n{}", au.stdout(), au.stderr());
    a.assert_no_host_key();
}

/// The trace records of a run (network.jsonl).
fn trace(m: &Moat, id: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(m.moat_home().join("runs").join(id).join("network.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Issue #23 (THREATS B3: the container's credential is a per-run placeholder, useless
/// elsewhere, and only this run's requests signed with it get the real session). The real
/// AWS CLI in a run signs with the placeholder its credential_process gives; the proxy
/// checks that signature and signs again with the role's session: STS, SSM and S3 (a small
/// object, and a 20 MB one in the CLI's multipart uploads) work against moto, which checks
/// signatures against the keys it issued. The placeholder itself is refused by moto from
/// outside; a request signed with any other key, and a presigned URL, are refused by the
/// proxy with a readable 403; the trace names each request's service and action.
#[test]
fn the_proxy_signs_sts_ssm_and_s3_for_the_placeholder() {
    if !docker_ready() {
        return;
    }
    let a = aws_env();
    a.grant();
    let script = format!(
        "set -e; creds=$(/run/moat/aws/moat-aws-credentials); echo \"CREDS:$creds\"; \
         aws sts get-caller-identity --query Arn --output text; \
         aws ssm get-parameter --name /e2e/db-url --with-decryption --query Parameter.Value --output text | tr -d '\\n' | sha256sum; \
         head -c 1000 /dev/urandom > /tmp/small; head -c 20000000 /dev/urandom > /tmp/big; \
         aws s3 cp /tmp/small s3://{BUCKET}/small --only-show-errors; \
         aws s3 cp /tmp/big s3://{BUCKET}/big --only-show-errors; \
         aws s3 cp s3://{BUCKET}/big /tmp/big.down --only-show-errors; \
         aws s3 cp s3://{BUCKET}/small /tmp/small.down --only-show-errors; \
         cmp /tmp/big /tmp/big.down; cmp /tmp/small /tmp/small.down; echo ROUNDTRIP-OK; \
         url=$(aws s3 presign s3://{BUCKET}/small); echo \"URL:$url\"; \
         curl -s -o /tmp/p.out -w 'presign:%{{http_code}}\\n' \"$url\"; cat /tmp/p.out; \
         curl -s --aws-sigv4 aws:amz:us-east-1:sts -u AKIAOTHERKEY00000000:other-secret \
           -d 'Action=GetCallerIdentity&Version=2011-06-15' -w '\\nother-key:%{{http_code}}\\n' \
           https://sts.us-east-1.amazonaws.com/"
    );
    let r = a.m.run_timeout(
        "moat",
        &[
            "run",
            "--no-sandbox",
            "--grant",
            "aws",
            "--",
            "sh",
            "-c",
            &script,
        ],
        None,
        900,
    );
    let out = r.stdout();
    assert_eq!(
        r.code(),
        0,
        "stdout: {out}\nstderr: {}\nmoto: {}",
        r.stderr(),
        std::fs::read_to_string(&a.moto.log).unwrap_or_default()
    );
    assert!(out.contains(":assumed-role/agent/moat-"), "{out}");
    assert!(out.contains(&sha256(SSM_VALUE)), "{out}");
    assert!(out.contains("ROUNDTRIP-OK"), "{out}");
    assert!(out.contains("presign:403"), "{out}");
    assert!(out.contains("presigned"), "{out}");
    assert!(out.contains("other-key:403"), "{out}");
    assert!(
        out.contains("AKIAOTHERKEY00000000, not this run's"),
        "{out}"
    );

    // The placeholder: the real shapes, and useless outside the run (moto refuses it).
    let creds: serde_json::Value = serde_json::from_str(
        out.lines()
            .find_map(|l| l.strip_prefix("CREDS:"))
            .expect("credential_process output"),
    )
    .unwrap();
    let (k, s, t) = (
        creds["AccessKeyId"].as_str().unwrap(),
        creds["SecretAccessKey"].as_str().unwrap(),
        creds["SessionToken"].as_str().unwrap(),
    );
    assert!(k.starts_with("ASIA") && k.len() == 20, "{k}");
    assert_eq!(s.len(), 40);
    assert!(t.len() >= 100);
    for args in [
        &["sts", "get-caller-identity"][..],
        &["s3", "cp", &format!("s3://{BUCKET}/small"), "-"][..],
    ] {
        let outside = Command::new("aws")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", "/nonexistent")
            .env("AWS_ACCESS_KEY_ID", k)
            .env("AWS_SECRET_ACCESS_KEY", s)
            .env("AWS_SESSION_TOKEN", t)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", a.moto.url())
            .output()
            .unwrap();
        assert!(
            !outside.status.success(),
            "moto accepted the placeholder for {args:?}: {}",
            String::from_utf8_lossy(&outside.stdout)
        );
    }

    // The presigned URL the agent made carries the placeholder: moto refuses it too.
    let url = out
        .lines()
        .find_map(|l| l.strip_prefix("URL:"))
        .expect("a presigned URL");
    let rest = url.strip_prefix("https://").unwrap();
    let (host, pq) = rest.split_at(rest.find('/').unwrap());
    assert!(pq.contains("X-Amz-Credential=ASIA"), "{url}");
    let o = Command::new("curl")
        .args(["-s", "--noproxy", "*", "-w", "\nstatus:%{http_code}"])
        .args(["-H", &format!("Host: {host}")])
        .arg(format!("{}{pq}", a.moto.url()))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&o.stdout);
    // moto 5 answers an unknown key in a presigned URL with an error (500 in 5.2, where
    // AWS says 403): what matters is that the object is not served.
    let code = answer.rsplit("status:").next().unwrap_or("");
    assert!(
        code.len() == 3 && !code.starts_with('2'),
        "moto served the placeholder's presigned URL: {answer}"
    );

    // The real session's key id (the audit log has it) never reached the container.
    let id = a.m.newest_run();
    let log = a.audit_log(&id);
    let real = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| {
            let s = v.to_string();
            if !s.contains("credential_process") {
                return None;
            }
            let i = s.find("\"access_key_id\":\"")? + 17;
            Some(s[i..i + 20].to_string())
        })
        .unwrap_or_else(|| panic!("no credential_used in {log}"));
    assert_ne!(real, k);
    assert!(!out.contains(&real), "the session's key id inside: {out}");

    // The trace names service and action of every signed request.
    let tr = trace(&a.m, &id);
    let actions: Vec<&str> = tr.iter().filter_map(|v| v["aws"].as_str()).collect();
    for want in [
        "sts:GetCallerIdentity",
        "ssm:GetParameter",
        "s3:PutObject",
        "s3:CreateMultipartUpload",
        "s3:UploadPart",
        "s3:CompleteMultipartUpload",
        "s3:GetObject",
    ] {
        assert!(actions.contains(&want), "{want} not in {actions:?}");
    }
    let refused: Vec<&serde_json::Value> = tr
        .iter()
        .filter(|v| v["policy"].as_str() == Some("aws-sign"))
        .collect();
    assert_eq!(refused.len(), 2, "{tr:?}");
    a.assert_no_host_key();
}

/// Issue #23 (THREATS A5: rules the agent cannot walk around): `network.rules` can name
/// the AWS action of a request the proxy signs. `deny s3:DeleteObject` refuses `aws s3 rm`
/// with a 403 from the proxy (the object stays), while uploads and reads pass; the trace
/// records the rule and the action.
#[test]
fn network_rules_can_name_aws_actions() {
    if !docker_ready() {
        return;
    }
    let a = aws_env();
    std::fs::write(
        a.m.ws.join("moat.yaml"),
        "dependencies: [aws]\nnetwork:\n  rules:\n    - \"*.amazonaws.com\": [\"deny s3:DeleteObject\", \"deny iam:*\"]\n",
    )
    .unwrap();
    a.m.trust(None);
    a.grant();
    let script = format!(
        "echo hello > /tmp/f; aws s3 cp /tmp/f s3://{BUCKET}/kept --only-show-errors && echo PUT-OK; \
         if aws s3 rm s3://{BUCKET}/kept; then echo RM-OK; else echo RM-REFUSED; fi; \
         aws s3 cp s3://{BUCKET}/kept - ; aws iam list-users > /dev/null 2>&1 || echo IAM-REFUSED"
    );
    let r = a.m.run_timeout(
        "moat",
        &[
            "run",
            "--no-sandbox",
            "--grant",
            "aws",
            "--",
            "sh",
            "-c",
            &script,
        ],
        None,
        600,
    );
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert!(out.contains("PUT-OK"), "{out}\n{}", r.stderr());
    assert!(
        out.contains("RM-REFUSED") && !out.contains("RM-OK"),
        "{out}"
    );
    assert!(out.contains("hello"), "the object was deleted: {out}");
    assert!(out.contains("IAM-REFUSED"), "{out}");
    let id = a.m.newest_run();
    let tr = trace(&a.m, &id);
    let denied = tr
        .iter()
        .find(|v| v["policy"].as_str() == Some("deny s3:DeleteObject"))
        .unwrap_or_else(|| panic!("no denial in {tr:?}"));
    assert_eq!(denied["aws"], "s3:DeleteObject", "{denied}");
    assert_eq!(denied["status"], 403, "{denied}");
    assert!(
        tr.iter()
            .any(|v| v["policy"].as_str() == Some("deny iam:*")),
        "{tr:?}"
    );
}

/// THREATS B3, B5 (issue #23): neither the host's long-lived key nor the role's session
/// credentials (recorded as moto issues them, through a tap on the supervisor's STS
/// endpoint) are anywhere in a running container: not in `docker inspect`, `docker export`,
/// any process's environment or command line, the CLI's cache files, nor in any file moat
/// keeps on the host.
#[test]
fn the_host_key_is_nowhere_in_a_running_container() {
    if !docker_ready() {
        return;
    }
    let mut a = aws_env();
    let tap = ShortSessions::start_with(a.moto.port, false);
    a.m.env.env(
        "AWS_ENDPOINT_URL_STS",
        format!("http://127.0.0.1:{}", tap.port),
    );
    a.grant();
    let r = a.m.launch_sh(
        &["-d", "--grant", "aws"],
        "aws sts get-caller-identity > /tmp/who.json; aws s3 ls > /tmp/ls.txt; echo ready; sleep 120",
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = r.stdout().trim().to_string();
    a.m.wait_log(&id, "ready", 300);
    let name = format!("moat-{id}");
    let inspect = Command::new("docker")
        .args(["inspect", &name])
        .output()
        .unwrap();
    assert!(inspect.status.success());
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(!text.contains(&a.w.secret), "host secret in docker inspect");
    assert!(!text.contains(&a.w.key_id), "host key id in docker inspect");
    // The role's session: key id, secret and token of every session moto issued.
    let session = tap.issued();
    assert!(session.len() >= 3, "no session went through the tap");
    for v in &session {
        assert!(
            !text.contains(v.as_str()),
            "session credential in docker inspect"
        );
    }
    let mut needles = vec![a.w.secret.clone(), a.w.key_id.clone()];
    needles.extend(session.iter().cloned());
    let pats = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pats.path(), needles.join("\n")).unwrap();
    let export = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker export {name} | grep -a -c -F -f '{}' || true",
            pats.path().display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&export.stdout).trim(), "0");
    let procs = Command::new("docker")
        .args([
            "exec",
            &name,
            "sh",
            "-c",
            "cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'; cat /tmp/who.json; ls -la /run/moat/aws; cat /run/moat/aws/config; \
             find / -path /proc -prune -o -path '*/.aws/*' -type f -print -exec cat {} \\; 2>/dev/null; /run/moat/aws/moat-aws-credentials; \
             (echo x >> /run/moat/aws/config) 2>&1 | grep -q 'Read-only file system' && echo AWS-READONLY",
        ])
        .output()
        .unwrap();
    let p = String::from_utf8_lossy(&procs.stdout);
    assert!(p.contains("assumed-role/agent"), "{p}");
    assert!(
        p.contains("credential_process = /run/moat/aws/moat-aws-credentials"),
        "{p}"
    );
    assert!(!p.contains(&a.w.secret) && !p.contains(&a.w.key_id), "{p}");
    for v in &session {
        assert!(!p.contains(v.as_str()), "session credential inside: {p}");
    }
    // What the container holds instead: the placeholder.
    assert!(p.contains("\"AccessKeyId\":\"ASIA"), "{p}");
    assert!(p.contains("AWS-READONLY"), "{p}");
    let s = a.m.launch(&["stop", &id]);
    assert_eq!(s.code(), 0, "{}", s.stderr());
    a.assert_no_host_key();
    for (_, v) in session.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
        // Secrets and tokens (key ids appear in the audit log, by design).
        let f = a.m.env.files_containing(v.as_bytes());
        assert!(f.is_empty(), "a session secret in {f:?}");
    }
}

#[test]
fn a_denied_role_fails_the_run_before_the_container_starts() {
    if !docker_ready() {
        return;
    }
    let mut a = aws_env();
    a.grant();
    // bob may not assume the role.
    a.m.env
        .env("AWS_ACCESS_KEY_ID", &a.w.bob_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &a.w.bob_secret);
    let r =
        a.m.launch(&["run", "--no-sandbox", "--grant", "aws", "--", "true"]);
    assert_ne!(r.code(), 0);
    let err = r.stderr();
    assert!(err.contains("AccessDenied"), "{err}");
    assert!(err.contains(&a.w.role_arn), "{err}");
    assert!(err.contains("sts:AssumeRole"), "{err}");
    let id = a.m.newest_run();
    let meta = a.m.metadata(&id);
    assert_eq!(meta["state"], "failed", "{meta}");
    assert!(meta.get("container_id").is_none(), "{meta}");
    r.leaks_nothing(&a.w.bob_secret);
    assert!(
        a.m.env
            .files_containing(a.w.bob_secret.as_bytes())
            .is_empty()
    );
}

/// A stand-in for the 1Password CLI: `op read op://Dev/Thing/field` prints the canary.
fn stand_in_op(m: &Moat) -> PathBuf {
    let bin = m.env.path().join("opbin");
    std::fs::create_dir_all(&bin).unwrap();
    let op = bin.join("op");
    std::fs::write(
        &op,
        format!(
            "#!/bin/sh\nif [ \"$1\" = read ] && [ \"$2\" = op://Dev/Thing/field ]; then printf '%s\\n' '{OP_VALUE}'; exit 0; fi\n\
             echo \"[ERROR] could not read secret '$2': isn't an item in vault\" >&2; exit 1\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&op, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn path_with(dir: &std::path::Path) -> String {
    format!(
        "{}:{}:{}",
        moat_testkit::bin_dir().display(),
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn ssm_and_op_secrets_arrive_as_env_vars_and_nowhere_else() {
    if !docker_ready() {
        return;
    }
    let mut a = aws_env();
    let bin = stand_in_op(&a.m);
    a.m.env.env("PATH", path_with(&bin));
    std::fs::write(
        a.m.ws.join("moat.yaml"),
        "secrets:\n  DATABASE_URL: ssm:///e2e/db-url\n  API_KEY: op://Dev/Thing/field\n",
    )
    .unwrap();
    a.m.trust(None);
    let r = a.m.launch_sh(
        &[],
        // Digests, not the values: the run's output is an artifact too.
        "printf %s \"$DATABASE_URL\" | sha256sum; printf %s \"$API_KEY\" | sha256sum",
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    for v in [SSM_VALUE, OP_VALUE] {
        assert!(r.stdout().contains(&sha256(v)), "{v}: {}", r.stdout());
    }
    let id = a.m.newest_run();
    let log = a.audit_log(&id);
    let rec = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.to_string().contains("secret_resolved"))
        .unwrap_or_else(|| panic!("no secret_resolved in {log}"));
    let s = rec.to_string();
    assert!(s.contains("DATABASE_URL") && s.contains("API_KEY"), "{s}");
    // No artifact has a value: not metadata, spec, launch.log, logs, the audit log, the trace.
    for v in [SSM_VALUE, OP_VALUE, &a.w.secret] {
        // (the stand-in op script beside MOAT_HOME holds its own answer)
        let f = moat_testkit::files_containing(a.m.moat_home(), v.as_bytes());
        assert!(f.is_empty(), "a secret value in {f:?}");
    }
    assert!(!r.stderr().contains(SSM_VALUE) && !r.stderr().contains(OP_VALUE));

    // A secret that is not there, and an op:// reference op cannot read: the run fails
    // before the container starts, naming the secret and what to do.
    std::fs::write(
        a.m.ws.join("moat.yaml"),
        "secrets:\n  DATABASE_URL: ssm:///e2e/missing\n",
    )
    .unwrap();
    a.m.trust(None);
    let r = a.m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_ne!(r.code(), 0);
    let err = r.stderr();
    assert!(
        err.contains("DATABASE_URL") && err.contains("ssm:///e2e/missing"),
        "{err}"
    );
    assert!(err.contains("ParameterNotFound"), "{err}");
    assert!(err.contains("put-parameter"), "{err}");
    let id = a.m.newest_run();
    assert!(a.m.metadata(&id).get("container_id").is_none());

    std::fs::write(
        a.m.ws.join("moat.yaml"),
        "secrets:\n  API_KEY: op://Dev/Nope/field\n",
    )
    .unwrap();
    a.m.trust(None);
    let r = a.m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_ne!(r.code(), 0);
    let err = r.stderr();
    assert!(
        err.contains("API_KEY") && err.contains("op://Dev/Nope/field"),
        "{err}"
    );
    assert!(err.contains("op read"), "{err}");

    // Bob may not read the parameter: AWS's AccessDenied, and what the identity needs.
    a.m.env
        .env("AWS_ACCESS_KEY_ID", &a.w.bob_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &a.w.bob_secret);
    std::fs::write(
        a.m.ws.join("moat.yaml"),
        "secrets:\n  DATABASE_URL: ssm:///e2e/db-url\n",
    )
    .unwrap();
    a.m.trust(None);
    let r = a.m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_ne!(r.code(), 0);
    let err = r.stderr();
    assert!(err.contains("DATABASE_URL"), "{err}");
    assert!(err.contains("ssm:GetParameter"), "{err}");
    assert!(!err.contains(SSM_VALUE));
}

#[test]
fn an_op_secret_without_the_op_cli_says_to_install_it() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    // A PATH with no `op` on it (the test binaries and the system's basic tools).
    std::fs::write(
        m.ws.join("moat.yaml"),
        "secrets:\n  API_KEY: op://Dev/Thing/field\n",
    )
    .unwrap();
    m.trust(None);
    let mut c = m.env.cmd("moat-launch");
    c.args(["run", "--no-sandbox", "--", "true"])
        .current_dir(&m.ws)
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", moat_testkit::bin_dir().display()),
        );
    let r = run_with_deadline(c, "moat-launch run (no op)".into(), None, 300);
    assert_ne!(r.code(), 0);
    let err = r.stderr();
    assert!(err.contains("API_KEY"), "{err}");
    assert!(err.contains("1Password CLI"), "{err}");
    let id = m.newest_run();
    assert!(m.metadata(&id).get("container_id").is_none());
}

/// A plain-HTTP stand-in for the STS endpoint in front of moto that records the session
/// credentials every AssumeRole hands out (`issued`: key id, secret, token) and, when
/// `shorten`, shortens every session to two minutes (moto, like STS, issues at least
/// fifteen) by rewriting `Expiration` in the answer. A session that short is always within
/// the five-minute refresh margin, so every credential fetch must assume the role again.
struct ShortSessions {
    port: u16,
    assumed: Arc<std::sync::atomic::AtomicUsize>,
    issued: Arc<std::sync::Mutex<Vec<String>>>,
    _rt: tokio::runtime::Runtime,
}

impl ShortSessions {
    fn start(upstream: u16) -> ShortSessions {
        Self::start_with(upstream, true)
    }

    /// The session credentials moto issued through this tap (key ids, secrets, tokens).
    fn issued(&self) -> Vec<String> {
        self.issued.lock().unwrap().clone()
    }

    fn start_with(upstream: u16, shorten: bool) -> ShortSessions {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let assumed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = assumed.clone();
        let issued = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = issued.clone();
        // One message (head + Content-Length body, or to EOF) from a stream.
        async fn message(s: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let mut body = buf[end..].to_vec();
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            match len {
                Some(len) => {
                    while body.len() < len {
                        let n = s.read(&mut chunk).await.ok()?;
                        if n == 0 {
                            break;
                        }
                        body.extend_from_slice(&chunk[..n]);
                    }
                }
                None => {
                    let _ = s.read_to_end(&mut body).await;
                }
            }
            Some((head, body))
        }
        rt.spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let count = count.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    let Some((head, body)) = message(&mut client).await else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let _ = up.write_all(head.as_bytes()).await;
                    let _ = up.write_all(&body).await;
                    let Some((rhead, rbody)) = message(&mut up).await else {
                        return;
                    };
                    let mut text = String::from_utf8_lossy(&rbody).to_string();
                    if text.contains("<AssumeRoleResponse") {
                        for tag in ["AccessKeyId", "SecretAccessKey", "SessionToken"] {
                            let (o, c) = (format!("<{tag}>"), format!("</{tag}>"));
                            if let (Some(a), Some(b)) = (text.find(&o), text.find(&c)) {
                                record
                                    .lock()
                                    .unwrap()
                                    .push(text[a + o.len()..b].to_string());
                            }
                        }
                    }
                    if shorten
                        && text.contains("<AssumeRoleResponse")
                        && let (Some(a), Some(b)) =
                            (text.find("<Expiration>"), text.find("</Expiration>"))
                    {
                        count.fetch_add(1, Ordering::SeqCst);
                        let soon = moat_core::timefmt::rfc3339(
                            SystemTime::now() + Duration::from_secs(120),
                        );
                        text.replace_range(a + "<Expiration>".len()..b, &soon);
                    }
                    let mut out: Vec<String> = rhead
                        .split("\r\n")
                        .filter(|l| {
                            let k = l.split(':').next().unwrap_or("").to_ascii_lowercase();
                            !l.is_empty() && k != "content-length" && k != "connection"
                        })
                        .map(String::from)
                        .collect();
                    out.push(format!("Content-Length: {}", text.len()));
                    out.push("Connection: close".into());
                    let msg = format!("{}\r\n\r\n{text}", out.join("\r\n"));
                    let _ = client.write_all(msg.as_bytes()).await;
                    let _ = client.shutdown().await;
                });
            }
        });
        ShortSessions {
            port,
            assumed,
            issued,
            _rt: rt,
        }
    }
}

/// Sessions are renewed before they expire: the proxy gets each new session over the rules
/// pipe (the container keeps one placeholder), and with `aws.mode: session-credentials`
/// (approved) the container's credential_process hands out a fresh session on the next fetch.
#[test]
fn sessions_near_expiry_are_replaced_on_the_next_fetch() {
    if !docker_ready() {
        return;
    }
    let mut a = aws_env();
    let short = ShortSessions::start(a.moto.port);
    a.m.env.env(
        "AWS_ENDPOINT_URL_STS",
        format!("http://127.0.0.1:{}", short.port),
    );
    a.grant();
    let keys = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("\"AccessKeyId\""))
            .map(String::from)
            .collect()
    };
    let fetch2 = "for i in 1 2; do /run/moat/aws/moat-aws-credentials | grep -o '\"AccessKeyId\":\"[A-Z0-9]*\"'; done; \
         aws sts get-caller-identity --query Arn --output text";

    // The default: one placeholder throughout; the proxy's session is renewed under it.
    let script =
        format!("{fetch2}; sleep 25; aws sts get-caller-identity --query Arn --output text");
    let r = a.m.launch_sh(&["--grant", "aws"], &script);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let out = r.stdout();
    let k = keys(&out);
    assert_eq!(k.len(), 2, "{out}");
    assert_eq!(k[0], k[1], "the placeholder changed: {out}");
    assert_eq!(out.matches(":assumed-role/agent/moat-").count(), 2, "{out}");
    let id = a.m.newest_run();
    let log = a.audit_log(&id);
    let renewed = log
        .lines()
        .filter(|l| l.contains("grant_refreshed") && l.contains("\"aws\""))
        .count();
    assert!(renewed >= 1, "no renewal handed to the proxy: {log}");
    let replaced = log
        .lines()
        .filter(|l| l.contains("rules_replaced") && l.contains("\"aws\""))
        .count();
    assert!(replaced >= 1, "the proxy took no new rule set: {log}");
    r.leaks_nothing(&a.w.secret);
    for v in short.issued() {
        r.leaks_nothing(&v);
    }

    // The opt-out: real session credentials in the container, a fresh one per fetch.
    std::fs::write(
        a.m.ws.join("moat.yaml"),
        "dependencies: [aws]\naws:\n  mode: session-credentials\n",
    )
    .unwrap();
    let refused =
        a.m.launch(&["run", "--no-sandbox", "--grant", "aws", "--", "true"]);
    assert_ne!(refused.code(), 0, "an unapproved aws.mode ran");
    assert!(
        refused.stderr().contains("aws.mode"),
        "{}",
        refused.stderr()
    );
    a.m.trust(None);
    let before = short.assumed.load(std::sync::atomic::Ordering::SeqCst);
    let r = a.m.launch(&[
        "run",
        "--no-sandbox",
        "--grant",
        "aws",
        "--",
        "sh",
        "-c",
        fetch2,
    ]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let out = r.stdout();
    let k = keys(&out);
    assert_eq!(k.len(), 2, "{out}");
    assert_ne!(
        k[0], k[1],
        "the second fetch reused a session near expiry: {out}"
    );
    assert!(out.contains(":assumed-role/agent/moat-"), "{out}");
    // The fetched keys are the sessions moto issued.
    let issued = short.issued();
    assert!(
        issued.iter().any(|v| k[0].contains(v.as_str())),
        "{out} vs {issued:?}"
    );
    // One session at the start, one per fetch (and the CLI's own).
    assert!(
        short.assumed.load(std::sync::atomic::Ordering::SeqCst) >= before + 3,
        "{out}"
    );
    r.leaks_nothing(&a.w.secret);
    a.assert_no_host_key();
}
