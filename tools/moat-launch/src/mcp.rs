//! Remote MCP servers (`mcp:` in moat.yaml). Each server becomes a relay on the run's proxy
//! (`/mcp/TOKEN/NAME`, forwarded to the server's URL from the host) and, in agent runs, an
//! entry in the CLI's own configuration pointing at that relay. A server with `auth` sends
//! its header with the stub `moat-stub-GRANT`; the proxy swaps the stub for the grant's
//! credential, which never enters the container. Without `auth` nothing is injected.
//! Every run also gets `MOAT_MCP_<NAME>_URL` (and `MOAT_MCP_<NAME>_HEADER`, `Header: stub`)
//! so programs other than the agent CLIs can use the relays.

use moat_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::Path;

/// `mcp[]` as written in moat.yaml.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    pub name: String,
    pub url: String,
    pub auth: Option<AuthConfig>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    pub grant: String,
    pub header: String,
}

/// One validated remote server; part of `spec.json` (names only, no secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Remote {
    pub name: String,
    pub url: String,
    /// The `mcp:NAME` grant whose credential the proxy injects, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

impl Remote {
    /// The stub the CLI's configuration carries in place of the credential.
    pub fn stub(&self) -> Option<String> {
        self.grant.as_ref().map(|g| format!("moat-stub-{g}"))
    }
}

/// Letters, digits, `-`, `_`; a letter or digit first; at most 63. It becomes a path
/// segment, a TOML key, an environment variable name part and the CLIs' tool prefix.
fn check_name(n: &str) -> std::result::Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {n:?} must be letters, digits, '-' and '_' (at most 63, starting with a letter or digit)"
        ))
    }
}

/// `HOST:PORT` of an http(s) URL without user information, query or fragment, and whether
/// it is https.
pub fn authority(url: &str) -> std::result::Result<(bool, String), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("url {url:?} must start with https:// or http://"));
    };
    if url.contains('?') || url.contains('#') {
        return Err(format!("url {url:?} must not have a query or a fragment"));
    }
    let auth = rest.split('/').next().unwrap_or_default();
    if auth.contains('@') {
        return Err(format!(
            "url {url:?} must not carry user information; put a token in a grant (auth:)"
        ));
    }
    let (host, port) = moat_core::host::canonical_authority(auth, if tls { 443 } else { 80 })
        .map_err(|e| format!("url {url:?}: {e}"))?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok((tls, format!("{host}:{port}")))
}

/// `mcp-NAME` (the reference's spelling) is the grant `mcp:NAME`.
fn grant_name(g: &str) -> Option<String> {
    let n = g.strip_prefix("mcp:").or_else(|| g.strip_prefix("mcp-"))?;
    (!n.is_empty()).then(|| format!("mcp:{n}"))
}

/// Validate `mcp:`; the servers' grants are added to `grants`. `local` are the agent
/// CLI's local servers (`claude.mcp` etc.), whose names a remote server may not reuse.
pub fn resolve(
    servers: &[ServerConfig],
    grants: &mut Vec<String>,
    local: &[String],
) -> Result<Vec<Remote>> {
    let mut out: Vec<Remote> = vec![];
    for (i, s) in servers.iter().enumerate() {
        let at = if s.name.is_empty() {
            format!("mcp[{i}]")
        } else {
            format!("mcp[{i}] ({})", s.name)
        };
        let bad = |m: String| Error::config(format!("{at}: {m}"));
        if s.name.is_empty() {
            return Err(bad("needs a name".into()));
        }
        check_name(&s.name).map_err(bad)?;
        if out.iter().any(|r| r.name == s.name) {
            return Err(bad(format!("the name {:?} is used twice", s.name)));
        }
        if local.contains(&s.name) {
            return Err(bad(format!(
                "{:?} is also a local MCP server of the agent; rename one",
                s.name
            )));
        }
        if s.url.is_empty() {
            return Err(bad("needs a url (https://...)".into()));
        }
        let (tls, _) = authority(&s.url).map_err(bad)?;
        let (grant, header) = match &s.auth {
            None => (None, None),
            Some(a) => {
                if !tls {
                    return Err(bad(format!(
                        "url {:?}: a server with auth must use https://",
                        s.url
                    )));
                }
                let g = grant_name(&a.grant).ok_or_else(|| {
                    bad(format!(
                        "auth.grant {:?} is not an MCP grant; name it mcp:NAME (stored with `moat grant mcp NAME --url {} --header HEADER`)",
                        a.grant, s.url
                    ))
                })?;
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if a.header.is_empty() || a.header.len() > 128 || !a.header.bytes().all(token) {
                    return Err(bad(format!(
                        "auth.header {:?} is not an HTTP header name",
                        a.header
                    )));
                }
                (Some(g), Some(a.header.clone()))
            }
        };
        if let Some(g) = &grant
            && !grants.contains(g)
        {
            grants.push(g.clone());
        }
        out.push(Remote {
            name: s.name.clone(),
            url: s.url.clone(),
            grant,
            header,
        });
    }
    Ok(out)
}

