//! Interactive `moat claude`, `moat codex`, `moat gemini` on a real terminal (tmux), as a
//! user runs them: the real CLIs from npm against the loopback stand-ins
//! (`moat_standins`). The first interactive run opens straight to the CLI's input prompt,
//! with none of the first-run questions the CLIs ask by themselves (the custom API key,
//! the auto-mode offer, sign-in, theme and folder-trust screens); a typed message gets the
//! stand-in's answer on the screen; the stand-in received the real credential and the
//! container holds only the placeholder. `moat claude -d` keeps the TTY: `moat attach`
//! shows the CLI, Ctrl-/ d detaches with the run still going.

use moat_e2e::agents::{
    ANSWER, canary, container_holds_none, grant_token, no_artifact_holds, says_hello, with_standin,
};
use moat_e2e::tmux::Tmux;
use moat_e2e::{Moat, docker_ready, run_with_deadline};
use moat_standins::{Kind, Options, Standin};

/// What tells one CLI's screen apart.
struct Cli {
    name: &'static str,
    /// Texts of the questions the CLI asks on a first run (none may show).
    questions: &'static [&'static str],
    /// The screen shows the CLI's input prompt.
    at_prompt: fn(&str) -> bool,
    /// The placeholder the container is given.
    placeholder: &'static str,
}

const CLAUDE_QUESTIONS: &[&str] = &[
    "Detected a custom API key",
    "Do you want to use this API key",
    "Make auto mode your default",
    "Quick safety check",
    "Bypass Permissions mode",
    "Choose the text style",
    "Select login method",
];

fn claude(placeholder: &'static str) -> Cli {
    Cli {
        name: "claude",
        questions: CLAUDE_QUESTIONS,
        // The input line (`❯` and what is typed) above the permission-mode footer, which
        // shows only at the prompt.
        at_prompt: |s| {
            s.contains("bypass permissions on")
                && s.lines().any(|l| l.trim_start().starts_with('❯'))
        },
        placeholder,
    }
}

fn codex(placeholder: &'static str) -> Cli {
    Cli {
        name: "codex",
        questions: &[
            "Choose how you want to use Codex",
            "Sign in with ChatGPT",
            "Do you trust",
            "Enable full access?",
            "Paste or type your API key",
        ],
        at_prompt: |s| s.contains("? for shortcuts") && s.lines().any(|l| l.starts_with('›')),
        placeholder,
    }
}

fn gemini(placeholder: &'static str) -> Cli {
    Cli {
        name: "gemini",
        questions: &[
            "Do you trust the files in this folder",
            "How would you like to authenticate",
            "Select Theme",
            "Get started",
        ],
        at_prompt: |s| s.contains("Type your message or @path/to/file"),
        placeholder,
    }
}

/// Text without blanks and without terminal control sequences (CSI `ESC [ ... final`, other
/// `ESC x` pairs).
fn squeeze(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            if it.next() == Some('[') {
                for d in it.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
        } else if !c.is_whitespace() && !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// Bounds of the waits on the screen, in seconds.
const PROMPT_SECS: u64 = 120;
const ANSWER_SECS: u64 = 120;

/// A request to `host` at a path `path_ok` accepts carried `secret`, among the stand-in's
/// requests from number `from` on.
fn reached_since(st: &Standin, from: usize, host: &str, path_ok: fn(&str) -> bool, secret: &str) {
    assert!(
        st.requests()
            .iter()
            .skip(from)
            .any(|q| q.host == host && path_ok(q.path_only()) && q.contains(secret)),
        "no request to {host} after the typed message carried the credential:\n{}",
        st.request_lines()
    );
}

/// The first interactive run of `cli`: the prompt with no question before it, a typed
/// message answered, the credential injected and held by nothing; Ctrl-/ k stops the run.
fn first_run_answers(
    m: &Moat,
    st: &Standin,
    cli: &Cli,
    real: &str,
    host: &str,
    path_ok: fn(&str) -> bool,
) {
    // The CLI's image, built (and its non-interactive answer checked) once before.
    says_hello(m, st, cli.name);
    let t = Tmux::start(m, &format!("moat {} --no-sandbox", cli.name));
    t.wait_for(
        "the CLI's prompt",
        PROMPT_SECS,
        cli.at_prompt,
        cli.questions,
    );
    let id = m.newest_run();
    let meta = m.metadata(&id);
    assert_eq!(meta["interactive"], true, "{meta}");
    let before = st.requests().len();
    t.say("say hello");
    if cli.name == "codex" {
        // Codex shows its prompt before its session is ready and drops an Enter pressed
        // before then (the message stays in the composer, as a person typing fast would
        // see): press Enter again while the message still waits there, as they would.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let screen = t.screen();
            if screen.contains(ANSWER) || !screen.contains("› say hello") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(3));
            t.keys(&["Enter"]);
        }
    }
    t.wait_for(
        "the stand-in's answer",
        ANSWER_SECS,
        |s| s.contains(ANSWER),
        cli.questions,
    );
    reached_since(st, before, host, path_ok, real);
    container_holds_none(&format!("moat-{id}"), cli.placeholder, &[real]);
    // Ctrl-/ k stops the run.
    t.keys(&["C-_", "k"]);
    m.wait_state(&id, &["stopped", "failed"], 60);
    no_artifact_holds(m, real);
}

