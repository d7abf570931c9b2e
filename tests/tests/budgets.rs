//! Spend budgets end to end (issue #21): real runs, real proxy, real Claude Code, with the
//! provider stand-ins reporting token usage in each API's wire format. A budget that runs
//! out stops the next model request with the API's own 429, which the agent shows; the
//! request never reaches the provider; usage is in the audit log (which verifies), in
//! `moat trace --usage` and in `moat list`.
//!
//! THREATS: none of the credential threats; these test the spend guardrail as an attack on
//! it (a request past the budget must not reach the provider, a moat.yaml must not raise a
//! budget set on the command line) and that no artifact holds the real key.

use moat_e2e::agents::{canary, grant_token, no_artifact_holds, with_standin};
use moat_e2e::{Moat, docker_ready};
use moat_standins::{Kind, Options, Standin, Usage};
use serde_json::Value;

fn usage() -> Usage {
    Usage {
        input: 100,
        output: 50,
        cache_read: 0,
        cache_write: 0,
    }
}

fn audit_events(m: &Moat, id: &str) -> Vec<Value> {
    let audit = std::fs::read_to_string(m.run_dir(id).join("audit").join("log.jsonl")).unwrap();
    audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["event"].clone())
        .collect()
}

/// The audit log verifies and holds one `usage` event per answered model request and one
/// `budget_exceeded` for `budget`; the trace shows the refused request; `trace --usage`
/// and `list` show the spend.
fn check_records(
    m: &Moat,
    id: &str,
    st: &Standin,
    model_path: impl Fn(&str) -> bool,
    budget: &str,
) {
    let a = m.run_timeout("moat", &["audit", id], None, 60);
    assert_eq!(a.code(), 0, "{}{}", a.stdout(), a.stderr());
    let ev = audit_events(m, id);
    let usage: Vec<&Value> = ev.iter().filter(|e| e["type"] == "usage").collect();
    let answered = st
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && model_path(r.path_only()) && r.status == 200)
        .count();
    assert!(!usage.is_empty(), "no usage event: {ev:?}");
    assert_eq!(
        usage.len(),
        answered,
        "one usage event per answered model request; the refused one never reached the provider:\n{}",
        st.request_lines()
    );
    assert!(
        usage
            .iter()
            .all(|u| u["input_tokens"] == 100 && u["output_tokens"] == 50)
    );
    let over: Vec<&Value> = ev
        .iter()
        .filter(|e| e["type"] == "budget_exceeded")
        .collect();
    assert_eq!(over.len(), 1, "{over:?}");
    assert_eq!(over[0]["budget"], budget);

    let trace = std::fs::read_to_string(m.run_dir(id).join("network.jsonl")).unwrap();
    assert!(
        trace
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|r| r["status"] == 429 && r["policy"] == format!("budget:{budget}")),
        "{trace}"
    );

    let t = m.run_timeout("moat", &["trace", "--usage", id], None, 60);
    assert_eq!(t.code(), 0, "{}", t.stderr());
    let out = t.stdout();
    let total = out.lines().find(|l| l.starts_with("TOTAL")).expect(&out);
    let cols: Vec<&str> = total.split_whitespace().collect();
    assert_eq!(cols[1], answered.to_string(), "{out}");
    assert_eq!(cols[2], (100 * answered).to_string(), "{out}");
    assert!(out.contains(&format!("{budget} budget exceeded")), "{out}");

    let meta = m.metadata(id);
    let cost = meta["usage"]["cost_micro_usd"].as_u64().unwrap();
    assert!(cost > 0, "{meta}");
    let l = m.run_timeout("moat", &["list"], None, 60);
    let row = l
        .stdout()
        .lines()
        .find(|r| r.contains(id))
        .unwrap()
        .to_string();
    assert!(
        row.contains(&format!("${}.", cost / 1_000_000)),
        "{}",
        l.stdout()
    );
    assert!(
        l.stdout().lines().next().unwrap().contains("SPEND"),
        "{}",
        l.stdout()
    );
}

