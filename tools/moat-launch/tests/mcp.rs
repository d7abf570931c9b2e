//! `mcp:` in moat.yaml: a bad entry, or a grant that is not stored, fails before any run
//! exists, with a message naming the entry and what to do.

use moat_testkit::TestEnv;

#[test]
fn a_bad_mcp_entry_or_a_missing_grant_fails_before_any_run_exists() {
    let env = TestEnv::new();
    let ws = env.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let w = ws.to_str().unwrap();
    for (yaml, want) in [
        (
            "mcp:\n  - name: a b\n    url: https://mcp.example/mcp\n",
            "mcp[0] (a b): name \"a b\" must be letters",
        ),
        (
            "mcp:\n  - name: docs\n    url: ftp://mcp.example/mcp\n",
            "mcp[0] (docs): url \"ftp://mcp.example/mcp\" must start with https://",
        ),
        (
            "mcp:\n  - name: docs\n    url: https://mcp.example/mcp\n    auth:\n      grant: github\n      header: X-Key\n",
            "auth.grant \"github\" is not an MCP grant",
        ),
        (
            "mcp:\n  - name: docs\n    url: https://mcp.example/mcp\n  - name: docs\n    url: https://other.example/mcp\n",
            "mcp[1] (docs): the name \"docs\" is used twice",
        ),
    ] {
        std::fs::write(ws.join("moat.yaml"), yaml).unwrap();
        let r = env.run("moat-launch", &["run", w, "--", "true"]);
        r.exit(78).stderr_has(want);
        assert!(!r.stderr().contains("does not act on it"), "{}", r.stderr());
    }
    std::fs::write(
        ws.join("moat.yaml"),
        "mcp:\n  - name: docs\n    url: https://mcp.example/mcp\n    auth:\n      grant: mcp-docs\n      header: X-Key\n",
    )
    .unwrap();
    env.run("moat-launch", &["run", w, "--", "true"])
        .exit(66)
        .stderr_has("mcp server docs: the grant mcp:docs is not stored")
        .stderr_has("moat grant mcp docs --url https://mcp.example/mcp --header X-Key");
    assert!(!env.moat_home.join("runs").exists());
}
