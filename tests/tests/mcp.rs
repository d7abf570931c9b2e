//! Remote MCP servers (`mcp:` in moat.yaml) end to end: the real Claude Code from npm in a
//! real run, a loopback stand-in speaking MCP Streamable HTTP (it answers 401 unless the
//! real credential arrives in its header) and the Anthropic stand-in, which asks the CLI to
//! call the server's tool. The CLI reaches the server only through the proxy's relay
//! (`/mcp/TOKEN/NAME`), holding the stub `moat-stub-mcp:NAME`; the proxy swaps in the
//! credential. A unique canary credential is then searched for everywhere.

use moat_e2e::agents::{ANSWER, canary as unique, grant_token as grant, says_hello, with_standin};
use moat_e2e::docker_ready;
use moat_standins::{Kind, McpServer, Options};
use std::process::Command;

fn sh(name: &str, script: &str) -> String {
    let o = Command::new("docker")
        .args(["exec", name, "sh", "-c", script])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn claude_calls_a_remote_mcp_tool_through_the_relay_and_never_holds_its_credential() {
    if !docker_ready() {
        return;
    }
    let key = unique("sk-ant-api03-E2eCanary");
    let mcp_secret = unique("mcpE2eCanary");
    let marker = unique("MARKER-");
    let mut o = Options::new(Kind::AnthropicApiKey, &key);
    o.mcp = Some(McpServer {
        path: "/mcp".into(),
        header: "X-Docs-Key".into(),
        credential: mcp_secret.clone(),
        tool: "marker".into(),
        result: marker.clone(),
    });
    o.tool_use = Some("mcp__docs__marker".into());
    let (m, st) = with_standin(o);
    grant(&m, &["anthropic"], &key);
    let url = format!("https://{}/mcp", moat_standins::MCP_HOST);

    // A server whose grant is not stored: a clear error naming the command, before a run.
    std::fs::write(
        m.ws.join("moat.yaml"),
        format!(
            "mcp:\n  - name: docs\n    url: {url}\n    auth:\n      grant: mcp:docs\n      header: X-Docs-Key\n"
        ),
    )
    .unwrap();
    let r = m.run_timeout("moat", &["claude", "--no-sandbox", "-p", "hi"], None, 60);
    assert_eq!(r.code(), 66, "{}", r.stderr());
    assert!(
        r.stderr().contains("mcp:docs is not stored")
            && r.stderr().contains("moat grant mcp docs --url"),
        "{}",
        r.stderr()
    );
    assert!(m.run_ids().is_empty());

    grant(
        &m,
        &["mcp", "docs", "--url", &url, "--header", "X-Docs-Key"],
        &mcp_secret,
    );
    // The pause lets the test look inside the container before the CLI starts. Tool search
    // off: this Claude Code otherwise defers MCP tools behind its ToolSearch tool, a turn
    // the stand-in model does not play.
    std::fs::write(
        m.ws.join("moat.yaml"),
        format!(
            "env:\n  ENABLE_TOOL_SEARCH: \"false\"\nhooks:\n  pre_run: sleep 6\nmcp:\n  - name: docs\n    url: {url}\n    auth:\n      grant: mcp-docs\n      header: X-Docs-Key\n"
        ),
    )
    .unwrap();
    m.trust(None);
    let r = m.run_timeout(
        "moat",
        &[
            "claude",
            "--no-sandbox",
            "-d",
            "-p",
            "Call the marker tool of the docs server and report what it says.",
        ],
        None,
        900,
    );
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let id = r.stdout().trim().to_string();
    m.wait_state(&id, &["running"], 600);
    let name = format!("moat-{id}");

    // Inside: Claude Code's configuration names the relay and the stub, never the secret.
    let cfg = sh(&name, "cat /home/moatuser/.claude.json");
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap_or_else(|_| panic!("{cfg}"));
    let entry = &v["mcpServers"]["docs"];
    assert_eq!(entry["type"], "http", "{cfg}");
    assert_eq!(
        entry["headers"]["X-Docs-Key"], "moat-stub-mcp:docs",
        "{cfg}"
    );
    let relay = entry["url"].as_str().unwrap();
    assert!(
        relay.starts_with("http://") && relay.contains("/mcp/") && relay.ends_with("/docs"),
        "{relay}"
    );
    let env = sh(&name, "env");
    assert!(
        env.contains(&format!("MOAT_MCP_DOCS_URL={relay}"))
            && env.contains("MOAT_MCP_DOCS_HEADER=X-Docs-Key: moat-stub-mcp:docs"),
        "{env}"
    );
    let everything = sh(
        &name,
        "cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'; cat /home/moatuser/.claude.json",
    );
    assert!(everything.contains("HTTPS_PROXY="), "{everything}");
    for s in [&mcp_secret, &key] {
        assert!(
            !everything.contains(s.as_str()),
            "a credential in the container"
        );
    }
    let export = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker export {name} > /dev/null && docker export {name} | grep -a -c -F -e '{mcp_secret}' -e '{key}' || true"
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&export.stdout).trim(),
        "0",
        "a credential in the container's files {}",
        String::from_utf8_lossy(&export.stderr)
    );

    let end = m.wait_state(&id, &["stopped", "failed"], 600);
    let dir = m.moat_home().join("runs").join(&id);
    let logs = std::fs::read_to_string(dir.join("logs.jsonl")).unwrap_or_default();
    let requests = st.request_lines();
    assert_eq!(end["state"], "stopped", "{logs}\n{requests}");
    assert!(logs.contains(ANSWER), "{logs}\n{requests}");

    // The MCP server got the handshake and the call, every one with the real credential.
    let mcp: Vec<_> = st
        .requests()
        .into_iter()
        .filter(|q| q.host == moat_standins::MCP_HOST)
        .collect();
    let method = |q: &moat_standins::Request| {
        serde_json::from_slice::<serde_json::Value>(&q.body)
            .ok()
            .and_then(|v| v["method"].as_str().map(String::from))
            .unwrap_or_default()
    };
    for want in ["initialize", "notifications/initialized", "tools/list"] {
        assert!(
            mcp.iter().any(|q| method(q) == want
                && q.header("x-docs-key") == Some(mcp_secret.as_str())
                && q.status < 300),
            "no {want} with the credential:\n{requests}"
        );
    }
    assert!(
        mcp.iter().all(|q| q.status != 401),
        "a request without the credential reached the server:\n{requests}"
    );
    // The model asked for the tool, and the CLI's next turn carried the server's answer.
    let messages: Vec<_> = st
        .requests()
        .into_iter()
        .filter(|q| q.path_only() == "/v1/messages")
        .collect();
    let offered: Vec<String> = messages
        .iter()
        .map(|q| {
            let v: serde_json::Value = serde_json::from_slice(&q.body).unwrap_or_default();
            let names: Vec<String> = v["tools"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .map(|t| {
                            format!(
                                "{}{}",
                                t["name"],
                                if t.get("defer_loading").is_some() {
                                    "(deferred)"
                                } else {
                                    ""
                                }
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            names.join(",")
        })
        .collect();
    assert!(
        messages.iter().any(|q| q.contains("mcp__docs__marker")),
        "the CLI did not offer the MCP tool to the model:\n{requests}\n{offered:?}"
    );
    assert!(
        messages
            .iter()
            .any(|q| q.contains("tool_result") && q.contains(&marker)),
        "no tool_result with the server's marker:\n{requests}\n{offered:?}"
    );
    assert!(
        mcp.iter().any(|q| method(q) == "tools/call"
            && q.header("x-docs-key") == Some(mcp_secret.as_str())
            && q.status == 200),
        "no tools/call with the credential:\n{requests}"
    );
    // Relayed and injected by the proxy (its trace names the grant), the token never
    // recorded; no artifact holds either credential.
    let trace = std::fs::read_to_string(dir.join("network.jsonl")).unwrap_or_default();
    assert!(
        trace
            .lines()
            .any(|l| l.contains("\"grant\":\"mcp:docs\"") && l.contains(moat_standins::MCP_HOST)),
        "{trace}"
    );
    let token = std::fs::read_to_string(dir.join("proxy.token")).unwrap_or_default();
    assert!(
        token.is_empty() || !trace.contains(token.trim()),
        "the relay token is in the trace"
    );
    for s in [&mcp_secret, &key] {
        let hits = moat_testkit::files_containing(m.moat_home(), s.as_bytes());
        assert!(hits.is_empty(), "credential found in {hits:?}");
    }
}

/// `moat run` (no agent CLI): the relay exists and `MOAT_MCP_<NAME>_URL` / `_HEADER` tell
/// a program where it is; under `--policy strict` too. Only the stub is swapped: a request
/// with any other value reaches the server as sent (and is refused there).
#[test]
fn moat_run_gets_the_relay_in_its_environment_and_only_the_stub_is_swapped() {
    if !docker_ready() {
        return;
    }
    let mcp_secret = unique("mcpE2eCanary");
    let mut o = Options::new(Kind::GitHub, "unused");
    o.mcp = Some(McpServer {
        path: "/mcp".into(),
        header: "X-Docs-Key".into(),
        credential: mcp_secret.clone(),
        tool: "marker".into(),
        result: "MARKER".into(),
    });
    let (m, st) = with_standin(o);
    let url = format!("https://{}/mcp", moat_standins::MCP_HOST);
    grant(
        &m,
        &["mcp", "docs", "--url", &url, "--header", "X-Docs-Key"],
        &mcp_secret,
    );
    std::fs::write(
        m.ws.join("moat.yaml"),
        format!(
            "mcp:\n  - name: docs\n    url: {url}\n    auth:\n      grant: mcp:docs\n      header: X-Docs-Key\n"
        ),
    )
    .unwrap();
    m.trust(None);
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}"#;
    let script = format!(
        "for h in \"$MOAT_MCP_DOCS_HEADER\" 'X-Docs-Key: my-own-value'; do \
         curl -s -w ' %{{http_code}}\\n' -H \"$h\" -H 'content-type: application/json' \
         -H 'accept: application/json, text/event-stream' --data '{init}' \"$MOAT_MCP_DOCS_URL\"; done"
    );
    let r = m.run_timeout(
        "moat",
        &[
            "run",
            "--no-sandbox",
            "--policy",
            "strict",
            "--",
            "sh",
            "-c",
            &script,
        ],
        None,
        300,
    );
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let out = r.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.len() == 2
            && lines[0].contains("moat-standin-mcp")
            && lines[0].ends_with(" 200")
            && lines[1].ends_with(" 401"),
        "{}\n{}\n{}",
        r.stdout(),
        r.stderr(),
        st.request_lines()
    );
    let seen: Vec<_> = st
        .requests()
        .into_iter()
        .filter(|q| q.host == moat_standins::MCP_HOST)
        .collect();
    assert_eq!(seen.len(), 2, "{}", st.request_lines());
    assert_eq!(seen[0].header("x-docs-key"), Some(mcp_secret.as_str()));
    assert_eq!(seen[1].header("x-docs-key"), Some("my-own-value"));
    r.leaks_nothing(&mcp_secret);
    let hits = moat_testkit::files_containing(m.moat_home(), mcp_secret.as_bytes());
    assert!(hits.is_empty(), "credential found in {hits:?}");
}

/// Codex and the Gemini CLI connect to the server at startup through the relay with the
/// stub in their configuration (Codex's `http_headers`, Gemini's `headers`): the server
/// sees the handshake with the real credential.
fn cli_handshakes(cli: &str, kind: Kind, provider: &str, key: &str) {
    let mcp_secret = unique("mcpE2eCanary");
    let mut o = Options::new(kind, key);
    o.mcp = Some(McpServer {
        path: "/mcp".into(),
        header: "X-Docs-Key".into(),
        credential: mcp_secret.clone(),
        tool: "marker".into(),
        result: "MARKER".into(),
    });
    let (m, st) = with_standin(o);
    grant(&m, &[provider], key);
    let url = format!("https://{}/mcp", moat_standins::MCP_HOST);
    grant(
        &m,
        &["mcp", "docs", "--url", &url, "--header", "X-Docs-Key"],
        &mcp_secret,
    );
    std::fs::write(
        m.ws.join("moat.yaml"),
        format!(
            "mcp:\n  - name: docs\n    url: {url}\n    auth:\n      grant: mcp:docs\n      header: X-Docs-Key\n"
        ),
    )
    .unwrap();
    m.trust(None);
    let r = says_hello(&m, &st, cli);
    let requests = st.request_lines();
    let seen: Vec<_> = st
        .requests()
        .into_iter()
        .filter(|q| q.host == moat_standins::MCP_HOST)
        .collect();
    for want in ["\"initialize\"", "\"tools/list\""] {
        assert!(
            seen.iter().any(|q| q.contains(want)
                && q.header("x-docs-key") == Some(mcp_secret.as_str())
                && q.status == 200),
            "{cli}: no {want} with the credential:\n{requests}"
        );
    }
    assert!(seen.iter().all(|q| q.status != 401), "{requests}");
    r.leaks_nothing(&mcp_secret);
    for s in [&mcp_secret, &key.to_string()] {
        let hits = moat_testkit::files_containing(m.moat_home(), s.as_bytes());
        assert!(hits.is_empty(), "credential found in {hits:?}");
    }
}

#[test]
fn codex_connects_to_a_remote_mcp_server_through_the_relay() {
    if !docker_ready() {
        return;
    }
    cli_handshakes(
        "codex",
        Kind::OpenAiApiKey,
        "openai",
        &unique("sk-proj-E2eCanary"),
    );
}

#[test]
fn gemini_connects_to_a_remote_mcp_server_through_the_relay() {
    if !docker_ready() {
        return;
    }
    cli_handshakes(
        "gemini",
        Kind::GeminiApiKey,
        "gemini",
        &unique("AIzaE2eCanary"),
    );
}

/// A local stdio MCP server for the tests. At start it asks api.github.com who the
/// `GITHUB_TOKEN` it was given belongs to (with curl, through the run's proxy) and writes
/// what it found, with that token, its working directory and `LEVEL`, to
/// /workspace/local-mcp-seen.txt; its one tool, `whoami`, reports the same.
const WHOAMI: &str = r#"
const { execFileSync } = require('child_process');
const fs = require('fs');
const seen = () => {
  let user;
  try {
    user = execFileSync('curl', ['-sS', '-H', 'Authorization: Bearer ' + process.env.GITHUB_TOKEN, 'https://api.github.com/user']).toString();
  } catch (e) { user = 'curl failed: ' + e.message; }
  return `user=${user.replace(/\s+/g, '')} token=${process.env.GITHUB_TOKEN} cwd=${process.cwd()} level=${process.env.LEVEL}`;
};
fs.writeFileSync('/workspace/local-mcp-seen.txt', seen() + '\n');
const rl = require('readline').createInterface({ input: process.stdin });
const send = (id, result) => process.stdout.write(JSON.stringify({ jsonrpc: '2.0', id, result }) + '\n');
rl.on('line', (line) => {
  const m = JSON.parse(line);
  if (m.id === undefined) return;
  if (m.method === 'initialize') {
    send(m.id, { protocolVersion: m.params.protocolVersion, capabilities: { tools: {} }, serverInfo: { name: 'whoami', version: '1' } });
  } else if (m.method === 'tools/list') {
    send(m.id, { tools: [{ name: 'whoami', description: 'Who the GitHub token belongs to', inputSchema: { type: 'object', properties: {} } }] });
  } else if (m.method === 'tools/call') {
    send(m.id, { content: [{ type: 'text', text: seen() }] });
  } else {
    process.stdout.write(JSON.stringify({ jsonrpc: '2.0', id: m.id, error: { code: -32601, message: 'no such method' } }) + '\n');
  }
});
"#;

/// A moat whose proxies send api.github.com to a GitHub stand-in that accepts only `gh`
/// and everything else to the `o` stand-in; both grants stored; the workspace holds the
/// WHOAMI server and a moat.yaml that gives `cli` it as a local server with `grant:
/// github`, `cwd: /tmp` and `env: LEVEL: debug`.
fn local_server_set_up(
    cli: &str,
    o: Options,
    provider: &str,
    key: &str,
    gh: &str,
) -> (
    moat_e2e::Moat,
    moat_standins::Standin,
    moat_standins::Standin,
) {
    let (mut m, st) = with_standin(o);
    let github = moat_standins::Standin::start_with(Options::new(Kind::GitHub, gh));
    let mut to: Vec<String> = st
        .connect_to()
        .into_iter()
        .filter(|c| !c.starts_with("api.github.com:"))
        .collect();
    to.extend(
        github
            .connect_to()
            .into_iter()
            .filter(|c| c.starts_with("api.github.com:")),
    );
    let cas = m.env.path().join("standin-cas.pem");
    std::fs::write(&cas, format!("{}{}", st.ca_pem(), github.ca_pem())).unwrap();
    m.env
        .env("MOAT_PROXY_CONNECT_TO", to.join(","))
        .env("MOAT_PROXY_EXTRA_CA", &cas);
    grant(&m, &[provider], key);
    grant(&m, &["github"], gh);
    std::fs::write(m.ws.join("whoami.js"), WHOAMI).unwrap();
    // Tool search off: this Claude Code otherwise defers MCP tools behind its ToolSearch
    // tool, a turn the stand-in model does not play.
    std::fs::write(
        m.ws.join("moat.yaml"),
        format!(
            "env:\n  ENABLE_TOOL_SEARCH: \"false\"\n{cli}:\n  mcp:\n    gh:\n      command: node\n      args: [/workspace/whoami.js]\n      grant: github\n      cwd: /tmp\n      env:\n        LEVEL: debug\n"
        ),
    )
    .unwrap();
    m.trust(None);
    (m, st, github)
}

/// What a WHOAMI report must say: GitHub's stand-in knew the user (so the real token
/// arrived there, put in by the proxy) while the server held only the placeholder, in the
/// directory and with the variable moat.yaml gave it.
fn assert_whoami(report: &str, github: &moat_standins::Standin, gh: &str) {
    assert!(
        report.contains("\"login\":\"moat-standin\"")
            && report.contains("token=ghp_moatProxyInjectedPlaceholder")
            && report.contains("cwd=/tmp")
            && report.contains("level=debug"),
        "{report}\n{}",
        github.request_lines()
    );
    assert!(
        github.requests().iter().any(|q| q.host == "api.github.com"
            && q.path_only() == "/user"
            && q.header("authorization") == Some(format!("Bearer {gh}").as_str())
            && q.status == 200),
        "{}",
        github.request_lines()
    );
}

/// `claude.mcp`: Claude Code starts a local server inside the run and calls its tool. Its
/// `grant: github` gives it the placeholder as `GITHUB_TOKEN` (and adds the grant to the
/// run); the proxy swaps the placeholder on the way to api.github.com. The real token is
/// nowhere in the container, the model's requests or MOAT_HOME.
#[test]
fn claude_calls_a_local_mcp_server_whose_grant_reaches_github_through_the_proxy() {
    if !docker_ready() {
        return;
    }
    let key = unique("sk-ant-api03-E2eCanary");
    let gh = unique("ghp_E2eCanary");
    let mut o = Options::new(Kind::AnthropicApiKey, &key);
    o.tool_use = Some("mcp__gh__whoami".into());
    let (m, st, github) = local_server_set_up("claude", o, "anthropic", &key, &gh);
    let r = says_hello(&m, &st, "claude");

    // The tool's answer went back to the model.
    let results: Vec<String> = st
        .requests()
        .into_iter()
        .filter(|q| q.path_only() == "/v1/messages" && q.contains("tool_result"))
        .map(|q| String::from_utf8_lossy(&q.body).into_owned())
        .collect();
    let result = results
        .iter()
        .find(|b| b.contains("moat-standin"))
        .unwrap_or_else(|| {
            panic!(
                "no tool_result with GitHub's answer:\n{results:?}\n{}",
                st.request_lines()
            )
        });
    assert_whoami(&result.replace("\\\"", "\""), &github, &gh);
    // The run's trace names the grant for that request; nothing holds the real tokens.
    let id = m.run_ids().pop().unwrap();
    let trace = std::fs::read_to_string(m.moat_home().join("runs").join(&id).join("network.jsonl"))
        .unwrap_or_default();
    assert!(
        trace
            .lines()
            .any(|l| l.contains("api.github.com/user") && l.contains("\"grant\":\"github\"")),
        "{trace}"
    );
    assert!(
        st.requests().iter().all(|q| !q.contains(&gh)),
        "the GitHub token reached the model"
    );
    for s in [&gh, &key] {
        moat_e2e::agents::leaves_no_trace(&r, &m, s);
    }
}

/// `codex.mcp` and `gemini.mcp`: the CLI starts the local server when its session starts,
/// with the placeholder, the proxy's settings (Codex passes them only by name, through
/// `env_vars`), `cwd:` and `env:`; the server's request reaches GitHub with the real token.
fn cli_starts_a_local_server(cli: &str, kind: Kind, provider: &str, key: &str) {
    let gh = unique("ghp_E2eCanary");
    let (m, st, github) = local_server_set_up(cli, Options::new(kind, key), provider, key, &gh);
    let r = says_hello(&m, &st, cli);
    let report = std::fs::read_to_string(m.ws.join("local-mcp-seen.txt"))
        .unwrap_or_else(|e| panic!("{cli} did not start the local server ({e})"));
    assert_whoami(&report, &github, &gh);
    for s in [&gh, &key.to_string()] {
        moat_e2e::agents::leaves_no_trace(&r, &m, s);
    }
}

#[test]
fn codex_starts_a_local_mcp_server_with_the_grant_and_the_proxy() {
    if !docker_ready() {
        return;
    }
    cli_starts_a_local_server(
        "codex",
        Kind::OpenAiApiKey,
        "openai",
        &unique("sk-proj-E2eCanary"),
    );
}

#[test]
fn gemini_starts_a_local_mcp_server_with_the_grant_and_the_proxy() {
    if !docker_ready() {
        return;
    }
    cli_starts_a_local_server(
        "gemini",
        Kind::GeminiApiKey,
        "gemini",
        &unique("AIzaE2eCanary"),
    );
}
