//! One error type that knows its exit code. Tools keep their own thiserror enums where that
//! helps and convert into this at the edge; the message is what a person reads after
//! `tool: `, lowercase, without a final period, and never carries a secret value.

use crate::exit;
use std::fmt;

#[derive(Debug)]
pub struct Error {
    pub code: i32,
    pub msg: String,
    /// Extra lines printed after the message (hints, the usage line).
    pub hint: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: i32, msg: impl Into<String>) -> Self {
        Error {
            code,
            msg: msg.into(),
            hint: None,
        }
    }
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::new(exit::USAGE, msg)
    }
    pub fn data(msg: impl Into<String>) -> Self {
        Self::new(exit::DATAERR, msg)
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(exit::CONFIG, msg)
    }
    pub fn no(msg: impl Into<String>) -> Self {
        Self::new(exit::NO, msg)
    }
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::new(exit::UNAVAILABLE, msg)
    }
    pub fn software(msg: impl Into<String>) -> Self {
        Self::new(exit::SOFTWARE, msg)
    }
    pub fn noinput(msg: impl Into<String>) -> Self {
        Self::new(exit::NOINPUT, msg)
    }
    pub fn noperm(msg: impl Into<String>) -> Self {
        Self::new(exit::NOPERM, msg)
    }
    /// An I/O failure while doing `what` (e.g. "writing /x/y").
    pub fn io(what: impl fmt::Display, e: std::io::Error) -> Self {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => exit::NOINPUT,
            std::io::ErrorKind::PermissionDenied => exit::NOPERM,
            _ => exit::IOERR,
        };
        Self::new(code, format!("{what}: {}", io_msg(&e)))
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    /// Prefix the message with context, keeping the code: "reading config: ...".
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }
}

/// An io::Error as a short lowercase phrase ("permission denied", not "Permission denied (os error 13)").
pub fn io_msg(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => &s[..i],
        None => &s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

impl From<lexopt::Error> for Error {
    fn from(e: lexopt::Error) -> Self {
        Error::usage(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::data(format!("invalid JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn io_messages_are_short_and_lowercase() {
        let e = std::io::Error::from_raw_os_error(13);
        assert_eq!(io_msg(&e), "permission denied");
        let err = Error::io("opening /x", e);
        assert_eq!(err.code, exit::NOPERM);
        assert_eq!(err.to_string(), "opening /x: permission denied");
    }
}
