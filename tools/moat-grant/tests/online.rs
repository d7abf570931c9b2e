//! Online validation and token refresh against real HTTPS servers on 127.0.0.1, with a CA
//! and leaf made by rcgen for each test and reached through `--connect-to` (or
//! `MOAT_PROXY_CONNECT_TO`) and `--extra-ca`. The servers count what they are asked, so
//! "no request" is checked, not assumed; canaries show no token reaches any output
//! (except `rules`) or MOAT_HOME in plain text.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use moat_testkit::{TestEnv, contains, files_containing};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a server saw.
#[derive(Clone, Debug)]
struct Hit {
    method: String,
    host: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Hit {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Handler = Arc<dyn Fn(&Hit) -> (u16, Value) + Send + Sync>;

const NAMES: &[&str] = &[
    "api.github.com",
    "api.anthropic.com",
    "api.openai.com",
    "generativelanguage.googleapis.com",
    "platform.claude.com",
    "auth.openai.com",
    "oauth2.googleapis.com",
    "npm.corp.example",
];

/// A loopback HTTPS server answering through `handler`; stops when dropped.
struct Server {
    port: u16,
    ca: PathBuf,
    hits: Arc<Mutex<Vec<Hit>>>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start(t: &TestEnv, delay: Duration, handler: Handler) -> Server {
        let (ca_pem, cfg) = certs();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ca = t.path().join(format!("ca-{n}.pem"));
        std::fs::write(&ca, ca_pem).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let h2 = hits.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let hits = h2.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        let hits = hits.clone();
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let hit = Hit {
                                method: parts.method.to_string(),
                                host: parts
                                    .headers
                                    .get("host")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .split(':')
                                    .next()
                                    .unwrap_or("")
                                    .to_string(),
                                path: parts.uri.to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect(),
                                body: String::from_utf8_lossy(&body).into_owned(),
                            };
                            hits.lock().unwrap().push(hit.clone());
                            let (status, mut v) = handler(&hit);
                            // A test-only marker for GitHub's rate-limit header.
                            let limited = v
                                .as_object_mut()
                                .and_then(|o| o.remove("__rate_limited"))
                                .is_some();
                            tokio::time::sleep(delay).await;
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from(v.to_string())));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            if limited {
                                resp.headers_mut()
                                    .insert("x-ratelimit-remaining", "0".parse().unwrap());
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Server {
            port,
            ca,
            hits,
            _rt: rt,
        }
    }

    /// Every name to this server, as one curl-style wildcard.
    fn connect_to(&self) -> String {
        format!("::127.0.0.1:{}", self.port)
    }

    /// The options that route and trust this server.
    fn args(&self) -> Vec<String> {
        vec![
            "--connect-to".into(),
            self.connect_to(),
            "--extra-ca".into(),
            self.ca.to_str().unwrap().into(),
        ]
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

fn certs() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    };
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "moat-grant test CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(1);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(NAMES.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(1);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let chain = vec![
        rustls_pki_types::CertificateDer::from(leaf_cert.der().to_vec()),
        rustls_pki_types::CertificateDer::from(ca_cert.der().to_vec()),
    ];
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
        leaf_key.serialize_der(),
    ));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    (ca_pem, Arc::new(cfg))
}

/// A server that accepts exactly `good` as a credential on every API host.
fn api_server(t: &TestEnv, good: &str) -> Server {
    let good = good.to_string();
    Server::start(
        t,
        Duration::ZERO,
        Arc::new(move |h: &Hit| {
            let bearer = h
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "));
            let ok = match h.host.as_str() {
                "api.anthropic.com" => {
                    h.header("x-api-key") == Some(good.as_str())
                        && h.header("anthropic-version").is_some()
                }
                "generativelanguage.googleapis.com" => {
                    h.header("x-goog-api-key") == Some(good.as_str())
                }
                _ => bearer == Some(good.as_str()),
            };
            match (ok, h.host.as_str(), h.path.as_str()) {
                (true, "api.github.com", "/user") => (200, json!({"login": "octo-tester"})),
                (true, "npm.corp.example", "/-/whoami") => (200, json!({"username": "npmer"})),
                (true, _, _) => (200, json!({"data": []})),
                (false, "generativelanguage.googleapis.com", _) => (
                    400,
                    json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "API key not valid"}}),
                ),
                (false, _, _) => (401, json!({"message": "Bad credentials"})),
            }
        }),
    )
}

