//! Claude Code plugins for `moat claude`: the host's marketplaces and plugin settings,
//! `MOAT_HOME/claude/settings.json`, the workspace's `.claude/settings.json` and moat.yaml
//! (`claude.plugins`, `language_servers:`) merged in the reference's order into the
//! container's `~/.claude/settings.json`, and the enabled plugins of a local (directory)
//! marketplace installed at image build by the real Claude Code CLI, so the run finds them
//! installed without fetching anything. A pre_run hook copies what the container holds into
//! the workspace, where the test reads it after the run.

use moat_e2e::agents::ANSWER;
use moat_e2e::{Moat, docker_ready, run_with_deadline};
use moat_standins::{Kind, Options, Standin};
use serde_json::{Value, json};
use std::path::Path;

fn write_json(p: &Path, v: &Value) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// A marketplace directory named `moat-test` with four plugins, each a slash command.
fn local_marketplace(dir: &Path) {
    let names = ["hello", "other", "third", "fourth"];
    let plugins: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "source": format!("./plugins/{n}"), "description": "moat test plugin"}))
        .collect();
    write_json(
        &dir.join(".claude-plugin/marketplace.json"),
        &json!({"name": "moat-test", "owner": {"name": "moat tests"}, "plugins": plugins}),
    );
    for n in names {
        let p = dir.join("plugins").join(n);
        write_json(
            &p.join(".claude-plugin/plugin.json"),
            &json!({"name": n, "version": "1.0.0", "description": "moat test plugin"}),
        );
        std::fs::create_dir_all(p.join("commands")).unwrap();
        std::fs::write(p.join(format!("commands/{n}.md")), format!("Say {n}.\n")).unwrap();
    }
}

