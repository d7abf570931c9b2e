//! The mutation suite (THREATS J1-J4): a 1,000-entry log written by the real `append`, then
//! every single-entry modification, insertion, deletion, adjacent swap and every truncation
//! below the last checkpoint, each verified by the verifier the CLI uses, which must name
//! the right kind of fault and the right entry. Forged, foreign-key and forked checkpoints
//! are rejected. The loops run in-process; a handful go through the CLI.

use moat_audit::entry::{self, LineInfo};
use moat_audit::merkle::Frontier;
use moat_audit::note::{Checkpoint, NoteSigner, VerifierKey, split_checkpoints_file};
use moat_audit::verify::{self, FaultKind, Report, Verifier};
use moat_testkit::TestEnv;
use std::collections::HashMap;
use std::sync::OnceLock;

const N: usize = 1000;
const RUN: &str = "run_0123456789ab";

struct Fixture {
    _env: TestEnv,
    lines: Vec<Vec<u8>>,
    checkpoints: String,
    key: VerifierKey,
    signer: NoteSigner,
    cache: HashMap<Vec<u8>, LineInfo>,
}

fn events() -> String {
    (0..N)
        .map(|i| {
            format!(
                "{{\"v\":1,\"type\":\"credential_used\",\"grant\":\"github\",\"host\":\"h{i}.example\",\"request_id\":\"r{i}\"}}\n"
            )
        })
        .collect()
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let env = TestEnv::new();
        env.run_stdin(
            "moat-audit",
            &["append", "--run", RUN, "--checkpoint-every", "100"],
            events().as_bytes(),
        )
        .success();
        let dir = env.moat_home.join("runs").join(RUN).join("audit");
        let log = std::fs::read(dir.join("log.jsonl")).unwrap();
        let checkpoints = std::fs::read_to_string(dir.join("checkpoints")).unwrap();
        let key: VerifierKey = std::fs::read_to_string(env.moat_home.join("audit/signing.pub"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let signer = NoteSigner::from_private_string(
            &std::fs::read_to_string(env.moat_home.join("audit/signing.key")).unwrap(),
        )
        .unwrap();
        let lines: Vec<Vec<u8>> = log
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(lines.len(), N);
        let cache = lines
            .iter()
            .map(|l| (l.clone(), entry::parse_line(l)))
            .collect();
        Fixture {
            _env: env,
            lines,
            checkpoints,
            key,
            signer,
            cache,
        }
    })
}

/// Verify a (mutated) list of lines exactly as the CLI does, reusing the parse of lines
/// that did not change.
fn verify_lines(f: &Fixture, lines: &[Vec<u8>], checkpoints: &str) -> Report {
    let (notes, torn) = split_checkpoints_file(checkpoints);
    let mut v = Verifier::new(&format!("moat-audit/{RUN}"), &notes, &f.key);
    for l in lines {
        v.feed(match f.cache.get(l) {
            Some(i) => i.clone(),
            None => entry::parse_line(l),
        });
    }
    v.finish(None, torn.is_some()).0
}

#[track_caller]
fn expect(r: &Report, kind: FaultKind, entry: Option<u64>, what: &str) {
    let f = r
        .fault
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: not detected"));
    assert_eq!(f.kind, kind, "{what}: {f}");
    if entry.is_some() {
        assert_eq!(f.entry, entry, "{what}: {f}");
    }
}

#[test]
fn the_untouched_log_is_intact() {
    let f = fixture();
    let r = verify_lines(f, &f.lines, &f.checkpoints);
    assert!(r.intact(), "{:?}", r.fault);
    assert_eq!(r.tree_size, Some(N as u64));
    assert_eq!(r.entries, N as u64);
    // 11 checkpoints: the empty tree, every 100 entries... and none extra at the end.
    assert_eq!(r.checkpoints, 11);
    // The streaming reader agrees with the line-by-line feed.
    let bytes: Vec<u8> = f
        .lines
        .iter()
        .flat_map(|l| [&l[..], b"\n"].concat())
        .collect();
    let r2 = verify::verify_bytes(&bytes, &f.checkpoints, &format!("moat-audit/{RUN}"), &f.key);
    assert!(r2.intact());
    assert_eq!(r2.root, r.root);
}

