//! `moat claude`, `moat codex`, `moat gemini`: the agent's CLI installed in the run's image
//! from its npm package (through the build-time proxy), its command line, and the files its
//! HOME needs to believe it is signed in, onboarded and in a trusted folder. Every file holds
//! placeholders only: the proxy swaps in the real credential on the provider's hosts.
//!
//! Facts about each CLI (files, flags, hosts) are the ones `lib/moat-standins/AGENTS.md`
//! records from running them.

use moat_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Versions installed unless `claude.version` (etc.) pins another.
pub const CLAUDE_VERSION: &str = "2.1.330";
pub const CODEX_VERSION: &str = "0.169.0";
pub const GEMINI_VERSION: &str = "0.61.0";

/// The refresh-token placeholder a Claude subscription's `.credentials.json` carries.
const CLAUDE_REFRESH_PLACEHOLDER: &str = "sk-ant-ort01-moatProxyInjectedPlaceholder00000000000000000000000000000000000000000000000000000000000000000AA";
/// Where the staged HOME files are mounted; moat-init copies them into HOME.
pub const HOME_MOUNT: &str = "/run/moat/agent-home";

/// What an agent subcommand asked for; part of `spec.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AgentSpec {
    /// `claude`, `codex` or `gemini`.
    pub cli: String,
    pub version: String,
    pub prompt: Option<String>,
    /// Arguments after `--`, passed to the CLI as they are.
    pub args: Vec<String>,
    /// Keep the CLI's own permission and trust prompts.
    pub keep_prompts: bool,
    /// Keep the CLI's session logs in the run directory.
    pub sync_logs: bool,
    /// `claude.base_url`: Claude Code talks to this URL through the proxy's relay.
    pub base_url: Option<String>,
    /// A session to continue (`--resume`): the run whose logs are copied in.
    pub resume: Option<String>,
}

pub fn package(cli: &str) -> &'static str {
    match cli {
        "claude" => "@anthropic-ai/claude-code",
        "codex" => "@openai/codex",
        _ => "@google/gemini-cli",
    }
}

pub fn default_version(cli: &str) -> &'static str {
    match cli {
        "claude" => CLAUDE_VERSION,
        "codex" => CODEX_VERSION,
        _ => GEMINI_VERSION,
    }
}

/// The grant an agent uses when the command line and the config name none.
pub fn default_grant(cli: &str) -> &'static str {
    match cli {
        "claude" => "anthropic",
        "codex" => "openai",
        _ => "gemini",
    }
}

/// Does a run of `cli` with these grants need the agent's default grant added? Not when
/// one of them is a credential of the agent's own provider (`providers` maps stored
/// grant names to their provider, as `moat-grant list --json` says); otherwise yes, so
/// `moat claude --grant github` keeps Claude signed in, as the Go moat does.
pub fn needs_default_grant(
    cli: &str,
    grants: &[String],
    providers: &std::collections::HashMap<String, String>,
) -> bool {
    let own = default_grant(cli);
    !grants
        .iter()
        .any(|g| g == own || providers.get(g).is_some_and(|p| p == own))
}

/// `moat run -p PROMPT` (as the seeds' README writes it): the workspace's `agent:` names
/// the CLI that answers, exactly as `moat claude -p PROMPT` would. Without such an
/// `agent:` the prompt would have nobody to go to, so it is refused, not dropped.
pub fn run_prompt(
    mut args: crate::args::RunArgs,
    c: &crate::config::Config,
) -> Result<crate::args::RunArgs> {
    if args.agent.is_some() || args.prompt.is_none() {
        return Ok(args);
    }
    let hint = "use `moat claude -p PROMPT` (or codex, gemini), or set `agent: claude` (codex, gemini) in moat.yaml";
    match c.agent.as_deref() {
        Some(a @ ("claude" | "codex" | "gemini")) => {
            if args.command.is_some() {
                return Err(Error::usage(format!(
                    "-p sends the prompt to {a}; a command after -- cannot be run as well"
                )));
            }
            if args.interactive {
                return Err(Error::usage(
                    "-p answers one prompt without a terminal; drop -i",
                ));
            }
            args.agent = Some(a.to_string());
            Ok(args)
        }
        Some(other) => Err(Error::usage(format!(
            "moat run -p runs an agent's CLI, and this workspace's agent: {other:?} is not claude, codex or gemini"
        ))
        .with_hint(hint)),
        None => Err(Error::usage(
            "moat run -p needs `agent: claude|codex|gemini` in the workspace's moat.yaml to know which CLI answers",
        )
        .with_hint(hint)),
    }
}

