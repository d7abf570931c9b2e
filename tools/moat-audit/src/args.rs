//! The command line: one parse loop per command, producing a validated [`Command`].

use moat_core::{Result, cli};
use std::ffi::OsString;
use std::time::Duration;

pub const USAGE: &str = "\
usage: moat-audit append --run RUN_ID [--checkpoint-interval SECS] [--checkpoint-every N]
       moat-audit [verify] [RUN_ID] [--json]
       moat-audit [export] [RUN_ID] --export FILE [--entry N]...
       moat-audit verify-bundle FILE [--key KEY|FILE] [--trust-bundle-key] [--json]
       moat-audit key
       moat-audit --help | --version";

pub const HELP: &str = "\
moat-audit: an append-only audit log with a Merkle tree and signed checkpoints

Commands:
    append            read event records (JSON lines) on stdin and append them to the
                      run's log, signing checkpoints as it goes; the run's single writer
    verify            verify a run's log (the default command; no RUN_ID = the latest run;
                      RUN_ID may be a directory, e.g. a promoted run)
    export            write a proof bundle (also: moat-audit [RUN_ID] --export FILE;
                      no RUN_ID = the latest run)
    verify-bundle     verify a proof bundle offline against a pinned key
    key               print this machine's verifier key (creating the key pair if needed)

Options:
    --run RUN_ID                  (append) the run whose log to write
    --checkpoint-interval SECS    (append) sign a checkpoint at least this often [1]
    --checkpoint-every N          (append) ... and after every N entries [100000]
    --json                        (verify, verify-bundle) print the report as a JSON record
    -o, --export FILE             (export) where to write the bundle ('-' for stdout)
    --entry N                     (export) only entry N, with an inclusion proof (repeatable)
    --key KEY|FILE                (verify-bundle) the verifier key to trust
    --trust-bundle-key            (verify-bundle) trust the key carried in the bundle
    -h, --help                    show this help
    -V, --version                 show the version

Exit status: 0 intact, 1 verification failed, 64 usage, 65 bad data, 66 no such run,
75 the run already has a writer.
";

#[derive(Debug)]
pub enum Command {
    Help,
    Version,
    Key,
    Append {
        run: String,
        interval: Duration,
        every: u64,
    },
    Verify {
        run: Option<String>,
        json: bool,
    },
    Export {
        run: Option<String>,
        out: String,
        entries: Option<Vec<u64>>,
    },
    VerifyBundle {
        file: String,
        key: Option<String>,
        trust_bundle_key: bool,
        json: bool,
    },
}

fn usage(msg: impl Into<String>) -> moat_core::Error {
    cli::usage_error(msg, USAGE)
}

