//! Argument handling and exec. The dispatcher parses only its own options before the
//! command word; everything after it belongs to the tool and is passed through untouched.

use crate::commands::{self, COMMANDS};
use crate::manpage;
use moat_core::{Error, Result, cli, edit_distance};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

const USAGE: &str = "usage: moat [--version] [--help] COMMAND [ARGS...]\n       moat help COMMAND";

pub fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let Some(first) = args.next() else {
        return cli::write_stdout(help_text().as_bytes());
    };
    let rest: Vec<OsString> = args.collect();
    let Some(word) = first.to_str() else {
        return Err(cli::usage_error("command name is not valid UTF-8", USAGE));
    };
    match word {
        "-h" | "--help" => cli::write_stdout(help_text().as_bytes()),
        "-V" | "--version" => cli::print_version("moat"),
        "help" => help(&rest),
        "completions" => crate::complete::completions(&rest),
        "__complete" => crate::complete::complete(&rest),
        w if w.starts_with('-') => Err(cli::usage_error(format!("unknown option '{w}'"), USAGE)),
        w => exec_command(w, rest),
    }
}

fn help(rest: &[OsString]) -> Result<()> {
    match rest {
        [] => cli::write_stdout(help_text().as_bytes()),
        [topic] => {
            let topic = topic.to_string_lossy();
            if let Some(page) = manpage::page_for(&topic) {
                return manpage::show(page);
            }
            // An extension has no page of ours: ask it for its help.
            if valid_command_word(&topic)
                && let Some(p) = find_tool(&format!("moat-{topic}"))
            {
                let e = std::process::Command::new(&p).arg("--help").exec();
                return Err(Error::io(format!("running {}", p.display()), e));
            }
            Err(unknown(&topic))
        }
        _ => Err(cli::usage_error("help takes one command name", USAGE)),
    }
}

fn exec_command(word: &str, rest: Vec<OsString>) -> Result<()> {
    if !valid_command_word(word) {
        return Err(unknown(word));
    }
    let (tool, pass_word) = match commands::find(word) {
        Some(c) => (c.tool.to_string(), c.tool != format!("moat-{word}")),
        None => (format!("moat-{word}"), false),
    };
    let Some(path) = find_tool(&tool) else {
        if commands::find(word).is_some() {
            return Err(Error::unavailable(format!(
                "{tool} not found beside moat or on PATH; is moat fully installed?"
            )));
        }
        return Err(unknown(word));
    };
    let mut cmd = std::process::Command::new(&path);
    cmd.arg0(&tool);
    if pass_word {
        cmd.arg(word);
    }
    cmd.args(rest);
    let e = cmd.exec();
    Err(Error::io(format!("running {}", path.display()), e))
}

/// A command word names a file `moat-WORD`: no path separators, no leading dot or dash.
fn valid_command_word(w: &str) -> bool {
    !w.is_empty()
        && !w.starts_with(['.', '-'])
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn unknown(word: &str) -> Error {
    let mut e = Error::usage(format!(
        "'{word}' is not a moat command. See 'moat --help'."
    ));
    if let Some(s) = suggestion(word) {
        e = e.with_hint(format!("\nThe most similar command is\n\t{s}"));
    }
    e
}

/// The closest known command or extension, if it is close enough to be a typo.
fn suggestion(word: &str) -> Option<String> {
    let mut names: Vec<String> = COMMANDS.iter().map(|c| c.name.to_string()).collect();
    names.push("help".into());
    names.extend(extensions());
    names
        .into_iter()
        .map(|n| (edit_distance(word, &n), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 3) && *d < n.len())
        .min()
        .map(|(_, n)| n)
}

/// Directories searched for tools: the one holding this binary, then PATH.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(d) = exe.parent()
    {
        dirs.push(d.to_path_buf());
    }
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p).filter(|d| d.is_absolute()));
    }
    dirs
}

pub fn find_tool(name: &str) -> Option<PathBuf> {
    search_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `moat-*` programs that are not moat's own tools: user extensions.
pub(crate) fn extensions() -> Vec<String> {
    let mut out = Vec::new();
    for d in search_dirs() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            let Some(x) = n.strip_prefix("moat-") else {
                continue;
            };
            if commands::TOOLS.contains(&n) || !valid_command_word(x) || !is_executable(&e.path()) {
                continue;
            }
            if !out.iter().any(|o| o == x) {
                out.push(x.to_string());
            }
        }
    }
    out.sort();
    out
}

fn help_text() -> String {
    let mut s = String::new();
    s.push_str("moat: run AI coding agents in a container that never sees a credential\n\n");
    s.push_str(USAGE);
    s.push_str("\n\nCommands:\n");
    let groups: [(&str, &[&str]); 4] = [
        (
            "Runs",
            &[
                "run", "claude", "codex", "gemini", "attach", "list", "status", "logs", "trace",
                "report", "stop", "destroy", "clean", "promote", "system",
            ],
        ),
        (
            "Workspaces",
            &["wt", "trust", "policy", "snapshot", "volumes", "deps"],
        ),
        ("Credentials", &["grant", "revoke"]),
        (
            "Audit and tools",
            &["audit", "verify-bundle", "proxy", "completions"],
        ),
    ];
    for (title, names) in groups {
        s.push_str(&format!("  {title}:\n"));
        for n in names {
            let c = commands::find(n).expect("command in table");
            s.push_str(&format!("    {:<15}{}\n", c.name, c.summary));
        }
    }
    let ext = extensions();
    if !ext.is_empty() {
        s.push_str("  Extensions (moat-* on PATH):\n");
        for e in ext {
            s.push_str(&format!("    {e}\n"));
        }
    }
    s.push_str(
        "\nOptions:\n    -h, --help     show this list\n    -V, --version  show the version\n\n\
         'moat help COMMAND' shows a command's manual; 'moat COMMAND --help' its options.\n\
         Files live under MOAT_HOME (default ~/.moat); see 'moat help files'.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn typos_get_a_suggestion_and_nonsense_does_not() {
        assert_eq!(suggestion("grnat").as_deref(), Some("grant"));
        assert_eq!(suggestion("lsit").as_deref(), Some("list"));
        assert_eq!(suggestion("xyzzyplugh"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
    #[test]
    fn command_words_cannot_be_paths() {
        assert!(valid_command_word("hello"));
        assert!(!valid_command_word("../x"));
        assert!(!valid_command_word("a/b"));
        assert!(!valid_command_word("-x"));
    }
}
