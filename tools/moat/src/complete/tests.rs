use super::*;
use moat_testkit::TestEnv;

fn w(line: &str) -> Vec<String> {
    let mut v: Vec<String> = line.split(' ').map(String::from).collect();
    if v.len() == 1 {
        v.push(String::new());
    }
    v
}

/// Candidates for the line `line`, completing its last word.
fn at(home: Option<&MoatHome>, line: &str) -> (&'static str, Vec<String>) {
    let words = w(line);
    candidates(home, &words, words.len() - 1)
}

fn fake_home() -> (tempfile::TempDir, MoatHome) {
    let d = tempfile::tempdir().unwrap();
    let h = MoatHome::at(d.path());
    let runs = h.runs_dir();
    std::fs::create_dir_all(&runs).unwrap();
    for (id, name) in [("run_aaaaaaaaaaaa", "alpha"), ("run_bbbbbbbbbbbb", "beta")] {
        std::fs::create_dir(runs.join(id)).unwrap();
        run_names::record(&h, id, name);
    }
    // A run the names file does not know: its name comes from its metadata.
    std::fs::create_dir(runs.join("run_cccccccccccc")).unwrap();
    std::fs::write(
        runs.join("run_cccccccccccc/metadata.json"),
        r#"{"v":1,"id":"run_cccccccccccc","name":"gamma"}"#,
    )
    .unwrap();
    // A removed run's line stays in the file and is not offered.
    run_names::record(&h, "run_dddddddddddd", "removed");
    std::fs::create_dir_all(
        h.run_dir("run_aaaaaaaaaaaa")
            .join("snapshots/snap_0123456789ab"),
    )
    .unwrap();
    std::fs::create_dir_all(h.run_dir("run_aaaaaaaaaaaa").join("snapshots/.tmp-snap_x")).unwrap();
    let cred = h.credentials_dir();
    std::fs::create_dir_all(&cred).unwrap();
    for f in [
        "github.enc",
        "ssh:github.com.enc",
        ".lock",
        "odd%20name.enc",
    ] {
        std::fs::write(cred.join(f), b"ciphertext").unwrap();
    }
    std::fs::create_dir_all(h.volumes_dir().join("claude/cache")).unwrap();
    (d, h)
}

#[test]
fn commands_flags_and_values_complete() {
    let (_d, h) = fake_home();
    let h = Some(&h);
    let (k, c) = at(h, "moat lo");
    assert_eq!((k, c), ("words", vec!["logs".to_string()]));
    assert!(at(h, "moat ").1.contains(&"completions".to_string()));
    assert_eq!(at(h, "moat run --g").1, ["--grant"]);
    assert_eq!(
        at(h, "moat logs ").1,
        [
            "alpha",
            "beta",
            "gamma",
            "run_aaaaaaaaaaaa",
            "run_bbbbbbbbbbbb",
            "run_cccccccccccc"
        ]
    );
    assert_eq!(at(h, "moat stop b").1, ["beta"]);
    assert_eq!(at(h, "moat revoke ").1, ["github", "ssh:github.com"]);
    assert_eq!(at(h, "moat run -g ").1, ["github", "ssh:github.com"]);
    assert_eq!(
        at(h, "moat run --grant github -e X=1 -g s").1,
        ["ssh:github.com"]
    );
    assert_eq!(at(h, "moat grant n").1, ["npm"]);
    assert_eq!(at(h, "moat grant npm --r").1, ["--registry"]);
    assert_eq!(
        at(h, "moat grant ssh --h").1,
        ["--help", "--host", "--host-key"]
    );
    assert!(at(h, "moat deps info ").1.contains(&"postgres".to_string()));
    assert_eq!(at(h, "moat volumes rm ").1, ["claude", "claude/cache"]);
    assert_eq!(
        at(h, "moat snapshot restore alpha ").1,
        ["snap_0123456789ab"]
    );
    assert_eq!(at(h, "moat run --policy ").1, ["permissive", "strict"]);
    assert_eq!(at(h, "moat run ").0, "dirs");
    assert_eq!(at(h, "moat run -- ").0, "files");
    assert_eq!(at(h, "moat verify-bundle ").0, "files");
    assert_eq!(at(h, "moat audit --export ").0, "files");
    assert_eq!(at(h, "moat audit verify ").1.len(), 6);
    assert_eq!(at(h, "moat help fi").1, ["files"]);
    assert_eq!(at(h, "moat completions ").1, ["bash", "fish", "zsh"]);
    assert_eq!(at(h, "moat proxy st").1, ["start", "status", "stop"]);
    assert_eq!(
        at(h, "moat proxy status --").1,
        ["--help", "--json", "--port"]
    );
    assert_eq!(at(None, "moat logs ").1, Vec::<String>::new());
}

