//! GitHub's OAuth device flow and scoped `github:SCOPE` grants, against the GitHub
//! stand-in (lib/moat-standins, `Options::device`) over real TLS with its CA, reached
//! through MOAT_PROXY_CONNECT_TO and MOAT_PROXY_EXTRA_CA. The flow runs on a real
//! pseudo-terminal (script(1)); the stand-in records every request, so what moat-grant
//! sent (client id, scope, grant type) and how often it polled are checked, not assumed.
//! Canary device codes and access tokens show neither reaches the terminal or MOAT_HOME
//! in plain text.
//!
//! THREATS: B5 (canary device codes and OAuth tokens never reach the terminal, the
//! messages or MOAT_HOME in plain text), B8 (what GitHub answers is checked before it is
//! shown or stored).

mod common;

use common::*;
use moat_standins::{DeviceFlow, Kind, Options, Standin};
use moat_testkit::{Terminal, TestEnv, files_containing};
use std::time::Duration;

const CLIENT_ID: &str = "Ov23liStandInTestApp";

/// A GitHub stand-in whose device flow answers the polls with `answers`.
fn standin(answers: &[&str], token: &str, device_code: &str, scope: &str) -> Standin {
    let mut o = Options::new(Kind::GitHub, "ghp_unused_by_this_test");
    let mut f = DeviceFlow::new(CLIENT_ID, token);
    f.answers = answers.iter().map(|a| a.to_string()).collect();
    f.device_code = device_code.into();
    f.scope = scope.into();
    o.device = Some(f);
    o.github_scopes = Some(scope.replace(',', ", "));
    Standin::start_with(o)
}

/// An environment whose every command reaches the stand-in and trusts its CA.
fn env_for(s: &Standin) -> TestEnv {
    let mut t = TestEnv::new();
    t.env("MOAT_PROXY_CONNECT_TO", s.connect_to().join(","))
        .env("MOAT_PROXY_EXTRA_CA", s.ca_pem_path());
    t
}

/// Run `cmd` on a terminal until it ends; (exit code, everything the terminal showed).
fn on_terminal(t: &TestEnv, cmd: &str) -> (i32, String) {
    let how = Terminal {
        dir: None,
        limit_secs: 60,
        prompt_secs: 30,
        hold_input: true,
    };
    t.on_terminal(cmd, "Enter code:", "", &how)
}

fn token_polls(s: &Standin) -> Vec<moat_standins::Request> {
    s.requests()
        .into_iter()
        .filter(|r| r.host == "github.com" && r.path == "/login/oauth/access_token")
        .collect()
}

fn body(r: &moat_standins::Request) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn assert_nothing_stored(t: &TestEnv, secrets: &[&str]) {
    assert!(listed(t).is_empty(), "{:?}", listed(t));
    for s in secrets {
        let f = files_containing(t.path(), s.as_bytes());
        assert!(f.is_empty(), "{s} in {f:?}");
    }
}

