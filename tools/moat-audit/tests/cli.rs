//! The command line, through the real binary: append and verify, bad producer lines, the
//! single-writer lock, torn-tail repair, run selection, export and offline bundle checks
//! with every way of choosing the key.

use moat_testkit::TestEnv;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

const RUN: &str = "run_aaaaaaaaaaaa";

fn events(n: usize) -> String {
    let mut s = String::from("{\"v\":1,\"type\":\"run_started\",\"run\":\"run_aaaaaaaaaaaa\"}\n");
    for i in 0..n {
        s.push_str(&format!(
            "{{\"v\":1,\"type\":\"credential_used\",\"grant\":\"github\",\"host\":\"api.github.com\",\"request_id\":\"req{i}\"}}\n"
        ));
    }
    s.push_str("{\"v\":1,\"type\":\"ssh_sign\",\"allowed\":false,\"host\":\"evil.example\",\"fingerprint\":\"SHA256:abc\",\"reason\":\"host not granted\"}\n");
    s.push_str("{\"v\":1,\"type\":\"some_future_type\",\"x\":[1,2.5,{\"é\":null}]}\n");
    s.push_str("{\"v\":1,\"type\":\"policy_denied\",\"message\":\"quote \\\" backslash \\\\ tab \\t ctl \\u0001 ls \\u2028 emoji \\ud83d\\ude00 é\",\"n\":1e21,\"f\":0.1}\n");
    s.push_str("{\"v\":1,\"type\":\"run_ended\",\"exit_code\":0}\n");
    s
}

fn append(env: &TestEnv, run: &str, input: &str) {
    env.run_stdin("moat-audit", &["append", "--run", run], input.as_bytes())
        .success();
}

fn audit_dir(env: &TestEnv, run: &str) -> std::path::PathBuf {
    env.moat_home.join("runs").join(run).join("audit")
}

#[test]
fn append_then_verify() {
    let env = TestEnv::new();
    let a = env.run_stdin(
        "moat-audit",
        &["append", "--run", RUN],
        events(20).as_bytes(),
    );
    a.success();
    // First the writer says it is ready (the log is open and signed over), then closed.
    let recs = a.records();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].kind, "audit_ready");
    assert_eq!(recs[0].get("tree_size").unwrap(), 0);
    let closed = &recs[1];
    assert_eq!(closed.kind, "audit_closed");
    assert_eq!(closed.get("appended").unwrap(), 25);
    assert_eq!(closed.get("tree_size").unwrap(), 25);
    assert!(closed.str("checkpoint").unwrap().contains("\n25\n"));
    let r = env.run("moat-audit", &["verify", RUN]);
    r.success()
        .stdout_has("entries      25")
        .stdout_has("tree size    25")
        .stdout_has("verdict      intact");
    let r = env.run("moat-audit", &[RUN, "--json"]);
    r.success();
    let recs = r.records();
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec.kind, "audit_report");
    assert_eq!(rec.str("verdict"), Some("intact"));
    assert_eq!(rec.get("entries").unwrap(), 25);
    assert_eq!(rec.get("tree_size").unwrap(), 25);
    assert_eq!(rec.str("root").unwrap().len(), 64);
    assert_eq!(rec.str("root"), closed.str("root"));
    // The key files: private 0600, public readable, the public one a verifier key line.
    use std::os::unix::fs::PermissionsExt;
    let k = std::fs::metadata(env.moat_home.join("audit/signing.key")).unwrap();
    assert_eq!(k.permissions().mode() & 0o777, 0o600);
    let pubkey = std::fs::read_to_string(env.moat_home.join("audit/signing.pub")).unwrap();
    assert!(pubkey.starts_with("moat-audit+"), "{pubkey}");
    env.run("moat-audit", &["key"])
        .success()
        .stdout_has(pubkey.trim());
    // Entries are canonical JSON with the event unchanged (unknown types pass through).
    let log = std::fs::read_to_string(audit_dir(&env, RUN).join("log.jsonl")).unwrap();
    assert!(log.contains("\"type\":\"some_future_type\""));
    assert!(log.lines().all(|l| l.starts_with("{\"event\":{")));
    // A second append session continues the same chain and tree.
    append(
        &env,
        RUN,
        "{\"v\":1,\"type\":\"image_built\",\"image\":\"moat/x:1\"}\n",
    );
    env.run("moat-audit", &[RUN])
        .success()
        .stdout_has("entries      26");
}