#[test]
fn hostile_names_are_never_offered() {
    let (_d, h) = fake_home();
    std::fs::create_dir(h.run_dir("run_eeeeeeeeeeee")).unwrap();
    std::fs::write(
        h.run_dir("run_eeeeeeeeeeee").join("metadata.json"),
        r#"{"name":"x;$(touch pwned)"}"#,
    )
    .unwrap();
    std::fs::write(h.credentials_dir().join("a%0Ab.enc"), b"x").unwrap();
    let all = [at(Some(&h), "moat logs ").1, at(Some(&h), "moat revoke ").1].concat();
    assert!(all.iter().all(|c| plain(c)), "{all:?}");
    assert!(!all.iter().any(|c| c.contains("pwned") || c.contains('\n')));
}

/// The arguments that put a tool's parser in `context` (before the option under test).
fn prefix(context: &str) -> Vec<&str> {
    match context {
        "wt" => vec!["wt", "branch"],
        "volumes" => vec!["volumes", "rm"],
        "system" => vec!["system", "images"],
        c => c.split(' ').collect(),
    }
}

/// Every option the completion offers is accepted by the parser of the tool that `moat`
/// runs for it, and an option that does not exist is refused (so the check can fail).
#[test]
fn every_flag_listed_is_accepted_by_its_tool() {
    let env = TestEnv::new();
    for (context, _) in FLAGS {
        if *context == "help" {
            continue;
        }
        let pre = prefix(context);
        let help: &[&str] = if *context == "proxy ca-path" {
            &[]
        } else {
            &["--help"]
        };
        for f in flags(context) {
            let mut forms = vec![f.long.to_string()];
            forms.extend(f.short.map(|c| format!("-{c}")));
            for form in forms {
                let mut args = pre.clone();
                args.push(&form);
                let dir = env.path().join("ca");
                let dir = dir.to_string_lossy().into_owned();
                if f.value.is_some() {
                    args.push(if f.value == Some(Kind::Dir) {
                        &dir
                    } else {
                        "1"
                    });
                }
                if form != "--help" && form != "-h" {
                    args.extend_from_slice(help);
                }
                let r = env.run("moat", &args);
                assert_eq!(r.code(), 0, "moat {args:?}: {}", r.stderr());
            }
        }
        let mut bad = pre.clone();
        bad.push("--no-such-option");
        bad.extend_from_slice(help);
        let r = env.run("moat", &bad);
        assert_eq!(r.code(), 64, "moat {bad:?} was accepted: {}", r.stdout());
    }
}

#[test]
fn providers_are_moat_grants() {
    let env = TestEnv::new();
    let r = env.run("moat", &["grant", "nonsense"]);
    assert_eq!(r.code(), 64);
    let listed = r
        .stderr()
        .split("providers: ")
        .nth(1)
        .expect("moat-grant lists its providers")
        .split(')')
        .next()
        .unwrap()
        .split(", ")
        .map(String::from)
        .collect::<Vec<_>>();
    assert_eq!(listed, PROVIDERS);
}

#[test]
fn deps_come_from_the_registry() {
    let d = deps();
    for n in ["node", "python", "postgres"] {
        assert!(d.contains(&n.to_string()), "{d:?}");
    }
    assert!(d.iter().all(|n| plain(n)));
}

#[test]
fn completions_needs_a_known_shell() {
    let env = TestEnv::new();
    for sh in ["bash", "zsh", "fish"] {
        let r = env.run("moat", &["completions", sh]);
        assert_eq!(r.code(), 0);
        assert!(r.stdout().contains("__complete"), "{sh}");
    }
    assert_eq!(env.run("moat", &["completions"]).code(), 64);
    assert_eq!(env.run("moat", &["completions", "tcsh"]).code(), 64);
    assert_eq!(env.run("moat", &["completions", "bash", "zsh"]).code(), 64);
    assert_eq!(env.run("moat", &["completions", "--help"]).code(), 0);
    assert_eq!(env.run("moat", &["__complete", "x", "moat"]).code(), 64);
    assert_eq!(env.run("moat", &["__complete", "--help"]).code(), 0);
    let r = env.run("moat", &["__complete", "1", "moat", "lo"]);
    assert_eq!(r.stdout(), "words\nlogs\n");
}

#[test]
fn the_go_moats_runs_are_not_offered() {
    let (_d, h) = fake_home();
    let go = h.run_dir("run_a1b2c3d4e5f6");
    std::fs::create_dir(&go).unwrap();
    std::fs::write(
        go.join("metadata.json"),
        r#"{"name":"go-run","workspace":"/src","grants":[],"agent":"claude","state":"stopped","created_at":"2025-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let c = at(Some(&h), "moat destroy ").1;
    assert!(c.contains(&"gamma".to_string()), "{c:?}");
    assert!(
        !c.iter().any(|x| x == "go-run" || x == "run_a1b2c3d4e5f6"),
        "{c:?}"
    );
}