fn string(v: OsString, what: &str) -> Result<String> {
    v.into_string()
        .map_err(|_| usage(format!("{what} is not valid UTF-8")))
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let err = |e: lexopt::Error| cli::lexopt_error(e, USAGE);

    let mut sub: Option<String> = None;
    let mut positional: Vec<String> = Vec::new();
    let mut run: Option<String> = None;
    let mut interval = Duration::from_secs(1);
    let mut every: u64 = 100_000;
    let mut json = false;
    let mut out: Option<String> = None;
    let mut entries: Vec<u64> = Vec::new();
    let mut key: Option<String> = None;
    let mut trust = false;
    let mut seen: Vec<&'static str> = Vec::new();

    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Long("run") => {
                seen.push("--run");
                run = Some(string(p.value().map_err(err)?, "--run")?);
            }
            Long("checkpoint-interval") => {
                seen.push("--checkpoint-interval");
                let v = string(p.value().map_err(err)?, "--checkpoint-interval")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 86400.0)
                    .ok_or_else(|| {
                        usage(format!(
                            "--checkpoint-interval {v}: want seconds, e.g. 1 or 0.25"
                        ))
                    })?;
                interval = Duration::from_secs_f64(secs);
            }
            Long("checkpoint-every") => {
                seen.push("--checkpoint-every");
                let v = string(p.value().map_err(err)?, "--checkpoint-every")?;
                every = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    usage(format!("--checkpoint-every {v}: want a positive count"))
                })?;
            }
            Long("json") => {
                seen.push("--json");
                json = true;
            }
            Short('o') | Long("export") | Long("output") => {
                seen.push("--export");
                out = Some(string(p.value().map_err(err)?, "--export")?);
            }
            Long("entry") => {
                seen.push("--entry");
                let v = string(p.value().map_err(err)?, "--entry")?;
                for part in v.split(',').filter(|s| !s.is_empty()) {
                    entries.push(part.trim().parse().map_err(|_| {
                        usage(format!("--entry {part}: want an entry number (from 0)"))
                    })?);
                }
            }
            Long("key") => {
                seen.push("--key");
                key = Some(string(p.value().map_err(err)?, "--key")?);
            }
            Long("trust-bundle-key") => {
                seen.push("--trust-bundle-key");
                trust = true;
            }
            Value(v) => {
                let v = string(v, "argument")?;
                if sub.is_none()
                    && positional.is_empty()
                    && matches!(
                        v.as_str(),
                        "append" | "verify" | "export" | "verify-bundle" | "key" | "help"
                    )
                {
                    sub = Some(v);
                } else {
                    positional.push(v);
                }
            }
            _ => return Err(usage(arg.unexpected().to_string())),
        }
    }

    let allow = |ok: &[&str], cmd: &str| -> Result<()> {
        match seen.iter().find(|s| !ok.contains(s)) {
            Some(s) => Err(usage(format!("{s} does not apply to {cmd}"))),
            None => Ok(()),
        }
    };
    let at_most = |n: usize, cmd: &str| -> Result<()> {
        if positional.len() > n {
            Err(usage(format!(
                "unexpected argument {:?} for {cmd}",
                positional[n]
            )))
        } else {
            Ok(())
        }
    };
    let sub = match sub.as_deref() {
        None if out.is_some() => "export",
        None => "verify",
        Some(s) => s,
    };
    match sub {
        "help" => Ok(Command::Help),
        "key" => {
            allow(&[], "key")?;
            at_most(0, "key")?;
            Ok(Command::Key)
        }
        "append" => {
            allow(
                &["--run", "--checkpoint-interval", "--checkpoint-every"],
                "append",
            )?;
            at_most(0, "append")?;
            let run = run.ok_or_else(|| usage("append needs --run RUN_ID"))?;
            Ok(Command::Append {
                run,
                interval,
                every,
            })
        }
        "verify" => {
            allow(&["--json"], "verify")?;
            at_most(1, "verify")?;
            Ok(Command::Verify {
                run: positional.into_iter().next(),
                json,
            })
        }
        "export" => {
            allow(&["--export", "--entry"], "export")?;
            at_most(1, "export")?;
            let run = positional.into_iter().next();
            let out = out.ok_or_else(|| usage("export needs --export FILE (or -o FILE)"))?;
            Ok(Command::Export {
                run,
                out,
                entries: if entries.is_empty() {
                    None
                } else {
                    Some(entries)
                },
            })
        }
        "verify-bundle" => {
            allow(&["--key", "--trust-bundle-key", "--json"], "verify-bundle")?;
            at_most(1, "verify-bundle")?;
            let file = positional
                .into_iter()
                .next()
                .ok_or_else(|| usage("verify-bundle needs a FILE"))?;
            if key.is_some() && trust {
                return Err(usage("--key and --trust-bundle-key are alternatives"));
            }
            Ok(Command::VerifyBundle {
                file,
                key,
                trust_bundle_key: trust,
                json,
            })
        }
        other => Err(usage(format!("unknown command {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Command> {
        parse(a.iter().map(OsString::from))
    }

    #[test]
    fn the_forms_parse() {
        assert!(matches!(
            p(&[]).unwrap(),
            Command::Verify {
                run: None,
                json: false
            }
        ));
        assert!(matches!(
            p(&["run_1", "--json"]).unwrap(),
            Command::Verify {
                run: Some(_),
                json: true
            }
        ));
        assert!(matches!(
            p(&["run_1", "--export", "x.json", "--entry", "3", "--entry", "4,5"]).unwrap(),
            Command::Export { entries: Some(ref e), .. } if e == &[3, 4, 5]
        ));
        assert!(matches!(
            p(&["export", "run_1", "-o", "x"]).unwrap(),
            Command::Export { .. }
        ));
        assert!(matches!(
            p(&["append", "--run", "r", "--checkpoint-interval", "0.5"]).unwrap(),
            Command::Append { every: 100_000, .. }
        ));
        assert!(p(&["append"]).is_err());
        assert!(p(&["verify", "--run", "x"]).is_err());
        assert!(p(&["verify-bundle", "f", "--key", "k", "--trust-bundle-key"]).is_err());
        assert!(p(&["a", "b"]).is_err());
    }
}
