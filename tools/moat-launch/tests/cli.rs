//! moat-launch's command line without Docker: usage errors, help, and what the lifecycle
//! commands say when there are no runs.

use moat_testkit::TestEnv;

#[test]
fn usage_errors_exit_64_with_the_usage() {
    let env = TestEnv::new();
    env.run("moat-launch", &[])
        .exit(64)
        .stderr_has("usage: moat-launch");
    env.run("moat-launch", &["frobnicate"])
        .exit(64)
        .stderr_has("unknown command");
    env.run("moat-launch", &["run", "--bogus"]).exit(64);
    env.run("moat-launch", &["run", "a", "b"])
        .exit(64)
        .stderr_has("put the command after --");
    env.run("moat-launch", &["logs", "-n", "x"]).exit(64);
    env.run("moat-launch", &["image"]).exit(64);
    env.run("moat-launch", &["volumes", "rm"]).exit(64);
}

#[test]
fn help_lists_commands_and_options() {
    let env = TestEnv::new();
    env.run("moat-launch", &["--help"])
        .success()
        .stdout_has("run [PATH] [-- CMD...]")
        .stdout_has("--no-sandbox")
        .stdout_has("image bootstrap");
    env.run("moat-launch", &["--version"])
        .success()
        .stdout_has("moat-launch ");
}

#[test]
fn no_runs_is_said_plainly() {
    let env = TestEnv::new();
    env.run("moat-launch", &["logs"])
        .exit(66)
        .stderr_has("there are no runs");
    env.run("moat-launch", &["stop", "nope"])
        .exit(66)
        .stderr_has("no run with id or name \"nope\"");
    env.run("moat-launch", &["trace"]).exit(66);
    env.run("moat-launch", &["list", "--json"])
        .success()
        .stdout_empty();
}

#[test]
fn a_bad_workspace_or_config_fails_before_any_run_exists() {
    let env = TestEnv::new();
    env.run("moat-launch", &["run", "/nonexistent/ws", "--", "true"])
        .exit(66);
    let ws = env.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(
        ws.join("agent.yaml"),
        "volumes:\n  - name: x\n    target: /x\n",
    )
    .unwrap();
    env.run("moat-launch", &["run", ws.to_str().unwrap(), "--", "true"])
        .exit(78)
        .stderr_has("agent.yaml:1: volumes: needs `name`");
    // A secret reference that is not one is refused before anything is resolved.
    std::fs::write(ws.join("agent.yaml"), "secrets:\n  A: vault://v/i/f\n").unwrap();
    env.run("moat-launch", &["run", ws.to_str().unwrap(), "--", "true"])
        .exit(78)
        .stderr_has("secrets: A: unknown secret backend");
    std::fs::write(
        ws.join("agent.yaml"),
        "env:\n  A: x\nsecrets:\n  A: op://v/i/f\n",
    )
    .unwrap();
    env.run("moat-launch", &["run", ws.to_str().unwrap(), "--", "true"])
        .exit(78)
        .stderr_has("A is under both env: and secrets:");
    std::fs::write(ws.join("agent.yaml"), "name: [unclosed\n").unwrap();
    env.run("moat-launch", &["run", ws.to_str().unwrap(), "--", "true"])
        .exit(78)
        .stderr_has("agent.yaml");
    assert!(!env.moat_home.join("runs").exists());
}

/// Reference fields moat has not built are refused (78) at their own line with the reason,
/// before any run exists; a same-named key earlier in the file does not move the line.
#[test]
fn unbuilt_config_fields_are_refused_at_their_line() {
    let env = TestEnv::new();
    let ws = env.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let run = |yaml: &str| {
        std::fs::write(ws.join("moat.yaml"), yaml).unwrap();
        env.run("moat-launch", &["run", ws.to_str().unwrap(), "--", "true"])
    };
    run("hooks:\n  pre_run: x\nnetwork:\n  host: [8080]\n")
        .exit(78)
        .stderr_has("moat.yaml:4: network.host: reaching ports on the host");
    run("tracing:\n  disable_exec: 1\n")
        .exit(78)
        .stderr_has("moat.yaml:2: tracing.disable_exec: must be true");
    run("tracing:\n  disable_exec: true\nsnapshots:\n  triggers:\n    disable_builds: false\n")
        .exit(78)
        .stderr_has("moat.yaml:5: snapshots.triggers.disable_builds: build snapshots");
    run("snapshots:\n  triggers:\n    idle_threshold_seconds: 0\n")
        .exit(78)
        .stderr_has("moat.yaml:3: snapshots.triggers.idle_threshold_seconds: must be 1-86400");
    run("workspace: volume\n")
        .exit(78)
        .stderr_has("moat.yaml:1: workspace: volume workspaces");
    run("mcp:\n  - name: a\n    url: https://a.example/\nname: \"b c\"\n")
        .exit(78)
        .stderr_has("moat.yaml:4: name:");
    assert!(!env.moat_home.join("runs").exists());
}

#[test]
fn no_docker_is_a_clear_failure_of_the_run() {
    let mut env = TestEnv::new();
    env.env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let ws = env.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let r = env.run(
        "moat-launch",
        &["run", ws.to_str().unwrap(), "--no-sandbox", "--", "true"],
    );
    r.exit(69).stderr_has("connecting to Docker");
    let list = env.run("moat-launch", &["list", "--json"]);
    list.success().stdout_has("\"state\":\"failed\"");
}

/// `moat run -p PROMPT` goes to the CLI the workspace's `agent:` names; without one (or
/// with an agent that is not a CLI moat runs) it is refused, never dropped.
#[test]
fn run_p_without_an_agent_cli_is_refused_with_the_reason() {
    let env = TestEnv::new();
    let ws = env.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let w = ws.to_str().unwrap();
    env.run("moat-launch", &["run", w, "-p", "fix the tests"])
        .exit(64)
        .stderr_has("needs `agent: claude|codex|gemini`")
        .stderr_has("moat claude -p");
    std::fs::write(ws.join("moat.yaml"), "agent: my-agent\n").unwrap();
    env.run("moat-launch", &["run", w, "-p", "fix the tests"])
        .exit(64)
        .stderr_has("\"my-agent\" is not claude, codex or gemini");
    std::fs::write(ws.join("moat.yaml"), "agent: claude\n").unwrap();
    env.run("moat-launch", &["run", w, "-p", "x", "--", "true"])
        .exit(64)
        .stderr_has("cannot be run as well");
    // Refused before any run exists.
    let runs = env.path().join("home/.moat/runs");
    assert!(!runs.exists() || std::fs::read_dir(&runs).unwrap().next().is_none());
}
