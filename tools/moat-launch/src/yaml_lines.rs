//! Where each node of a moat.yaml is: a dotted path (`network.allow[2]`, `env.FOO`) → the
//! 1-based line of its key (mapping entries) or of the item itself (list items), taken from
//! the YAML parser's own locations, so an error points at the offending key even when the
//! same key name appears earlier under another section.

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::collections::HashMap;
use std::fmt;

pub struct Lines(HashMap<String, usize>);

impl Lines {
    /// The lines of `text`; an empty map when it does not parse (the parse error is reported
    /// by the caller's own parse).
    pub fn of(text: &str) -> Lines {
        let mut out = HashMap::new();
        if let Ok(t) = serde_saphyr::from_str::<Spanned<Tree>>(text) {
            collect(&t.value, "", &mut out);
        }
        Lines(out)
    }

    /// The line of the node at `path`, if the file has it.
    pub fn get(&self, path: &str) -> Option<usize> {
        self.0.get(path).copied().filter(|l| *l > 0)
    }
}

fn collect(t: &Tree, path: &str, out: &mut HashMap<String, usize>) {
    match t {
        Tree::Map(entries) => {
            for (k, v) in entries {
                let p = if path.is_empty() {
                    k.value.0.clone()
                } else {
                    format!("{path}.{}", k.value.0)
                };
                // The first of duplicate keys wins, as the key's first line is what a person
                // looks at.
                out.entry(p.clone()).or_insert(k.referenced.line() as usize);
                collect(&v.value, &p, out);
            }
        }
        Tree::Seq(items) => {
            for (i, v) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.entry(p.clone()).or_insert(v.referenced.line() as usize);
                collect(&v.value, &p, out);
            }
        }
        Tree::Leaf => {}
    }
}

enum Tree {
    Map(Vec<(Spanned<Key>, Spanned<Tree>)>),
    Seq(Vec<Spanned<Tree>>),
    Leaf,
}

/// A mapping key as text (scalars only; a complex key becomes "?").
struct Key(String);

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Tree, E> {
        Ok(Tree::Leaf)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Tree, E> {
        Ok(Tree::Leaf)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Tree, E> {
        Ok(Tree::Leaf)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Tree, E> {
        Ok(Tree::Leaf)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Tree, E> {
        Ok(Tree::Leaf)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Tree, E> {
        Ok(Tree::Leaf)
    }
    fn visit_none<E: de::Error>(self) -> Result<Tree, E> {
        Ok(Tree::Leaf)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Tree, D::Error> {
        Tree::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Tree, A::Error> {
        let mut v = vec![];
        while let Some(i) = s.next_element::<Spanned<Tree>>()? {
            v.push(i);
        }
        Ok(Tree::Seq(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Tree, A::Error> {
        let mut v = vec![];
        while let Some(k) = m.next_key::<Spanned<Key>>()? {
            v.push((k, m.next_value::<Spanned<Tree>>()?));
        }
        Ok(Tree::Map(v))
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Key, E> {
        Ok(Key(b.to_string()))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Key, E> {
        Ok(Key(n.to_string()))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Key, E> {
        Ok(Key(n.to_string()))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Key, E> {
        Ok(Key(n.to_string()))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
        Ok(Key(s.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
        Ok(Key("null".into()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Key, A::Error> {
        while s.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Key("?".into()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Key, A::Error> {
        while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Key("?".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_own_lines() {
        let text = "name: a\nmcp:\n  - name: b\n    url: x\nnetwork:\n  allow:\n    - a.com\n    - \"b.com\"\n  policy: strict\nenv: {A: 1, \"B\": 2}\nlist: [x, y]\n";
        let l = Lines::of(text);
        assert_eq!(l.get("name"), Some(1));
        assert_eq!(l.get("mcp[0].name"), Some(3));
        assert_eq!(l.get("mcp[0].url"), Some(4));
        assert_eq!(l.get("network"), Some(5));
        assert_eq!(l.get("network.allow"), Some(6));
        assert_eq!(l.get("network.allow[0]"), Some(7));
        assert_eq!(l.get("network.allow[1]"), Some(8));
        assert_eq!(l.get("network.policy"), Some(9));
        assert_eq!(l.get("env.B"), Some(10));
        assert_eq!(l.get("list[1]"), Some(11));
        assert_eq!(l.get("nope"), None);
    }
}