fn with(args: &[&str], s: &Server) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    v.extend(s.args());
    v
}

fn run(t: &TestEnv, args: &[String], envs: &[(&str, &str)], stdin: &[u8]) -> moat_testkit::Run {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    grant(t, &a, envs, stdin)
}

#[test]
fn accepted_credentials_are_stored_and_the_github_login_shown() {
    let t = TestEnv::new();
    let gh = canary("ghp_");
    let s = api_server(&t, &gh);
    let r = run(
        &t,
        &with(&["github", "--token-stdin"], &s),
        &[],
        gh.as_bytes(),
    );
    r.success()
        .stderr_has("Authenticated as: octo-tester")
        .leaks_nothing(&gh);
    let hits = s.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(
        (hits[0].method.as_str(), hits[0].path.as_str()),
        ("GET", "/user")
    );
    assert_eq!(
        hits[0].header("authorization"),
        Some(format!("Bearer {gh}").as_str())
    );
    let rec = r.records();
    assert_eq!(rec[0].get("config").unwrap()["login"], "octo-tester");
    // Each API-key provider asks its own endpoint with its own header.
    for (provider, key, path) in [
        ("anthropic", canary("sk-ant-api03-"), "/v1/models"),
        ("openai", canary("sk-"), "/v1/models"),
        ("gemini", canary("AIza"), "/v1beta/models"),
    ] {
        let s = api_server(&t, &key);
        run(
            &t,
            &with(&[provider, "--token-stdin"], &s),
            &[],
            key.as_bytes(),
        )
        .success()
        .stderr_lacks("could not validate")
        .leaks_nothing(&key);
        let hits = s.hits();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].path, path, "{provider}");
    }
    // npm asks every registry's whoami; the environment route works like the flag.
    let tok = canary("npm_");
    let s = api_server(&t, &tok);
    run(
        &t,
        &[
            "npm".into(),
            "--registry".into(),
            "https://npm.corp.example/".into(),
            "--token-stdin".into(),
        ],
        &[
            (
                "MOAT_PROXY_CONNECT_TO",
                &format!("npm.corp.example:443:127.0.0.1:{}", s.port),
            ),
            ("MOAT_PROXY_EXTRA_CA", s.ca.to_str().unwrap()),
        ],
        tok.as_bytes(),
    )
    .success()
    .stderr_has("Authenticated as: npmer")
    .leaks_nothing(&tok);
    assert_eq!(s.hits()[0].path, "/-/whoami");
    assert_eq!(
        listed(&t),
        vec!["anthropic", "gemini", "github", "npm", "openai"]
    );
}

#[test]
fn a_rejected_credential_is_not_stored_and_the_others_stay() {
    let t = TestEnv::new();
    let good = canary("ghp_");
    let s = api_server(&t, &good);
    run(
        &t,
        &with(&["github", "--token-stdin"], &s),
        &[],
        good.as_bytes(),
    )
    .success();
    let bad = canary("ghp_");
    let r = run(
        &t,
        &with(&["github", "--name", "work", "--token-stdin"], &s),
        &[],
        bad.as_bytes(),
    );
    r.exit(1)
        .stdout_empty()
        .stderr_has("github: api.github.com rejected the token: HTTP 401")
        .stderr_has("nothing was stored")
        .leaks_nothing(&bad);
    // Replacing a good credential with a refused one leaves the good one.
    run(
        &t,
        &with(&["github", "--token-stdin"], &s),
        &[],
        bad.as_bytes(),
    )
    .exit(1);
    let bad_key = canary("AIza");
    run(
        &t,
        &with(&["gemini", "--token-stdin"], &s),
        &[],
        bad_key.as_bytes(),
    )
    .exit(1)
    .stderr_has("rejected the API key: HTTP 400");
    assert_eq!(listed(&t), vec!["github"]);
    let recs = rules(&t, &["github"]);
    assert!(
        recs.iter()
            .any(|r| r.str("value") == Some(format!("Bearer {good}").as_str()))
    );
    for c in [&bad, &bad_key] {
        assert!(files_containing(&t.moat_home, c.as_bytes()).is_empty());
    }
}