#[test]
fn claude_opens_to_its_prompt_with_an_api_key_and_answers() {
    if !docker_ready() {
        return;
    }
    let real = canary("sk-ant-api03-");
    let (m, st) = with_standin(Options::new(Kind::AnthropicApiKey, &real));
    grant_token(&m, &["anthropic"], &real);
    first_run_answers(
        &m,
        &st,
        &claude("sk-ant-api03-moatProxyInjected"),
        &real,
        "api.anthropic.com",
        |p| p == "/v1/messages",
    );
}

#[test]
fn codex_opens_to_its_prompt_with_an_api_key_and_answers() {
    if !docker_ready() {
        return;
    }
    let real = canary("sk-proj-");
    let (m, st) = with_standin(Options::new(Kind::OpenAiApiKey, &real));
    grant_token(&m, &["openai"], &real);
    first_run_answers(
        &m,
        &st,
        &codex("sk-moat-proxy-injected-placeholder"),
        &real,
        "api.openai.com",
        |p| p == "/v1/responses",
    );
}

#[test]
fn gemini_opens_to_its_prompt_with_an_api_key_and_answers() {
    if !docker_ready() {
        return;
    }
    let real = canary("AIza");
    let (m, st) = with_standin(Options::new(Kind::GeminiApiKey, &real));
    grant_token(&m, &["gemini"], &real);
    first_run_answers(
        &m,
        &st,
        &gemini("AIzamoatProxyInjectedPlaceholder"),
        &real,
        "generativelanguage.googleapis.com",
        |p| p.contains(":streamGenerateContent"),
    );
}

/// `moat claude -d` starts Claude Code with a TTY and returns; `moat attach` shows its prompt
/// and a typed message is answered; Ctrl-/ d detaches and the run goes on, its output kept.
/// Without a terminal on stdin, `moat attach` follows the output instead (and says how to
/// take the TTY).
#[test]
fn a_detached_claude_keeps_its_tty_for_attach() {
    if !docker_ready() {
        return;
    }
    let real = canary("sk-ant-api03-");
    let (m, st) = with_standin(Options::new(Kind::AnthropicApiKey, &real));
    grant_token(&m, &["anthropic"], &real);
    says_hello(&m, &st, "claude");
    let cli = claude("sk-ant-api03-moatProxyInjected");
    let r = m.run_timeout("moat", &["claude", "--no-sandbox", "-d"], None, 300);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let id = m.newest_run();
    let meta = m.wait_state(&id, &["running"], 120);
    assert_eq!(meta["interactive"], true, "{meta}");
    assert_eq!(meta["detached"], true, "{meta}");

    let t = Tmux::start(&m, &format!("moat attach {id}"));
    t.wait_for(
        "the prompt on attach",
        PROMPT_SECS,
        cli.at_prompt,
        cli.questions,
    );
    let before = st.requests().len();
    t.say("say hello");
    if cli.name == "codex" {
        // Codex shows its prompt before its session is ready and drops an Enter pressed
        // before then (the message stays in the composer, as a person typing fast would
        // see): press Enter again while the message still waits there, as they would.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let screen = t.screen();
            if screen.contains(ANSWER) || !screen.contains("› say hello") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(3));
            t.keys(&["Enter"]);
        }
    }
    t.wait_for(
        "the first answer",
        ANSWER_SECS,
        |s| s.contains(ANSWER),
        cli.questions,
    );
    reached_since(
        &st,
        before,
        "api.anthropic.com",
        |p| p == "/v1/messages",
        &real,
    );

    // Ctrl-/ (tmux's C-_, byte 0x1f) then d: detached, the run goes on.
    t.keys(&["C-_", "d"]);
    t.wait_text("moat: detached from", 30);
    assert_eq!(m.metadata(&id)["state"], "running");
    // The CLI's output is kept (a TUI moves the cursor between words: compared without
    // blanks and escape sequences).
    let logs = m.run_timeout("moat", &["logs", &id], None, 60);
    assert!(
        squeeze(&logs.stdout()).contains(&squeeze(ANSWER)),
        "{}",
        logs.stdout()
    );

    container_holds_none(&format!("moat-{id}"), cli.placeholder, &[&real]);

    // Without a terminal: the output is followed, and stopping the run ends it.
    let mut c = m.env.cmd("moat");
    c.args(["attach", &id]).current_dir(&m.ws);
    let follow = std::thread::spawn(move || run_with_deadline(c, "moat attach".into(), None, 120));
    std::thread::sleep(std::time::Duration::from_secs(3));
    let s = m.run_timeout("moat", &["stop", &id], None, 120);
    assert_eq!(s.code(), 0, "{}", s.stderr());
    let a = follow.join().unwrap();
    assert!(
        a.stderr().contains("stdin is not a terminal"),
        "{}",
        a.stderr()
    );
    assert_eq!(m.metadata(&id)["state"], "stopped");
    no_artifact_holds(&m, &real);
}