/// Stored grant names and their providers, from `moat-grant list --json` (names and
/// providers only; nothing secret is printed by `list`).
pub fn stored_providers() -> Result<std::collections::HashMap<String, String>> {
    let o = std::process::Command::new(crate::run::tool("moat-grant"))
        .args(["list", "--json"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Error::io("running moat-grant list", e))?;
    if !o.status.success() {
        return Err(Error::new(
            o.status.code().unwrap_or(moat_core::exit::SOFTWARE),
            "could not list the stored grants",
        ));
    }
    let mut out = std::collections::HashMap::new();
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let Ok(Some(r)) = moat_core::jsonl::parse(l) else {
            continue;
        };
        if r.kind != "grant" {
            continue;
        }
        if let (Some(n), Some(p)) = (r.str("name"), r.str("provider")) {
            out.insert(n.to_string(), p.to_string());
        }
    }
    Ok(out)
}

/// The directory under HOME that holds the CLI's session logs, and the run directory's
/// subdirectory they land in with `sync_logs`.
pub fn log_dir(cli: &str) -> (&'static str, &'static str) {
    match cli {
        "claude" => (".claude/projects", "claude"),
        "codex" => (".codex/sessions", "codex"),
        _ => (".gemini/tmp", "gemini"),
    }
}

/// A version npm accepts: digits, dots, letters, `-`; no ranges, tags with spaces or URLs.
pub fn check_version(v: &str) -> std::result::Result<(), String> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'+')
    {
        return Err(format!(
            "{v:?} is not a version (want e.g. {CLAUDE_VERSION} or latest)"
        ));
    }
    Ok(())
}

/// Dockerfile lines that install the CLI. The build trusts the moat CA through a build
/// argument (a public certificate; it is not part of the image's content hash, so one image
/// serves every MOAT_HOME), fetched through the build-time proxy.
pub fn dockerfile_lines(a: &AgentSpec, registry: Option<&str>) -> Vec<String> {
    let pkg = format!("{}@{}", package(&a.cli), a.version);
    let mut out = vec!["ARG MOAT_BUILD_CA".to_string()];
    let mut npm = "npm install -g --no-audit --no-fund --loglevel=error".to_string();
    if let Some(r) = registry {
        npm.push_str(&format!(" --registry={r}"));
    }
    let npm = npm.as_str();
    let with_ca = |cmd: &str| format!("RUN {}", npm_with_build_ca(cmd));
    if a.cli == "gemini" {
        // Debian's node is 18; the Gemini CLI needs 20, which npm can install as a package.
        out.push(with_ca(&format!("{npm} node@20")));
    }
    out.push(with_ca(&format!("{npm} {pkg}")));
    out.push(format!(
        "RUN {} --version >/dev/null",
        match a.cli.as_str() {
            "claude" => "claude",
            "codex" => "codex",
            _ => "gemini",
        }
    ));
    out
}

/// An `npm` command that trusts the build-time proxy (the moat CA in the `MOAT_BUILD_CA`
/// build argument) and leaves neither the certificate nor npm's cache in the image.
pub fn npm_with_build_ca(cmd: &str) -> String {
    format!(
        "printf '%s\\n' \"$MOAT_BUILD_CA\" > /tmp/moat-build-ca.crt && NODE_EXTRA_CA_CERTS=/tmp/moat-build-ca.crt {cmd} && rm -f /tmp/moat-build-ca.crt && rm -rf /root/.npm"
    )
}

