//! STS and SSM against a real moto server on loopback (PyPI `moto[server]`), with moto's
//! signature and IAM checks switched on: AssumeRole yields credentials whose identity is the
//! role, SecureStrings decrypt, denials and missing parameters give AWS's codes, the cache
//! refreshes after expiry, and no secret reaches an error or a Debug string.

mod common;

use common::{Moto, World, setup};
use moat_secrets::aws::Service;
use moat_secrets::creds::{Credentials, Source};
use moat_secrets::resolve::Resolver;
use moat_secrets::secret::Secret;
use moat_secrets::ssm::{self, ParameterType};
use moat_secrets::sts::{self, AssumeRole, Clock, CredentialCache};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

async fn started() -> (Moto, World) {
    let m = Moto::start();
    let w = setup(&m).await;
    m.enable_auth().await;
    (m, w)
}

fn assert_no_secret(text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "a secret leaked into: {text}");
    }
}

#[tokio::test]
async fn assume_role_gives_credentials_whose_identity_is_the_role() {
    let (m, w) = started().await;
    let sts_ep = m.endpoint(Service::Sts);
    let me = sts::get_caller_identity(&m.client, &w.alice, &sts_ep)
        .await
        .unwrap();
    assert!(me.arn.ends_with(":user/alice"), "{me:?}");

    let mut role = AssumeRole::new(&w.role_arn);
    role.external_id = Some("ext-1".into());
    let session = sts::assume_role(&m.client, &w.alice, &sts_ep, &role)
        .await
        .unwrap();
    assert_ne!(session.access_key_id, w.alice.access_key_id);
    let left = session
        .expiration
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(14 * 60) && left <= Duration::from_secs(15 * 60 + 5));

    let who = sts::get_caller_identity(&m.client, &session.to_credentials(), &sts_ep)
        .await
        .unwrap();
    assert!(
        who.arn.contains(":assumed-role/agent/moat-"),
        "identity is not the role: {who:?}"
    );

    let json: serde_json::Value = serde_json::from_str(&session.credential_process_json()).unwrap();
    assert_eq!(json["Version"], 1);
    assert_eq!(json["AccessKeyId"], session.access_key_id.as_str());
    assert_eq!(json["SessionToken"], session.session_token.expose());
    assert!(moat_core::timefmt::parse_rfc3339(json["Expiration"].as_str().unwrap()).is_some());
    let debug = format!("{session:?} {:?}", session.to_credentials());
    assert_no_secret(
        &debug,
        &[
            session.secret_access_key.expose(),
            session.session_token.expose(),
        ],
    );
}

#[tokio::test]
async fn denied_assume_role_says_access_denied_and_no_secret() {
    let (m, w) = started().await;
    let role = AssumeRole::new(&w.role_arn);
    let err = sts::assume_role(&m.client, &w.bob, &m.endpoint(Service::Sts), &role)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AccessDenied"));
    assert_eq!(err.exit_code(), moat_core::exit::NOPERM);
    let msg = err.to_string();
    assert!(
        msg.starts_with("sts AssumeRole failed: AccessDenied: ") && msg.contains("not authorized"),
        "{msg}"
    );
    assert_no_secret(
        &format!("{msg} {err:?} {:?}", w.bob),
        &[w.bob.secret_access_key()],
    );
}

#[tokio::test]
async fn a_wrong_secret_key_fails_moto_signature_check() {
    let (m, w) = started().await;
    let forged = Credentials::new(
        w.alice.access_key_id.clone(),
        Secret::new("not-the-real-secret-key"),
        None,
        Source::Static,
    );
    let err = sts::get_caller_identity(&m.client, &forged, &m.endpoint(Service::Sts))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("SignatureDoesNotMatch"), "{err}");
    assert_no_secret(&format!("{err} {err:?}"), &["not-the-real-secret-key"]);
}

