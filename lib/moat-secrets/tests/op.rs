//! `op read` through a stand-in `op` script on PATH (written here): a value, a missing item
//! (exit 1 with op's message on stderr), a missing CLI, a hung CLI; and `op://` secrets
//! through the resolver, whose errors name the secret and never carry op's stdout.

use moat_secrets::env::Env;
use moat_secrets::op::{self, OpError};
use moat_secrets::resolve::Resolver;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const STAND_IN: &str = r#"#!/bin/sh
[ "$1" = read ] || { echo "usage: op read REF" >&2; exit 2; }
case "$2" in
  op://Dev/OpenAI/api-key) printf 'sk-test-value\n' ;;
  op://Dev/Multi/notes) printf 'line1\nline2\n\n' ;;
  op://Dev/Env/home) printf '%s\n' "$HOME" ;;
  op://Dev/Slow/field) exec sleep 30 ;;
  *) echo "stdout-must-not-leak"
     echo "[ERROR] 2026/11/22 03:00:00 \"${2#op://Dev/}\" isn't an item in the \"Dev\" vault." >&2
     echo "second stderr line" >&2
     exit 1 ;;
esac
"#;

fn with_stand_in() -> (tempfile::TempDir, Env) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let op = bin.join("op");
    std::fs::write(&op, STAND_IN).unwrap();
    std::fs::set_permissions(&op, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = Env::from_pairs([
        ("PATH", format!("{}:/usr/bin:/bin", bin.display())),
        ("HOME", dir.path().display().to_string()),
    ]);
    (dir, env)
}

#[tokio::test]
async fn reads_the_value_without_its_trailing_newline() {
    let (_d, env) = with_stand_in();
    let v = op::read(&env, "op://Dev/OpenAI/api-key", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(v.expose(), "sk-test-value");
    // Only one newline is op's; the rest belong to the value.
    let v = op::read(&env, "op://Dev/Multi/notes", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(v.expose(), "line1\nline2\n");
    // op sees the environment it is given (its session lives there).
    let v = op::read(&env, "op://Dev/Env/home", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(v.expose(), env.get("HOME").unwrap());
}

#[tokio::test]
async fn a_missing_item_gives_ops_first_stderr_line_and_not_stdout() {
    let (_d, env) = with_stand_in();
    let err = op::read(&env, "op://Dev/Missing/field", Duration::from_secs(10))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("op read op://Dev/Missing/field failed (exit 1): [ERROR]"),
        "{msg}"
    );
    assert!(msg.contains("isn't an item"), "{msg}");
    assert!(!msg.contains("stdout-must-not-leak") && !msg.contains("second stderr line"));
    assert_eq!(err.exit_code(), moat_core::exit::NOINPUT);
}

#[tokio::test]
async fn a_missing_cli_says_to_install_it() {
    let empty = tempfile::tempdir().unwrap();
    let env = Env::from_pairs([("PATH", empty.path().display().to_string())]);
    let err = op::read(&env, "op://Dev/OpenAI/api-key", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(err, OpError::Missing), "{err}");
    assert!(err.to_string().contains("not on PATH"));
    let err = Resolver::new(env)
        .resolve("OPENAI_API_KEY", "op://Dev/OpenAI/api-key")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("secret OPENAI_API_KEY (op://Dev/OpenAI/api-key): the 1Password CLI"),
        "{err}"
    );
    assert!(err.hint().contains("install"), "{}", err.hint());
}

#[tokio::test]
async fn a_hung_cli_is_killed_at_the_timeout() {
    let (_d, env) = with_stand_in();
    let start = Instant::now();
    let err = op::read(&env, "op://Dev/Slow/field", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(matches!(err, OpError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("op://Dev/Slow/field"));
}

#[tokio::test]
async fn resolver_resolves_op_references_and_names_the_failing_one() {
    let (_d, env) = with_stand_in();
    let r = Resolver::new(env);
    let all = r
        .resolve_all([("OPENAI_API_KEY", "op://Dev/OpenAI/api-key")])
        .await
        .unwrap();
    assert_eq!(all[0].0, "OPENAI_API_KEY");
    assert_eq!(all[0].1.expose(), "sk-test-value");
    assert!(!format!("{all:?}").contains("sk-test-value"));

    let err = r
        .resolve_all([
            ("OPENAI_API_KEY", "op://Dev/OpenAI/api-key"),
            ("DB_PASSWORD", "op://Dev/Gone/password"),
        ])
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("secret DB_PASSWORD (op://Dev/Gone/password): op read"),
        "{msg}"
    );
    assert!(err.hint().contains("op signin"), "{}", err.hint());
    let core: moat_core::Error = err.into();
    assert!(!format!("{core:?}").contains("sk-test-value"));

    let bad = r.resolve("X", "op://Dev/only-two").await.unwrap_err();
    assert!(bad.to_string().contains("op://VAULT/ITEM/FIELD"), "{bad}");
    assert_eq!(bad.exit_code(), moat_core::exit::CONFIG);
}
