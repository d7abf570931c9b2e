//! Each provider's import path, through the real binary: environment variables, the real
//! GitHub CLI with a fixture config, Claude Code / Codex / Gemini CLI credential files,
//! ~/.npmrc, and a real ssh-agent with a generated key and a known_hosts fixture.

mod common;

use base64::Engine;
use common::*;
use moat_testkit::TestEnv;
use std::fs;
use std::process::Command;

fn record<'a>(
    recs: &'a [moat_core::jsonl::Record],
    kind: &str,
    host: &str,
) -> &'a moat_core::jsonl::Record {
    recs.iter()
        .find(|r| {
            r.kind == kind
                && r.get("hosts")
                    .and_then(|h| h.as_array())
                    .is_some_and(|h| h.iter().any(|x| x == host))
        })
        .unwrap_or_else(|| panic!("no {kind} record for {host}: {recs:?}"))
}

fn list_record(t: &TestEnv, name: &str) -> moat_core::jsonl::Record {
    let r = t.run("moat-grant", &["list", "--json"]);
    r.success();
    r.records()
        .into_iter()
        .find(|r| r.str("name") == Some(name))
        .unwrap_or_else(|| panic!("{name} not listed: {}", r.stdout()))
}

#[test]
fn github_from_environment() {
    for var in ["GITHUB_TOKEN", "GH_TOKEN"] {
        let t = TestEnv::new();
        grant(&t, &["github"], &[(var, "ghp_fromenv")], b"")
            .success()
            .stderr_has(&format!("from env:{var}"));
        let recs = rules(&t, &["github"]);
        assert_eq!(
            record(&recs, "inject", "api.github.com").str("value"),
            Some("Bearer ghp_fromenv")
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("x-access-token:ghp_fromenv");
        assert_eq!(
            record(&recs, "inject", "github.com").str("value"),
            Some(format!("Basic {basic}").as_str())
        );
        let env = recs.iter().find(|r| r.kind == "env").unwrap();
        assert_eq!(env.str("name"), Some("GH_TOKEN"));
        assert!(env.str("value").unwrap().starts_with("ghp_moat"));
        assert_eq!(
            list_record(&t, "github").str("source"),
            Some(format!("env:{var}").as_str())
        );
    }
}

#[test]
fn github_from_the_real_gh_cli() {
    let t = TestEnv::new();
    let cfg = t.path().join("gh");
    fs::create_dir_all(&cfg).unwrap();
    fs::write(
        cfg.join("hosts.yml"),
        "github.com:\n    oauth_token: gho_fromghfixture\n    user: tester\n    git_protocol: https\n",
    )
    .unwrap();
    let r = grant(
        &t,
        &["github"],
        &[("GH_CONFIG_DIR", cfg.to_str().unwrap())],
        b"",
    );
    r.success()
        .stderr_has("from gh")
        .leaks_nothing("gho_fromghfixture");
    let recs = rules(&t, &["github"]);
    assert_eq!(
        record(&recs, "inject", "api.github.com").str("value"),
        Some("Bearer gho_fromghfixture")
    );
    // gh signed out and no terminal: the command says what to do.
    let t = TestEnv::new();
    let empty = t.path().join("gh-empty");
    fs::create_dir_all(&empty).unwrap();
    grant(
        &t,
        &["github"],
        &[("GH_CONFIG_DIR", empty.to_str().unwrap())],
        b"",
    )
    .exit(66)
    .stderr_has("no GitHub token found")
    .stderr_has("--token-stdin");
}

#[test]
fn anthropic_api_key_and_claude_subscription() {
    let t = TestEnv::new();
    grant(
        &t,
        &["anthropic"],
        &[("ANTHROPIC_API_KEY", "sk-ant-api03-fromenv")],
        b"",
    )
    .success();
    let recs = rules(&t, &["anthropic"]);
    let r = record(&recs, "inject", "api.anthropic.com");
    assert_eq!(r.str("header"), Some("x-api-key"));
    assert_eq!(r.str("value"), Some("sk-ant-api03-fromenv"));
    assert!(
        recs.iter()
            .any(|r| r.kind == "env" && r.str("name") == Some("ANTHROPIC_API_KEY"))
    );

    // Claude Code's credentials file: a subscription with refresh token and expiry.
    let t = TestEnv::new();
    fs::create_dir_all(t.home.join(".claude")).unwrap();
    fs::write(
        t.home.join(".claude/.credentials.json"),
        r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-fromfile","refreshToken":"sk-ant-ort01-refresh","expiresAt":4102444800000,"scopes":["user:inference","user:profile"],"subscriptionType":"max","rateLimitTier":"default_claude_max_20x"}}"#,
    )
    .unwrap();
    grant(&t, &["anthropic"], &[], b"")
        .success()
        .stderr_has(".credentials.json");
    let recs = rules(&t, &["anthropic"]);
    let r = record(&recs, "inject", "api.anthropic.com");
    assert_eq!(r.str("header"), Some("Authorization"));
    assert_eq!(r.str("value"), Some("Bearer sk-ant-oat01-fromfile"));
    assert_eq!(r.get("extra_headers").unwrap()[0]["name"], "anthropic-beta");
    assert_eq!(
        r.get("extra_headers").unwrap()[0]["value"],
        "oauth-2025-04-20"
    );
    assert!(
        !recs.iter().any(|r| r.kind == "env"),
        "a subscription exports no env var"
    );
    let l = list_record(&t, "anthropic");
    assert_eq!(l.str("kind"), Some("oauth"));
    assert_eq!(l.str("expires_at"), Some("2100-01-01T00:00:00.000Z"));
    assert_eq!(l.get("config").unwrap()["subscription_type"], "max");
    assert_eq!(l.get("scopes").unwrap()[0], "user:inference");
    let out = t.run("moat-grant", &["list", "--json"]);
    out.leaks_nothing("sk-ant-ort01-refresh")
        .leaks_nothing("sk-ant-oat01-fromfile");

    // An OAuth token on stdin is a subscription too.
    let t = TestEnv::new();
    store_token(&t, &["anthropic"], "sk-ant-oat01-stdin");
    assert_eq!(list_record(&t, "anthropic").str("kind"), Some("oauth"));

    // A broken credentials file is named, its contents are not.
    let t = TestEnv::new();
    fs::create_dir_all(t.home.join(".claude")).unwrap();
    fs::write(
        t.home.join(".claude/.credentials.json"),
        "{\"claudeAiOauth\": sk-ant-oat01-broken",
    )
    .unwrap();
    grant(&t, &["anthropic"], &[], b"")
        .exit(65)
        .stderr_has(".credentials.json is not valid JSON")
        .leaks_nothing("sk-ant-oat01-broken");
}

/// `moat grant claude`, as the seeds write it: the subscription sign-in, stored as an
/// `anthropic` OAuth credential named `claude` (so `grants: [claude]` finds it); an API
/// key is refused with where it goes instead.
#[test]
fn claude_is_the_subscription_under_its_own_name() {
    let t = TestEnv::new();
    fs::create_dir_all(t.home.join(".claude")).unwrap();
    fs::write(
        t.home.join(".claude/.credentials.json"),
        r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-claudegrant","refreshToken":"sk-ant-ort01-claudegrant","expiresAt":4102444800000}}"#,
    )
    .unwrap();
    // An API key in the environment is not what `claude` takes: the sign-in is imported.
    grant(
        &t,
        &["claude"],
        &[("ANTHROPIC_API_KEY", "sk-ant-api03-notthisone")],
        b"",
    )
    .success()
    .stderr_has("stored claude (anthropic oauth");
    let l = list_record(&t, "claude");
    assert_eq!(l.str("provider"), Some("anthropic"));
    assert_eq!(l.str("kind"), Some("oauth"));
    let recs = rules(&t, &["claude"]);
    let r = record(&recs, "inject", "api.anthropic.com");
    assert_eq!(r.str("value"), Some("Bearer sk-ant-oat01-claudegrant"));

    let t = TestEnv::new();
    store_token(&t, &["claude"], "sk-ant-oat01-fromstdin");
    assert_eq!(list_record(&t, "claude").str("kind"), Some("oauth"));

    let t = TestEnv::new();
    grant(
        &t,
        &["claude", "--token-stdin"],
        &[],
        b"sk-ant-api03-apikey\n",
    )
    .exit(64)
    .stderr_has("not a Claude subscription token")
    .stderr_has("moat grant anthropic")
    .leaks_nothing("sk-ant-api03-apikey");
    assert!(t.run("moat-grant", &["list", "--json"]).stdout().is_empty());
}

#[test]
fn openai_from_env_and_codex() {
    let t = TestEnv::new();
    grant(&t, &["openai"], &[("OPENAI_API_KEY", "sk-fromenv")], b"").success();
    let recs = rules(&t, &["openai"]);
    assert_eq!(
        record(&recs, "inject", "api.openai.com").str("value"),
        Some("Bearer sk-fromenv")
    );
    assert!(
        recs.iter()
            .any(|r| r.kind == "env" && r.str("name") == Some("OPENAI_API_KEY"))
    );

    let t = TestEnv::new();
    fs::create_dir_all(t.home.join(".codex")).unwrap();
    fs::write(
        t.home.join(".codex/auth.json"),
        r#"{"OPENAI_API_KEY":"sk-fromcodex","tokens":null}"#,
    )
    .unwrap();
    grant(&t, &["openai"], &[], b"")
        .success()
        .stderr_has("auth.json");
    let recs = rules(&t, &["openai"]);
    assert_eq!(
        record(&recs, "inject", "api.openai.com").str("value"),
        Some("Bearer sk-fromcodex")
    );

    // ChatGPT sign-in tokens.
    let t = TestEnv::new();
    fs::create_dir_all(t.home.join(".codex")).unwrap();
    // payload {"exp":4102444800}
    let at = "eyJhbGciOiJub25lIn0.eyJleHAiOjQxMDI0NDQ4MDB9.c2ln";
    fs::write(
        t.home.join(".codex/auth.json"),
        format!(r#"{{"OPENAI_API_KEY":null,"tokens":{{"id_token":"idtok","access_token":"{at}","refresh_token":"rt-codex","account_id":"acct-1"}},"last_refresh":"2026-01-01T00:00:00Z"}}"#),
    )
    .unwrap();
    grant(&t, &["openai"], &[], b"").success();
    let l = list_record(&t, "openai");
    assert_eq!(l.str("kind"), Some("chatgpt"));
    assert_eq!(l.str("expires_at"), Some("2100-01-01T00:00:00.000Z"));
    let recs = rules(&t, &["openai"]);
    let r = record(&recs, "inject", "chatgpt.com");
    assert_eq!(r.str("value"), Some(format!("Bearer {at}").as_str()));
    assert_eq!(r.get("extra_headers").unwrap()[0]["value"], "acct-1");
}

#[test]
fn gemini_from_env_and_cli_oauth() {
    let t = TestEnv::new();
    grant(&t, &["gemini"], &[("GEMINI_API_KEY", "AIzafromenv")], b"").success();
    let recs = rules(&t, &["gemini"]);
    let r = record(&recs, "inject", "generativelanguage.googleapis.com");
    assert_eq!(r.str("header"), Some("x-goog-api-key"));
    assert_eq!(r.str("value"), Some("AIzafromenv"));
    let env = recs.iter().find(|r| r.kind == "env").unwrap();
    assert_eq!(env.str("value").unwrap().len(), 39);

    let t = TestEnv::new();
    fs::create_dir_all(t.home.join(".gemini")).unwrap();
    fs::write(
        t.home.join(".gemini/oauth_creds.json"),
        r#"{"access_token":"ya29.fromgemini","refresh_token":"1//refresh","scope":"openid https://www.googleapis.com/auth/cloud-platform","token_type":"Bearer","expiry_date":4102444800000}"#,
    )
    .unwrap();
    grant(&t, &["gemini"], &[], b"").success();
    let l = list_record(&t, "gemini");
    assert_eq!(l.str("kind"), Some("oauth"));
    assert_eq!(l.get("scopes").unwrap().as_array().unwrap().len(), 2);
    let recs = rules(&t, &["gemini"]);
    assert_eq!(
        record(&recs, "inject", "cloudcode-pa.googleapis.com").str("value"),
        Some("Bearer ya29.fromgemini")
    );
}

#[test]
fn npm_registries_from_npmrc() {
    let t = TestEnv::new();
    fs::write(
        t.home.join(".npmrc"),
        "registry=https://registry.npmjs.org/\n\
         @corp:registry=https://npm.corp.example/\n\
         //registry.npmjs.org/:_authToken=npm_public\n\
         //npm.corp.example/:_authToken=${CORP_NPM}\n\
         //npm.pkg.github.com/:_authToken=ghp_pkgs\n",
    )
    .unwrap();
    grant(&t, &["npm"], &[("CORP_NPM", "npm_corp")], b"").success();
    let recs = rules(&t, &["npm"]);
    assert_eq!(recs.len(), 3);
    assert_eq!(
        record(&recs, "inject", "registry.npmjs.org").str("value"),
        Some("Bearer npm_public")
    );
    assert_eq!(
        record(&recs, "inject", "npm.corp.example").str("value"),
        Some("Bearer npm_corp")
    );
    assert_eq!(
        record(&recs, "inject", "npm.pkg.github.com").str("value"),
        Some("Bearer ghp_pkgs")
    );
    let l = list_record(&t, "npm");
    assert_eq!(
        l.get("config").unwrap()["scopes"]["@corp"],
        "https://npm.corp.example/"
    );
    assert_eq!(l.get("hosts").unwrap().as_array().unwrap().len(), 3);

    // One registry from stdin.
    let t = TestEnv::new();
    store_token(
        &t,
        &["npm", "--registry", "https://npm.other.example:8443/"],
        "npm_one",
    );
    let recs = rules(&t, &["npm"]);
    assert_eq!(
        record(&recs, "inject", "npm.other.example:8443").str("value"),
        Some("Bearer npm_one")
    );
    // Nothing to import.
    let t = TestEnv::new();
    grant(&t, &["npm"], &[], b"")
        .exit(66)
        .stderr_has("no npm tokens found");
}

#[test]
fn mcp_http_and_aws_from_flags() {
    let t = TestEnv::new();
    store_token(
        &t,
        &[
            "mcp",
            "ctx",
            "--url",
            "https://mcp.example.com/v1/mcp",
            "--header",
            "Authorization",
            "--prefix",
            "Bearer ",
        ],
        "mcp_tok",
    );
    store_token(
        &t,
        &[
            "http",
            "datadog",
            "--host",
            "api.datadoghq.com,*.datadoghq.eu",
            "--header",
            "DD-API-KEY",
        ],
        "dd_tok",
    );
    grant(
        &t,
        &[
            "aws",
            "--role",
            "arn:aws:iam::123456789012:role/agent",
            "--region",
            "eu-west-1",
            "--session-duration",
            "1h",
            "--external-id",
            "ext-1",
        ],
        &[],
        b"",
    )
    .success();
    let recs = rules(&t, &["mcp:ctx", "datadog", "aws"]);
    let m = record(&recs, "inject", "mcp.example.com");
    assert_eq!(m.str("value"), Some("Bearer mcp_tok"));
    assert_eq!(m.str("grant"), Some("mcp:ctx"));
    assert_eq!(m.str("placeholder"), Some("moat-stub-mcp:ctx"));
    let d = record(&recs, "inject", "*.datadoghq.eu");
    assert_eq!(d.str("header"), Some("DD-API-KEY"));
    assert_eq!(d.str("value"), Some("dd_tok"));
    let a = recs.iter().find(|r| r.kind == "aws_role").unwrap();
    assert_eq!(
        a.str("role_arn"),
        Some("arn:aws:iam::123456789012:role/agent")
    );
    assert_eq!(a.str("region"), Some("eu-west-1"));
    assert_eq!(a.get("session_duration_secs").unwrap(), 3600);
    assert_eq!(a.str("external_id"), Some("ext-1"));
    assert_eq!(listed(&t), vec!["aws", "datadog", "mcp:ctx"]);
    grant(&t, &["aws", "--role", "arn:aws:iam::1:role/x"], &[], b"")
        .exit(64)
        .stderr_has("IAM role ARN");
    grant(
        &t,
        &[
            "aws",
            "--role",
            "arn:aws:iam::123456789012:role/x",
            "--session-duration",
            "5m",
        ],
        &[],
        b"",
    )
    .exit(64);
    grant(
        &t,
        &[
            "mcp",
            "x",
            "--url",
            "http://plain.example/",
            "--header",
            "X",
            "--token-stdin",
        ],
        &[],
        b"t",
    )
    .exit(64);
    grant(
        &t,
        &["mcp", "x", "--url", "https://a.example/", "--header", "X"],
        &[],
        b"",
    )
    .exit(66)
    .stderr_has("--token-stdin");
    t.run("moat-grant", &["revoke", "mcp:ctx"]).success();
    assert_eq!(listed(&t), vec!["aws", "datadog"]);
}

#[test]
fn name_option_keeps_two_grants_apart() {
    let t = TestEnv::new();
    store_token(&t, &["github"], "ghp_personal");
    store_token(&t, &["github", "--name", "work-gh"], "ghp_work");
    assert_eq!(listed(&t), vec!["github", "work-gh"]);
    let recs = rules(&t, &["work-gh"]);
    assert_eq!(recs[0].str("grant"), Some("work-gh"));
    assert_eq!(recs[0].str("value"), Some("Bearer ghp_work"));
}

#[test]
fn ssh_key_from_a_real_agent_with_pinned_host_keys() {
    let t = TestEnv::new();
    let agent = Agent::start(&t);
    let fp = agent.add_key(&t, "id_one");
    let hk = host_key(&t, "hostkey_github");
    let other = host_key(&t, "hostkey_other");
    let ssh_dir = t.home.join(".ssh");
    fs::create_dir_all(&ssh_dir).unwrap();
    let kh = ssh_dir.join("known_hosts");
    fs::write(&kh, format!("github.com {hk}\nelsewhere.example {other}\n")).unwrap();
    // Hash the known_hosts file, as Debian's ssh does by default.
    let st = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&kh)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!fs::read_to_string(&kh).unwrap().contains("github.com"));
    let sock = agent.sock.to_str().unwrap().to_string();
    grant(
        &t,
        &["ssh", "--host", "GitHub.com"],
        &[("SSH_AUTH_SOCK", &sock)],
        b"",
    )
    .success()
    .stderr_has(&fp);
    let recs = rules(&t, &["ssh:github.com"]);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r.kind, "ssh");
    assert_eq!(r.str("host"), Some("github.com"));
    assert_eq!(r.str("fingerprint"), Some(fp.as_str()));
    assert_eq!(
        r.get("host_keys").unwrap().as_array().unwrap(),
        &vec![serde_json::Value::from(hk.clone())]
    );
    let l = list_record(&t, "ssh:github.com");
    assert_eq!(l.get("hosts").unwrap()[0], "github.com");

    // A host not in known_hosts: a clear error; with --host-key FILE it works.
    grant(
        &t,
        &["ssh", "--host", "gitlab.example"],
        &[("SSH_AUTH_SOCK", &sock)],
        b"",
    )
    .exit(66)
    .stderr_has("no host key for gitlab.example")
    .stderr_has("--host-key");
    let f = t.path().join("gitlab_keys");
    fs::write(&f, format!("{other} comment\n")).unwrap();
    grant(
        &t,
        &[
            "ssh",
            "--host",
            "gitlab.example",
            "--host-key",
            f.to_str().unwrap(),
        ],
        &[("SSH_AUTH_SOCK", &sock)],
        b"",
    )
    .success();
    assert_eq!(
        rules(&t, &["ssh:gitlab.example"])[0]
            .get("host_keys")
            .unwrap()[0],
        other.as_str()
    );

    // Two keys and no terminal: the fingerprints are listed and --key chooses.
    let fp2 = agent.add_key(&t, "id_two");
    grant(
        &t,
        &["ssh", "--host", "github.com"],
        &[("SSH_AUTH_SOCK", &sock)],
        b"",
    )
    .exit(64)
    .stderr_has("pass --key")
    .stderr_has(&fp)
    .stderr_has(&fp2);
    grant(
        &t,
        &["ssh", "--host", "github.com", "--key", &fp2],
        &[("SSH_AUTH_SOCK", &sock)],
        b"",
    )
    .success();
    assert_eq!(
        rules(&t, &["ssh:github.com"])[0].str("fingerprint"),
        Some(fp2.as_str())
    );
    grant(
        &t,
        &["ssh", "--host", "github.com", "--key", "SHA256:nope"],
        &[("SSH_AUTH_SOCK", &sock)],
        b"",
    )
    .exit(66);

    // revoke ssh:HOST, in any spelling of the host.
    t.run("moat-grant", &["revoke", "ssh:GITHUB.com"]).success();
    assert_eq!(listed(&t), vec!["ssh:gitlab.example"]);
    // No agent at all.
    grant(&t, &["ssh", "--host", "github.com"], &[], b"")
        .exit(69)
        .stderr_has("SSH_AUTH_SOCK");
    // No private key file was needed: the grant works with the key files gone.
    fs::remove_file(t.path().join("id_one")).unwrap();
    grant(
        &t,
        &["ssh", "--host", "github.com", "--key", &fp],
        &[("SSH_AUTH_SOCK", &sock)],
        b"",
    )
    .success();
}