/// The npm registry this host's npm uses (`npm config get registry`), so the image build
/// fetches from the same place; None without npm on the host (npm's default then).
pub fn host_npm_registry() -> Option<String> {
    let o = std::process::Command::new("npm")
        .args(["config", "get", "registry"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let r = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let ok = o.status.success()
        && (r.starts_with("https://") || r.starts_with("http://"))
        && r.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\'' && b != b'"');
    ok.then_some(r)
}

/// `HOST:PORT` of an http(s) URL: the host canonical (`moat_core::host`), the port made
/// explicit; user information, path, query and fragment dropped. None for anything else.
/// The build-time proxy allows a registry's explicitly (a mirror may sit on a private
/// address); `claude.base_url`'s host gets the Anthropic injection.
pub fn url_authority(url: &str) -> Option<String> {
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (false, url.strip_prefix("http://")?),
    };
    let auth = rest.split(['/', '?', '#']).next()?.rsplit('@').next()?;
    let (host, port) =
        moat_core::host::canonical_authority(auth, if tls { 443 } else { 80 }).ok()?;
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// The container's command.
pub fn command(a: &AgentSpec) -> Vec<String> {
    let mut c: Vec<String> = vec![a.cli.clone()];
    match a.cli.as_str() {
        "claude" => {
            if !a.keep_prompts {
                c.push("--dangerously-skip-permissions".into());
            }
            if a.resume.is_some() {
                c.push("--continue".into());
            }
            if let Some(p) = &a.prompt {
                c.push("-p".into());
                c.push(p.clone());
            }
        }
        "codex" => {
            if let Some(p) = &a.prompt {
                c.push("exec".into());
                c.push("--skip-git-repo-check".into());
                if a.resume.is_some() {
                    c.push("resume".into());
                    c.push("--last".into());
                }
                c.push(p.clone());
            }
        }
        _ => {
            if !a.keep_prompts {
                c.push("--yolo".into());
            }
            if a.resume.is_some() {
                c.push("--resume".into());
                c.push("latest".into());
            }
            if let Some(p) = &a.prompt {
                c.push("-p".into());
                c.push(p.clone());
            }
        }
    }
    c.extend(a.args.iter().cloned());
    c
}

/// How the grant signs the CLI in, read from the grant's rules (no secret is needed: the
/// placeholders and hosts tell).
#[derive(Debug, Default, Clone)]
pub struct SignIn {
    pub claude_oauth: bool,
    pub chatgpt: Option<String>,
    pub google_oauth: bool,
    pub env: Vec<moat_core::rules::EnvPlaceholder>,
}

pub fn sign_in(inject: &[String], env: &[moat_core::rules::EnvPlaceholder]) -> SignIn {
    let mut s = SignIn {
        env: env.to_vec(),
        ..Default::default()
    };
    for l in inject {
        let Ok(Some(r)) = moat_core::jsonl::parse(l) else {
            continue;
        };
        let hosts: Vec<&str> = r
            .get("hosts")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let header = r.str("header").unwrap_or_default().to_ascii_lowercase();
        if hosts.contains(&"api.anthropic.com") && header == "authorization" {
            s.claude_oauth = true;
        }
        if hosts.contains(&"chatgpt.com") {
            let account = r
                .get("extra_headers")
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .find(|h| h["name"] == "chatgpt-account-id")
                        .and_then(|h| h["value"].as_str())
                })
                .unwrap_or("moat-account");
            s.chatgpt = Some(account.to_string());
        }
        if hosts.contains(&"cloudcode-pa.googleapis.com") {
            s.google_oauth = true;
        }
    }
    s
}

fn far_ms() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now + 365 * 24 * 3600 * 1000
}

/// Pretty JSON with a final newline, as the staged files are written.
pub(crate) fn pretty(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).expect("json");
    b.push(b'\n');
    b
}

fn b64url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A JWT-shaped placeholder (unsigned claims): the CLIs read claims such as `exp` from their
/// tokens without checking a signature.
fn jwt(claims: &Value) -> String {
    format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes()),
        b64url(b"moat-placeholder")
    )
}

/// Files for HOME: path relative to HOME, content.
pub type Files = Vec<(String, Vec<u8>)>;

/// Write one file of the staged HOME (`rel` below `stage`): 0600, its directories 0700.
pub fn write_staged(stage: &std::path::Path, rel: &str, data: &[u8]) -> Result<()> {
    let p = stage.join(rel);
    if let Some(parent) = p.parent() {
        moat_core::fsutil::create_private_dir(parent)?;
    }
    moat_core::fsutil::write_atomic(&p, data, 0o600)
}

