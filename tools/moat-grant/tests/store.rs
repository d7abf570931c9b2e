//! The store through the real binary: the key file fallback, list, revoke, rules, and
//! every kind of bad input rejected with its message while the other credentials survive.

mod common;

use common::*;
use moat_testkit::TestEnv;
use std::fs;
use std::os::unix::fs::PermissionsExt;

/// Three credentials to damage one of.
fn three() -> TestEnv {
    let t = TestEnv::new();
    store_token(&t, &["github"], "ghp_first0000000000000000000000000000000");
    store_token(&t, &["openai"], "sk-second");
    store_token(&t, &["gemini"], "AIzathird");
    t
}

/// The two undamaged credentials still list and give their rules.
#[track_caller]
fn others_intact(t: &TestEnv) {
    let r = t.run("moat-grant", &["list", "--json"]);
    let names: Vec<_> = r
        .records()
        .iter()
        .filter(|r| r.kind == "grant")
        .map(|r| r.str("name").unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["gemini", "openai"], "{}", r.stderr());
    let recs = rules(t, &["openai", "gemini"]);
    assert!(
        recs.iter()
            .any(|r| r.str("value") == Some("Bearer sk-second"))
    );
    assert!(recs.iter().any(|r| r.str("value") == Some("AIzathird")));
}