/// With no token in the environment and no gh sign-in, on a terminal, `moat-grant github
/// --scope repo` (client id from MOAT_GITHUB_CLIENT_ID) runs the device flow: the code is
/// shown, two `authorization_pending` answers are waited out at the given interval, and
/// the token is stored as `github:repo` with its scopes, usable by `rules` and revocable.
#[test]
fn device_flow_stores_a_scoped_token_after_pending_polls() {
    let token = canary("gho_");
    let device_code = canary("dc_");
    let s = standin(
        &["authorization_pending", "authorization_pending", "token"],
        &token,
        &device_code,
        "repo,gist",
    );
    let mut t = env_for(&s);
    t.env("MOAT_GITHUB_CLIENT_ID", CLIENT_ID);
    let (code, text) = on_terminal(&t, "moat-grant github --scope repo");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("To authorize, visit: https://github.com/login/device"),
        "{text}"
    );
    assert!(text.contains("Enter code: WDJB-MJHT"), "{text}");
    assert!(!text.contains(&token), "the access token was shown: {text}");
    assert!(
        !text.contains(&device_code),
        "the device code was shown: {text}"
    );

    // What the stand-in saw: one device-code request with our client id and scope, then
    // three polls with the device code and the device grant type, an interval apart.
    let reqs = s.requests();
    let dc: Vec<_> = reqs
        .iter()
        .filter(|r| r.path == "/login/device/code")
        .collect();
    assert_eq!(dc.len(), 1, "{}", s.request_lines());
    assert!(body(dc[0]).contains(&format!("client_id={CLIENT_ID}")));
    assert!(body(dc[0]).contains("scope=repo"), "{}", body(dc[0]));
    let polls = token_polls(&s);
    assert_eq!(polls.len(), 3, "{}", s.request_lines());
    let mut last = dc[0].at;
    for p in &polls {
        let b = body(p);
        assert!(b.contains(&format!("client_id={CLIENT_ID}")), "{b}");
        assert!(b.contains(&format!("device_code={device_code}")), "{b}");
        assert!(
            b.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code"),
            "{b}"
        );
        assert!(
            p.at.duration_since(last) >= Duration::from_millis(900),
            "polled sooner than the 1 s interval"
        );
        last = p.at;
    }

    // Stored under the scoped name, with the scopes GitHub granted, from `device`.
    let r = t.run("moat-grant", &["list", "--json"]);
    let recs = r.records();
    assert_eq!(recs.len(), 1, "{}", r.stdout());
    assert_eq!(recs[0].str("name"), Some("github:repo"));
    assert_eq!(recs[0].str("source"), Some("device"));
    assert_eq!(
        recs[0].get("expires_at"),
        None,
        "an OAuth app's token does not expire"
    );
    assert_eq!(
        recs[0].fields["scopes"],
        serde_json::json!(["repo", "gist"])
    );
    let inj = rules(&t, &["github:repo"]);
    let v = inj
        .iter()
        .find(|r| r.kind == "inject")
        .and_then(|r| r.str("value"))
        .unwrap();
    assert_eq!(v, format!("Bearer {token}"));
    assert!(files_containing(t.path(), token.as_bytes()).is_empty());
    t.run("moat-grant", &["revoke", "github:repo"]).success();
    assert!(listed(&t).is_empty());
}

/// `slow_down` adds 5 s to the polling interval. `--device` wins over a token in the
/// environment, and without `--scope` the flow asks for `repo`.
#[test]
fn slow_down_lengthens_the_interval() {
    let mut o = Options::new(Kind::GitHub, "ghp_unused_by_this_test");
    let mut f = DeviceFlow::new(CLIENT_ID, &canary("ghu_"));
    f.answers = vec!["slow_down".into(), "token".into()];
    // A GitHub App's user token expires: the expiry is stored and said.
    f.token_expires_in = Some(28800);
    o.device = Some(f);
    o.github_scopes = Some("repo".into());
    let s = Standin::start_with(o);
    let mut t = env_for(&s);
    t.env("GH_TOKEN", "ghp_from_the_environment");
    let (code, text) = on_terminal(
        &t,
        &format!("moat-grant github --device --client-id {CLIENT_ID}"),
    );
    assert_eq!(code, 0, "{text}");
    let dc = s
        .requests()
        .into_iter()
        .find(|r| r.path == "/login/device/code")
        .expect("a device code request");
    assert!(body(&dc).ends_with("scope=repo"), "{}", body(&dc));
    let recs = t.run("moat-grant", &["list", "--json"]).records();
    assert_eq!(recs[0].str("source"), Some("device"));
    assert!(recs[0].str("expires_at").is_some(), "{:?}", recs[0]);
    assert!(text.contains("moat does not renew GitHub tokens"), "{text}");
    let polls = token_polls(&s);
    assert_eq!(polls.len(), 2, "{}", s.request_lines());
    let gap = polls[1].at.duration_since(polls[0].at);
    assert!(
        gap >= Duration::from_millis(5800),
        "interval after slow_down: {gap:?}"
    );
    assert_eq!(listed(&t), ["github"]);
}