#[test]
fn an_unreachable_service_warns_and_stores() {
    let t = TestEnv::new();
    let tok = canary("ghp_");
    // Nothing listens on port 1; common::grant routes everything there by default.
    let r = grant(&t, &["github", "--token-stdin"], &[], tok.as_bytes());
    r.success()
        .stderr_has("could not validate the github token with api.github.com")
        .stderr_has("stored anyway")
        .leaks_nothing(&tok);
    assert_eq!(
        r.stderr().matches("could not validate").count(),
        1,
        "{}",
        r.stderr()
    );
    // A server that does not answer in time is unreachable too, and the wait is bounded.
    let slow = Server::start(&t, Duration::from_secs(30), Arc::new(|_| (200, json!({}))));
    let started = std::time::Instant::now();
    run(
        &t,
        &with(&["openai", "--token-stdin"], &slow),
        &[],
        b"sk-slow",
    )
    .success()
    .stderr_has("no answer within 5 s; stored anyway");
    assert!(started.elapsed() < Duration::from_secs(15));
    // A 5xx is no answer either; an untrusted certificate likewise.
    let down = Server::start(&t, Duration::ZERO, Arc::new(|_| (503, json!({}))));
    run(
        &t,
        &with(&["gemini", "--token-stdin"], &down),
        &[],
        b"AIzadown",
    )
    .success()
    .stderr_has("HTTP 503; stored anyway");
    let a = [
        "anthropic".to_string(),
        "--token-stdin".into(),
        "--connect-to".into(),
        down.connect_to(),
    ];
    run(&t, &a, &[], b"sk-ant-x")
        .success()
        .stderr_has("TLS with api.anthropic.com");
    assert_eq!(listed(&t), vec!["anthropic", "gemini", "github", "openai"]);
}

#[test]
fn no_validate_makes_no_request() {
    let t = TestEnv::new();
    let s = api_server(&t, "nothing-is-accepted");
    for p in ["github", "anthropic", "openai", "gemini"] {
        run(
            &t,
            &with(&[p, "--token-stdin", "--no-validate"], &s),
            &[],
            b"sk-ant-ghp_AIza-x",
        )
        .success()
        .stderr_lacks("validate");
    }
    assert!(s.hits().is_empty(), "{:?}", s.hits());
    assert_eq!(listed(&t).len(), 4);
}

// ---------------------------------------------------------------- refresh

/// A token endpoint for all three sign-ins: accepts the refresh tokens it knows, rotates
/// them (each is good once), and counts the grants it made.
struct TokenEndpoint {
    server: Server,
}

fn token_endpoint(
    t: &TestEnv,
    first_refresh: &str,
    rotate: bool,
    delay: Duration,
) -> TokenEndpoint {
    let known = Arc::new(Mutex::new(vec![first_refresh.to_string()]));
    let n = Arc::new(Mutex::new(0u32));
    let server = Server::start(
        t,
        delay,
        Arc::new(move |h: &Hit| {
            let form = |k: &str| -> Option<String> {
                if let Ok(v) = serde_json::from_str::<Value>(&h.body) {
                    return v[k].as_str().map(String::from);
                }
                h.body.split('&').find_map(|kv| {
                    let (a, b) = kv.split_once('=')?;
                    (a == k).then(|| b.replace("%2F", "/"))
                })
            };
            let rt = form("refresh_token").unwrap_or_default();
            let client = form("client_id").unwrap_or_default();
            let mut known = known.lock().unwrap();
            if h.method != "POST"
                || form("grant_type").as_deref() != Some("refresh_token")
                || client.is_empty()
                || !known.contains(&rt)
            {
                return (
                    400,
                    json!({"error": "invalid_grant", "error_description": "Refresh token not found or invalid"}),
                );
            }
            let mut n = n.lock().unwrap();
            *n += 1;
            let access = format!("ACCESS{}N{}", canary(""), *n);
            let mut v = json!({"access_token": access, "expires_in": 28800, "token_type": "Bearer",
                    "scope": "user:inference user:profile"});
            if rotate {
                known.retain(|k| k != &rt);
                let new_rt = format!("ROTATED{}N{}", canary(""), *n);
                known.push(new_rt.clone());
                v["refresh_token"] = new_rt.into();
            }
            (200, v)
        }),
    );
    TokenEndpoint { server }
}

