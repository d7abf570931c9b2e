//! The manual pages and the tools agree: every option a tool's `--help` lists is documented
//! in its page, and every page is clean under `mandoc -Tlint -Wwarning`.

use moat_testkit::{TestEnv, workspace_root};
use std::process::Command;

const TOOLS: &[&str] = &[
    "moat",
    "moat-launch",
    "moat-grant",
    "moat-proxy",
    "moat-audit",
    "moat-sshd-filter",
];

/// Options a help text lists: indented lines that start with `-x` or `--long`; the option
/// part of a line ends where two spaces separate it from its description.
fn help_options(help: &str) -> Vec<String> {
    let mut opts = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if t.len() == line.len() || !t.starts_with('-') {
            continue;
        }
        let spec = t.split("  ").next().unwrap_or(t);
        for word in spec
            .split([',', ' ', '=', '['])
            .filter(|w| w.starts_with('-'))
        {
            let name: String = word
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if name.len() > 1 && name != "--" && !opts.contains(&name) {
                opts.push(name);
            }
        }
    }
    opts
}

/// Is option `-x` / `--long` documented in the mdoc source (as `.Fl x` / `Fl -long`)?
fn documented(page: &str, opt: &str) -> bool {
    let flag = &opt[1..];
    page.lines().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.windows(2).any(|w| {
            w[0].trim_start_matches('.') == "Fl" && w[1].trim_end_matches([',', '|']) == flag
        })
    })
}

#[test]
fn every_option_in_help_is_in_the_manual() {
    let env = TestEnv::new();
    let mut missing = Vec::new();
    for tool in TOOLS {
        let help = env.run(tool, &["--help"]);
        help.success();
        let page = std::fs::read_to_string(workspace_root().join("man").join(format!("{tool}.1")))
            .unwrap();
        let opts = help_options(&help.stdout());
        assert!(
            opts.iter().any(|o| o == "--help"),
            "{tool} --help lists no --help option:\n{}",
            help.stdout()
        );
        for o in opts {
            if !documented(&page, &o) {
                missing.push(format!("{tool}: {o}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "options in --help but not in the man page:\n{}",
        missing.join("\n")
    );
}

#[test]
fn manual_pages_lint_clean() {
    let man = workspace_root().join("man");
    let mut pages: Vec<_> = std::fs::read_dir(&man)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    pages.sort();
    assert!(
        pages.len() >= 7,
        "expected a page per tool plus moat-files.5"
    );
    let out = Command::new("mandoc")
        .args(["-Tlint", "-Wwarning"])
        .args(&pages)
        .output()
        .expect("mandoc is required (Debian package mandoc)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "mandoc -Tlint:\n{text}"
    );
}

#[test]
fn help_option_parsing_finds_what_a_person_sees() {
    let h = "usage: x\n\nOptions:\n    -d, --detach       run in the background\n    --name NAME        a name (see -x)\n    -n N  lines\n  --json\n";
    assert_eq!(
        help_options(h),
        ["-d", "--detach", "--name", "-n", "--json"]
    );
    let page = ".It Fl d , Fl -detach\n.It Fl -name Ar NAME\n";
    assert!(documented(page, "-d") && documented(page, "--detach") && documented(page, "--name"));
    assert!(!documented(page, "--json"));
}
