//! moat-audit: wires the command line to the library.
#![forbid(unsafe_code)]

mod args;

use args::Command;
use moat_audit::{append, bundle, note, report, store, verify};
use moat_core::{Error, MoatHome, Result, cli};

fn main() {
    cli::run_main("moat-audit", run)
}

fn run() -> Result<()> {
    match args::parse(std::env::args_os().skip(1))? {
        Command::Help => cli::write_stdout(format!("{}\n\n{}", args::USAGE, args::HELP).as_bytes()),
        Command::Version => cli::print_version("moat-audit"),
        Command::Key => {
            let home = MoatHome::from_env()?;
            let s = store::load_or_create_signer(&home)?;
            cli::write_stdout(format!("{}\n", s.verifier()).as_bytes())
        }
        Command::Append {
            run,
            interval,
            every,
        } => {
            let home = MoatHome::from_env()?;
            let opts = append::Options {
                run,
                interval,
                every,
            };
            // `audit_ready` once the log is open and signed over: the launcher starts nothing
            // of a run before it sees this line.
            let s = append::run_with_ready(&home, &opts, std::io::stdin(), |size| {
                let mut out = std::io::stdout().lock();
                let _ = moat_core::jsonl::emit(
                    &mut out,
                    "audit_ready",
                    &serde_json::json!({"run": opts.run, "tree_size": size}),
                );
            })?;
            // One record when the input ends: what was signed last, so a caller (the
            // launcher) can keep it elsewhere and later notice a log rolled back behind it.
            let mut out = std::io::stdout().lock();
            moat_core::jsonl::emit(
                &mut out,
                "audit_closed",
                &serde_json::json!({
                    "run": opts.run,
                    "appended": s.appended,
                    "skipped": s.skipped,
                    "tree_size": s.size,
                    "root": moat_core::hex(&s.root),
                    "checkpoint": s.checkpoint,
                }),
            )
        }
        Command::Verify { run, json } => verify_run(run.as_deref(), json),
        Command::Export { run, out, entries } => {
            let home = MoatHome::from_env()?;
            let run = store::resolve_run(&home, run.as_deref())?;
            let b = bundle::export(&home, &run, entries.as_deref())?;
            let mut text = serde_json::to_vec(&b)?;
            text.push(b'\n');
            if out == "-" {
                cli::write_stdout(&text)
            } else {
                // write_atomic works in the file's directory; a bare name means this one.
                let path = std::path::Path::new(".").join(&out);
                moat_core::fsutil::write_atomic(&path, &text, 0o644)?;
                eprintln!(
                    "moat-audit: wrote {out}: {} entr{}, {} checkpoint{}",
                    b.entries.len(),
                    if b.entries.len() == 1 { "y" } else { "ies" },
                    b.checkpoints.len(),
                    if b.checkpoints.len() == 1 { "" } else { "s" }
                );
                Ok(())
            }
        }
        Command::VerifyBundle {
            file,
            key,
            trust_bundle_key,
            json,
        } => {
            let b = bundle::read(&file)?;
            let key = if let Some(k) = key {
                store::key_arg(&k)?
            } else if trust_bundle_key {
                eprintln!(
                    "moat-audit: trusting the key inside the bundle: this shows the bundle is self-consistent, not who signed it"
                );
                b.verifier_key
                    .parse::<note::VerifierKey>()
                    .map_err(|e| Error::data(format!("{file}: the bundle's verifier key: {e}")))?
            } else {
                let home = MoatHome::from_env()?;
                store::pinned_key(&home)?.ok_or_else(bundle::no_key_error)?
            };
            let r = bundle::verify(&b, &key);
            finish(&file, "bundle", &r, json)
        }
    }
}

/// A directory given as RUN (it has a '/' in it): a run directory, or a copy of one such as
/// `moat promote` makes, holding `audit/log.jsonl`; the run id comes from its metadata.json.
fn run_dir_arg(arg: &str) -> Result<Option<(String, std::path::PathBuf)>> {
    if !arg.contains('/') {
        return Ok(None);
    }
    let dir = std::path::PathBuf::from(arg);
    if !dir.join("audit").join("log.jsonl").is_file() {
        return Err(Error::noinput(format!(
            "{arg}: no audit/log.jsonl there; give a run id, or a run directory"
        )));
    }
    let meta: Option<serde_json::Value> = std::fs::read(dir.join("metadata.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let id = meta
        .as_ref()
        .and_then(|m| m.get("id"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .or_else(|| {
            std::fs::canonicalize(&dir)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        })
        .ok_or_else(|| Error::data(format!("{arg}: cannot tell which run this is")))?;
    store::check_run_id(&id)?;
    Ok(Some((id, dir)))
}

fn verify_run(run: Option<&str>, json: bool) -> Result<()> {
    let home = MoatHome::from_env()?;
    let (run, audit_dir) = match run.map(run_dir_arg).transpose()?.flatten() {
        Some((id, dir)) => (id, dir.join("audit")),
        None => {
            let id = store::resolve_run(&home, run)?;
            let d = home.run_audit_dir(&id);
            (id, d)
        }
    };
    let key = store::pinned_key(&home)?.ok_or_else(|| {
        Error::no(format!(
            "no pinned key at {}",
            store::signing_pub_path(&home).display()
        ))
        .with_hint("the key is created by the first `moat-audit append`; copy the signer's signing.pub there to pin it")
    })?;
    let log_path = audit_dir.join("log.jsonl");
    let f = std::fs::File::open(&log_path)
        .map_err(|e| Error::io(format!("reading {}", log_path.display()), e))?;
    let cp_path = audit_dir.join("checkpoints");
    let cps = match std::fs::read_to_string(&cp_path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(format!("reading {}", cp_path.display()), e)),
    };
    let (notes, torn_cp) = note::split_checkpoints_file(&cps);
    let origin = store::origin(&run);
    let mut v = verify::Verifier::new(&origin, &notes, &key);
    let torn = verify::feed_reader(&mut v, &mut std::io::BufReader::with_capacity(1 << 20, f))
        .map_err(|e| Error::io(format!("reading {}", log_path.display()), e))?;
    let (mut r, _) = v.finish(torn, torn_cp.is_some());
    // The run's output, when it is there beside the audit directory.
    if let Some(run_dir) = audit_dir.parent() {
        moat_audit::logs::check(&mut r, &log_path, &run_dir.join("logs.jsonl"))
            .map_err(|e| Error::io("checking logs.jsonl against the audit log", e))?;
    }
    moat_audit::reports::note(&mut r, &log_path)
        .map_err(|e| Error::io(format!("reading {}", log_path.display()), e))?;
    finish(&run, "run", &r, json)
}

fn finish(subject: &str, label: &str, r: &verify::Report, json: bool) -> Result<()> {
    if json {
        let mut line = serde_json::to_string(&report::record(subject, label, r))?;
        line.push('\n');
        cli::write_stdout(line.as_bytes())?;
    } else {
        cli::write_stdout(report::text(label, subject, r).as_bytes())?;
    }
    match &r.fault {
        None => Ok(()),
        Some(f) => Err(Error::no(format!("{subject}: {f}"))),
    }
}
