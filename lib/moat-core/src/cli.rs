//! The edge of every tool's `main`: run the tool, turn an [`Error`] into `tool: message`
//! on stderr and its exit code, treat a closed stdout as success (a reader like `head`
//! went away), and make panics print where they happened but never their payload, which
//! could carry a value the tool was holding.

use crate::error::Error;
use crate::exit;
use std::io::Write;

/// Run a tool's body and exit with its code. Never returns.
pub fn run_main(tool: &'static str, body: impl FnOnce() -> Result<(), Error>) -> ! {
    install_panic_hook(tool);
    let code = match body() {
        Ok(()) => exit::OK,
        Err(e) => report(tool, &e),
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// Print an error the way every tool does and return its exit code.
pub fn report(tool: &str, e: &Error) -> i32 {
    if e.code == exit::OK {
        return exit::OK;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{tool}: {}", e.msg);
    if let Some(h) = &e.hint {
        let _ = writeln!(err, "{h}");
    }
    e.code
}

/// A usage error: the message, then the tool's usage line(s), exit 64.
pub fn usage_error(msg: impl Into<String>, usage: &str) -> Error {
    Error::usage(msg).with_hint(usage.trim_end().to_string())
}

/// Turn a lexopt error into a usage error carrying the usage text.
pub fn lexopt_error(e: lexopt::Error, usage: &str) -> Error {
    usage_error(e.to_string(), usage)
}

/// Print `tool VERSION` on stdout.
pub fn print_version(tool: &str) -> Result<(), Error> {
    write_stdout(format!("{tool} {}\n", crate::VERSION).as_bytes())
}

/// Write bytes to stdout; a closed pipe is not an error.
pub fn write_stdout(bytes: &[u8]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|_| out.flush())
        .map_err(stdout_error)
}

/// Map a stdout write failure: a broken pipe ends the tool quietly with exit 0.
pub fn stdout_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Error::new(exit::OK, "")
    } else {
        Error::io("writing output", e)
    }
}

/// Panics print their location and no payload: the payload of an `unwrap` or `expect`
/// can format whatever value was at hand, and a credential must never reach stderr.
pub fn install_panic_hook(tool: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_else(|| "unknown location".into());
        let _ = writeln!(
            std::io::stderr(),
            "{tool}: internal error at {loc} (this is a bug; please report it)"
        );
    }));
}

/// Is this file descriptor a terminal? Used to refuse printing secrets to one and to
/// decide whether to prompt. Based on std's `IsTerminal`.
pub fn stdout_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}

pub fn stdin_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}