#[test]
fn bad_producer_lines_are_skipped_not_fatal() {
    let env = TestEnv::new();
    let canary = format!("CANARY-{}", std::process::id());
    let input = format!(
        "{{\"v\":1,\"type\":\"a\"}}\nnot json {canary}\n{{\"v\":2,\"type\":\"b\",\"s\":\"{canary}\"}}\n{{\"type\":\"c\"}}\n[1]\n\n{{\"v\":1,\"type\":\"d\"}}\n"
    );
    let r = env.run_stdin("moat-audit", &["append", "--run", RUN], input.as_bytes());
    r.success()
        .stderr_has("skipping input line 2")
        .stderr_has("skipping input line 3")
        .stderr_has("skipping input line 4")
        .stderr_has("skipping input line 5")
        .leaks_nothing(&canary);
    env.run("moat-audit", &[RUN])
        .success()
        .stdout_has("entries      2");
    // A line over 1 MiB is refused without being held whole; the next line still counts.
    let mut big = b"{\"v\":1,\"type\":\"big\",\"x\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 3 << 20));
    big.extend_from_slice(b"\"}\n{\"v\":1,\"type\":\"small\"}\n");
    env.run_stdin("moat-audit", &["append", "--run", RUN], &big)
        .success()
        .stderr_has("longer than 1048576 bytes");
    // Many bad lines: a bounded number of messages, then a count.
    let junk = "junk\n".repeat(5000) + "{\"v\":1,\"type\":\"e\"}\n";
    let r = env.run_stdin("moat-audit", &["append", "--run", RUN], junk.as_bytes());
    r.success().stderr_has("skipped 5000 input lines");
    assert!(r.stderr().lines().count() < 110, "{}", r.stderr());
    env.run("moat-audit", &[RUN])
        .success()
        .stdout_has("entries      4");
}

#[test]
fn a_second_writer_is_refused() {
    let env = TestEnv::new();
    let mut first = env
        .cmd("moat-audit")
        .args(["append", "--run", RUN])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = first.stdin.take().unwrap();
    stdin
        .write_all(b"{\"v\":1,\"type\":\"run_started\"}\n")
        .unwrap();
    // Wait until the first writer holds the run (its first checkpoint is written).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !audit_dir(&env, RUN).join("checkpoints").exists() {
        assert!(Instant::now() < deadline, "first writer never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    // (stdin closed: the second writer must give up before reading anything)
    let r = env.run("moat-audit", &["append", "--run", RUN]);
    r.exit(75).stderr_has("already has a writer");
    drop(stdin);
    assert!(first.wait().unwrap().success());
    env.run("moat-audit", &[RUN])
        .success()
        .stdout_has("entries      1");
}

#[test]
fn a_torn_last_line_passes_with_a_note_and_the_next_writer_repairs_it() {
    let env = TestEnv::new();
    append(&env, RUN, &events(3));
    let log = audit_dir(&env, RUN).join("log.jsonl");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"{\"event\":{\"type\":\"x\",\"v\":1},\"prev\":\"00")
        .unwrap();
    drop(f);
    env.run("moat-audit", &[RUN])
        .success()
        .stdout_has("incomplete")
        .stdout_has("intact");
    // A torn checkpoint as well.
    let cps = audit_dir(&env, RUN).join("checkpoints");
    let mut f = std::fs::OpenOptions::new().append(true).open(&cps).unwrap();
    f.write_all(format!("moat-audit/{RUN}\n9\n").as_bytes())
        .unwrap();
    drop(f);
    env.run("moat-audit", &[RUN])
        .success()
        .stdout_has("incomplete checkpoint");
    let r = env.run_stdin(
        "moat-audit",
        &["append", "--run", RUN],
        b"{\"v\":1,\"type\":\"after_repair\"}\n",
    );
    r.success().stderr_has("cut an incomplete last line");
    let out = env.run("moat-audit", &[RUN]);
    out.success()
        .stdout_has("entries      9")
        .stdout_lacks("note");
}

