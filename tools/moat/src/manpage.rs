//! `moat help X`: the man pages are compiled into the dispatcher, so they work the same from
//! the source tree and installed. They are shown through `man -l` (man-db) or `mandoc`
//! when either is installed, else as plain text made from the mdoc source.

use moat_core::{Error, Result, cli};
use std::io::Write;
use std::process::{Command, Stdio};

pub struct Page {
    pub name: &'static str,
    pub section: u8,
    pub source: &'static str,
}

macro_rules! page {
    ($name:literal, $sec:literal) => {
        Page {
            name: $name,
            section: $sec,
            source: include_str!(concat!("../../../man/", $name, ".", stringify!($sec))),
        }
    };
}

pub const PAGES: &[Page] = &[
    page!("moat", 1),
    page!("moat-launch", 1),
    page!("moat-grant", 1),
    page!("moat-proxy", 1),
    page!("moat-audit", 1),
    page!("moat-sshd-filter", 1),
    page!("moat-files", 5),
];

/// The page for a help topic: a command (`run` → moat-launch), a tool name, `moat` or `files`.
pub fn page_for(topic: &str) -> Option<&'static Page> {
    let name = match topic {
        "files" | "moat-files" => "moat-files",
        "moat" | "help" => "moat",
        t if t.starts_with("moat-") => t,
        t => crate::commands::find(t)?.tool,
    };
    PAGES.iter().find(|p| p.name == name)
}

pub fn show(page: &Page) -> Result<()> {
    let viewers: [(&str, &[&str]); 2] = [("man", &["-l", "-"]), ("mandoc", &["-a"])];
    for (prog, args) in viewers {
        let child = Command::new(prog).args(args).stdin(Stdio::piped()).spawn();
        let Ok(mut child) = child else { continue };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(page.source.as_bytes());
        }
        let status = child
            .wait()
            .map_err(|e| Error::io(format!("running {prog}"), e))?;
        if status.success() {
            return Ok(());
        }
    }
    cli::write_stdout(plain_text(page).as_bytes())
}

/// A readable rendering of mdoc without a formatter: section headers, text and flags.
pub fn plain_text(page: &Page) -> String {
    let mut out = format!("{}({})\n", page.name.to_uppercase(), page.section);
    for line in page.source.lines() {
        if line.starts_with(".\\\"") {
            continue;
        }
        let Some(m) = line.strip_prefix('.') else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let (mac, rest) = m.split_once(' ').unwrap_or((m, ""));
        match mac {
            "Sh" => out.push_str(&format!("\n{rest}\n")),
            "Ss" => out.push_str(&format!("\n  {rest}\n")),
            "Pp" | "Bl" | "El" | "Bd" | "Ed" => out.push('\n'),
            "It" => out.push_str(&format!("\n  {}\n", strip_macros(rest))),
            "Dd" | "Dt" | "Os" => {}
            _ => {
                out.push_str(&strip_macros(&format!("{mac} {rest}")));
                out.push('\n');
            }
        }
    }
    out
}

fn strip_macros(s: &str) -> String {
    const MACROS: &[&str] = &[
        "Nm", "Nd", "Fl", "Ar", "Op", "Cm", "Pa", "Ev", "Xr", "Li", "Sy", "Em", "Dq", "Qq", "Ql",
        "Ic", "Va", "Ns", "Oo", "Oc", "Dl", "Cd", "Er",
    ];
    s.split_whitespace()
        .filter(|w| !MACROS.contains(w))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn every_command_has_a_page() {
        for c in crate::commands::COMMANDS {
            assert!(page_for(c.name).is_some(), "{}", c.name);
        }
        assert_eq!(page_for("proxy").unwrap().name, "moat-proxy");
        assert_eq!(page_for("files").unwrap().section, 5);
        assert!(page_for("nonsense").is_none());
        assert!(plain_text(page_for("moat").unwrap()).contains("SYNOPSIS"));
    }
}