/// Every server's grant is stored (checked before the run is created).
pub fn check_stored(home: &moat_core::MoatHome, remotes: &[Remote]) -> Result<()> {
    for r in remotes {
        let Some(g) = &r.grant else { continue };
        if !home.credential_file(g).exists() {
            let short = g.trim_start_matches("mcp:");
            return Err(Error::noinput(format!(
                "mcp server {}: the grant {g} is not stored",
                r.name
            ))
            .with_hint(format!(
                "store it with `moat grant mcp {short} --url {} --header {}`",
                r.url,
                r.header.as_deref().unwrap_or("HEADER")
            )));
        }
    }
    Ok(())
}

/// Check the grants' inject records against the servers: the grant must be stored for the
/// server's host and with the header moat.yaml names (otherwise the stub would never be
/// swapped). Records carry secrets: only their grant, hosts and header are read.
pub fn check_rules(remotes: &[Remote], inject: &[String]) -> Result<()> {
    for r in remotes {
        let (Some(g), Some(h)) = (&r.grant, &r.header) else {
            continue;
        };
        let rec = inject.iter().find_map(|l| {
            let rec = moat_core::jsonl::parse(l).ok()??;
            (rec.str("grant") == Some(g.as_str())).then_some(rec)
        });
        let Some(rec) = rec else {
            return Err(Error::config(format!(
                "mcp server {}: the grant {g} gave no injection rule",
                r.name
            ))
            .with_hint("re-create it with `moat grant mcp`"));
        };
        let stored = rec.str("header").unwrap_or_default();
        if !stored.eq_ignore_ascii_case(h) {
            return Err(Error::config(format!(
                "mcp server {}: auth.header is {h} but the grant {g} was stored for the header {stored}",
                r.name
            ))
            .with_hint("make them agree (moat.yaml, or `moat grant mcp` again with --header)"));
        }
        let (_, want) = authority(&r.url).map_err(Error::config)?;
        let hosts: Vec<String> = rec
            .get("hosts")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let covers = hosts.iter().any(|p| {
            moat_core::host::HostPattern::parse(p).is_ok_and(|p| {
                let (host, port) = want.rsplit_once(':').unwrap_or((&want, "443"));
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port: u16 = port.parse().unwrap_or(443);
                match p.port() {
                    Some(_) => p.matches(host, port),
                    None => port == 443 && p.matches(host, port),
                }
            })
        });
        if !covers {
            return Err(Error::config(format!(
                "mcp server {}: the grant {g} was stored for {} but the url is on {want}",
                r.name,
                hosts.join(", ")
            ))
            .with_hint(format!(
                "store it for this url: `moat grant mcp {} --url {} --header {h}`",
                g.trim_start_matches("mcp:"),
                r.url
            )));
        }
    }
    Ok(())
}

/// `relay` records (kind mcp) for the proxy's rules pipe.
pub fn relay_records(remotes: &[Remote]) -> Result<Vec<String>> {
    remotes
        .iter()
        .map(|r| {
            moat_core::jsonl::line(
                "relay",
                &json!({"name": r.name, "url": r.url, "kind": "mcp"}),
            )
        })
        .collect()
}

/// `HOST:PORT` allowances: the servers are reachable in strict runs and may sit on a
/// private or loopback address of the host (the relay dials from the host).
pub fn allowances(remotes: &[Remote]) -> Vec<String> {
    remotes
        .iter()
        .filter_map(|r| authority(&r.url).ok().map(|(_, a)| a))
        .collect()
}