/// Files for HOME and extra environment. `mcp` are the local MCP servers, each with its
/// command, args and env as [`crate::local_mcp::resolve`] made them.
pub fn home_files(
    a: &AgentSpec,
    si: &SignIn,
    mcp: &[(crate::local_mcp::Local, Value)],
) -> Result<(Files, Vec<(String, String)>)> {
    let ws = "/workspace";
    // Claude Code's and the Gemini CLI's `mcpServers` object. Claude Code wants the type;
    // the Gemini CLI drops the proxy's variables (their values hold the run's proxy token)
    // and secret-looking ones from what a server inherits, so they are named in `env`,
    // which it expands from its own environment.
    let mcp_servers = |cli: &str| {
        Value::Object(
            mcp.iter()
                .map(|(l, v)| {
                    let mut v = v.clone();
                    if cli == "claude" {
                        v["type"] = json!("stdio");
                    }
                    if cli == "gemini" {
                        let env = v["env"].as_object_mut().expect("resolve writes env");
                        for k in crate::local_mcp::pass_by_name(l) {
                            env.entry(k.clone()).or_insert(json!(format!("${{{k}}}")));
                        }
                    }
                    (l.name.clone(), v)
                })
                .collect(),
        )
    };
    let mut files = vec![];
    let mut env = vec![];
    match a.cli.as_str() {
        "claude" => {
            // First-run questions answered here (kept or not with --keep-prompts as the man
            // page says): onboarding and theme; the API key in ANTHROPIC_API_KEY approved (Claude
            // Code keeps the last 20 characters of the keys its user accepted; unanswered, it
            // asks, "No" preselected, and starts signed out); the offer to make auto mode the
            // default permission mode seen (declining keeps the mode moat set, so saying
            // nothing widens nothing); the folder trust unless --keep-prompts.
            let mut cj = json!({
                "hasCompletedOnboarding": true,
                "theme": "dark",
                "hasSeenAutoDefaultNudge": true,
                "projects": {ws: {"hasTrustDialogAccepted": !a.keep_prompts, "hasCompletedProjectOnboarding": true}},
            });
            if let Some(k) = si.env.iter().find(|p| p.name == "ANTHROPIC_API_KEY") {
                cj["customApiKeyResponses"] =
                    json!({"approved": [claude_key_tail(&k.value)], "rejected": []});
            }
            if !mcp.is_empty() {
                cj["mcpServers"] = mcp_servers("claude");
            }
            files.push((".claude.json".into(), pretty(&cj)));
            if si.claude_oauth {
                let creds = json!({"claudeAiOauth": {
                    "accessToken": moat_grant_claude_placeholder(),
                    "refreshToken": CLAUDE_REFRESH_PLACEHOLDER,
                    "expiresAt": far_ms(),
                    "scopes": ["user:file_upload","user:inference","user:mcp_servers","user:profile","user:sessions:claude_code"],
                    "subscriptionType": "max",
                }});
                files.push((".claude/.credentials.json".into(), pretty(&creds)));
            }
            if !a.keep_prompts {
                files.push((
                    ".claude/settings.json".into(),
                    pretty(&json!({
                        "permissions": {"defaultMode": "bypassPermissions"},
                        "skipDangerousModePermissionPrompt": true,
                    })),
                ));
                env.push(("IS_SANDBOX".into(), "1".into()));
            }
        }
        "codex" => {
            let mut toml = String::new();
            if !a.keep_prompts {
                toml.push_str(
                    "approval_policy = \"never\"\nsandbox_mode = \"danger-full-access\"\n",
                );
            }
            toml.push_str("\n[shell_environment_policy]\ninherit = \"all\"\n");
            toml.push_str(&format!(
                "\n[projects.\"{ws}\"]\ntrust_level = \"trusted\"\n"
            ));
            let strs = |v: &Value| -> Vec<String> {
                v.as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).map(toml_str).collect())
                    .unwrap_or_default()
            };
            for (l, v) in mcp {
                toml.push_str(&format!("\n[mcp_servers.{}]\n", toml_key(&l.name)));
                if let Some(c) = v["command"].as_str() {
                    toml.push_str(&format!("command = {}\n", toml_str(c)));
                }
                toml.push_str(&format!("args = [{}]\n", strs(&v["args"]).join(", ")));
                // Codex starts a server with a short list of its own variables: the proxy's
                // settings, its CA and the secrets the wrapper reads must be passed by name.
                let pass: Vec<String> = crate::local_mcp::pass_by_name(l)
                    .iter()
                    .map(|s| toml_str(s))
                    .collect();
                toml.push_str(&format!("env_vars = [{}]\n", pass.join(", ")));
                if let Some(env) = v["env"].as_object().filter(|e| !e.is_empty()) {
                    let kv: Vec<String> = env
                        .iter()
                        .map(|(k, x)| {
                            format!("{} = {}", toml_key(k), toml_str(x.as_str().unwrap_or("")))
                        })
                        .collect();
                    toml.push_str(&format!("env = {{ {} }}\n", kv.join(", ")));
                }
            }
            files.push((".codex/config.toml".into(), toml.into_bytes()));
            let auth = match &si.chatgpt {
                Some(account) => {
                    let exp = far_ms() / 1000;
                    let auth_claims = json!({"chatgpt_account_id": account, "chatgpt_plan_type": "plus", "chatgpt_user_id": "user-moat"});
                    let id = jwt(&json!({
                        "email": "moat@localhost",
                        "exp": exp,
                        "https://api.openai.com/auth": auth_claims,
                    }));
                    let access =
                        jwt(&json!({"exp": exp, "https://api.openai.com/auth": auth_claims}));
                    json!({
                        "OPENAI_API_KEY": null,
                        "tokens": {"id_token": id, "access_token": access, "refresh_token": "moat-proxy-injected", "account_id": account},
                        "last_refresh": moat_core::timefmt::now_rfc3339(),
                    })
                }
                None => {
                    let key = si
                        .env
                        .iter()
                        .find(|p| p.name == "OPENAI_API_KEY")
                        .map(|p| p.value.clone())
                        .unwrap_or_default();
                    json!({"OPENAI_API_KEY": key})
                }
            };
            files.push((".codex/auth.json".into(), pretty(&auth)));
        }
        "gemini" => {
            let t = if si.google_oauth {
                "oauth-personal"
            } else {
                "gemini-api-key"
            };
            let mut settings = json!({"security": {"auth": {"selectedType": t}}});
            if !mcp.is_empty() {
                settings["mcpServers"] = mcp_servers("gemini");
            }
            files.push((".gemini/settings.json".into(), pretty(&settings)));
            if !a.keep_prompts {
                files.push((
                    ".gemini/trustedFolders.json".into(),
                    pretty(&json!({ws: "TRUST_FOLDER"})),
                ));
            }
            if si.google_oauth {
                files.push((
                    ".gemini/oauth_creds.json".into(),
                    pretty(&json!({
                        "access_token": "ya29.moatProxyInjectedPlaceholder",
                        "refresh_token": "moat-proxy-injected",
                        "token_type": "Bearer",
                        "scope": "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile openid",
                        "expiry_date": far_ms(),
                    })),
                ));
            }
        }
        other => return Err(Error::software(format!("unknown agent {other}"))),
    }
    Ok((files, env))
}

