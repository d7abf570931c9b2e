//! The porcelain command table: which tool owns each `moat X`, and its one-line summary.

pub struct Command {
    pub name: &'static str,
    pub tool: &'static str,
    pub summary: &'static str,
}

const fn c(name: &'static str, tool: &'static str, summary: &'static str) -> Command {
    Command {
        name,
        tool,
        summary,
    }
}

pub const COMMANDS: &[Command] = &[
    c(
        "run",
        "moat-launch",
        "run a command or agent in an isolated container",
    ),
    c("claude", "moat-launch", "run Claude Code in a container"),
    c("codex", "moat-launch", "run OpenAI Codex in a container"),
    c("gemini", "moat-launch", "run Gemini CLI in a container"),
    c("attach", "moat-launch", "attach to a running run"),
    c("list", "moat-launch", "list runs"),
    c(
        "status",
        "moat-launch",
        "show runs, images, disk use and health",
    ),
    c("logs", "moat-launch", "show a run's output"),
    c("trace", "moat-launch", "show a run's network requests"),
    c(
        "report",
        "moat-launch",
        "write one HTML file showing what a run did",
    ),
    c("stop", "moat-launch", "stop a run"),
    c(
        "destroy",
        "moat-launch",
        "remove a stopped run and its artifacts",
    ),
    c(
        "clean",
        "moat-launch",
        "remove stopped runs and unused images",
    ),
    c(
        "snapshot",
        "moat-launch",
        "snapshot and restore a run's workspace",
    ),
    c(
        "volumes",
        "moat-launch",
        "list and remove persistent volumes",
    ),
    c("deps", "moat-launch", "list the dependencies a run can use"),
    c(
        "promote",
        "moat-launch",
        "keep a run's logs and audit log beyond clean",
    ),
    c(
        "system",
        "moat-launch",
        "list the Docker images and containers moat made",
    ),
    c("wt", "moat-launch", "run in a git worktree for a branch"),
    c(
        "trust",
        "moat-launch",
        "approve what a workspace's moat.yaml asks for",
    ),
    c(
        "policy",
        "moat-launch",
        "learn a strict network policy from a run, or check one against it",
    ),
    c("grant", "moat-grant", "store a credential for runs to use"),
    c("revoke", "moat-grant", "remove a stored credential"),
    c(
        "audit",
        "moat-audit",
        "verify a run's audit log, or export a proof bundle",
    ),
    c(
        "verify-bundle",
        "moat-audit",
        "verify an exported proof bundle offline",
    ),
    c(
        "proxy",
        "moat-proxy",
        "the hostname router (start, stop, status) and the credential proxy",
    ),
    c(
        "completions",
        "moat",
        "print a shell completion script (bash, zsh, fish)",
    ),
];

/// The tools moat is made of, for `moat help` and `--version` checks.
pub const TOOLS: &[&str] = &[
    "moat-launch",
    "moat-grant",
    "moat-proxy",
    "moat-audit",
    "moat-sshd-filter",
];

pub fn find(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}
