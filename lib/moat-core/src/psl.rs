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

/// The list's suffixes in the canonical (ASCII, punycode) form hosts are compared in, and
/// the bases of its wildcard rules (`*.ck`: every `NAME.ck` is a public suffix).
pub struct Suffixes {
    set: HashSet<String>,
    wild: HashSet<String>,
}

impl Suffixes {
    pub fn load() -> Suffixes {
        Suffixes::parse(&std::fs::read_to_string(SYSTEM_LIST).unwrap_or_default())
    }

    fn parse(text: &str) -> Suffixes {
        let (mut set, mut wild) = (HashSet::new(), HashSet::new());
        for l in text.lines().map(str::trim) {
            // Exceptions (`!www.ck`) are ignored: the name stays counted as public, which
            // refuses more, never less.
            if l.is_empty() || l.starts_with("//") || l.starts_with('!') {
                continue;
            }
            let (is_wild, name) = match l.strip_prefix("*.") {
                Some(n) => (true, n),
                None => (false, l),
            };
            // Non-ASCII entries (`公司.cn`) in the punycode hosts are compared in.
            let Ok(c) = crate::host::canonical_host(name) else {
                continue;
            };
            if is_wild {
                wild.insert(c.clone());
            }
            set.insert(c);
        }
        set.extend(BUILT_IN.iter().map(|s| s.to_string()));
        Suffixes { set, wild }
    }

    /// A public suffix equal to or under `suffix`, if any.
    pub fn covered_by(&self, suffix: &str) -> Option<String> {
        // `suffix` itself is public under a wildcard rule of its parent.
        if let Some((_, parent)) = suffix.split_once('.')
            && self.wild.contains(parent)
        {
            return Some(suffix.to_string());
        }
        let dotted = format!(".{suffix}");
        self.set
            .iter()
            .filter(|e| *e == suffix || e.ends_with(&dotted))
            .min_by_key(|e| e.len())
            .cloned()
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

    #[test]
    fn wildcard_rules_and_non_ascii_entries_count() {
        let s = Suffixes::parse("// c\n*.ck\n!www.ck\n*.compute.example\n公司.cn\n");
        // Every NAME.ck is public, and so is every NAME.compute.example.
        assert_eq!(s.covered_by("foo.ck").as_deref(), Some("foo.ck"));
        assert_eq!(
            s.covered_by("x.compute.example").as_deref(),
            Some("x.compute.example")
        );
        assert!(s.covered_by("example").is_some());
        assert_eq!(
            s.covered_by("xn--55qx5d.cn").as_deref(),
            Some("xn--55qx5d.cn")
        );
        assert!(s.covered_by("a.foo.ck").is_none());
        assert!(s.covered_by("example.cn").is_none());
    }
}