fn env_part(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// `MOAT_MCP_<NAME>_URL` and, with auth, `MOAT_MCP_<NAME>_HEADER` (`Header: stub`).
/// `base` is `http://PROXY:PORT/mcp/TOKEN`.
pub fn env(remotes: &[Remote], base: &str) -> Vec<String> {
    let mut out = vec![];
    for r in remotes {
        let n = env_part(&r.name);
        out.push(format!("MOAT_MCP_{n}_URL={base}/{}", r.name));
        if let (Some(h), Some(stub)) = (&r.header, r.stub()) {
            out.push(format!("MOAT_MCP_{n}_HEADER={h}: {stub}"));
        }
    }
    out
}

fn headers(r: &Remote) -> Option<Value> {
    match (&r.header, r.stub()) {
        (Some(h), Some(stub)) => Some(json!({ h: stub })),
        _ => None,
    }
}

/// Add the servers to the CLI's staged configuration in `stage` (the HOME files moat-init
/// copies): Claude Code's `.claude.json`, Codex's `.codex/config.toml`, the Gemini CLI's
/// `.gemini/settings.json`. `base` is `http://PROXY:PORT/mcp/TOKEN`.
pub fn stage(stage: &Path, cli: &str, remotes: &[Remote], base: &str) -> Result<()> {
    if remotes.is_empty() {
        return Ok(());
    }
    let url = |r: &Remote| format!("{base}/{}", r.name);
    let json_file = |rel: &str, add: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let p = stage.join(rel);
        let mut v: Value = match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::software(format!("{}: {e}", p.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({}),
            Err(e) => return Err(Error::io(format!("reading {}", p.display()), e)),
        };
        let servers = v
            .as_object_mut()
            .ok_or_else(|| Error::software(format!("{} is not an object", p.display())))?
            .entry("mcpServers")
            .or_insert_with(|| json!({}));
        if let Some(m) = servers.as_object_mut() {
            add(m);
        }
        crate::agent::write_staged(stage, rel, &crate::agent::pretty(&v))
    };
    match cli {
        "claude" => json_file(".claude.json", &|m| {
            for r in remotes {
                let mut e = json!({"type": "http", "url": url(r)});
                if let Some(h) = headers(r) {
                    e["headers"] = h;
                }
                m.insert(r.name.clone(), e);
            }
        }),
        "gemini" => json_file(".gemini/settings.json", &|m| {
            for r in remotes {
                let mut e = json!({"httpUrl": url(r)});
                if let Some(h) = headers(r) {
                    e["headers"] = h;
                }
                m.insert(r.name.clone(), e);
            }
        }),
        "codex" => {
            let p = stage.join(".codex/config.toml");
            let mut toml = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(Error::io(format!("reading {}", p.display()), e)),
            };
            for r in remotes {
                // Names are letters, digits, '-' and '_': a bare TOML key.
                toml.push_str(&format!(
                    "\n[mcp_servers.{}]\nurl = {}\n",
                    r.name,
                    crate::agent::toml_str(&url(r))
                ));
                if let (Some(h), Some(stub)) = (&r.header, r.stub()) {
                    toml.push_str(&format!(
                        "http_headers = {{ {} = {} }}\n",
                        crate::agent::toml_str(h),
                        crate::agent::toml_str(&stub)
                    ));
                }
            }
            crate::agent::write_staged(stage, ".codex/config.toml", toml.as_bytes())
        }
        other => Err(Error::software(format!("unknown agent {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, url: &str, auth: Option<(&str, &str)>) -> ServerConfig {
        ServerConfig {
            name: name.into(),
            url: url.into(),
            auth: auth.map(|(g, h)| AuthConfig {
                grant: g.into(),
                header: h.into(),
            }),
        }
    }

    #[test]
    fn servers_are_validated_and_their_grants_join_the_run() {
        let mut grants = vec!["anthropic".to_string()];
        let r = resolve(
            &[
                server(
                    "context7",
                    "https://mcp.context7.com/mcp",
                    Some(("mcp-context7", "CONTEXT7_API_KEY")),
                ),
                server("public", "http://localhost:9000/mcp", None),
            ],
            &mut grants,
            &[],
        )
        .unwrap();
        assert_eq!(grants, ["anthropic", "mcp:context7"]);
        assert_eq!(r[0].stub().unwrap(), "moat-stub-mcp:context7");
        assert_eq!(r[1].grant, None);
        assert_eq!(allowances(&r), ["mcp.context7.com:443", "localhost:9000"]);
        let env = env(&r, "http://10.0.0.1:1/mcp/T");
        assert_eq!(
            env,
            [
                "MOAT_MCP_CONTEXT7_URL=http://10.0.0.1:1/mcp/T/context7",
                "MOAT_MCP_CONTEXT7_HEADER=CONTEXT7_API_KEY: moat-stub-mcp:context7",
                "MOAT_MCP_PUBLIC_URL=http://10.0.0.1:1/mcp/T/public",
            ]
        );
        for (bad, want) in [
            (server("", "https://a", None), "needs a name"),
            (server("a b", "https://a", None), "must be letters"),
            (server("x", "ftp://a", None), "must start with https://"),
            (server("x", "https://a/?k=SECRET", None), "query"),
            (server("x", "https://u:p@a/", None), "user information"),
            (server("x", "", None), "needs a url"),
            (
                server("x", "http://a/", Some(("mcp:x", "X-Key"))),
                "must use https://",
            ),
            (
                server("x", "https://a/", Some(("github", "X-Key"))),
                "not an MCP grant",
            ),
            (
                server("x", "https://a/", Some(("mcp:x", "bad header"))),
                "not an HTTP header name",
            ),
            (
                server("local", "https://a/", None),
                "also a local MCP server",
            ),
        ] {
            let e = resolve(&[bad], &mut vec![], &["local".into()]).unwrap_err();
            assert!(e.msg.contains(want), "{} (want {want})", e.msg);
            assert!(e.msg.starts_with("mcp[0]"), "{}", e.msg);
            assert_eq!(e.code, moat_core::exit::CONFIG);
        }
        let e = resolve(
            &[
                server("a", "https://a/", None),
                server("a", "https://b/", None),
            ],
            &mut vec![],
            &[],
        )
        .unwrap_err();
        assert!(e.msg.contains("used twice"), "{}", e.msg);
    }

    #[test]
    fn the_grant_must_match_the_servers_host_and_header() {
        let r = resolve(
            &[server(
                "docs",
                "https://mcp.example.com/mcp",
                Some(("mcp:docs", "X-Docs-Key")),
            )],
            &mut vec![],
            &[],
        )
        .unwrap();
        let rule = |hosts: &[&str], header: &str| {
            moat_core::jsonl::line(
                "inject",
                &json!({"grant":"mcp:docs","hosts":hosts,"header":header,"value":"SECRET"}),
            )
            .unwrap()
        };
        assert!(check_rules(&r, &[rule(&["mcp.example.com"], "x-docs-key")]).is_ok());
        let e = check_rules(&r, &[rule(&["mcp.example.com"], "Authorization")]).unwrap_err();
        assert!(
            e.msg.contains("stored for the header Authorization"),
            "{}",
            e.msg
        );
        let e = check_rules(&r, &[rule(&["other.example.com"], "X-Docs-Key")]).unwrap_err();
        assert!(e.msg.contains("url is on mcp.example.com:443"), "{}", e.msg);
        assert!(!e.msg.contains("SECRET"));
        assert!(check_rules(&r, &[]).is_err());
    }

    #[test]
    fn each_cli_gets_the_relay_and_the_stub() {
        let dir = tempfile::tempdir().unwrap();
        let r = vec![
            Remote {
                name: "docs".into(),
                url: "https://mcp.example.com/mcp".into(),
                grant: Some("mcp:docs".into()),
                header: Some("X-Docs-Key".into()),
            },
            Remote {
                name: "open".into(),
                url: "https://open.example.com/".into(),
                grant: None,
                header: None,
            },
        ];
        let base = "http://172.17.0.1:4000/mcp/TOKEN";
        std::fs::write(
            dir.path().join(".claude.json"),
            r#"{"theme":"dark","mcpServers":{"local":{"type":"stdio","command":"x"}}}"#,
        )
        .unwrap();
        stage(dir.path(), "claude", &r, base).unwrap();
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(".claude.json")).unwrap())
                .unwrap();
        assert_eq!(v["theme"], "dark");
        assert_eq!(v["mcpServers"]["local"]["command"], "x");
        assert_eq!(
            v["mcpServers"]["docs"],
            json!({"type":"http","url":format!("{base}/docs"),"headers":{"X-Docs-Key":"moat-stub-mcp:docs"}})
        );
        assert_eq!(
            v["mcpServers"]["open"],
            json!({"type":"http","url":format!("{base}/open")})
        );
        stage(dir.path(), "gemini", &r, base).unwrap();
        let v: Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(".gemini/settings.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(v["mcpServers"]["docs"]["httpUrl"], format!("{base}/docs"));
        assert_eq!(
            v["mcpServers"]["docs"]["headers"]["X-Docs-Key"],
            "moat-stub-mcp:docs"
        );
        stage(dir.path(), "codex", &r, base).unwrap();
        let t = std::fs::read_to_string(dir.path().join(".codex/config.toml")).unwrap();
        assert!(
            t.contains(&format!(
                "[mcp_servers.docs]\nurl = \"{base}/docs\"\nhttp_headers = {{ \"X-Docs-Key\" = \"moat-stub-mcp:docs\" }}\n"
            )),
            "{t}"
        );
        assert!(t.contains("[mcp_servers.open]\nurl ="), "{t}");
    }
}