/// `expired_token` exits 75 and `access_denied` 77; neither stores anything.
#[test]
fn expired_and_denied_codes_store_nothing() {
    for (answer, want, phrase) in [
        ("expired_token", 75, "expired"),
        ("access_denied", 77, "the authorization was denied"),
    ] {
        let token = canary("gho_");
        let s = standin(&["authorization_pending", answer], &token, "dc-x", "repo");
        let t = env_for(&s);
        let (code, text) = on_terminal(
            &t,
            &format!("moat-grant github --device --client-id {CLIENT_ID}"),
        );
        assert_eq!(code, want, "{answer}: {text}");
        assert!(text.contains(phrase), "{answer}: {text}");
        assert_eq!(token_polls(&s).len(), 2, "{}", s.request_lines());
        assert_nothing_stored(&t, &[&token]);
    }
}

/// A code nobody approves ends when GitHub's `expires_in` runs out (exit 75), without
/// polling past it.
#[test]
fn the_wait_is_bounded_by_expires_in() {
    let token = canary("gho_");
    let mut o = Options::new(Kind::GitHub, "ghp_unused_by_this_test");
    let mut f = DeviceFlow::new(CLIENT_ID, &token);
    f.answers = vec!["authorization_pending".into()];
    f.expires_in = 3;
    o.device = Some(f);
    let s = Standin::start_with(o);
    let t = env_for(&s);
    let (code, text) = on_terminal(
        &t,
        &format!("moat-grant github --device --client-id {CLIENT_ID}"),
    );
    assert_eq!(code, 75, "{text}");
    assert!(text.contains("expired"), "{text}");
    let n = token_polls(&s).len();
    assert!(
        (1..=3).contains(&n),
        "{n} polls in a 3 s window at 1 s intervals"
    );
    assert_nothing_stored(&t, &[&token]);
}

/// What GitHub answers is shown on a terminal only when it is plain: a user code carrying
/// terminal escape sequences is refused (65), not written out.
#[test]
fn a_hostile_user_code_is_not_written_to_the_terminal() {
    let mut o = Options::new(Kind::GitHub, "ghp_unused_by_this_test");
    let mut f = DeviceFlow::new(CLIENT_ID, &canary("gho_"));
    f.user_code = "\u{1b}]0;MOATPWNED\u{7}".into();
    o.device = Some(f);
    let s = Standin::start_with(o);
    let t = env_for(&s);
    let how = Terminal {
        dir: None,
        limit_secs: 30,
        prompt_secs: 10,
        hold_input: true,
    };
    let (code, text) = t.on_terminal(
        &format!("moat-grant github --device --client-id {CLIENT_ID}"),
        "user_code",
        "",
        &how,
    );
    assert_eq!(code, 65, "{text}");
    assert!(!text.contains("MOATPWNED"), "{text}");
    assert!(token_polls(&s).is_empty());
}

/// A client id GitHub does not know is a configuration error (78), and no token is polled.
#[test]
fn a_wrong_client_id_is_refused() {
    let s = standin(&["token"], &canary("gho_"), "dc-y", "repo");
    let t = env_for(&s);
    let (code, text) = on_terminal(&t, "moat-grant github --device --client-id Iv1.wrong");
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("incorrect_client_credentials"), "{text}");
    assert!(token_polls(&s).is_empty());
    assert_nothing_stored(&t, &[]);
}

