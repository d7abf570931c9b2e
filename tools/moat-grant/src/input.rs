//! Where secrets come in: standard input (`--token-stdin`), a hidden prompt on the terminal,
//! other programs (`gh auth token`, `ssh-keygen -F`) run with a time limit, and the checks
//! every secret passes before it is stored (no whitespace or control characters, which
//! could split an HTTP header).

use moat_core::{Error, Result};
use std::io::{BufRead, Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MAX_SECRET: u64 = 64 * 1024;

/// A secret as typed or piped: surrounding whitespace removed, then refused if empty or if
/// any character is outside printable ASCII. The error names `what`, never the value.
pub fn check_token(raw: &str, what: &str) -> Result<String> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(Error::data(format!("the {what} is empty")));
    }
    if !t.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(Error::data(format!(
            "the {what} contains spaces, control or non-ASCII characters"
        )));
    }
    Ok(t.to_string())
}

/// Read a secret from standard input (all of it, at most 64 KiB). When standard input is
/// a terminal, ask with echo off instead of waiting for end of file with echo on.
pub fn secret_from_stdin(what: &str) -> Result<String> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return prompt_hidden(&format!("{what}: "), what);
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_SECRET + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("reading standard input", e))?;
    if buf.len() as u64 > MAX_SECRET {
        return Err(Error::data(format!(
            "the {what} on standard input is too long"
        )));
    }
    let s = String::from_utf8(buf)
        .map_err(|_| Error::data(format!("the {what} on standard input is not UTF-8")))?;
    check_token(&s, what)
}

/// Can we ask the person? Only when standard input and standard error are terminals.
pub fn can_prompt() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Ask on the terminal with echo off. `stty` does the switching so this crate needs no
/// unsafe code; echo comes back on even when reading fails.
pub fn prompt_hidden(label: &str, what: &str) -> Result<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| Error::io("opening the terminal", e))?;
    let stty = |arg: &str| {
        if let Ok(t) = tty.try_clone() {
            let _ = Command::new("stty")
                .arg(arg)
                .stdin(t)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    };
    let mut w = tty
        .try_clone()
        .map_err(|e| Error::io("opening the terminal", e))?;
    // Echo goes off before the prompt shows, so nothing typed after it is echoed.
    stty("-echo");
    let _ = write!(w, "{label}");
    let _ = w.flush();
    let mut line = String::new();
    let res = std::io::BufReader::new(
        tty.try_clone()
            .map_err(|e| Error::io("opening the terminal", e))?,
    )
    .take(MAX_SECRET)
    .read_line(&mut line);
    stty("echo");
    let _ = writeln!(w);
    res.map_err(|e| Error::io("reading the terminal", e))?;
    check_token(&line, what)
}

/// Ask a visible question on the terminal (a choice, not a secret).
pub fn prompt_line(label: &str) -> Result<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| Error::io("opening the terminal", e))?;
    let mut w = tty
        .try_clone()
        .map_err(|e| Error::io("opening the terminal", e))?;
    let _ = write!(w, "{label}");
    let _ = w.flush();
    let mut line = String::new();
    std::io::BufReader::new(tty)
        .take(4096)
        .read_line(&mut line)
        .map_err(|e| Error::io("reading the terminal", e))?;
    Ok(line.trim().to_string())
}

/// Run a program with a time limit; `None` when it cannot start, fails or runs too long.
/// Its standard error is discarded: it may echo what it was given.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // Read stdout on a thread so a chatty program cannot block on a full pipe.
    let mut out = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = (&mut out).take(1 << 20).read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let stdout = reader.join().ok()?;
    Some(Output {
        status,
        stdout,
        stderr: Vec::new(),
    })
}

/// The value of an environment variable when set and not empty.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The user's home directory.
pub fn home_dir() -> Result<std::path::PathBuf> {
    env("HOME")
        .map(std::path::PathBuf::from)
        .ok_or_else(|| Error::config("HOME is not set"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_with_header_breaking_characters_are_refused() {
        assert_eq!(check_token("  abc\n", "token").unwrap(), "abc");
        assert!(check_token("", "token").unwrap_err().msg.contains("empty"));
        assert!(
            check_token(" \n ", "token")
                .unwrap_err()
                .msg
                .contains("empty")
        );
        for bad in ["a\r\nX-Evil: 1", "a b", "a\tb", "tökén", "a\0b"] {
            let e = check_token(bad, "token").unwrap_err();
            assert!(!e.msg.contains(bad), "{}", e.msg);
        }
    }

    #[test]
    fn slow_programs_are_stopped() {
        let mut c = Command::new("sleep");
        c.arg("5");
        let t = Instant::now();
        assert!(run_with_timeout(c, Duration::from_millis(200)).is_none());
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