#[test]
fn every_modification_is_detected() {
    let f = fixture();
    for i in 0..N {
        let mut lines = f.lines.clone();
        let s = String::from_utf8(lines[i].clone()).unwrap();
        let m = s.replacen("\"host\":\"h", "\"host\":\"x", 1);
        assert_ne!(s, m);
        lines[i] = m.into_bytes();
        let r = verify_lines(f, &lines, &f.checkpoints);
        if i + 1 < N {
            expect(
                &r,
                FaultKind::Modified,
                Some(i as u64),
                &format!("modify {i}"),
            );
        } else {
            // The last entry has no successor to break; the signed root catches it.
            expect(&r, FaultKind::Modified, None, &format!("modify {i}"));
            assert!(r.fault.unwrap().entry.unwrap() <= i as u64);
        }
    }
    // Changing the chain fields themselves.
    for i in [0usize, 1, 500, 998] {
        let mut lines = f.lines.clone();
        let s = String::from_utf8(lines[i].clone()).unwrap();
        lines[i] = s
            .replacen("\"prev\":\"", "\"prev\":\"f", 1)
            .replacen("\"prev\":\"f0", "\"prev\":\"f", 1)
            .into_bytes();
        let r = verify_lines(f, &lines, &f.checkpoints);
        expect(&r, FaultKind::Modified, None, &format!("prev of {i}"));
        let mut lines = f.lines.clone();
        lines[i] = b"{\"not\":\"an entry\"}".to_vec();
        let r = verify_lines(f, &lines, &f.checkpoints);
        expect(
            &r,
            FaultKind::Modified,
            Some(i as u64),
            &format!("replace {i}"),
        );
    }
}

#[test]
fn every_insertion_is_detected() {
    let f = fixture();
    for i in 0..=N {
        let mut lines = f.lines.clone();
        let j = (i + N / 2) % N;
        lines.insert(i, f.lines[j].clone());
        let r = verify_lines(f, &lines, &f.checkpoints);
        expect(
            &r,
            FaultKind::Inserted,
            Some(i as u64),
            &format!("insert copy of {j} at {i}"),
        );
    }
}

#[test]
fn every_deletion_is_detected() {
    let f = fixture();
    for i in 0..N {
        let mut lines = f.lines.clone();
        lines.remove(i);
        let r = verify_lines(f, &lines, &f.checkpoints);
        if i + 1 < N {
            expect(
                &r,
                FaultKind::Deleted,
                Some(i as u64),
                &format!("delete {i}"),
            );
        } else {
            // Removing the last entry is truncation.
            expect(
                &r,
                FaultKind::Truncated,
                Some(i as u64),
                &format!("delete {i}"),
            );
        }
    }
}

#[test]
fn every_swap_is_detected() {
    let f = fixture();
    for i in 0..N - 1 {
        let mut lines = f.lines.clone();
        lines.swap(i, i + 1);
        let r = verify_lines(f, &lines, &f.checkpoints);
        expect(
            &r,
            FaultKind::Reordered,
            Some(i as u64),
            &format!("swap {i}"),
        );
    }
    // A longer move.
    let mut lines = f.lines.clone();
    let e = lines.remove(10);
    lines.insert(20, e);
    expect(
        &verify_lines(f, &lines, &f.checkpoints),
        FaultKind::Reordered,
        Some(10),
        "move 10 to 20",
    );
}

#[test]
fn every_truncation_below_a_checkpoint_is_detected() {
    let f = fixture();
    for c in 0..N {
        let r = verify_lines(f, &f.lines[..c], &f.checkpoints);
        expect(
            &r,
            FaultKind::Truncated,
            Some(c as u64),
            &format!("truncate to {c}"),
        );
    }
    // Cut in the middle of a line: the torn part is noted and the truncation still found.
    let mut bytes: Vec<u8> = f.lines[..700]
        .iter()
        .flat_map(|l| [&l[..], b"\n"].concat())
        .collect();
    bytes.extend_from_slice(&f.lines[700][..40]);
    let r = verify::verify_bytes(&bytes, &f.checkpoints, &format!("moat-audit/{RUN}"), &f.key);
    expect(&r, FaultKind::Truncated, Some(700), "torn truncation");
    // Removing every checkpoint is not a way out.
    let r = verify_lines(f, &f.lines, "");
    expect(&r, FaultKind::Unsigned, None, "no checkpoints");
}

#[test]
fn a_rewritten_chain_still_fails_the_signed_root() {
    let f = fixture();
    // Re-chain from entry 550 on with changed content, as someone without the key would.
    let mut lines = f.lines[..550].to_vec();
    let mut prev = entry::parse_line(&lines[549]).leaf;
    let mut buf = Vec::new();
    for i in 550..N {
        let ev = serde_json::json!({"v":1,"type":"credential_used","host":"evil.example"});
        entry::build(&mut buf, i as u64, "2026-01-01T00:00:00.000Z", &prev, &ev);
        prev = entry::parse_line(&buf).leaf;
        lines.push(buf.clone());
    }
    let r = verify_lines(f, &lines, &f.checkpoints);
    let fault = r.fault.expect("detected");
    assert_eq!(fault.kind, FaultKind::Modified, "{fault}");
    assert_eq!(fault.entry, Some(500), "{fault}");
}