/// Without a terminal and nothing to import, the message names the ways that work; the
/// device flow without a client id says how to supply one; `--device` needs a terminal.
#[test]
fn without_a_terminal_or_client_id_the_message_says_what_to_do() {
    let t = TestEnv::new();
    let r = grant(&t, &["github"], &[], b"");
    assert_eq!(r.code(), 66, "{}", r.stderr());
    for w in ["--token-stdin", "GH_TOKEN", "--device"] {
        assert!(r.stderr().contains(w), "{w}: {}", r.stderr());
    }
    let r = grant(&t, &["github", "--device"], &[], b"");
    assert_eq!(r.code(), 78, "{}", r.stderr());
    assert!(
        r.stderr().contains("MOAT_GITHUB_CLIENT_ID"),
        "{}",
        r.stderr()
    );
    assert!(r.stderr().contains("ships none"), "{}", r.stderr());
    let r = grant(
        &t,
        &["github", "--device", "--client-id", CLIENT_ID],
        &[],
        b"",
    );
    assert_eq!(r.code(), 64, "{}", r.stderr());
    assert!(r.stderr().contains("needs a terminal"), "{}", r.stderr());
    let r = grant(
        &t,
        &["github", "--scope", "Repo!", "--token-stdin"],
        &[],
        b"ghp_x\n",
    );
    assert_eq!(r.code(), 64, "{}", r.stderr());
    assert!(listed(&t).is_empty());
}

/// Without a client id, a terminal still gets today's hidden token prompt.
#[test]
fn without_a_client_id_the_terminal_asks_for_a_token() {
    let t = TestEnv::new();
    let how = Terminal {
        dir: None,
        limit_secs: 30,
        prompt_secs: 20,
        hold_input: false,
    };
    let (code, text) = t.on_terminal(
        "moat-grant github --scope repo --no-validate",
        "GitHub token:",
        "ghp_typed_at_the_prompt\n",
        &how,
    );
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("Enter code"), "{text}");
    assert!(text.contains("scopes were not checked"), "{text}");
    let recs = t.run("moat-grant", &["list", "--json"]).records();
    assert_eq!(recs[0].str("name"), Some("github:repo"));
    assert_eq!(recs[0].str("source"), Some("prompt"));
}

/// An imported token with `--scope`: GitHub's X-OAuth-Scopes must include the scope
/// (a parent scope counts), else nothing is stored (77).
#[test]
fn imported_tokens_must_have_the_scope_asked_for() {
    for (has, ok) in [
        (Some("gist, read:org"), false),
        (Some("repo, admin:org"), true),
        (None, true),
    ] {
        let mut o = Options::new(Kind::GitHub, "");
        let tok = canary("ghp_");
        o.credential = tok.clone();
        o.github_scopes = has.map(String::from);
        let s = Standin::start_with(o);
        let t = TestEnv::new();
        let route = [
            ("MOAT_PROXY_CONNECT_TO", s.connect_to().join(",")),
            (
                "MOAT_PROXY_EXTRA_CA",
                s.ca_pem_path().to_str().unwrap().to_string(),
            ),
        ];
        let envs: Vec<(&str, &str)> = route.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = grant(
            &t,
            &["github", "--scope", "repo,read:org", "--token-stdin"],
            &envs,
            format!("{tok}\n").as_bytes(),
        );
        assert!(!r.stderr().contains(&tok) && !r.stdout().contains(&tok));
        if ok {
            assert_eq!(r.code(), 0, "{}", r.stderr());
            assert_eq!(listed(&t), ["github:repo+read:org"]);
            let recs = t.run("moat-grant", &["list", "--json"]).records();
            if has.is_some() {
                assert_eq!(
                    recs[0].fields["scopes"],
                    serde_json::json!(["repo", "admin:org"])
                );
            } else {
                // A fine-grained token: GitHub names no scopes; stored with a warning.
                assert!(
                    r.stderr().contains("did not say the token's scopes"),
                    "{}",
                    r.stderr()
                );
                assert_eq!(
                    recs[0].fields["scopes"],
                    serde_json::json!(["repo", "read:org"])
                );
            }
            let inj = rules(&t, &["github:repo+read:org"]);
            let want = format!("Bearer {tok}");
            assert!(inj.iter().any(|r| r.str("value") == Some(want.as_str())));
        } else {
            assert_eq!(r.code(), 77, "{}", r.stderr());
            assert!(
                r.stderr().contains("lacks the scope repo"),
                "{}",
                r.stderr()
            );
            assert_nothing_stored(&t, &[&tok]);
        }
    }
}