#[test]
fn file_key_round_trip_with_one_note() {
    let t = TestEnv::new();
    let r = store_token(&t, &["github"], "ghp_abc");
    r.stderr_has("note:").stderr_has("encryption.key");
    let mode = fs::metadata(key_file(&t)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let cm = fs::metadata(cred_path(&t, "github"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(cm, 0o600);
    let r = store_token(&t, &["openai"], "sk-x");
    r.stderr_lacks("note:");
    let recs = rules(&t, &["github"]);
    assert_eq!(recs[0].str("value"), Some("Bearer ghp_abc"));
    assert_eq!(recs[0].kind, "inject");
}

#[test]
fn list_shows_a_table_and_records_without_secrets() {
    let t = three();
    let r = t.run("moat-grant", &["list"]);
    r.success()
        .stdout_has("NAME")
        .stdout_has("PROVIDER")
        .stdout_has("HOSTS")
        .stdout_has("EXPIRES")
        .stdout_has("api.github.com")
        .leaks_nothing("ghp_first")
        .leaks_nothing("sk-second")
        .leaks_nothing("AIzathird");
    let r = t.run("moat-grant", &["list", "--json"]);
    r.success()
        .leaks_nothing("ghp_first")
        .leaks_nothing("sk-second");
    let recs = r.records();
    assert_eq!(recs.len(), 3);
    assert!(
        recs.iter()
            .all(|r| r.kind == "grant" && r.str("created_at").is_some())
    );
    // An empty store is not an error.
    let e = TestEnv::new();
    e.run("moat-grant", &["list"]).success().stdout_empty();
    e.run("moat-grant", &["list", "--json"])
        .success()
        .stdout_empty();
}

#[test]
fn revoke_removes_exactly_one() {
    let t = three();
    t.run("moat-grant", &["revoke", "github"])
        .success()
        .stderr_has("revoked github");
    assert!(!cred_path(&t, "github").exists());
    assert_eq!(listed(&t), vec!["gemini", "openai"]);
    t.run("moat-grant", &["revoke", "github"])
        .exit(66)
        .stderr_has("no credential named \"github\"");
    // A typo among several names removes nothing.
    t.run("moat-grant", &["revoke", "openai", "nope"]).exit(66);
    assert_eq!(listed(&t), vec!["gemini", "openai"]);
}

#[test]
fn rules_for_unknown_names_print_nothing() {
    let t = three();
    t.run("moat-grant", &["rules", "github", "nope"])
        .exit(66)
        .stdout_empty()
        .stderr_has("no credential named \"nope\"");
}

#[test]
fn rules_refuse_a_terminal() {
    let t = three();
    // script(1) gives the command a pseudo-terminal as stdout.
    let out = t
        .program("script")
        .args(["-qec", "moat-grant rules github", "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{all}");
    assert!(
        all.contains("refusing to print credentials to a terminal"),
        "{all}"
    );
    assert!(!all.contains("ghp_first"), "{all}");
}

#[test]
fn damaged_files_fail_alone() {
    let t = three();
    let path = cred_path(&t, "github");
    let good = fs::read(&path).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x04;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() - 7].to_vec(), "does not decrypt"),
        ("short", good[..10].to_vec(), "truncated"),
        ("empty", Vec::new(), "empty"),
        ("bit flip", flipped, "does not decrypt"),
        ("swapped", fs::read(cred_path(&t, "openai")).unwrap(), "does not decrypt"),
        ("version", [&[9u8][..], &good[1..]].concat(), "format version 9"),
        ("garbage json", seal(&t, "github", b"{not json"), "not a valid credential"),
        (
            "wrong shape",
            seal(&t, "github", br#"{"format":"ghp_shapeSECRET"}"#),
            "not a valid credential",
        ),
        (
            "unknown provider",
            seal(
                &t,
                "github",
                br#"{"format":1,"name":"github","provider":"frob","kind":"x","source":"x","created_at":"x"}"#,
            ),
            "unknown provider",
        ),
        (
            "other name inside",
            seal(
                &t,
                "github",
                br#"{"format":1,"name":"openai","provider":"openai","kind":"api_key","source":"x","created_at":"x"}"#,
            ),
            "another name",
        ),
    ];
    for (what, bytes, msg) in cases {
        fs::write(&path, &bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let r = t.run("moat-grant", &["list"]);
        r.exit(65)
            .stderr_has("credential github")
            .stderr_has(msg)
            .stdout_has("openai")
            .leaks_nothing("ghp_shapeSECRET");
        assert_eq!(r.stderr().lines().count(), 2, "{what}: {}", r.stderr());
        let r = t.run("moat-grant", &["rules", "github", "openai"]);
        r.exit(65).stdout_empty().stderr_has("credential github");
        let r = t.run("moat-grant", &["list", "--json"]);
        r.exit(65);
        assert!(
            r.records()
                .iter()
                .any(|x| x.kind == "unreadable" && x.str("name") == Some("github")),
            "{what}"
        );
        others_intact(&t);
    }
    // Put it back: nothing about the store was changed by the failures.
    fs::write(&path, &good).unwrap();
    assert_eq!(listed(&t), vec!["gemini", "github", "openai"]);
    // A damaged file can always be revoked, and then granted again.
    fs::write(&path, b"junk").unwrap();
    t.run("moat-grant", &["revoke", "github"]).success();
    store_token(&t, &["github"], "ghp_again");
    assert_eq!(listed(&t), vec!["gemini", "github", "openai"]);
}

#[test]
fn credential_file_with_loose_mode_or_symlink_is_refused() {
    let t = three();
    let path = cred_path(&t, "github");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    t.run("moat-grant", &["list"])
        .exit(77)
        .stderr_has("chmod 600");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let elsewhere = t.path().join("github.enc");
    fs::rename(&path, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    t.run("moat-grant", &["list"])
        .exit(77)
        .stderr_has("symlink");
    others_intact(&t);
}

#[test]
fn key_file_with_loose_mode_is_refused_and_nothing_is_lost() {
    let t = three();
    let k = key_file(&t);
    fs::set_permissions(&k, fs::Permissions::from_mode(0o644)).unwrap();
    for args in [&["list"][..], &["rules", "github"]] {
        t.run("moat-grant", args)
            .exit(77)
            .stderr_has("encryption.key has mode 0644")
            .stderr_has("chmod 600")
            .stdout_empty();
    }
    grant(&t, &["npm", "--token-stdin"], &[], b"npm_x").exit(77);
    fs::set_permissions(&k, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(listed(&t), vec!["gemini", "github", "openai"]);
}

#[test]
fn key_file_behind_a_symlink_is_refused() {
    let t = three();
    let k = key_file(&t);
    let elsewhere = t.path().join("stolen.key");
    fs::rename(&k, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &k).unwrap();
    t.run("moat-grant", &["list"])
        .exit(77)
        .stderr_has("symlink");
    store_token_fails(&t);
    fs::remove_file(&k).unwrap();
    fs::rename(&elsewhere, &k).unwrap();
    assert_eq!(listed(&t), vec!["gemini", "github", "openai"]);
}

fn store_token_fails(t: &TestEnv) {
    let r = grant(t, &["npm", "--token-stdin"], &[], b"npm_x");
    assert_ne!(r.code(), 0, "{}", r.stderr());
    assert!(!cred_path(t, "npm").exists());
}

#[test]
fn a_missing_key_names_what_cannot_be_read_and_is_not_regenerated() {
    let t = three();
    let k = key_file(&t);
    let saved = fs::read(&k).unwrap();
    fs::remove_file(&k).unwrap();
    t.run("moat-grant", &["list"])
        .exit(78)
        .stderr_has("encryption key is missing")
        .stderr_has("gemini, github, openai")
        .stderr_has("revoke");
    t.run("moat-grant", &["rules", "github"])
        .exit(78)
        .stdout_empty();
    store_token_fails(&t);
    assert!(!k.exists(), "a new key was made while credentials exist");
    fs::write(&k, &saved).unwrap();
    fs::set_permissions(&k, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(listed(&t), vec!["gemini", "github", "openai"]);
}

#[test]
fn a_wrong_key_names_every_credential() {
    let t = three();
    let k = key_file(&t);
    let saved = fs::read(&k).unwrap();
    fs::write(&k, "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=\n").unwrap();
    let r = t.run("moat-grant", &["list"]);
    r.exit(65)
        .stderr_has("credential github")
        .stderr_has("credential openai")
        .stderr_has("credential gemini")
        .stderr_has("different key")
        .stderr_has("3 of 3");
    fs::write(&k, "not a key\n").unwrap();
    t.run("moat-grant", &["list"])
        .exit(65)
        .stderr_has("not a moat key file");
    fs::write(&k, &saved).unwrap();
    assert_eq!(listed(&t), vec!["gemini", "github", "openai"]);
}

#[test]
fn bad_input_is_rejected_and_the_store_is_untouched() {
    let t = three();
    let before: Vec<Vec<u8>> = ["github", "openai", "gemini"]
        .iter()
        .map(|n| fs::read(cred_path(&t, n)).unwrap())
        .collect();
    t.run("moat-grant", &["frobnicate"])
        .exit(64)
        .stderr_has("unknown command or provider \"frobnicate\"");
    t.run("moat-grant", &[]).exit(64).stderr_has("usage:");
    grant(&t, &["github", "--token-stdin"], &[], b"\n")
        .exit(65)
        .stderr_has("GitHub token is empty");
    grant(&t, &["openai", "--token-stdin"], &[], b"")
        .exit(65)
        .stderr_has("is empty");
    grant(&t, &["github", "--token-stdin"], &[], b"ghp_a\r\nX-Evil: 1")
        .exit(65)
        .stderr_has("control")
        .leaks_nothing("X-Evil");
    grant(
        &t,
        &["github", "--token-stdin", "--name", "../x"],
        &[],
        b"ghp_a",
    )
    .exit(64)
    .stderr_has("bad name");
    grant(&t, &["github"], &[("GH_TOKEN", "   ")], b"").exit(66);
    grant(
        &t,
        &[
            "http",
            "github",
            "--host",
            "a.example",
            "--header",
            "X",
            "--token-stdin",
        ],
        &[],
        b"t",
    )
    .exit(64)
    .stderr_has("provider's name");
    grant(
        &t,
        &["http", "x", "--host", "*", "--header", "X", "--token-stdin"],
        &[],
        b"t",
    )
    .exit(64);
    grant(
        &t,
        &[
            "http",
            "x",
            "--host",
            "a.example",
            "--header",
            "Bad Header",
            "--token-stdin",
        ],
        &[],
        b"t",
    )
    .exit(64);
    grant(&t, &["github", "--url", "x"], &[], b"")
        .exit(64)
        .stderr_has("does not take --url");
    let after: Vec<Vec<u8>> = ["github", "openai", "gemini"]
        .iter()
        .map(|n| fs::read(cred_path(&t, n)).unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(listed(&t), vec!["gemini", "github", "openai"]);
}

#[test]
fn help_lists_every_command() {
    let t = TestEnv::new();
    let r = t.run("moat-grant", &["--help"]);
    r.success();
    for w in [
        "github",
        "ssh",
        "mcp",
        "aws",
        "http",
        "list",
        "revoke",
        "rules",
        "--token-stdin",
        "--no-validate",
    ] {
        r.stdout_has(w);
    }
    t.run("moat-grant", &["--version"])
        .success()
        .stdout_has("moat-grant ");
}

#[test]
fn update_merges_refreshed_tokens_and_keeps_the_rest() {
    let t = TestEnv::new();
    store_token(&t, &["anthropic"], "sk-ant-oat01-old");
    store_token(&t, &["github"], "ghp_other");
    let r = grant(
        &t,
        &["update", "anthropic"],
        &[],
        br#"{"secret":{"access_token":"sk-ant-oat01-new"},"expires_at":"2100-01-01T00:00:00Z"}"#,
    );
    r.success()
        .stderr_has("updated anthropic")
        .leaks_nothing("sk-ant-oat01-new");
    let recs = rules(&t, &["anthropic"]);
    assert_eq!(recs[0].str("value"), Some("Bearer sk-ant-oat01-new"));
    let l = t.run("moat-grant", &["list", "--json"]);
    let a = l
        .records()
        .into_iter()
        .find(|r| r.str("name") == Some("anthropic"))
        .unwrap();
    assert_eq!(a.str("expires_at"), Some("2100-01-01T00:00:00Z"));
    assert_eq!(a.str("kind"), Some("oauth"));
    // Fields the credential does not have, bad values, bad JSON, unknown names.
    grant(
        &t,
        &["update", "anthropic"],
        &[],
        br#"{"secret":{"nope":"x"}}"#,
    )
    .exit(65)
    .stderr_has("no secret field \"nope\"");
    grant(
        &t,
        &["update", "anthropic"],
        &[],
        br#"{"secret":{"access_token":"a b"}}"#,
    )
    .exit(65);
    grant(
        &t,
        &["update", "anthropic"],
        &[],
        b"{\"secret\": sk-ant-oat01-leak",
    )
    .exit(65)
    .leaks_nothing("sk-ant-oat01-leak");
    grant(&t, &["update", "anthropic"], &[], b"{}")
        .exit(65)
        .stderr_has("nothing to update");
    grant(&t, &["update", "nope"], &[], br#"{"expires_at":null}"#).exit(66);
    assert_eq!(
        rules(&t, &["anthropic"])[0].str("value"),
        Some("Bearer sk-ant-oat01-new")
    );
    assert_eq!(
        rules(&t, &["github"])[0].str("value"),
        Some("Bearer ghp_other")
    );
}
