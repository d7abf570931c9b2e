//! Just enough XML to read AWS Query-protocol answers: the text of the first element with a
//! given name, entities decoded. The answers are small and flat; nothing here builds a tree,
//! follows a DTD or resolves external entities.

/// Text of the first `<name>…</name>` (attributes allowed on the start tag), decoded.
pub fn text(doc: &str, name: &str) -> Option<String> {
    let mut rest = doc;
    loop {
        let start = rest.find('<')?;
        rest = &rest[start + 1..];
        let end_of_tag = rest.find('>')?;
        let tag = &rest[..end_of_tag];
        let tag_name = tag.split(|c: char| c.is_whitespace() || c == '/').next()?;
        if tag_name == name {
            if tag.ends_with('/') {
                return Some(String::new());
            }
            let body = &rest[end_of_tag + 1..];
            let close = format!("</{name}>");
            let stop = body.find(&close)?;
            return Some(decode(&body[..stop]));
        }
        rest = &rest[end_of_tag + 1..];
    }
}

fn decode(s: &str) -> String {
    let s = s.trim();
    if let Some(inner) = s
        .strip_prefix("<![CDATA[")
        .and_then(|x| x.strip_suffix("]]>"))
    {
        return inner.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(semi) = rest.find(';') else { break };
        let ent = &rest[1..semi];
        let ch = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn finds_first_element_and_decodes() {
        let doc = r#"<?xml version="1.0"?><R xmlns="x"><Error><Code>AccessDenied</Code><Message>User: a &amp; b &lt;c&gt; &#39;d&#x27;</Message></Error><Empty/></R>"#;
        assert_eq!(text(doc, "Code").as_deref(), Some("AccessDenied"));
        assert_eq!(text(doc, "Message").as_deref(), Some("User: a & b <c> 'd'"));
        assert_eq!(text(doc, "Empty").as_deref(), Some(""));
        assert_eq!(text(doc, "Missing"), None);
    }
}
