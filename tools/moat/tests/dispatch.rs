//! The dispatcher, run as a user runs it: the real `moat` binary finding the real tools.

use moat_testkit::TestEnv;
use std::os::unix::fs::PermissionsExt;

#[test]
fn version_and_help_list_the_commands() {
    let env = TestEnv::new();
    env.run("moat", &["--version"])
        .success()
        .stdout_has("moat 0.1.0");
    for args in [&[][..], &["help"], &["--help"], &["-h"]] {
        let r = env.run("moat", args);
        r.success();
        for cmd in [
            "run",
            "grant",
            "revoke",
            "audit",
            "verify-bundle",
            "proxy",
            "trace",
            "logs",
        ] {
            assert!(
                r.stdout()
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
                "`moat {}` does not list {cmd}:\n{}",
                args.join(" "),
                r.stdout()
            );
        }
    }
}

#[test]
fn help_shows_the_owning_tools_manual() {
    let env = TestEnv::new();
    let r = env.run("moat", &["help", "proxy"]);
    r.success().stdout_has("moat-proxy").stdout_has("SYNOPSIS");
    // A porcelain command opens the page of the tool that owns it.
    env.run("moat", &["help", "run"])
        .success()
        .stdout_has("moat-launch");
    env.run("moat", &["help", "files"])
        .success()
        .stdout_has("MOAT_HOME");
    env.run("moat", &["help", "nonsense"])
        .exit(64)
        .stderr_has("'nonsense' is not a moat command");
}

#[test]
fn commands_dispatch_to_their_tool() {
    let env = TestEnv::new();
    // `moat grant --help` is moat-grant's help (the word `grant` is the tool's own suffix).
    let direct = env.run("moat-grant", &["--help"]);
    let via = env.run("moat", &["grant", "--help"]);
    via.success();
    assert_eq!(via.stdout(), direct.stdout());
    assert!(via.stdout().contains("moat-grant"), "{}", via.stdout());
    env.run("moat", &["proxy", "--version"])
        .success()
        .stdout_has("moat-proxy 0.1.0");
    env.run("moat", &["audit", "--version"])
        .success()
        .stdout_has("moat-audit 0.1.0");
}

#[test]
fn unknown_commands_exit_64_with_a_suggestion() {
    let env = TestEnv::new();
    env.run("moat", &["grnat"])
        .exit(64)
        .stderr_has("moat: 'grnat' is not a moat command")
        .stderr_has("grant")
        .stdout_empty();
    env.run("moat", &["frobnicate-the-world"])
        .exit(64)
        .stderr_lacks("most similar");
    env.run("moat", &["--bogus"])
        .exit(64)
        .stderr_has("usage: moat");
    env.run("moat", &["../moat-grant"]).exit(64);
}

#[test]
fn extensions_on_path_run_like_git_subcommands() {
    let mut env = TestEnv::new();
    let bin = env.path().join("ext-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("moat-hello");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"hello from an extension: $*\"\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    env.env("PATH", &path);
    let r = env.run("moat", &["hello", "--loud", "a b"]);
    r.exit(3).stdout_has("hello from an extension: --loud a b");
    env.run("moat", &["--help"]).success().stdout_has("hello");
    // A near miss of an extension name is suggested too.
    env.run("moat", &["helo"]).exit(64).stderr_has("hello");
}
