//! A credential on a wildcard that covers a public suffix (`*.githubusercontent.com`,
//! `*.amazonaws.com`) would go to names anyone can register or create there. Such rules
//! are refused. The list is the system's public-suffix list (Debian `publicsuffix`), with
//! a short built-in list of well-known multi-tenant suffixes when it is missing.

use std::collections::HashSet;

const SYSTEM_LIST: &str = "/usr/share/publicsuffix/public_suffix_list.dat";
const BUILT_IN: &[&str] = &[
    "githubusercontent.com",
    "github.io",
    "gitlab.io",
    "amazonaws.com",
    "cloudfront.net",
    "appspot.com",
    "googleapis.com",
    "herokuapp.com",
    "vercel.app",
    "netlify.app",
    "pages.dev",
    "workers.dev",
    "azurewebsites.net",
    "blob.core.windows.net",
    "web.app",
    "firebaseapp.com",
    "fly.dev",
    "onrender.com",
    "ngrok.io",
    "blogspot.com",
    "co.uk",
    "com.au",
];

pub struct Suffixes(HashSet<String>);

impl Suffixes {
    pub fn load() -> Suffixes {
        let text = std::fs::read_to_string(SYSTEM_LIST).unwrap_or_default();
        let mut set: HashSet<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty() && !l.starts_with("//") && !l.starts_with('!') && l.is_ascii()
            })
            .map(|l| l.trim_start_matches("*.").to_ascii_lowercase())
            .collect();
        set.extend(BUILT_IN.iter().map(|s| s.to_string()));
        Suffixes(set)
    }

    /// A public suffix equal to or under `suffix`, if any.
    pub fn covered_by(&self, suffix: &str) -> Option<&str> {
        let dotted = format!(".{suffix}");
        self.0
            .iter()
            .filter(|e| *e == suffix || e.ends_with(&dotted))
            .min_by_key(|e| e.len())
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_tenant_wildcards_are_found() {
        let s = Suffixes::load();
        assert!(s.covered_by("githubusercontent.com").is_some());
        assert!(s.covered_by("amazonaws.com").is_some());
        assert!(s.covered_by("github.com").is_none());
        assert!(s.covered_by("anthropic.com").is_none());
    }
}
