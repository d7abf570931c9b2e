//! Subscriptions (OAuth sign-ins) stay fresh for the whole run: the supervisor asks
//! `moat-grant refresh` to renew a granted sign-in shortly before its access token expires
//! (moat-grant does one refresh at a time and writes the new tokens to the store), then
//! reads the grants' rules again and hands the proxy a complete new rule set over the rules
//! pipe, ended by a `rules_end` record. The container keeps its placeholders throughout.

use crate::run::tool;
use moat_core::timefmt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStdin, Command};
use tokio::sync::mpsc;

/// Renew this long before the access token expires.
pub const WINDOW: Duration = Duration::from_secs(5 * 60);
/// Look again at least this often (an expiry may move when another run refreshed).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The record that ends one complete rule set on moat-proxy's rules pipe.
pub fn rules_end() -> String {
    moat_core::jsonl::line("rules_end", &serde_json::json!({})).expect("record")
}

/// The proxy's rules pipe once the first rule set is handed over, shared by the tasks that
/// replace parts of it (renewed OAuth tokens here, a renewed AWS session in aws.rs). Every
/// send is a complete set: the inject records, the AWS signing record, the launcher's own.
pub struct RulesPipe {
    pub pipe: ChildStdin,
    pub inject: Vec<String>,
    pub aws: Option<String>,
    pub extra: Vec<String>,
}

pub type SharedPipe = Arc<tokio::sync::Mutex<RulesPipe>>;

impl RulesPipe {
    /// Write the whole set and its `rules_end`; false when the pipe is closed.
    pub async fn send(&mut self) -> bool {
        let end = rules_end();
        let set = self
            .inject
            .iter()
            .chain(self.aws.iter())
            .chain(self.extra.iter())
            .chain(std::iter::once(&end));
        for l in set {
            if self.pipe.write_all(l.as_bytes()).await.is_err() {
                return false;
            }
        }
        self.pipe.flush().await.is_ok()
    }
}

/// A granted sign-in that can be refreshed, and when its access token expires.
#[derive(Debug, Clone)]
pub struct Oauth {
    pub name: String,
    pub expires_at: Option<SystemTime>,
}

/// The refreshable sign-ins among `grants` (`moat-grant list --json`; no secret involved).
pub async fn oauth_grants(grants: &[String]) -> Vec<Oauth> {
    if grants.is_empty() {
        return vec![];
    }
    let out = Command::new(tool("moat-grant"))
        .args(["list", "--json"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let Ok(Ok(o)) = tokio::time::timeout(Duration::from_secs(30), out).await else {
        return vec![];
    };
    let mut v = vec![];
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let Ok(Some(r)) = moat_core::jsonl::parse(l) else {
            continue;
        };
        let (Some(name), Some(p), Some(k)) = (r.str("name"), r.str("provider"), r.str("kind"))
        else {
            continue;
        };
        let oauth = matches!(
            (p, k),
            ("anthropic", "oauth") | ("openai", "chatgpt") | ("gemini", "oauth")
        );
        if oauth && grants.iter().any(|g| g == name) {
            v.push(Oauth {
                name: name.to_string(),
                expires_at: r.str("expires_at").and_then(timefmt::parse_rfc3339),
            });
        }
    }
    v
}

/// `moat-grant refresh NAME --if-expiring-within WINDOW`: Ok(true) when tokens were renewed.
/// The tool prints only the grant record (no secret); its messages go to launch.log.
pub async fn refresh_one(name: &str) -> Result<bool, String> {
    let c = Command::new(tool("moat-grant"))
        .args(["refresh", name, "--if-expiring-within"])
        .arg(format!("{}m", WINDOW.as_secs() / 60))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output();
    match tokio::time::timeout(Duration::from_secs(60), c).await {
        Err(_) => Err(format!("refreshing {name} did not finish in time")),
        Ok(Err(e)) => Err(format!(
            "running moat-grant: {}",
            moat_core::error::io_msg(&e)
        )),
        Ok(Ok(o)) if o.status.success() => Ok(!o.stdout.is_empty()),
        Ok(Ok(o)) => Err(format!("refreshing {name} failed ({})", o.status)),
    }
}

/// When to look next: the earliest renewal time, within [1 s, MAX_SLEEP].
fn next_sleep(grants: &[Oauth]) -> Duration {
    let now = SystemTime::now();
    grants
        .iter()
        .filter_map(|g| g.expires_at)
        .map(|e| {
            (e.checked_sub(WINDOW).unwrap_or(e))
                .duration_since(now)
                .unwrap_or_default()
        })
        .min()
        .unwrap_or(MAX_SLEEP)
        .clamp(Duration::from_secs(1), MAX_SLEEP)
}

pub fn due(g: &Oauth) -> bool {
    g.expires_at
        .map(|e| e <= SystemTime::now() + WINDOW)
        .unwrap_or(false)
}

/// The run-long loop: renew what is due, then give the proxy the new rules (the pipe's
/// other parts, the launcher's own records and the AWS signing record, are repeated).
pub async fn keep_fresh(
    grants: Vec<String>,
    mut oauth: Vec<Oauth>,
    pipe: SharedPipe,
    transform: Arc<dyn Fn(Vec<String>) -> Vec<String> + Send + Sync>,
    audit: Option<mpsc::UnboundedSender<String>>,
    run: String,
) {
    loop {
        tokio::time::sleep(next_sleep(&oauth)).await;
        let mut renewed = vec![];
        for g in &oauth {
            if !due(g) {
                continue;
            }
            match refresh_one(&g.name).await {
                Ok(true) => renewed.push(g.name.clone()),
                Ok(false) => {}
                Err(e) => eprintln!("moat: warning: {e}; the proxy keeps the current token"),
            }
        }
        // Expiries as the store now has them (renewed here or by another run).
        let fresh = oauth_grants(&grants).await;
        if !fresh.is_empty() {
            oauth = fresh;
        }
        if renewed.is_empty() {
            continue;
        }
        let rules = match crate::run::grant_rules(&grants).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "moat: warning: reading the renewed grants: {}; the proxy keeps the current token",
                    e.msg
                );
                continue;
            }
        };
        let ok = {
            let mut p = pipe.lock().await;
            p.inject = transform(rules.inject);
            p.send().await
        };
        if !ok {
            eprintln!(
                "moat: warning: the proxy's rules pipe is closed; renewed tokens not handed over"
            );
            return;
        }
        eprintln!("moat: renewed {}", renewed.join(", "));
        if let Some(tx) = &audit {
            for g in &renewed {
                let exp = oauth
                    .iter()
                    .find(|o| &o.name == g)
                    .and_then(|o| o.expires_at)
                    .map(timefmt::rfc3339);
                if let Ok(l) = moat_core::jsonl::line(
                    "grant_refreshed",
                    &serde_json::json!({"run": run, "grant": g, "expires_at": exp}),
                ) {
                    let _ = tx.send(l);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_the_window_opens_within_bounds() {
        let g = |secs: u64| Oauth {
            name: "a".into(),
            expires_at: Some(SystemTime::now() + Duration::from_secs(secs)),
        };
        let s = next_sleep(&[g(WINDOW.as_secs() + 20)]);
        assert!(
            s <= Duration::from_secs(20) && s >= Duration::from_secs(18),
            "{s:?}"
        );
        assert_eq!(next_sleep(&[g(1)]), Duration::from_secs(1));
        assert_eq!(next_sleep(&[g(3600 * 5)]), MAX_SLEEP);
        assert_eq!(next_sleep(&[]), MAX_SLEEP);
        assert!(due(&g(10)));
        assert!(!due(&g(3600)));
    }
}