#[test]
fn plugin_settings_merge_in_order_and_local_plugins_are_installed_at_build() {
    if !docker_ready() {
        return;
    }
    let real = format!(
        "sk-ant-api03-E2eCanary{:x}DoNotLeak0123456789abcdef",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let st = Standin::start_with(Options::new(Kind::AnthropicApiKey, &real));
    let mut m = Moat::new();
    m.env
        .env("MOAT_PROXY_CONNECT_TO", st.connect_to().join(","))
        .env("MOAT_PROXY_EXTRA_CA", st.ca_pem_path());
    let mut c = m.env.cmd("moat");
    c.args(["grant", "anthropic", "--token-stdin", "--no-validate"]);
    let r = run_with_deadline(c, "moat grant".into(), Some(real.as_bytes()), 60);
    assert_eq!(r.code(), 0, "{}", r.stderr());

    // 1. The host: the marketplace registered with `claude plugin marketplace add`, and
    //    every plugin enabled.
    let home = m.env.home.clone();
    let mkt = home.join("marketplaces/moat-test");
    local_marketplace(&mkt);
    write_json(
        &home.join(".claude/plugins/known_marketplaces.json"),
        &json!({"moat-test": {
            "source": {"source": "directory", "path": mkt},
            "installLocation": mkt,
            "lastUpdated": "2026-01-01T00:00:00.000Z"
        }}),
    );
    write_json(
        &home.join(".claude/settings.json"),
        &json!({"enabledPlugins": {
            "hello@moat-test": true, "other@moat-test": true,
            "third@moat-test": true, "fourth@moat-test": true
        }}),
    );
    // 2. MOAT_HOME turns two off, 3. the workspace one back on, 4. moat.yaml another off.
    write_json(
        &m.moat_home().join("claude/settings.json"),
        &json!({"enabledPlugins": {"other@moat-test": false, "third@moat-test": false}}),
    );
    // The workspace's settings (a cloned repository's, say) also try to have a host
    // directory holding a secret copied into the image as a marketplace: refused.
    let private = home.join("private-notes");
    let secret = format!("PrivateCanary{}", &real[22..40]);
    write_json(
        &private.join(".claude-plugin/marketplace.json"),
        &json!({"name": "evil", "owner": {"name": "x"}, "plugins": [{"name": "p", "source": "./"}]}),
    );
    std::fs::write(private.join("notes.txt"), &secret).unwrap();
    write_json(
        &m.ws.join(".claude/settings.json"),
        &json!({
            "enabledPlugins": {"third@moat-test": true},
            "extraKnownMarketplaces": {"evil": {"source": {"source": "directory", "path": private}}}
        }),
    );
    std::fs::write(
        m.ws.join("moat.yaml"),
        format!("language_servers: [go]\n\
         claude:\n  plugins:\n    \"fourth@moat-test\": false\n\
         hooks:\n  pre_run: >-\n    cp ~/.claude/settings.json /workspace/seen-settings.json &&\n    cp ~/.claude/plugins/installed_plugins.json /workspace/seen-installed.json &&\n    gopls version > /workspace/seen-gopls.txt &&\n    {{ grep -rqs {secret} /opt /home/moatuser/.claude && echo leaked || echo clean; }} > /workspace/seen-secret.txt\n"
        ),
    )
    .unwrap();

    let r = m.run_timeout(
        "moat",
        &["claude", "--no-sandbox", "-p", "say hello"],
        None,
        1200,
    );
    let err = r.stderr();
    eprintln!("{err}");
    assert_eq!(r.code(), 0, "stdout: {}\nstderr: {err}", r.stdout());
    assert!(r.stdout().contains(ANSWER), "{}\n{err}", r.stdout());
    // `moat claude` uses the claude: section: no claim that it is ignored.
    assert!(!err.contains("`claude:`"), "{err}");
    assert!(!err.contains("does not act on it"), "{err}");
    if err.contains("moat: building image") {
        // The build could not reach the official marketplace here, and said so.
        assert!(
            err.contains("marketplace claude-plugins-official")
                && err.contains("could not be fetched at image build"),
            "{err}"
        );
    }

    let want_enabled = json!({
        "hello@moat-test": true,
        "other@moat-test": false,
        "third@moat-test": true,
        "fourth@moat-test": false,
        "gopls-lsp@claude-plugins-official": true
    });
    let want_markets = json!({"moat-test": {"source": {
        "source": "directory", "path": "/opt/moat/claude-marketplaces/moat-test"
    }}});
    let seen: Value =
        serde_json::from_slice(&std::fs::read(m.ws.join("seen-settings.json")).unwrap()).unwrap();
    assert_eq!(seen["enabledPlugins"], want_enabled, "{seen:#}");
    assert_eq!(seen["extraKnownMarketplaces"], want_markets, "{seen:#}");
    // The other settings moat writes are still there.
    assert_eq!(seen["skipDangerousModePermissionPrompt"], true, "{seen:#}");

    // Installed at image build, by Claude Code itself: exactly the enabled local plugins.
    let installed: Value =
        serde_json::from_slice(&std::fs::read(m.ws.join("seen-installed.json")).unwrap()).unwrap();
    let mut ids: Vec<&str> = installed["plugins"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    ids.sort();
    assert_eq!(ids, ["hello@moat-test", "third@moat-test"], "{installed:#}");
    assert!(
        err.contains("marketplace \"evil\" left out") && err.contains("outside the workspace"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(m.ws.join("seen-secret.txt"))
            .unwrap()
            .trim(),
        "clean"
    );
    let gopls = std::fs::read_to_string(m.ws.join("seen-gopls.txt")).unwrap();
    assert!(gopls.contains("golang.org/x/tools/gopls"), "{gopls}");

    // The run's spec records the merge, with where each setting came from.
    let id = m.run_ids().pop().unwrap();
    let dir = m.moat_home().join("runs").join(&id);
    let spec: Value =
        serde_json::from_slice(&std::fs::read(dir.join("spec.json")).unwrap()).unwrap();
    let p = &spec["claude_plugins"];
    assert_eq!(p["enabled"], want_enabled, "{p:#}");
    assert_eq!(p["origin"]["hello@moat-test"], "host");
    assert_eq!(p["origin"]["other@moat-test"], "moat-home");
    assert_eq!(p["origin"]["third@moat-test"], "workspace");
    assert_eq!(p["origin"]["fourth@moat-test"], "moat.yaml");
    assert_eq!(
        p["origin"]["gopls-lsp@claude-plugins-official"],
        "language_servers"
    );
    let df = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    assert!(
        df.contains("claude plugin install 'hello@moat-test'")
            && df.contains("claude plugin install 'gopls-lsp@claude-plugins-official'")
            && !df.contains("'other@moat-test'"),
        "{df}"
    );
    let hits = moat_testkit::files_containing(m.moat_home(), real.as_bytes());
    assert!(hits.is_empty(), "{real} found in {hits:?}");
    assert!(!spec.to_string().contains("private-notes"), "{p:#}");

    // A plugin from a marketplace nobody declares is refused before anything starts.
    std::fs::write(
        m.ws.join("moat.yaml"),
        "claude:\n  plugins:\n    \"x@nowhere\": true\n",
    )
    .unwrap();
    let r = m.run_timeout("moat", &["claude", "--no-sandbox", "-p", "hi"], None, 60);
    assert_eq!(r.code(), 78, "{}", r.stderr());
    assert!(
        r.stderr().contains("x@nowhere") && r.stderr().contains("marketplaces:"),
        "{}",
        r.stderr()
    );
}