/// How Claude Code remembers an API key its user approved: the key's last 20 characters.
fn claude_key_tail(key: &str) -> String {
    let k = key.trim();
    let n = k.chars().count();
    k.chars().skip(n.saturating_sub(20)).collect()
}

fn moat_grant_claude_placeholder() -> &'static str {
    // The same value moat-grant's rules name as the placeholder for a Claude subscription.
    "sk-ant-oat01-moatProxyInjectedPlaceholder00000000000000000000000000000000000000000000000000000000000000000AA"
}

/// A TOML basic string (JSON's escapes are valid TOML).
pub(crate) fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

fn toml_key(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        s.to_string()
    } else {
        toml_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cli: &str) -> AgentSpec {
        AgentSpec {
            cli: cli.into(),
            version: default_version(cli).into(),
            prompt: Some("hi".into()),
            ..Default::default()
        }
    }

    #[test]
    fn commands_run_the_cli_unattended_unless_asked() {
        assert_eq!(
            command(&spec("claude")),
            ["claude", "--dangerously-skip-permissions", "-p", "hi"]
        );
        let mut s = spec("claude");
        s.keep_prompts = true;
        s.args = vec!["--model".into(), "x".into()];
        assert_eq!(command(&s), ["claude", "-p", "hi", "--model", "x"]);
        assert_eq!(
            command(&spec("codex")),
            ["codex", "exec", "--skip-git-repo-check", "hi"]
        );
        assert_eq!(command(&spec("gemini")), ["gemini", "--yolo", "-p", "hi"]);
    }

    #[test]
    fn url_authorities_are_canonical_with_the_port() {
        for (u, want) in [
            (
                "https://registry.example.com/",
                Some("registry.example.com:443"),
            ),
            ("http://Mirror.LAN:4873/npm/?x#y", Some("mirror.lan:4873")),
            ("https://user:pw@host.example", Some("host.example:443")),
            ("http://[::1]/", Some("[::1]:80")),
            ("http://127.0.0.1:8787", Some("127.0.0.1:8787")),
            ("ftp://host.example/", None),
            ("https:///path", None),
        ] {
            assert_eq!(url_authority(u).as_deref(), want, "{u}");
        }
    }

    #[test]
    fn versions_are_plain() {
        assert!(check_version("2.1.330").is_ok());
        assert!(check_version("latest").is_ok());
        assert!(check_version("1 && curl x").is_err());
        assert!(check_version("").is_err());
    }

    #[test]
    fn a_subscription_gets_a_placeholder_credentials_file() {
        let rule = moat_core::jsonl::line(
            "inject",
            &json!({"grant":"anthropic","hosts":["api.anthropic.com"],"header":"Authorization","value":"Bearer sk-ant-oat01-REAL"}),
        )
        .unwrap();
        let si = sign_in(&[rule], &[]);
        assert!(si.claude_oauth);
        let (files, env) = home_files(&spec("claude"), &si, &[]).unwrap();
        let creds = files
            .iter()
            .find(|(p, _)| p == ".claude/.credentials.json")
            .unwrap();
        let text = String::from_utf8_lossy(&creds.1);
        assert!(!text.contains("REAL"));
        assert!(text.contains("sk-ant-oat01-moatProxyInjected"));
        assert!(env.contains(&("IS_SANDBOX".into(), "1".into())));
    }

    #[test]
    fn claude_code_finds_its_api_key_approved_and_the_auto_mode_offer_seen() {
        let key = "sk-ant-api03-moatProxyInjectedPlaceholder0000000000000000000000AA";
        let si = SignIn {
            env: vec![moat_core::rules::EnvPlaceholder {
                grant: "anthropic".into(),
                name: "ANTHROPIC_API_KEY".into(),
                value: key.into(),
            }],
            ..Default::default()
        };
        for keep in [false, true] {
            let mut a = spec("claude");
            a.keep_prompts = keep;
            let (files, _) = home_files(&a, &si, &[]).unwrap();
            let cj: Value =
                serde_json::from_slice(&files.iter().find(|(p, _)| p == ".claude.json").unwrap().1)
                    .unwrap();
            assert_eq!(
                cj["customApiKeyResponses"]["approved"],
                json!([&key[key.len() - 20..]])
            );
            assert_eq!(cj["hasSeenAutoDefaultNudge"], true);
            assert_eq!(
                cj["projects"]["/workspace"]["hasTrustDialogAccepted"],
                !keep
            );
        }
        // A subscription has no key to approve.
        let (files, _) = home_files(&spec("claude"), &SignIn::default(), &[]).unwrap();
        let cj: Value = serde_json::from_slice(&files[0].1).unwrap();
        assert!(cj.get("customApiKeyResponses").is_none());
    }

    #[test]
    fn another_providers_grant_keeps_the_agents_own() {
        let stored: std::collections::HashMap<String, String> = [
            ("github", "github"),
            ("work", "anthropic"),
            ("anthropic", "anthropic"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(needs_default_grant("claude", &g(&["github"]), &stored));
        assert!(!needs_default_grant(
            "claude",
            &g(&["github", "work"]),
            &stored
        ));
        assert!(!needs_default_grant("claude", &g(&["anthropic"]), &stored));
        assert!(needs_default_grant("codex", &g(&["work"]), &stored));
        assert!(!needs_default_grant("codex", &g(&["openai"]), &stored));
    }
}