fn ms(offset_secs: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    now + offset_secs * 1000
}

/// Import a Claude subscription from a Claude Code credentials file.
fn claude_grant(t: &TestEnv, access: &str, refresh: &str, expires_ms: i64) {
    let dir = t.home.join(".claude");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".credentials.json"),
        json!({"claudeAiOauth": {"accessToken": access, "refreshToken": refresh,
            "expiresAt": expires_ms, "scopes": ["user:inference"], "subscriptionType": "max"}})
        .to_string(),
    )
    .unwrap();
    grant(t, &["anthropic"], &[], b"").success();
}

fn injected(t: &TestEnv, name: &str) -> String {
    rules(t, &[name])
        .iter()
        .find(|r| r.kind == "inject")
        .and_then(|r| r.str("value"))
        .unwrap()
        .to_string()
}

fn refresh(t: &TestEnv, ep: &TokenEndpoint, extra: &[&str]) -> moat_testkit::Run {
    let mut a = vec!["refresh".to_string(), "anthropic".into()];
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(ep.server.args());
    run(t, &a, &[], b"")
}

#[test]
fn an_expired_subscription_is_refreshed_and_the_store_holds_the_new_tokens() {
    let t = TestEnv::new();
    let (at, rt) = (canary("sk-ant-oat01-"), canary("sk-ant-ort01-"));
    claude_grant(&t, &at, &rt, ms(-60));
    let ep = token_endpoint(&t, &rt, true, Duration::ZERO);
    let r = refresh(&t, &ep, &[]);
    r.success().stderr_has("refreshed anthropic");
    let hits = ep.server.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (hits[0].host.as_str(), hits[0].path.as_str()),
        ("platform.claude.com", "/v1/oauth/token")
    );
    let body: Value = serde_json::from_str(&hits[0].body).unwrap();
    assert_eq!(body["client_id"], "9d1c250a-e61b-44d9-88ed-5944d1962f5e");
    assert_eq!(body["refresh_token"], rt.as_str());
    let rec = &r.records()[0];
    assert_eq!(rec.kind, "grant");
    assert_eq!(
        rec.get("scopes").unwrap(),
        &json!(["user:inference", "user:profile"])
    );
    let exp = rec.str("expires_at").unwrap();
    assert!(exp > moat_core::timefmt::now_rfc3339().as_str(), "{exp}");
    // The proxy now gets the new access token; the old one is gone.
    let v = injected(&t, "anthropic");
    assert!(v.starts_with("Bearer ACCESS") && v.ends_with("N1"), "{v}");
    // The refresh token rotated: the next (forced) refresh sends the new one and works.
    let r2 = refresh(&t, &ep, &["--force"]);
    r2.success();
    let hits = ep.server.hits();
    let body: Value = serde_json::from_str(&hits[1].body).unwrap();
    assert!(
        body["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("ROTATED")
    );
    assert!(injected(&t, "anthropic").ends_with("N2"));
    // Canaries: no token in any output but rules, none in MOAT_HOME in plain text.
    let new_tokens: Vec<String> = hits
        .iter()
        .map(|h| {
            serde_json::from_str::<Value>(&h.body).unwrap()["refresh_token"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .chain([
            at.clone(),
            rt.clone(),
            injected(&t, "anthropic")[7..].to_string(),
        ])
        .collect();
    for tok in &new_tokens {
        r.leaks_nothing(tok);
        r2.leaks_nothing(tok);
        assert!(
            files_containing(&t.moat_home, tok.as_bytes()).is_empty(),
            "{tok} in MOAT_HOME"
        );
    }
}

#[test]
fn a_refused_refresh_token_says_to_grant_again() {
    let t = TestEnv::new();
    let (at, rt) = (canary("sk-ant-oat01-"), canary("sk-ant-ort01-"));
    claude_grant(&t, &at, &rt, ms(-60));
    let ep = token_endpoint(&t, "some-other-token", true, Duration::ZERO);
    let r = refresh(&t, &ep, &[]);
    r.exit(1)
        .stdout_empty()
        .stderr_has("invalid_grant")
        .stderr_has("the grant must be redone")
        .stderr_has("moat grant anthropic")
        .stderr_lacks("not found or invalid")
        .leaks_nothing(&rt)
        .leaks_nothing(&at);
    // The stored credential is unchanged.
    assert_eq!(injected(&t, "anthropic"), format!("Bearer {at}"));
    // No answer at all is exit 69.
    let a = ["refresh".to_string(), "anthropic".into(), "--force".into()];
    grant(
        &t,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
        b"",
    )
    .exit(69)
    .stderr_has("no answer from platform.claude.com")
    .leaks_nothing(&rt);
    // Grants that are not OAuth sign-ins cannot be refreshed.
    store_token(&t, &["github"], "ghp_x");
    grant(&t, &["refresh", "github"], &[], b"")
        .exit(65)
        .stderr_has("only OAuth sign-ins");
}

#[test]
fn a_token_not_expiring_within_the_window_makes_no_request() {
    let t = TestEnv::new();
    let (at, rt) = (canary("sk-ant-oat01-"), canary("sk-ant-ort01-"));
    claude_grant(&t, &at, &rt, ms(3600));
    let ep = token_endpoint(&t, &rt, true, Duration::ZERO);
    refresh(&t, &ep, &[])
        .success()
        .stdout_empty()
        .stderr_has("does not expire within 10m");
    refresh(&t, &ep, &["--if-expiring-within", "30m"]).success();
    assert!(ep.server.hits().is_empty());
    refresh(&t, &ep, &["--if-expiring-within", "2h"])
        .success()
        .stderr_has("refreshed anthropic");
    assert_eq!(ep.server.hits().len(), 1);
}

#[test]
fn concurrent_refreshes_make_exactly_one_request() {
    let t = TestEnv::new();
    let (at, rt) = (canary("sk-ant-oat01-"), canary("sk-ant-ort01-"));
    claude_grant(&t, &at, &rt, ms(-60));
    // Slow answers widen the window in which the others wait on the lock.
    let ep = token_endpoint(&t, &rt, true, Duration::from_millis(300));
    let mut kids = Vec::new();
    for _ in 0..8 {
        let mut c = t.cmd("moat-grant");
        c.arg("refresh").arg("anthropic").args(ep.server.args());
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        kids.push(c.spawn().unwrap());
    }
    let outs: Vec<_> = kids
        .into_iter()
        .map(|k| k.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(
            [
                "refreshed anthropic",
                "by another process meanwhile",
                "does not expire"
            ]
            .iter()
            .any(|m| err.contains(m)),
            "{err}"
        );
        assert!(!contains(&o.stderr, rt.as_bytes()) && !contains(&o.stdout, rt.as_bytes()));
    }
    assert_eq!(ep.server.hits().len(), 1, "{:?}", ep.server.hits());
    let printed = outs.iter().filter(|o| !o.stdout.is_empty()).count();
    assert_eq!(
        printed, 1,
        "one process refreshed, the others saw its result"
    );
    assert!(injected(&t, "anthropic").ends_with("N1"));
}

#[test]
fn chatgpt_and_gemini_sign_ins_refresh_at_their_endpoints() {
    let t = TestEnv::new();
    // Codex's ChatGPT sign-in, refreshed at auth.openai.com with Codex's client id.
    let codex = t.path().join("codex");
    std::fs::create_dir_all(&codex).unwrap();
    let crt = canary("rt_");
    std::fs::write(
        codex.join("auth.json"),
        json!({"tokens": {"access_token": "e30.eyJleHAiOjE3MDAwMDAwMDB9.sig", "refresh_token": crt,
            "id_token": "e30.e30.sig", "account_id": "acct"}})
        .to_string(),
    )
    .unwrap();
    grant(
        &t,
        &["openai"],
        &[("CODEX_HOME", codex.to_str().unwrap())],
        b"",
    )
    .success();
    let ep = token_endpoint(&t, &crt, true, Duration::ZERO);
    let mut a = vec!["refresh".to_string(), "openai".into()];
    a.extend(ep.server.args());
    run(&t, &a, &[], b"").success();
    let h = &ep.server.hits()[0];
    assert_eq!(
        (h.host.as_str(), h.path.as_str()),
        ("auth.openai.com", "/oauth/token")
    );
    assert!(h.body.contains("app_EMoamEEZ73f0CkXaXp7hrann"));
    // The Gemini CLI's Google sign-in, form-encoded with the CLI's installed-app client.
    let gem = t.home.join(".gemini");
    std::fs::create_dir_all(&gem).unwrap();
    let grt = format!("1//{}", canary(""));
    std::fs::write(
        gem.join("oauth_creds.json"),
        json!({"access_token": "ya29.old", "refresh_token": grt, "expiry_date": ms(-5)})
            .to_string(),
    )
    .unwrap();
    grant(&t, &["gemini"], &[], b"").success();
    let ep = token_endpoint(&t, &grt, false, Duration::ZERO);
    let mut a = vec!["refresh".to_string(), "gemini".into()];
    a.extend(ep.server.args());
    run(&t, &a, &[], b"").success();
    let h = &ep.server.hits()[0];
    assert_eq!(
        (h.host.as_str(), h.path.as_str()),
        ("oauth2.googleapis.com", "/token")
    );
    assert_eq!(
        h.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(h.body.contains("client_id=681255809395-"));
    // Google does not rotate: the refresh token stays and works again.
    run(&t, &[a.clone(), vec!["--force".into()]].concat(), &[], b"").success();
    assert_eq!(ep.server.hits().len(), 2);
    assert!(injected(&t, "gemini").ends_with("N2"));
    assert!(files_containing(&t.moat_home, grt.as_bytes()).is_empty());
}

#[test]
fn bad_network_options_are_refused_before_anything_is_stored() {
    let t = TestEnv::new();
    grant(
        &t,
        &[
            "github",
            "--token-stdin",
            "--connect-to",
            "api.github.com:443",
        ],
        &[],
        b"ghp_x",
    )
    .exit(64)
    .stderr_has("--connect-to \"api.github.com:443\"");
    grant(
        &t,
        &["refresh", "anthropic"],
        &[("MOAT_PROXY_CONNECT_TO", "a.example:443:[::1")],
        b"",
    )
    .exit(64)
    .stderr_has("MOAT_PROXY_CONNECT_TO \"a.example:443:[::1\"");
    let missing = t.path().join("no-such-ca.pem");
    grant(
        &t,
        &[
            "github",
            "--token-stdin",
            "--extra-ca",
            missing.to_str().unwrap(),
        ],
        &[],
        b"ghp_x",
    )
    .exit(78)
    .stderr_has("--extra-ca");
    std::fs::write(&missing, "not a certificate\n").unwrap();
    grant(
        &t,
        &[
            "refresh",
            "anthropic",
            "--extra-ca",
            missing.to_str().unwrap(),
        ],
        &[],
        b"",
    )
    .exit(66);
    grant(
        &t,
        &[
            "github",
            "--token-stdin",
            "--extra-ca",
            missing.to_str().unwrap(),
        ],
        &[],
        b"ghp_x",
    )
    .exit(78)
    .stderr_has("no certificates");
    assert!(listed(&t).is_empty());
}

#[test]
fn a_403_that_may_not_mean_a_bad_credential_only_warns() {
    let t = TestEnv::new();
    let s = Server::start(
        &t,
        Duration::ZERO,
        Arc::new(|h: &Hit| match h.host.as_str() {
            "api.github.com" => (
                403,
                json!({"message": "API rate limit exceeded", "__rate_limited": true}),
            ),
            "api.openai.com" => (
                403,
                json!({"error": {"message": "You have insufficient permissions"}}),
            ),
            _ => (
                403,
                json!({"type": "error", "error": {"type": "permission_error"}}),
            ),
        }),
    );
    run(
        &t,
        &with(&["github", "--token-stdin"], &s),
        &[],
        b"ghp_limited",
    )
    .success()
    .stderr_has("HTTP 403 (rate limited); stored anyway");
    run(
        &t,
        &with(&["openai", "--token-stdin"], &s),
        &[],
        b"sk-restricted",
    )
    .success()
    .stderr_has("HTTP 403; stored anyway");
    run(
        &t,
        &with(&["anthropic", "--token-stdin"], &s),
        &[],
        b"sk-ant-forbidden",
    )
    .exit(1)
    .stderr_has("anthropic: api.anthropic.com rejected the API key: HTTP 403");
    assert_eq!(listed(&t), vec!["github", "openai"]);
}