#[tokio::test]
async fn ssm_secure_string_round_trip_and_errors() {
    let (m, w) = started().await;
    let ep = m.endpoint(Service::Ssm);
    let value = Secret::new("postgres://u:p@db/prod");
    ssm::put_parameter(
        &m.client,
        &w.alice,
        &ep,
        "/production/database/url",
        &value,
        ParameterType::SecureString,
    )
    .await
    .unwrap();
    let got = ssm::get_parameter(&m.client, &w.alice, &ep, "/production/database/url", true)
        .await
        .unwrap();
    assert_eq!(got, value);

    // Through the resolver, as `secrets:` in agent.yaml would say it.
    let resolver = Resolver::new(m.env(&w.alice));
    let all = resolver
        .resolve_all([
            ("DATABASE_URL", "ssm:///production/database/url"),
            ("DATABASE_URL_2", "ssm://us-east-1/production/database/url"),
        ])
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|(_, v)| v == &value));
    assert_eq!(all[0].0, "DATABASE_URL");

    let missing = resolver
        .resolve("API_KEY", "ssm:///nope/missing")
        .await
        .unwrap_err();
    let msg = missing.to_string();
    assert!(
        msg.starts_with(
            "secret API_KEY (ssm:///nope/missing): ssm GetParameter failed: ParameterNotFound"
        ),
        "{msg}"
    );
    assert!(
        missing.hint().contains("put-parameter"),
        "{}",
        missing.hint()
    );
    assert_eq!(missing.exit_code(), moat_core::exit::NOINPUT);

    let denied = Resolver::new(m.env(&w.bob))
        .resolve("DATABASE_URL", "ssm:///production/database/url")
        .await
        .unwrap_err();
    let msg = denied.to_string();
    assert!(
        msg.contains("DATABASE_URL") && msg.contains("AccessDenied"),
        "{msg}"
    );
    assert!(
        denied.hint().contains("ssm:GetParameter"),
        "{}",
        denied.hint()
    );
    assert_eq!(denied.exit_code(), moat_core::exit::NOPERM);
    let core: moat_core::Error = denied.into();
    assert_no_secret(
        &format!("{msg} {core:?} {missing:?}"),
        &[
            w.alice.secret_access_key(),
            w.bob.secret_access_key(),
            value.expose(),
        ],
    );
}

struct FakeClock(Mutex<SystemTime>);

impl FakeClock {
    fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

#[tokio::test]
async fn cache_reuses_until_five_minutes_before_expiry_then_refreshes_once() {
    let (m, w) = started().await;
    let clock = Arc::new(FakeClock(Mutex::new(SystemTime::now())));
    let cache = Arc::new(CredentialCache::new(
        m.client.clone(),
        w.alice.clone(),
        m.endpoint(Service::Sts),
        AssumeRole::new(&w.role_arn),
        clock.clone(),
    ));
    let first = cache.get().await.unwrap();
    clock.advance(Duration::from_secs(9 * 60));
    let again = cache.get().await.unwrap();
    assert_eq!(again.access_key_id, first.access_key_id);
    assert_eq!(cache.refreshes(), 1);

    // 11 minutes into a 15-minute session: inside the 5-minute margin.
    clock.advance(Duration::from_secs(2 * 60));
    let (a, b, c) = tokio::join!(cache.get(), cache.get(), cache.get());
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_ne!(a.access_key_id, first.access_key_id);
    assert_eq!(a.access_key_id, b.access_key_id);
    assert_eq!(b.access_key_id, c.access_key_id);
    assert_eq!(
        cache.refreshes(),
        2,
        "concurrent gets refreshed more than once"
    );

    let who = sts::get_caller_identity(&m.client, &a.to_credentials(), &m.endpoint(Service::Sts))
        .await
        .unwrap();
    assert!(who.arn.contains(":assumed-role/agent/"), "{who:?}");
    assert_no_secret(&format!("{cache:?}"), &[w.alice.secret_access_key()]);
}

/// The session's `credential_process` answer, fed to the real AWS CLI (PyPI `awscli`) through a
/// profile, makes the CLI the assumed role: the format the container's helper will print.
#[tokio::test]
async fn the_aws_cli_accepts_credential_process_json() {
    let (m, w) = started().await;
    let cache = CredentialCache::new(
        m.client.clone(),
        w.alice.clone(),
        m.endpoint(Service::Sts),
        AssumeRole::new(&w.role_arn),
        Arc::new(sts::SystemClock),
    );
    let session = cache.get().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("creds.json");
    std::fs::write(&json, session.credential_process_json()).unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[profile moat]\ncredential_process = /bin/cat {}\nregion = us-east-1\n",
            json.display()
        ),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new("aws");
    cmd.args([
        "sts",
        "get-caller-identity",
        "--profile",
        "moat",
        "--output",
        "json",
    ])
    .args(["--endpoint-url", &m.url()])
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .env("HOME", dir.path())
    .env("AWS_CONFIG_FILE", &config)
    .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("aws sts get-caller-identity timed out")
        .expect("running the AWS CLI (this test needs `pip install awscli`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aws failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let arn = id["Arn"].as_str().unwrap();
    assert!(arn.contains(":assumed-role/agent/moat-"), "{arn}");
}