#[test]
fn a_tampered_log_is_refused_by_append_and_by_export() {
    let env = TestEnv::new();
    append(&env, RUN, &events(10));
    let log = audit_dir(&env, RUN).join("log.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("req3", "reqX", 1)).unwrap();
    env.run_stdin(
        "moat-audit",
        &["append", "--run", RUN],
        b"{\"v\":1,\"type\":\"x\"}\n",
    )
    .exit(65)
    .stderr_has("refusing to append");
    env.run("moat-audit", &[RUN, "--export", "b.json"])
        .exit(1)
        .stderr_has("modified at entry 4");
}

fn write_meta(env: &TestEnv, run: &str, name: &str, created: &str) {
    std::fs::write(
        env.moat_home.join("runs").join(run).join("metadata.json"),
        format!("{{\"name\":\"{name}\",\"created\":\"{created}\"}}"),
    )
    .unwrap();
}

#[test]
fn the_latest_run_is_the_default_and_prefixes_and_names_work() {
    let env = TestEnv::new();
    env.run("moat-audit", &[]).exit(66).stderr_has("no run");
    append(&env, "run_111111111111", "{\"v\":1,\"type\":\"a\"}\n");
    append(
        &env,
        "run_222222222222",
        "{\"v\":1,\"type\":\"a\"}\n{\"v\":1,\"type\":\"b\"}\n",
    );
    append(&env, "run_333333333333", "{\"v\":1,\"type\":\"a\"}\n");
    // The newest by metadata "created", not by directory time.
    write_meta(
        &env,
        "run_111111111111",
        "alpha",
        "2026-01-01T00:00:00.000Z",
    );
    write_meta(&env, "run_222222222222", "beta", "2026-03-01T00:00:00.000Z");
    write_meta(
        &env,
        "run_333333333333",
        "gamma",
        "2026-02-01T00:00:00.000Z",
    );
    env.run("moat-audit", &[])
        .success()
        .stdout_has("run_222222222222");
    env.run("moat-audit", &["verify"])
        .success()
        .stdout_has("run_222222222222");
    env.run("moat-audit", &["run_1"])
        .success()
        .stdout_has("run_111111111111");
    // The seeds' flow: export the latest run, verify the bundle.
    env.run("moat-audit", &["--export", "proof.json"]).success();
    env.run("moat-audit", &["verify-bundle", "proof.json", "--json"])
        .success()
        .stdout_has("\"entries\":2");
    env.run("moat-audit", &["3333"])
        .success()
        .stdout_has("run_333333333333");
    env.run("moat-audit", &["gamma"])
        .success()
        .stdout_has("run_333333333333");
    env.run("moat-audit", &["run_"])
        .exit(64)
        .stderr_has("several runs");
    env.run("moat-audit", &["nope"]).exit(66);
}

#[test]
fn export_and_verify_bundle_with_the_local_key() {
    let env = TestEnv::new();
    append(&env, RUN, &events(50));
    env.run("moat-audit", &[RUN, "--export", "all.json"])
        .success();
    env.run("moat-audit", &["verify-bundle", "all.json"])
        .success()
        .stdout_has("entries      55")
        .stdout_has("intact");
    // Selected entries with inclusion proofs; the other spelling of export.
    env.run(
        "moat-audit",
        &[
            "export",
            RUN,
            "-o",
            "some.json",
            "--entry",
            "0",
            "--entry",
            "17,53",
        ],
    )
    .success();
    let r = env.run("moat-audit", &["verify-bundle", "some.json", "--json"]);
    r.success();
    assert_eq!(r.records()[0].get("entries").unwrap(), 3);
    let b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path().join("some.json")).unwrap()).unwrap();
    assert_eq!(b["complete"], false);
    assert!(
        b["entries"][1]["inclusion"]["proof"]
            .as_array()
            .unwrap()
            .len()
            <= 6
    );
    // Tampering with an exported entry or dropping a checkpoint's consistency proof fails.
    let text = std::fs::read_to_string(env.path().join("some.json")).unwrap();
    std::fs::write(
        env.path().join("bad.json"),
        text.replacen("req16", "reqXX", 1),
    )
    .unwrap();
    env.run("moat-audit", &["verify-bundle", "bad.json"])
        .exit(1)
        .stderr_has("modified at entry 17");
    let all = std::fs::read_to_string(env.path().join("all.json")).unwrap();
    std::fs::write(
        env.path().join("bad2.json"),
        all.replacen("req30", "reqXX", 1),
    )
    .unwrap();
    env.run("moat-audit", &["verify-bundle", "bad2.json"])
        .exit(1)
        .stderr_has("modified at entry 31");
    // An entry past the last checkpoint cannot be proven.
    env.run("moat-audit", &[RUN, "--export", "x.json", "--entry", "55"])
        .exit(64);
    // A bundle pretty-printed by some other tool still verifies: entries are hashed in
    // their canonical form, not as spelled.
    let v: serde_json::Value = serde_json::from_str(&all).unwrap();
    std::fs::write(
        env.path().join("pretty.json"),
        serde_json::to_string_pretty(&v).unwrap(),
    )
    .unwrap();
    env.run("moat-audit", &["verify-bundle", "pretty.json"])
        .success();
    // Duplicate keys are refused, whichever copy a parser would keep.
    std::fs::write(
        env.path().join("dup.json"),
        all.replacen(
            "\"grant\":\"github\"",
            "\"grant\":\"evil\",\"grant\":\"github\"",
            1,
        ),
    )
    .unwrap();
    env.run("moat-audit", &["verify-bundle", "dup.json"])
        .exit(65)
        .stderr_has("same key twice");
}