/// Claude Code in `-p` mode: the first answer calls a tool (with an input it rejects), so
/// Claude asks again; the first answer's 150 tokens passed the budget of 100, so the second
/// request gets the budget's 429, which Claude Code prints.
#[test]
fn claude_code_stops_at_its_token_budget_mid_session() {
    if !docker_ready() {
        return;
    }
    let real = canary("sk-ant-api03-");
    let mut o = Options::new(Kind::AnthropicApiKey, &real);
    o.usage = usage();
    o.tool_use = Some("Bash".into());
    let (m, st) = with_standin(o);
    grant_token(&m, &["anthropic"], &real);
    let r = m.run_timeout(
        "moat",
        &[
            "claude",
            "--no-sandbox",
            "--budget",
            "tokens=100",
            "-p",
            "list the files",
        ],
        None,
        900,
    );
    let said = format!("{}{}", r.stdout(), r.stderr());
    assert!(
        said.contains("token budget is used up") && said.contains("--budget tokens="),
        "the CLI did not show the budget message:\n{said}\n{}",
        st.request_lines()
    );
    let id = m.newest_run();
    check_records(&m, &id, &st, |p| p == "/v1/messages", "tokens");
    no_artifact_holds(&m, &real);
}

fn curl_twice(url: &str, header: &str, body: &str) -> String {
    format!(
        "for i in 1 2; do curl -sS -w '\\n@@%{{http_code}}\\n' -H '{header}' -H 'content-type: application/json' --data-binary '{body}' '{url}'; done"
    )
}

/// OpenAI Chat Completions from curl in a run, the budget from moat.yaml (no approval:
/// a budget only narrows what a run may do).
#[test]
fn openai_requests_stop_at_a_moat_yaml_budget() {
    if !docker_ready() {
        return;
    }
    let real = canary("sk-proj-");
    let mut o = Options::new(Kind::OpenAiApiKey, &real);
    o.usage = usage();
    let (m, st) = with_standin(o);
    grant_token(&m, &["openai"], &real);
    m.write_config("budget:\n  tokens: 100\n");
    let r = m.launch_sh(
        &["--grant", "openai"],
        &curl_twice(
            "https://api.openai.com/v1/chat/completions",
            "Authorization: Bearer placeholder",
            r#"{"model":"gpt-5","messages":[{"role":"user","content":"hi"}]}"#,
        ),
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let out = r.stdout();
    let parts: Vec<&str> = out.split("@@").collect();
    assert!(parts[1].starts_with("200"), "{out}");
    assert!(parts[2].starts_with("429"), "{out}");
    let err: Value = serde_json::from_str(parts[1][3..].trim()).unwrap();
    assert_eq!(err["error"]["type"], "insufficient_quota", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("token budget is used up (150 of 100 tokens)"),
        "{err}"
    );
    let id = m.newest_run();
    check_records(&m, &id, &st, |p| p == "/v1/chat/completions", "tokens");
    no_artifact_holds(&m, &real);
}

/// Gemini from curl in a run: `--budget` sets the limit and a moat.yaml that raises it does
/// not win.
#[test]
fn gemini_requests_stop_at_the_flag_budget_a_moat_yaml_cannot_raise() {
    if !docker_ready() {
        return;
    }
    let real = canary("AIza");
    let mut o = Options::new(Kind::GeminiApiKey, &real);
    o.usage = usage();
    let (m, st) = with_standin(o);
    grant_token(&m, &["gemini"], &real);
    m.write_config("budget:\n  tokens: 1000000\n");
    let r = m.launch_sh(
        &["--grant", "gemini", "--budget", "tokens=100"],
        &curl_twice(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:generateContent",
            "x-goog-api-key: placeholder",
            r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
        ),
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let out = r.stdout();
    let parts: Vec<&str> = out.split("@@").collect();
    assert!(parts[1].starts_with("200"), "{out}");
    assert!(parts[2].starts_with("429"), "{out}");
    let err: Value = serde_json::from_str(parts[1][3..].trim()).unwrap();
    assert_eq!(err["error"]["status"], "RESOURCE_EXHAUSTED", "{err}");
    assert_eq!(err["error"]["code"], 429, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(150 of 100 tokens)"),
        "{err}"
    );
    let id = m.newest_run();
    check_records(&m, &id, &st, |p| p.contains(":generateContent"), "tokens");
    no_artifact_holds(&m, &real);
}