fn notes(f: &Fixture) -> Vec<String> {
    split_checkpoints_file(&f.checkpoints)
        .0
        .into_iter()
        .map(str::to_string)
        .collect()
}

fn join(notes: &[String]) -> String {
    notes.iter().map(|n| format!("{n}\n")).collect()
}

#[test]
fn forged_and_foreign_checkpoints_are_rejected() {
    let f = fixture();
    let mut ns = notes(f);
    // Change the size a checkpoint claims without re-signing.
    let k = 5;
    ns[k] = ns[k].replacen("\n500\n", "\n400\n", 1);
    let r = verify_lines(f, &f.lines, &join(&ns));
    expect(&r, FaultKind::Forged, None, "edited checkpoint");
    assert_eq!(r.fault.as_ref().unwrap().checkpoint, Some(k));
    assert!(r.fault.unwrap().detail.contains("does not verify"));

    // A correct checkpoint signed by another key with the same name.
    let other = NoteSigner::new("moat-audit", [42u8; 32]);
    let mut ns = notes(f);
    let body = ns[10].split("\n\n").next().unwrap().to_string() + "\n";
    ns[10] = other.sign(&body);
    let r = verify_lines(f, &f.lines, &join(&ns));
    expect(&r, FaultKind::Forged, None, "foreign key");
    assert!(
        r.fault
            .unwrap()
            .detail
            .contains("no signature by the pinned key")
    );

    // A checkpoint of another run, signed by the right key.
    let mut ns = notes(f);
    let cp = Checkpoint {
        origin: "moat-audit/run_other".into(),
        size: 0,
        root: moat_audit::merkle::empty_root(),
    };
    ns.push(f.signer.sign(&cp.body()));
    expect(
        &verify_lines(f, &f.lines, &join(&ns)),
        FaultKind::Forged,
        None,
        "other origin",
    );
}

#[test]
fn forked_checkpoints_are_detected() {
    let f = fixture();
    // The signer also signed a different history of 800 entries (diverging at 500).
    let mut fr = Frontier::new();
    let mut prev = [0u8; 32];
    let mut buf = Vec::new();
    for (i, l) in f.lines.iter().enumerate().take(800) {
        let leaf = if i < 500 {
            entry::parse_line(l).leaf
        } else {
            let ev = serde_json::json!({"v":1,"type":"policy_denied","host":"other.example"});
            entry::build(&mut buf, i as u64, "2026-01-01T00:00:00.000Z", &prev, &ev);
            entry::parse_line(&buf).leaf
        };
        fr.push(leaf);
        prev = leaf;
    }
    let cp = Checkpoint {
        origin: format!("moat-audit/{RUN}"),
        size: 800,
        root: fr.root(),
    };
    let mut ns = notes(f);
    ns.push(f.signer.sign(&cp.body()));
    let r = verify_lines(f, &f.lines, &join(&ns));
    expect(&r, FaultKind::Forked, None, "fork");
    let d = r.fault.unwrap().detail;
    assert!(
        d.starts_with("checkpoints 11 (size 800") && d.contains("and 8 (size 800"),
        "{d}"
    );
}

/// A few mutations through the real CLI, to tie the in-process loops to the binary.
#[test]
fn the_cli_names_the_fault() {
    let env = TestEnv::new();
    env.run_stdin(
        "moat-audit",
        &["append", "--run", RUN, "--checkpoint-every", "100"],
        events().as_bytes(),
    )
    .success();
    let log = env.moat_home.join("runs").join(RUN).join("audit/log.jsonl");
    let orig = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = orig.lines().collect();
    env.run("moat-audit", &[RUN]).success().stdout_has("intact");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            {
                let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                l[41] = l[41].replace("h41.example", "evil.example");
                l
            },
            "modified at entry 41",
        ),
        (
            {
                let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                l.remove(300);
                l
            },
            "deleted at entry 300",
        ),
        (
            {
                let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                l.swap(7, 8);
                l
            },
            "reordered at entry 7",
        ),
        (
            {
                let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                l.insert(600, l[10].clone());
                l
            },
            "inserted at entry 600",
        ),
        (
            lines[..900].iter().map(|s| s.to_string()).collect(),
            "truncated at entry 900",
        ),
    ];
    for (l, want) in cases {
        std::fs::write(&log, l.join("\n") + "\n").unwrap();
        env.run("moat-audit", &["verify", RUN])
            .exit(1)
            .stdout_has("FAILED")
            .stderr_has(want);
        let r = env.run("moat-audit", &[RUN, "--json"]);
        r.exit(1);
        let rec = &r.records()[0];
        assert_eq!(rec.str("verdict"), Some("failed"));
        assert!(want.starts_with(rec.get("fault").unwrap()["kind"].as_str().unwrap()));
    }
    std::fs::write(&log, &orig).unwrap();
    env.run("moat-audit", &[RUN]).success();
}