#[test]
fn a_bundle_from_elsewhere_needs_a_pinned_key() {
    let signer = TestEnv::new();
    append(&signer, RUN, &events(5));
    signer
        .run("moat-audit", &[RUN, "--export", "b.json"])
        .success();
    let bundle = signer.path().join("b.json");
    let pubkey = std::fs::read_to_string(signer.moat_home.join("audit/signing.pub")).unwrap();

    // A verifier with no key of its own.
    let v = TestEnv::new();
    let b = bundle.to_str().unwrap();
    v.run("moat-audit", &["verify-bundle", b])
        .exit(1)
        .stderr_has("no pinned key")
        .stderr_has("--key");
    v.run("moat-audit", &["verify-bundle", b, "--key", pubkey.trim()])
        .success()
        .stdout_has("intact");
    std::fs::write(v.path().join("signer.pub"), &pubkey).unwrap();
    v.run("moat-audit", &["verify-bundle", b, "--key", "signer.pub"])
        .success();
    v.run("moat-audit", &["verify-bundle", b, "--trust-bundle-key"])
        .success()
        .stderr_has("trusting the key inside the bundle");
    // With a local key of its own (a different one), the foreign bundle is refused ...
    v.run("moat-audit", &["key"]).success();
    v.run("moat-audit", &["verify-bundle", b])
        .exit(1)
        .stderr_has("forged")
        .stderr_has("no signature by the pinned key");
    // ... and so is a bundle re-signed by someone else who swapped in their own key.
    let mine = v.run("moat-audit", &["key"]).stdout();
    let mut j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    j["verifier_key"] = serde_json::Value::String(mine.trim().into());
    std::fs::write(v.path().join("swapped.json"), j.to_string()).unwrap();
    v.run(
        "moat-audit",
        &["verify-bundle", "swapped.json", "--key", pubkey.trim()],
    )
    .success();
    v.run(
        "moat-audit",
        &[
            "verify-bundle",
            "swapped.json",
            "--key",
            "moat-audit+00000000+AAAA",
        ],
    )
    .exit(64);
}

#[test]
fn an_empty_bundle_is_not_valid() {
    let env = TestEnv::new();
    append(&env, RUN, &events(2));
    env.run("moat-audit", &[RUN, "--export", "b.json"])
        .success();
    let mut j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path().join("b.json")).unwrap()).unwrap();
    let mut no_entries = j.clone();
    no_entries["entries"] = serde_json::json!([]);
    std::fs::write(env.path().join("e1.json"), no_entries.to_string()).unwrap();
    env.run("moat-audit", &["verify-bundle", "e1.json"])
        .exit(1)
        .stderr_has("empty");
    j["checkpoints"] = serde_json::json!([]);
    j["consistency"] = serde_json::json!([]);
    std::fs::write(env.path().join("e2.json"), j.to_string()).unwrap();
    env.run("moat-audit", &["verify-bundle", "e2.json", "--json"])
        .exit(1)
        .stdout_has("\"kind\":\"empty\"");
    std::fs::write(env.path().join("e3.json"), "{}").unwrap();
    env.run("moat-audit", &["verify-bundle", "e3.json"])
        .exit(65);
    std::fs::write(
        env.path().join("e4.json"),
        "{\"v\":1,\"type\":\"audit_bundle\",\"origin\":\"o\",\"created\":\"t\",\"verifier_key\":\"k\",\"complete\":true,\"checkpoints\":[],\"consistency\":[],\"entries\":[],\"extra\":1}",
    )
    .unwrap();
    env.run("moat-audit", &["verify-bundle", "e4.json"])
        .exit(65)
        .stderr_has("extra");
}

#[test]
fn help_version_and_usage_errors() {
    let env = TestEnv::new();
    let h = env.run("moat-audit", &["--help"]);
    h.success()
        .stdout_has("verify-bundle")
        .stdout_has("--checkpoint-interval");
    env.run("moat-audit", &["--version"])
        .success()
        .stdout_has("moat-audit ");
    env.run("moat-audit", &["append"])
        .exit(64)
        .stderr_has("--run");
    env.run("moat-audit", &["append", "--run", "../x"]).exit(64);
    env.run("moat-audit", &["verify", "--bogus"]).exit(64);
    // Every long option in --help is documented in the man page.
    let page =
        std::fs::read_to_string(moat_testkit::workspace_root().join("man/moat-audit.1")).unwrap();
    for line in h.stdout().lines() {
        for word in line.split_whitespace() {
            if let Some(opt) = word.strip_prefix("--") {
                let opt = opt.trim_end_matches(',');
                assert!(
                    page.contains(&format!("Fl -{opt}")),
                    "man page lacks --{opt}"
                );
            }
        }
    }
}
