//! The JSON-lines envelope of every tool's machine output: one object per line, `"v": 1`
//! and `"type"` first, then the record's own fields. Readers ignore fields they do not
//! know and skip types they do not know; a different `v` is a different format.

use crate::error::{Error, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::io::Write;

pub const VERSION: u64 = 1;

/// Build one record: `{"v":1,"type":TYPE, ...fields of body}`. `body` must serialize to a
/// JSON object (or unit / null for a record with no fields).
pub fn record<T: Serialize + ?Sized>(kind: &str, body: &T) -> Result<Value> {
    let mut m = Map::new();
    m.insert("v".into(), Value::from(VERSION));
    m.insert("type".into(), Value::from(kind));
    match serde_json::to_value(body)? {
        Value::Object(fields) => {
            for (k, v) in fields {
                if k != "v" && k != "type" {
                    m.insert(k, v);
                }
            }
        }
        Value::Null => {}
        other => {
            return Err(Error::software(format!(
                "record {kind} must be an object, not {}",
                kind_of(&other)
            )));
        }
    }
    Ok(Value::Object(m))
}

/// One record as a line, newline included.
pub fn line<T: Serialize + ?Sized>(kind: &str, body: &T) -> Result<String> {
    let mut s = serde_json::to_string(&record(kind, body)?)?;
    s.push('\n');
    Ok(s)
}

/// Write one record and flush, so a reader on a pipe sees it at once.
pub fn emit<W: Write, T: Serialize + ?Sized>(w: &mut W, kind: &str, body: &T) -> Result<()> {
    let l = line(kind, body)?;
    w.write_all(l.as_bytes())
        .and_then(|_| w.flush())
        .map_err(crate::cli::stdout_error)
}

/// A parsed record: its type and all its fields (including `v` and `type`).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub kind: String,
    pub fields: Map<String, Value>,
}

impl Record {
    pub fn get(&self, k: &str) -> Option<&Value> {
        self.fields.get(k)
    }
    pub fn str(&self, k: &str) -> Option<&str> {
        self.fields.get(k).and_then(Value::as_str)
    }
    /// Deserialize the record's fields into a typed struct (unknown fields ignored).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(Value::Object(self.fields.clone()))
            .map_err(|e| Error::data(format!("record {}: {e}", self.kind)))
    }
}

/// Parse one line. Blank lines give `Ok(None)`. A line that is not a JSON object, or has no
/// string `type`, or a `v` other than 1, is a data error naming the problem.
pub fn parse(line: &str) -> Result<Option<Record>> {
    let t = line.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let v: Value =
        serde_json::from_str(t).map_err(|e| Error::data(format!("not a JSON record: {e}")))?;
    let Value::Object(fields) = v else {
        return Err(Error::data("not a JSON record: expected an object"));
    };
    match fields.get("v").and_then(Value::as_u64) {
        Some(VERSION) => {}
        Some(other) => {
            return Err(Error::data(format!(
                "record version {other} is not supported (want 1)"
            )));
        }
        None => return Err(Error::data("record has no \"v\" field")),
    }
    let kind = match fields.get("type").and_then(Value::as_str) {
        Some(k) => k.to_string(),
        None => return Err(Error::data("record has no \"type\" field")),
    };
    Ok(Some(Record { kind, fields }))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_comes_first_and_round_trips() {
        let l = line(
            "listening",
            &json!({"addr": "127.0.0.1:1", "type": "ignored"}),
        )
        .unwrap();
        assert!(l.starts_with(r#"{"v":1,"type":"listening""#), "{l}");
        assert!(l.ends_with('\n'));
        let r = parse(&l).unwrap().unwrap();
        assert_eq!(r.kind, "listening");
        assert_eq!(r.str("addr"), Some("127.0.0.1:1"));
    }

    #[test]
    fn bad_lines_are_data_errors() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("[1]").is_err());
        assert!(parse(r#"{"type":"x"}"#).is_err());
        assert!(
            parse(r#"{"v":2,"type":"x"}"#)
                .unwrap_err()
                .msg
                .contains("version 2")
        );
        assert!(record("x", &5).is_err());
    }
}
