//! The man page documents every option `--help` lists and is mandoc-clean.

use moat_testkit::{TestEnv, workspace_root};

#[test]
fn every_help_option_is_in_the_man_page() {
    let t = TestEnv::new();
    let help = t.run("moat-grant", &["--help"]);
    help.success();
    let page = std::fs::read_to_string(workspace_root().join("man/moat-grant.1")).unwrap();
    let mut n = 0;
    for line in help.stdout().lines() {
        for word in line.split_whitespace() {
            let w = word.trim_end_matches(',');
            if let Some(long) = w.strip_prefix("--") {
                n += 1;
                assert!(
                    page.contains(&format!("Fl -{long}")),
                    "--{long} is not in man/moat-grant.1"
                );
            }
        }
    }
    assert!(n >= 15, "only {n} options found in --help");
}

#[test]
fn man_page_is_lint_clean() {
    let out = std::process::Command::new("mandoc")
        .args(["-Tlint", "-Wwarning"])
        .arg(workspace_root().join("man/moat-grant.1"))
        .output()
        .expect("mandoc (Debian package mandoc)");
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
