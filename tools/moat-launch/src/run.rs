//! One run, end to end. The CLI validates the config, allocates the run and writes
//! `spec.json`, then starts a supervisor (`moat-launch __supervise RUN`, in its own session)
//! that owns everything with a lifetime: the grant rules, the proxy, the audit writer, the
//! per-run network, the image build, the container and its log capture. The CLI then follows
//! the run (or returns, with -d); the run does not depend on it.
//!
//! Secrets: injection rules go from `moat-grant rules`' stdout pipe straight into the proxy's
//! stdin pipe; this process holds them only in memory and never logs them.

use crate::audit_writer::Audit;
use crate::config::{self, Bind, ExecTrace, RunSpec};
use crate::docker::{self, LABEL_RUN};
use crate::image;
use crate::store::{AuditRecord, Metadata, State, Store};
use bollard::Docker;
use futures_util::StreamExt;
use moat_core::timefmt::now_rfc3339;
use moat_core::{Error, MoatHome, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// `MOAT_LAUNCH_TIMING=1`: phase timings on the supervisor's stderr (launch.log).
fn phase(what: &str) {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let t0 = *START.get_or_init(std::time::Instant::now);
    if std::env::var_os("MOAT_LAUNCH_TIMING").is_some() {
        eprintln!("moat: timing: {:>6} ms {what}", t0.elapsed().as_millis());
    }
}

/// Find a sibling tool: next to this binary first, then on PATH.
pub fn tool(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

// ---------------------------------------------------------------- the CLI side

pub fn start(args: crate::args::RunArgs) -> Result<i32> {
    crate::timings::begin(args.timings);
    let home = MoatHome::from_env()?;
    let store = Store::new(home.clone());
    let path = args.path.clone().unwrap_or_else(|| PathBuf::from("."));
    let workspace = std::fs::canonicalize(&path)
        .map_err(|e| Error::io(format!("workspace {}", path.display()), e))?;
    if !workspace.is_dir() {
        return Err(Error::usage(format!(
            "workspace {} is not a directory",
            workspace.display()
        )));
    }
    let loaded = config::load(&workspace)?;
    for w in &loaded.warnings {
        eprintln!("moat-launch: warning: {w}");
    }
    let args = crate::agent::run_prompt(args, &loaded.config)?;
    let mut spec = config::resolve(&args, &loaded, &workspace)?;
    crate::timings::stage("config");
    crate::mcp::check_stored(&home, &spec.mcp)?;
    crate::trust::check_sensitive(&home, &workspace, &spec.binds, args.allow_sensitive_mount)?;
    crate::trust::check(&home, &workspace, &loaded)?;
    crate::timings::stage("trust check");
    if let Some(branch) = &args.worktree {
        let wt = crate::worktree::prepare(&home, &workspace, branch)?;
        crate::commands::reconcile_all(&store)?;
        if let Some(m) = store
            .all()?
            .into_iter()
            .find(|m| !m.state.is_terminal() && m.workspace == wt.path)
        {
            return Err(Error::new(
                moat_core::exit::TEMPFAIL,
                format!(
                    "{} ({}) is already running in the worktree {}",
                    m.name,
                    m.id,
                    wt.path.display()
                ),
            )
            .with_hint(format!("`moat attach {}` or `moat stop {}`", m.id, m.id)));
        }
        if args.name.is_none() {
            spec.name = crate::worktree::run_name(loaded.config.name.as_deref(), &wt.branch);
        }
        spec.binds.extend(crate::worktree::binds(&wt)?);
        if !spec.dependencies.iter().any(|d| d == "git") {
            spec.dependencies.push("git".into());
        }
        eprintln!(
            "moat: worktree {} on branch {}{}",
            wt.path.display(),
            wt.branch,
            if wt.created_branch {
                " (new, from HEAD)"
            } else {
                ""
            }
        );
        spec.workspace = wt.path.clone();
        spec.worktree = Some(wt);
    }
    spec.binds.extend(config::volume_binds(
        &loaded.config,
        &spec.agent,
        &home.volumes_dir(),
    ));
    spec.docker_volumes = config::docker_volumes(&loaded.config, &spec.agent);
    crate::plugins::prepare_run(&mut spec, &loaded, &home, args.agent.as_deref())?;
    if spec.interactive {
        spec.tty_size = crate::tty::term_size();
    }
    if spec.dependencies.iter().any(|d| d == "git") {
        import_git_identity(&mut spec);
    }
    if spec.dependencies.iter().any(|d| d == "docker:host") {
        eprintln!(
            "moat-launch: WARNING: docker:host mounts the host's Docker socket in the run: the agent can start privileged containers, read every file on the host and leave the network policy behind. Use it only with agents you trust as much as your own shell."
        );
    }
    let id = moat_core::new_run_id();
    let meta = Metadata {
        v: 1,
        id: id.clone(),
        name: spec.name.clone(),
        agent: spec.agent.clone(),
        workspace: spec.workspace.clone(),
        grants: spec.grants.clone(),
        state: State::Created,
        reason: None,
        exit_code: None,
        error_code: None,
        image: None,
        container_id: None,
        network: None,
        proxy_addr: None,
        supervisor_pid: None,
        proxy_pid: None,
        runtime: "docker".into(),
        sandbox: spec.sandbox,
        interactive: spec.interactive,
        detached: spec.detach,
        services: vec![],
        endpoints: match spec.router_port {
            Some(rp) => spec
                .ports
                .keys()
                .map(|ep| {
                    (
                        ep.clone(),
                        format!("https://{ep}.{}.localhost:{rp}/", spec.name),
                    )
                })
                .collect(),
            None => Default::default(),
        },
        created_at: now_rfc3339(),
        started_at: None,
        stopped_at: None,
        audit: None,
        worktree_branch: spec.worktree.as_ref().map(|w| w.branch.clone()),
        worktree_repo: spec.worktree.as_ref().map(|w| w.repo.clone()),
        usage: None,
    };
    store.create(&meta)?;
    let dir = store.dir(&id);
    let mut s = serde_json::to_vec_pretty(&spec)?;
    s.push(b'\n');
    moat_core::fsutil::write_atomic(&dir.join("spec.json"), &s, 0o600)?;

    let pid = spawn_supervisor(&dir, &id)?;
    store.update(&id, |m| m.supervisor_pid = Some(pid))?;
    if spec.detach {
        crate::attach::wait_started(&store, &id)
    } else if spec.interactive {
        crate::tty::attach(&store, &id, true)
    } else {
        crate::attach::follow(&store, &id, true)
    }
}

/// `git` in dependencies: the host's user.name and user.email, unless env sets them.
fn import_git_identity(spec: &mut RunSpec) {
    let get = |key: &str| {
        std::process::Command::new("git")
            .args(["config", "--get", key])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    for (key, vars) in [
        ("user.name", ["GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"]),
        ("user.email", ["GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"]),
    ] {
        if let Some(v) = get(key) {
            for var in vars {
                spec.env.entry(var.to_string()).or_insert_with(|| v.clone());
            }
        }
    }
}

fn spawn_supervisor(dir: &Path, id: &str) -> Result<u32> {
    use std::os::unix::fs::OpenOptionsExt;
    let exe = std::env::current_exe().map_err(|e| Error::io("finding moat-launch", e))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join("launch.log"))
        .map_err(|e| Error::io("creating launch.log", e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| Error::io("creating launch.log", e))?;
    // A new session: the terminal's Ctrl+C and hangup never reach the run.
    let mut c = if Path::new("/usr/bin/setsid").exists() || Path::new("/bin/setsid").exists() {
        let mut c = std::process::Command::new("setsid");
        c.arg(exe);
        c
    } else {
        use std::os::unix::process::CommandExt;
        let mut c = std::process::Command::new(exe);
        c.process_group(0);
        c
    };
    c.envs(crate::timings::child_env());
    c.arg("__supervise")
        .arg(id)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let child = c
        .spawn()
        .map_err(|e| Error::io("starting the run supervisor", e))?;
    Ok(child.id())
}

// ---------------------------------------------------------------- the supervisor

/// Owned resources, released in reverse order whatever happened.
struct Resources {
    docker: Option<Docker>,
    network: Option<String>,
    container: Option<String>,
    /// Service sidecars, removed before the network.
    sidecars: Vec<String>,
    proxy: Option<Child>,
    proxy_pump: Option<tokio::task::JoinHandle<()>>,
    /// The task renewing subscriptions; it owns the proxy's rules pipe, open for
    /// replacement rule sets, so ending it closes the pipe.
    refresher: Option<tokio::task::JoinHandle<()>>,
    ssh: Option<Child>,
    ssh_pump: Option<tokio::task::JoinHandle<()>>,
    /// The AWS credential endpoint's accept loop.
    aws: Option<tokio::task::JoinHandle<()>>,
    /// The AWS session renewal for the proxy's signing (aws.rs `keep_signing`).
    aws_renew: Option<tokio::task::JoinHandle<()>>,
    /// The `secrets:` endpoint (secrets_socket.rs).
    secrets: Option<tokio::task::JoinHandle<()>>,
    /// The exec trace's listener (exectrace.rs).
    exec: Option<crate::exectrace::Listening>,
    audit: Option<Audit>,
    /// The hostname route registered for this run: (name, run id).
    route: Option<(String, String)>,
    /// The guard image, for the spare guard left for the next run (guard.rs).
    guard_image: Option<String>,
    /// The spare network and guard for the next run, made while this one runs.
    spare: Option<tokio::task::JoinHandle<()>>,
    /// Automatic snapshots (git commits, builds, idle) while the container runs.
    triggers: Option<crate::triggers::Handle>,
}

pub async fn supervise(id: &str) -> Result<()> {
    let home = MoatHome::from_env()?;
    let store = Store::new(home.clone());
    let dir = store.dir(id);
    let spec: RunSpec = serde_json::from_slice(
        &std::fs::read(dir.join("spec.json")).map_err(|e| Error::io("reading spec.json", e))?,
    )?;
    store.update(id, |m| {
        m.supervisor_pid = Some(std::process::id());
        if m.state == State::Created {
            m.state = State::Starting;
        }
    })?;
    let mut res = Resources {
        docker: None,
        network: None,
        container: None,
        sidecars: vec![],
        proxy: None,
        proxy_pump: None,
        refresher: None,
        ssh: None,
        ssh_pump: None,
        aws: None,
        aws_renew: None,
        secrets: None,
        exec: None,
        audit: None,
        route: None,
        guard_image: None,
        spare: None,
        triggers: None,
    };
    let config_before = crate::trust::config_hashes(&spec.workspace);
    let outcome = lifecycle(&home, &store, id, &spec, &mut res).await;
    crate::trust::report_changes(&spec.workspace, &config_before, |kind, body| {
        if let Some(a) = &res.audit {
            a.event(kind, body)
        }
    });
    let (state, reason, exit_code, error_code) = match &outcome {
        Ok(code) => {
            let stopping = store
                .load(id)
                .map(|m| m.state == State::Stopping)
                .unwrap_or(false);
            if *code == 0 {
                (State::Stopped, None, Some(*code), None)
            } else if stopping {
                (
                    State::Stopped,
                    Some("stopped".to_string()),
                    Some(*code),
                    None,
                )
            } else {
                (
                    State::Failed,
                    Some(format!("the command exited with code {code}")),
                    Some(*code),
                    None,
                )
            }
        }
        // Stopped before the command started: not a failure.
        Err(e) if e.code == moat_core::exit::OK => {
            (State::Stopped, Some(e.msg.clone()), None, None)
        }
        Err(e) => {
            let mut msg = e.msg.clone();
            if let Some(h) = &e.hint {
                msg.push('\n');
                msg.push_str(h);
            }
            eprintln!("moat: run failed: {}", e.msg);
            if let Some(h) = &e.hint {
                eprintln!("moat: {h}");
            }
            (State::Failed, Some(msg), None, Some(e.code))
        }
    };
    let (state, reason, exit_code, error_code) = match crate::decoys::stopped() {
        Some(why) => (
            State::Failed,
            Some(why.clone()),
            Some(crate::decoys::EXIT_TRIPPED),
            None,
        ),
        None => (state, reason, exit_code, error_code),
    };
    // The proxy goes first so its last events reach the audit log; the run is recorded as
    // ended (and a following CLI returns) before Docker's clean-up, which takes a moment.
    stop_proxy(&mut res).await;
    let mut seal = None;
    if let Some(a) = res.audit.take() {
        a.event(
            "run_ended",
            serde_json::json!({"run": id, "state": state.as_str(), "exit_code": exit_code, "reason": reason}),
        );
        seal = a.finish().await;
        phase("audit finished");
    }
    let recorded = store.update(id, |m| {
        if let Some(seal) = &seal {
            m.audit = Some(AuditRecord::Sealed(seal.clone()));
        }
        m.exit_code = exit_code;
        m.error_code = error_code;
        if !m.state.is_terminal() {
            m.state = state;
            m.reason = reason.clone();
            m.stopped_at = Some(now_rfc3339());
        }
    });
    release(&mut res).await;
    let _ = std::fs::remove_dir_all(home.root().join("sockets").join(id));
    phase("released");
    recorded.map(|_| ())
}

async fn stop_proxy(r: &mut Resources) {
    // The triggers hold a sender into the audit log too, and may be taking a last snapshot.
    if let Some(t) = r.triggers.take() {
        t.finish().await;
    }
    // The credential endpoint holds a sender into the audit log: it goes before the log closes.
    for t in [r.aws.take(), r.aws_renew.take()].into_iter().flatten() {
        t.abort();
        let _ = t.await;
    }
    if let Some(t) = r.secrets.take() {
        t.abort();
        let _ = t.await;
    }
    if let Some(l) = r.exec.take() {
        l.finish().await;
    }
    if let Some(t) = r.refresher.take() {
        t.abort();
        let _ = t.await;
    }
    if let Some(mut p) = r.proxy.take() {
        terminate(&mut p).await;
    }
    if let Some(pump) = r.proxy_pump.take() {
        let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
    }
    if let Some(mut p) = r.ssh.take() {
        terminate(&mut p).await;
    }
    if let Some(pump) = r.ssh_pump.take() {
        let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
    }
}

/// The SSH filter for `ssh:HOST` grants: rules over its stdin pipe, its socket in a private
/// directory that the container gets at /run/moat/ssh, its events into the audit log.
async fn start_ssh_filter(
    home: &MoatHome,
    id: &str,
    rules: &[String],
    res: &mut Resources,
) -> Result<PathBuf> {
    // A directory of its own: it is mounted read-write, and nothing else of the run's
    // sockets directory (the AWS endpoint's files) may be writable from the container.
    let dir = home.root().join("sockets").join(id).join("ssh");
    moat_core::fsutil::create_private_dir(&dir)?;
    let sock = dir.join("agent.sock");
    let mut child = Command::new(tool("moat-sshd-filter"))
        .arg("serve")
        .arg("--socket")
        .arg(&sock)
        .args(["--rules", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io("starting moat-sshd-filter", e))?;
    let mut stdin = child.stdin.take().expect("piped");
    for l in rules {
        stdin
            .write_all(l.as_bytes())
            .await
            .map_err(|e| Error::io("handing rules to moat-sshd-filter", e))?;
    }
    stdin
        .shutdown()
        .await
        .map_err(|e| Error::io("handing rules to moat-sshd-filter", e))?;
    drop(stdin);
    let stdout = child.stdout.take().expect("piped");
    res.ssh = Some(child);
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| Error::unavailable("moat-sshd-filter did not start listening in time"))?
        .map_err(|e| Error::io("reading moat-sshd-filter", e))?
        .ok_or_else(|| Error::unavailable("moat-sshd-filter exited before listening"))?;
    moat_core::jsonl::parse(&first)?
        .filter(|r| r.kind == "listening")
        .ok_or_else(|| Error::unavailable("moat-sshd-filter's first record was not `listening`"))?;
    let tx = res.audit.as_ref().map(|a| a.tx.clone());
    res.ssh_pump = Some(tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(tx) = &tx
                && moat_core::jsonl::parse(&l).ok().flatten().is_some()
            {
                let _ = tx.send(format!("{l}\n"));
            }
        }
    }));
    Ok(dir)
}

async fn release(r: &mut Resources) {
    // The route goes first: the router must not send anyone to an address being released.
    if let Some((name, id)) = r.route.take()
        && let Ok(home) = MoatHome::from_env()
    {
        moat_core::routes::unregister(&home, &name, &id);
    }
    if let Some(d) = &r.docker {
        if let Some(c) = r.container.take()
            && let Err(e) = docker::force_remove(d, &c).await
        {
            eprintln!("moat: warning: removing container: {}", docker::short(&e));
        }
        let cars = std::mem::take(&mut r.sidecars);
        crate::services::remove(d, &cars).await;
        if let Some(n) = r.network.take() {
            crate::network::remove(d, &n).await;
            match r.spare.take() {
                Some(t) => {
                    let _ = t.await;
                }
                None => crate::network::replenish(d, r.guard_image.as_deref()).await,
            }
        }
    }
    stop_proxy(r).await;
}

async fn terminate(p: &mut Child) {
    if let Some(pid) = p.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(3), p.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = p.kill().await;
}

pub struct GrantRules {
    pub inject: Vec<String>,
    inject_hosts: Vec<String>,
    /// The placeholder variables, each with the grant it came from.
    pub env: Vec<moat_core::rules::EnvPlaceholder>,
    ssh: Vec<String>,
    aws: Option<moat_core::rules::AwsRole>,
}

/// `moat-grant rules NAME...`: the lines stay in memory, bound for the proxy's stdin.
pub async fn grant_rules(grants: &[String]) -> Result<GrantRules> {
    let mut out = GrantRules {
        inject: vec![],
        inject_hosts: vec![],
        env: vec![],
        ssh: vec![],
        aws: None,
    };
    if grants.is_empty() {
        return Ok(out);
    }
    let child = Command::new(tool("moat-grant"))
        .arg("rules")
        .args(grants)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io("running moat-grant", e))?;
    let o = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| Error::unavailable("moat-grant rules did not answer in time"))?
        .map_err(|e| Error::io("running moat-grant", e))?;
    if !o.status.success() {
        return Err(Error::new(
            o.status.code().unwrap_or(moat_core::exit::SOFTWARE),
            format!("could not load grants {}", grants.join(", ")),
        )
        .with_hint("store them first with `moat grant NAME`"));
    }
    let text =
        String::from_utf8(o.stdout).map_err(|_| Error::data("moat-grant printed invalid UTF-8"))?;
    for l in text.lines() {
        // Never echo a line: inject records carry secret values.
        let Some(r) = moat_core::jsonl::parse(l)
            .map_err(|_| Error::data("moat-grant printed an invalid record"))?
        else {
            continue;
        };
        match r.kind.as_str() {
            moat_core::rules::TYPE_INJECT => {
                if let Some(h) = r.get("hosts").and_then(|h| h.as_array()) {
                    out.inject_hosts
                        .extend(h.iter().filter_map(|x| x.as_str().map(String::from)));
                }
                out.inject.push(format!("{}\n", l.trim()));
            }
            moat_core::rules::TYPE_ENV => {
                out.env.push(r.decode()?);
            }
            moat_core::rules::TYPE_SSH => out.ssh.push(format!("{}\n", l.trim())),
            moat_core::rules::TYPE_AWS_ROLE => out.aws = Some(r.decode()?),
            "decoy" => {
                return Err(Error::usage(format!(
                    "{} is a decoy, not a grant; give it with --decoy",
                    r.str("name").unwrap_or_default()
                )));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The host's Docker socket (DOCKER_HOST's when it names one) and its group id.
fn docker_host_socket() -> Result<(String, u32)> {
    use std::os::unix::fs::MetadataExt;
    let sock = match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => h["unix://".len()..].to_string(),
        Ok(h) if !h.is_empty() => {
            return Err(Error::config(format!(
                "docker:host needs a local Docker socket, and DOCKER_HOST is {h}"
            )));
        }
        _ => "/var/run/docker.sock".to_string(),
    };
    let m = std::fs::metadata(&sock)
        .map_err(|e| Error::io(format!("docker:host: the Docker socket {sock}"), e))?;
    Ok((sock, m.gid()))
}

/// A free port on `ip` (the proxy binds it right after; the window is tiny and per-run).
fn free_port(ip: &str) -> Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0)).map_err(|e| {
        Error::io(format!("listening on the run network's gateway {ip}"), e).with_hint(
            "the run's proxy must run on the Docker host; a remote engine (DOCKER_HOST) is not supported yet",
        )
    })?;
    Ok(l.local_addr().map_err(|e| Error::io("binding", e))?.port())
}

async fn lifecycle(
    home: &MoatHome,
    store: &Store,
    id: &str,
    spec: &RunSpec,
    res: &mut Resources,
) -> Result<i64> {
    let dir = store.dir(id);
    phase("supervisor");
    if spec.no_audit {
        crate::audit_writer::disabled(store, id)?;
    } else {
        res.audit = Some(Audit::start(id).await?);
    }
    if !spec.snapshots.disabled && spec.snapshots.pre_run {
        let (d, rid, ws, sp) = (
            dir.clone(),
            id.to_string(),
            spec.workspace.clone(),
            spec.snapshots.clone(),
        );
        let made = tokio::task::spawn_blocking(move || {
            crate::snapshot::create(&d, &rid, &ws, &sp, "pre-run", None)
        })
        .await;
        match made {
            Ok(Ok(m)) => {
                if let Some(a) = &res.audit {
                    a.event(
                        "snapshot_created",
                        serde_json::json!({"run": id, "snapshot": m.id, "kind": m.kind, "files": m.files, "bytes": m.bytes}),
                    );
                }
            }
            Ok(Err(e)) => eprintln!("moat: warning: no pre-run snapshot: {}", e.msg),
            Err(_) => eprintln!("moat: warning: no pre-run snapshot"),
        }
        phase("pre-run snapshot");
    }
    // Subscriptions about to expire (or expired) are renewed before the run starts.
    let mut oauth = crate::refresh::oauth_grants(&spec.grants).await;
    let mut any_due = false;
    for g in oauth.iter().filter(|g| crate::refresh::due(g)) {
        any_due = true;
        match crate::refresh::refresh_one(&g.name).await {
            Ok(true) => {
                if let Some(a) = &res.audit {
                    a.event(
                        "grant_refreshed",
                        serde_json::json!({"run": id, "grant": g.name}),
                    );
                }
            }
            Ok(false) => {}
            Err(e) => eprintln!("moat: warning: {e}"),
        }
    }
    // A renewal (here or by another run) moved an expiry: read them again for the refresher.
    if any_due {
        oauth = crate::refresh::oauth_grants(&spec.grants).await;
    }
    let mut rules = grant_rules(&spec.grants).await?;
    let decoys = crate::decoys::prepare(
        spec,
        &rules.inject,
        &rules.env,
        rules.aws.is_some(),
        res.audit.as_ref(),
        id,
    )
    .await?;
    crate::mcp::check_rules(&spec.mcp, &rules.inject)?;
    let ssh_dir = if rules.ssh.is_empty() {
        None
    } else {
        Some(start_ssh_filter(home, id, &rules.ssh, res).await?)
    };
    // ssh in the container reaches the granted hosts through proxy tunnels.
    let ssh_client = if rules.ssh.is_empty() {
        None
    } else {
        Some(crate::ssh_client::prepare(&dir, &rules.ssh)?)
    };
    // The proxy's token; the AWS credential endpoint asks for it too.
    let token = moat_core::hex(&moat_core::random_bytes::<32>());

    // An agent CLI: its HOME files (placeholders), session logs, base URL relay.
    let agent = match &spec.agent_cli {
        Some(a) => Some(crate::agent_run::prepare(home, store, id, spec, a, &rules)?),
        None => None,
    };
    let transform = agent
        .as_ref()
        .map(|a| a.transform.clone())
        .unwrap_or_else(|| std::sync::Arc::new(|v: Vec<String>| v));
    rules.inject = transform(std::mem::take(&mut rules.inject));

    // secrets: resolved here, on the host, before anything is built or started. The values
    // live only in this process's memory until moat-init fetches them (secrets_socket.rs).
    let secrets = if spec.secrets.is_empty() {
        vec![]
    } else {
        let resolved = moat_secrets::resolve::Resolver::new(moat_secrets::Env::process())
            .resolve_all(spec.secrets.iter())
            .await?;
        if let Some(a) = &res.audit {
            let names: Vec<&str> = resolved.iter().map(|(n, _)| n.as_str()).collect();
            a.event(
                "secret_resolved",
                serde_json::json!({"run": id, "names": names}),
            );
        }
        resolved
    };
    let secrets_dir = if secrets.is_empty() {
        None
    } else {
        let sockets = home.root().join("sockets").join(id);
        moat_core::fsutil::create_private_dir(&sockets)?;
        let plain: Vec<(String, String)> = secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect();
        let t = moat_core::hex(&moat_core::random_bytes::<32>());
        let (dir, task) = crate::secrets_socket::start(&sockets, &plain, &t)?;
        res.secrets = Some(task);
        Some((dir, t))
    };
    // Exec tracing (exectrace.rs): the tracer's socket, and what its records mask: the
    // `secrets:` values (kept in this process's memory for that), the run's tokens and its
    // decoys (recorded as `[decoy]`).
    let exec_trace = match spec.exec_trace {
        ExecTrace::Off => None,
        mode => match crate::exectrace::tracer_binary() {
            Err(e) if mode == ExecTrace::On => {
                eprintln!("moat: WARNING: {}; this run records no exec trace", e.msg);
                None
            }
            Err(e) => return Err(e),
            Ok(bin) => {
                let sockets = home.root().join("sockets").join(id);
                moat_core::fsutil::create_private_dir(&sockets)?;
                let t = moat_core::hex(&moat_core::random_bytes::<32>());
                let mut known: Vec<String> = secrets
                    .iter()
                    .map(|(_, v)| v.expose().to_string())
                    .collect();
                known.push(token.clone());
                known.push(t.clone());
                if let Some((_, st)) = &secrets_dir {
                    known.push(st.clone());
                }
                let (dir, listening) = crate::exectrace::start(
                    &sockets,
                    &t,
                    &store.dir(id).join("exec.jsonl"),
                    crate::exectrace::Masker::with_decoys(
                        known,
                        decoys.iter().flat_map(|d| d.values()),
                    ),
                )?;
                res.exec = Some(listening);
                Some((dir, bin, t, mode == ExecTrace::Required))
            }
        },
    };
    drop(secrets);
    phase("secrets");

    let mut aws_sign = None;
    let aws_dir = match &rules.aws {
        None => None,
        Some(role) => {
            let sockets = home.root().join("sockets").join(id);
            moat_core::fsutil::create_private_dir(&sockets)?;
            let tx = res.audit.as_ref().map(|a| a.tx.clone());
            let (dir, task, sign) =
                crate::aws::start(&sockets, role, &token, tx, spec.aws_session_credentials).await?;
            res.aws = Some(task);
            aws_sign = sign;
            Some(dir)
        }
    };

    phase("grants");
    let d = docker::connect().await?;
    res.docker = Some(d.clone());
    phase("docker connected");
    // gVisor is not used yet, even where it is registered: its default network sends the
    // container's packets through a packet socket that the guard's firewall does not see
    // (guard.rs), and a run must never start with an open network. Runs use runc and say so.
    if spec.sandbox {
        if docker::has_runsc(&d).await? {
            eprintln!(
                "moat: gVisor (runsc) is registered, but moat's network guard is not yet proven under it; this run uses runc so that its only way out stays the proxy (--no-sandbox or `sandbox: none` makes that explicit)"
            );
        } else {
            eprintln!(
                "moat: gVisor (runsc) is not registered with Docker; this run uses runc (--no-sandbox or `sandbox: none` makes that explicit)"
            );
        }
    }

    // The run's own network (see network.rs); the proxy listens on its gateway.
    let (net_name, gateway) = crate::network::acquire(&d, id).await?;
    res.network = Some(net_name.clone());
    store.update(id, |m| m.network = Some(net_name.clone()))?;
    let labels = HashMap::from([
        (LABEL_RUN.to_string(), id.to_string()),
        (
            docker::LABEL_HOME.to_string(),
            home.root().display().to_string(),
        ),
        (docker::LABEL_NAME.to_string(), spec.name.clone()),
    ]);
    phase("network");
    crate::timings::stage("network");

    // The image: worked out first, so the proxy knows whether this run builds.
    let ca_path = home.ca_dir().join("ca.crt");
    let bake_ca = spec.hooks.post_build_root.is_some() || spec.hooks.post_build.is_some();
    if bake_ca && !ca_path.exists() {
        let _ = Command::new(tool("moat-proxy"))
            .arg("ca-path")
            .stdout(Stdio::null())
            .status()
            .await;
    }
    let ca_pem = std::fs::read(&ca_path).ok();
    let mut err = std::io::stderr();
    let ctx = image::prepare(&d, spec, ca_pem.as_deref(), &mut err).await?;
    moat_core::fsutil::write_atomic(&dir.join("Dockerfile"), ctx.dockerfile.as_bytes(), 0o644)?;
    phase("image prepared");
    let needs_build = spec.rebuild || docker::image_id(&d, &ctx.tag).await?.is_none();
    // The run and its sidecars run behind guards (guard.rs), whose image is built once,
    // through the proxy.
    let guard_image = crate::guard::guard_image(&d, &ctx.base).await?;
    let needs_guard = docker::image_id(&d, &guard_image).await?.is_none();
    res.guard_image = Some(guard_image.clone());
    crate::timings::stage("image check");

    // The proxy, listening on the gateway: reachable from this network only.
    let token_file = dir.join("proxy.token");
    moat_core::fsutil::write_secret(&token_file, token.as_bytes())?;
    let port = free_port(&gateway)?;
    let mut cmd = Command::new(tool("moat-proxy"));
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("{gateway}:{port}"))
        .args(["--rules", "-"])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--policy")
        .arg(&spec.policy)
        .arg("--trace")
        .arg(dir.join("network.jsonl"));
    let mut allow = spec.allow.clone();
    allow.extend(crate::mcp::allowances(&spec.mcp));
    if spec.policy == "strict" {
        allow.extend(
            (rules.inject_hosts.iter()).map(|h| moat_core::rules::inject_host(h).1.to_string()),
        );
    }
    if needs_build || needs_guard {
        // The build fetches packages from the host's apt mirrors through this proxy; an
        // allowance with an explicit port also lets the proxy dial a mirror on a private
        // address (as local mirrors often are).
        allow.extend(
            image::apt_mirror_hosts()
                .into_iter()
                .map(|h| format!("{h}:80")),
        );
        if let Some(a) = spec
            .npm_registry
            .as_deref()
            .and_then(crate::agent::url_authority)
        {
            allow.push(a);
        }
    }
    for h in &allow {
        cmd.arg("--allow").arg(h);
    }
    for t in ssh_client.iter().flat_map(|c| c.tunnels()) {
        cmd.arg("--tunnel").arg(t);
    }
    let mut proxy = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io("starting moat-proxy", e))?;
    let mut extra: Vec<String> = vec![];
    for r in &spec.net_rules {
        extra.push(format!("{}\n", serde_json::to_string(r)?));
    }
    if let Some(a) = &agent {
        extra.extend(a.relays.iter().cloned());
    }
    extra.extend(crate::mcp::relay_records(&spec.mcp)?);
    extra.extend(decoys.iter().flat_map(|d| d.records.iter().cloned()));
    extra.push(crate::budget::rules_record(home, &spec.budget)?);
    {
        let mut stdin = proxy.stdin.take().expect("piped");
        // Issue #23: the proxy signs AWS requests with the session the supervisor holds.
        let (aws_line, aws_expiry) = match &aws_sign {
            Some(s) => {
                let (l, e) = s.record().await?;
                (Some(l), Some(e))
            }
            None => (None, None),
        };
        for l in rules
            .inject
            .iter()
            .chain(aws_line.iter())
            .chain(extra.iter())
        {
            stdin
                .write_all(l.as_bytes())
                .await
                .map_err(|e| Error::io("handing rules to moat-proxy", e))?;
        }
        if oauth.is_empty() && aws_sign.is_none() {
            stdin
                .shutdown()
                .await
                .map_err(|e| Error::io("handing rules to moat-proxy", e))?;
        } else {
            // The pipe stays open: renewed tokens arrive as a new rule set.
            stdin
                .write_all(crate::refresh::rules_end().as_bytes())
                .await
                .map_err(|e| Error::io("handing rules to moat-proxy", e))?;
            stdin
                .flush()
                .await
                .map_err(|e| Error::io("handing rules to moat-proxy", e))?;
            let pipe = std::sync::Arc::new(tokio::sync::Mutex::new(crate::refresh::RulesPipe {
                pipe: stdin,
                inject: if aws_sign.is_some() {
                    rules.inject.clone()
                } else {
                    vec![]
                },
                aws: aws_line,
                extra: extra.clone(),
            }));
            if !oauth.is_empty() {
                res.refresher = Some(tokio::spawn(crate::refresh::keep_fresh(
                    spec.grants.clone(),
                    oauth.clone(),
                    pipe.clone(),
                    transform.clone(),
                    res.audit.as_ref().map(|a| a.tx.clone()),
                    id.to_string(),
                )));
            }
            if let (Some(s), Some(e)) = (aws_sign.take(), aws_expiry) {
                res.aws_renew = Some(tokio::spawn(crate::aws::keep_signing(
                    s,
                    e,
                    pipe,
                    res.audit.as_ref().map(|a| a.tx.clone()),
                )));
            }
        }
    }
    drop(std::mem::take(&mut rules.inject));
    let stdout = proxy.stdout.take().expect("piped");
    let proxy_pid = proxy.id();
    res.proxy = Some(proxy);
    // The proxy listens where it was told; while it starts, the container can be created.
    let proxy_url = format!("http://moat:{token}@{gateway}:{port}");
    let (pip, pport) = (gateway.clone(), port.to_string());
    // Remote MCP servers: the relay's address is known now; the CLI's staged files get it.
    let mcp_base = format!("http://{pip}:{pport}/mcp/{token}");
    if let Some(a) = &spec.agent_cli {
        crate::mcp::stage(&dir.join("agent-home"), &a.cli, &spec.mcp, &mcp_base)?;
    }
    let listening = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| Error::unavailable("moat-proxy did not start listening in time"))?
            .map_err(|e| Error::io("reading moat-proxy", e))?
            .ok_or_else(|| Error::unavailable("moat-proxy exited before listening"))?;
        Ok::<_, Error>((first, lines))
    });
    let mut listening = Some(listening);
    let default_ca = home.ca_dir().join("ca.crt");
    let mut ca = default_ca.clone();
    if needs_build || needs_guard || !default_ca.exists() {
        ca = proxy_listening(
            listening.take(),
            store,
            id,
            &format!("{pip}:{pport}"),
            proxy_pid,
            res,
        )
        .await?;
    }

    // Builds run in the relay's loopback-only namespace; the relay leads to the proxy alone.
    let relay = if needs_build || needs_guard {
        let sockets = home.root().join("sockets").join(id).join("build");
        Some(
            crate::guard::Relay::start(
                &d,
                id,
                &sockets,
                &format!("{pip}:{pport}"),
                &ctx.base,
                &mut res.sidecars,
            )
            .await?,
        )
    } else {
        None
    };
    if needs_guard && let Some(r) = &relay {
        crate::guard::ensure_guard_image(&d, &ctx.base, &guard_image, r, &token, &mut err).await?;
    }

    // Service sidecars start now; their readiness is awaited just before the command starts.
    let mut cars = vec![];
    crate::services::start(
        &d,
        id,
        &net_name,
        spec,
        &guard_image,
        &mut res.sidecars,
        &mut cars,
        &mut std::io::stderr(),
    )
    .await?;
    if !cars.is_empty() {
        let names: Vec<String> = cars.iter().map(|c| c.service.clone()).collect();
        store.update(id, |m| m.services = names.clone())?;
        if let Some(a) = &res.audit {
            for c in &cars {
                a.event(
                    "service_started",
                    serde_json::json!({"run": id, "service": c.service, "image": c.image, "container_id": c.container, "port": c.port}),
                );
            }
        }
        phase("sidecars started");
    }
    let wiring = crate::services::wiring(spec, &cars);

    let built = match &relay {
        Some(r) if needs_build => {
            let pem = std::fs::read(&ca).ok();
            let url = crate::guard::Relay::proxy_url(&token);
            image::ensure(
                &d,
                &ctx,
                spec.rebuild,
                &r.network_mode(),
                &url,
                pem.as_deref(),
                &mut err,
            )
            .await?
        }
        _ => false,
    };
    if let Some(r) = relay {
        r.stop(&d).await;
    }
    store.update(id, |m| m.image = Some(ctx.tag.clone()))?;
    if built && let Some(a) = &res.audit {
        a.event(
            "image_built",
            serde_json::json!({"run": id, "image": ctx.tag}),
        );
    }

    // The container.
    let mut env: Vec<String> = vec![];
    for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        env.push(format!("{k}={proxy_url}"));
    }
    let mut no_proxy = format!("localhost,127.0.0.1,::1,{pip}");
    for c in &cars {
        no_proxy.push_str(&format!(",{},{}", c.service, c.ip));
    }
    env.push(format!("NO_PROXY={no_proxy}"));
    env.push(format!("no_proxy={no_proxy}"));
    env.extend(crate::mcp::env(&spec.mcp, &mcp_base));
    env.extend(wiring.env.iter().cloned());
    env.push(format!("MOAT_RUN_ID={id}"));
    env.push(format!("MOAT_RUN_NAME={}", spec.name));
    env.push("GIT_CONFIG_COUNT=1".into());
    env.push("GIT_CONFIG_KEY_0=http.proxyAuthMethod".into());
    env.push("GIT_CONFIG_VALUE_0=basic".into());
    for p in &rules.env {
        env.push(format!("{}={}", p.name, p.value));
    }
    if spec.grants.iter().any(|g| g == "github") {
        env.push("GIT_TERMINAL_PROMPT=0".into());
    }
    for (k, v) in &spec.env {
        env.push(format!("{k}={v}"));
    }
    if let Some((_, t)) = &secrets_dir {
        env.push(format!("{}={t}", crate::secrets_socket::TOKEN_VAR));
    }
    if let Some((_, _, t, required)) = &exec_trace {
        env.push(format!("{}={t}", crate::exectrace::TOKEN_VAR));
        if *required {
            env.push(format!("{}=1", crate::exectrace::REQUIRED_VAR));
        }
    }
    if let Some(role) = &rules.aws {
        env.extend(crate::aws::container_env(role));
        env.push(format!("MOAT_AWS_CREDENTIAL_TOKEN={token}"));
    }
    if ssh_dir.is_some() {
        env.push("SSH_AUTH_SOCK=/run/moat/ssh/agent.sock".into());
    }
    if spec.interactive {
        let term = std::env::var("TERM")
            .ok()
            .filter(|t| !t.is_empty() && t != "dumb");
        env.push(format!(
            "TERM={}",
            term.as_deref().unwrap_or("xterm-256color")
        ));
        if let Some((rows, cols)) = spec.tty_size {
            env.push(format!("MOAT_TTY_SIZE={rows} {cols}"));
        }
    }
    if let Some(h) = &spec.hooks.pre_run {
        env.push(format!("MOAT_PRE_RUN={h}"));
    }
    if let Some(rp) = spec.router_port {
        check_route_name(home, id, &spec.name)?;
        env.extend(endpoint_env(&spec.name, &spec.ports, rp));
    }
    if let Some(a) = &agent {
        for (k, v) in &a.env {
            env.push(format!("{k}={v}"));
        }
        if let Some(name) = &a.base_relay {
            env.push(format!(
                "ANTHROPIC_BASE_URL=http://{pip}:{pport}/relay/{token}/{name}"
            ));
        }
    }
    if let Some(d) = &decoys {
        crate::decoys::container_env(d, &mut env);
    }
    let mut binds = vec![format!(
        "{}:/workspace{}",
        spec.workspace.display(),
        if spec.readonly_workspace { ":ro" } else { "" }
    )];
    for Bind {
        source,
        target,
        readonly,
    } in &spec.binds
    {
        if source.starts_with(home.volumes_dir()) {
            moat_core::fsutil::create_private_dir(source)?;
        }
        binds.push(format!(
            "{}:{}{}",
            source.display(),
            target,
            if *readonly { ":ro" } else { "" }
        ));
    }
    let mut chown = vec![];
    for v in &spec.docker_volumes {
        let name =
            crate::volumes::ensure(&d, &home.root().display().to_string(), &v.agent, &v.name)
                .await?;
        binds.push(format!(
            "{name}:{}{}",
            v.target,
            if v.readonly { ":ro" } else { "" }
        ));
        if !v.readonly {
            chown.push(v.target.clone());
        }
    }
    if !chown.is_empty() {
        env.push(format!("MOAT_VOLUME_CHOWN={}", chown.join(" ")));
    }
    if ca.exists() {
        binds.push(format!("{}:/run/moat/ca.crt:ro", ca.display()));
    }
    if let Some(d) = &ssh_dir {
        binds.push(format!("{}:/run/moat/ssh", d.display()));
    }
    if let Some(a) = &agent {
        binds.extend(a.binds.iter().cloned());
    }
    if let Some(d) = &aws_dir {
        binds.push(format!("{}:{}:ro", d.display(), crate::aws::MOUNT));
    }
    if let Some((d, _)) = &secrets_dir {
        binds.push(format!(
            "{}:{}:ro",
            d.display(),
            crate::secrets_socket::MOUNT
        ));
    }
    if let Some((d, bin, _, _)) = &exec_trace {
        binds.push(format!("{}:{}:ro", d.display(), crate::exectrace::MOUNT));
        binds.push(format!(
            "{}:{}:ro",
            bin.display(),
            crate::exectrace::BIN_MOUNT
        ));
    }
    if let Some(c) = &ssh_client {
        binds.extend(c.binds());
    }
    if spec.dependencies.iter().any(|d| d == "docker:host") {
        let (sock, gid) = docker_host_socket()?;
        eprintln!(
            "moat: WARNING: docker:host: {sock} is mounted in this run; the agent controls the host's Docker engine, and through it the host (and it can bypass the run's firewall)"
        );
        if let Some(a) = &res.audit {
            a.event(
                "docker_host_mounted",
                serde_json::json!({"run": id, "socket": sock}),
            );
        }
        binds.push(format!("{sock}:/var/run/docker.sock"));
        env.push(format!("MOAT_DOCKER_GID={gid}"));
    }
    // The run's firewall is its guard's, not the image's (guard.rs): the container joins it.
    let proxy_addr = format!("{pip}:{pport}");
    let run_guard = crate::guard::RunGuard {
        network: &net_name,
        proxy: &proxy_addr,
        services: &wiring.allow,
        extra_hosts: &wiring.hosts,
        dns: &spec.dns,
        labels: &labels,
    };
    // A spare guard on the claimed network is told the run's proxy (guard.rs); else the
    // guard is created first, so the run container can name it. Either sets its rules while
    // the run container is created, and the run container starts only once it is ready.
    let spare = if wiring.allow.is_empty() && wiring.hosts.is_empty() && spec.dns.is_empty() {
        match crate::guard::claim_spare(&d, &net_name, &guard_image).await {
            Some(g) => match crate::guard::open_spare(&net_name) {
                Some(fifo) => Some((g, fifo)),
                None => {
                    crate::guard::remove_spare(&d, &net_name).await;
                    None
                }
            },
            None => None,
        }
    } else {
        // Not for this run (its guard takes settings only at creation): it goes meanwhile.
        let (d, n) = (d.clone(), net_name.clone());
        tokio::spawn(async move { crate::guard::remove_spare(&d, &n).await });
        None
    };
    let (guard, guard_ready) = match spare {
        Some((g, fifo)) => {
            res.sidecars.push(g.clone());
            let (d, g2, pa) = (d.clone(), g.clone(), proxy_addr.clone());
            let t = tokio::spawn(
                async move { crate::guard::configure_spare(&d, &g2, fifo, &pa).await },
            );
            (g, t)
        }
        None => {
            let guard =
                crate::guard::create_run_guard(&d, id, &run_guard, &guard_image, &mut res.sidecars)
                    .await?;
            let (d, g2, net) = (d.clone(), guard.clone(), net_name.clone());
            let t = tokio::spawn(async move {
                crate::guard::start_run_guard(&d, &g2, &net)
                    .await
                    .map(|_| ())
            });
            (guard, t)
        }
    };
    crate::timings::stage("guard start");
    let (network_mode, cap_drop) = crate::guard::run_network_mode(&guard);
    let host = bollard::models::HostConfig {
        binds: Some(binds),
        network_mode: Some(network_mode),
        cap_drop: Some(cap_drop),
        memory: spec.memory_mb.map(|m| (m * 1024 * 1024) as i64),
        nano_cpus: spec.cpus.map(|c| i64::from(c) * 1_000_000_000),
        // runc: see the note on gVisor above.
        runtime: None,
        // tini as PID 1: signals reach the command (a shell as PID 1 ignores SIGTERM).
        init: Some(true),
        ..Default::default()
    };
    let body = bollard::models::ContainerCreateBody {
        image: Some(ctx.tag.clone()),
        cmd: spec.command.clone(),
        env: Some(env),
        user: Some("root".into()),
        working_dir: Some("/workspace".into()),
        labels: Some(labels),
        host_config: Some(host),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(spec.interactive),
        open_stdin: Some(spec.interactive),
        attach_stdin: Some(spec.interactive),
        ..Default::default()
    };
    // The record is not optional: no run container exists before its writer is ready.
    if let Some(a) = res.audit.as_mut() {
        a.ready().await?;
        crate::timings::stage("audit start");
    }
    let cname = format!("moat-{id}");
    let opts = bollard::query_parameters::CreateContainerOptions {
        name: Some(cname.clone()),
        ..Default::default()
    };
    let created = d
        .create_container(Some(opts), body)
        .await
        .map_err(|e| docker::err("creating the container", e))?;
    res.container = Some(created.id.clone());
    crate::timings::stage("container create");
    guard_ready
        .await
        .map_err(|e| Error::software(format!("starting the run's guard: {e}")))??;
    crate::timings::stage("firewall ready");
    phase("run guard ready");
    if listening.is_some() {
        proxy_listening(
            listening.take(),
            store,
            id,
            &format!("{pip}:{pport}"),
            proxy_pid,
            res,
        )
        .await?;
    }
    phase("container created");
    if !cars.is_empty() {
        crate::services::wait_ready(&d, &cars, &mut std::io::stderr()).await?;
        phase("services ready");
    }
    store.update(id, |m| m.container_id = Some(created.id.clone()))?;
    if spec.interactive && !spec.detach {
        // Start once the CLI is attached, so the first output reaches the terminal.
        let gate = dir.join("attached");
        let mut waited = 0;
        while !gate.exists() && waited < 600 {
            if store.load(id)?.state == State::Stopping {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += 1;
        }
        if !gate.exists() {
            eprintln!("moat: nobody attached within 12s; starting anyway (`moat attach {id}`)");
        }
    }
    if store.load(id)?.state == State::Stopping {
        return Err(Error::new(moat_core::exit::OK, "stopped before it started"));
    }
    // Output is captured through an attach made before the start, not the log driver: the
    // json-file driver (Docker 20.10) drops a last line that has no newline.
    let attach_opts = bollard::query_parameters::AttachContainerOptions {
        stream: true,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let attached = d
        .attach_container(&created.id, Some(attach_opts))
        .await
        .map_err(|e| docker::err("attaching to the container", e))?;
    if let Some(why) = res.audit.as_ref().and_then(|a| a.dead()) {
        return Err(Error::software(format!(
            "{why}; the container was not started"
        )));
    }
    d.start_container(
        &created.id,
        None::<bollard::query_parameters::StartContainerOptions>,
    )
    .await
    .map_err(|e| docker::err("starting the container", e))?;
    crate::timings::stage("container start");
    // The next run's spare network and guard, made while this one runs (not when it ends,
    // which is when a following run may already be starting).
    {
        let (d, image) = (d.clone(), guard_image.clone());
        res.spare = Some(tokio::spawn(async move {
            crate::network::replenish(&d, Some(&image)).await
        }));
    }
    store.update(id, |m| {
        if m.state == State::Starting {
            m.state = State::Running;
        }
        m.started_at = Some(now_rfc3339());
    })?;
    if let Some(a) = &res.audit {
        a.event(
            "run_started",
            serde_json::json!({"run": id, "name": spec.name, "workspace": spec.workspace, "image": ctx.tag, "grants": spec.grants, "container_id": created.id, "policy": spec.policy}),
        );
    }

    phase("container started");
    if let Some(rp) = spec.router_port {
        // The run's address on its network is its guard's (the container shares it).
        register_routes(home, &d, id, spec, &guard, &net_name, rp, res).await?;
    }
    let logs = tokio::spawn(capture_logs(
        attached.output,
        dir.join("logs.jsonl"),
        (id.to_string(), res.audit.as_ref().map(|a| a.tx.clone())),
    ));
    res.triggers = crate::triggers::start(
        dir.clone(),
        id.to_string(),
        spec.workspace.clone(),
        spec.worktree.as_ref().map(|w| w.repo.clone()),
        spec.snapshots.clone(),
        res.audit.as_ref().map(|a| a.tx.clone()),
    );
    // The record is not optional: a writer that dies takes the run's network with it.
    let died = res.audit.as_ref().map(|a| a.died());
    let code = tokio::select! {
        c = wait_exit(&d, &created.id) => c?,
        Some(why) = async { match died { Some(f) => Some(f.await), None => None } } => {
            return Err(crate::audit_writer::cut_off(res.proxy.as_mut(), &d, &created.id, why).await);
        }
    };
    phase("container exited");
    let _ = tokio::time::timeout(Duration::from_secs(10), logs).await;
    phase("logs drained");
    // A commit or build in the run's last second is snapshotted before the run ends.
    if let Some(t) = res.triggers.take() {
        t.finish().await;
        phase("triggers finished");
    }
    Ok(code)
}

/// The container's view of its endpoints: `MOAT_HOST`/`MOAT_URL` for the agent and
/// `MOAT_HOST_<EP>`/`MOAT_URL_<EP>` per endpoint (the router's plain-HTTP URLs).
pub fn endpoint_env(
    name: &str,
    ports: &std::collections::BTreeMap<String, u16>,
    router_port: u16,
) -> Vec<String> {
    let mut env = vec![
        format!("MOAT_HOST={name}.localhost:{router_port}"),
        format!("MOAT_URL=http://{name}.localhost:{router_port}"),
    ];
    for ep in ports.keys() {
        let k = moat_core::routes::env_suffix(ep);
        env.push(format!("MOAT_HOST_{k}={ep}.{name}.localhost:{router_port}"));
        env.push(format!(
            "MOAT_URL_{k}=http://{ep}.{name}.localhost:{router_port}"
        ));
    }
    env
}

/// Two running agents may not share a name: it is their host name.
fn check_route_name(home: &MoatHome, id: &str, name: &str) -> Result<()> {
    if let Some(r) = moat_core::routes::load(home, name)
        && r.run_id != id
        && moat_core::routes::run_is_live(home, &r.run_id)
    {
        // Not a usage error: the same command works once the other run stops.
        return Err(Error::new(
            moat_core::exit::TEMPFAIL,
            format!(
                "another running agent is named {name} ({}), and the name is its host name",
                r.run_id
            ),
        )
        .with_hint("give this run another --name, or stop the other one"));
    }
    Ok(())
}

/// Register the run's endpoints (its address on the run network, which is its guard's and
/// which the host reaches directly: nothing is published) and make sure a router serves them.
#[allow(clippy::too_many_arguments)]
async fn register_routes(
    home: &MoatHome,
    d: &Docker,
    id: &str,
    spec: &RunSpec,
    container: &str,
    net_name: &str,
    router_port: u16,
    res: &mut Resources,
) -> Result<()> {
    let ip = docker::address_on(d, container, net_name, "the container")
        .await?
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .ok_or_else(|| {
            Error::unavailable(format!(
                "the container has no address on its network {net_name}"
            ))
        })?;
    check_route_name(home, id, &spec.name)?;
    let route = moat_core::routes::Route {
        name: spec.name.clone(),
        run_id: id.to_string(),
        endpoints: spec
            .ports
            .iter()
            .map(|(ep, p)| (ep.clone(), std::net::SocketAddr::new(ip, *p)))
            .collect(),
    };
    moat_core::routes::register(home, &route)?;
    res.route = Some((spec.name.clone(), id.to_string()));
    // The router: started if none runs on the port (it stays for later runs).
    let out = Command::new(tool("moat-proxy"))
        .args(["start", "--port", &router_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "moat: warning: the hostname router could not start on port {router_port}: {}\nmoat: the endpoints are unreachable until `moat proxy start --port PORT` succeeds (MOAT_PROXY_PORT picks the port runs use)",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!(
            "moat: warning: starting the hostname router: {}",
            moat_core::error::io_msg(&e)
        ),
    }
    for ep in spec.ports.keys() {
        eprintln!(
            "moat: {ep}: https://{ep}.{}.localhost:{router_port}/",
            spec.name
        );
    }
    if let Some(a) = &res.audit {
        a.event(
            "routes_registered",
            serde_json::json!({"run": id, "name": spec.name, "endpoints": route.endpoints, "router_port": router_port}),
        );
    }
    Ok(())
}

type Listening = tokio::task::JoinHandle<
    Result<(
        String,
        tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    )>,
>;

/// Wait for the proxy's `listening` record, check it is where it was told to listen, record
/// it, and pump the proxy's later events into the audit log. Returns the CA's path.
async fn proxy_listening(
    listening: Option<Listening>,
    store: &Store,
    id: &str,
    want: &str,
    pid: Option<u32>,
    res: &mut Resources,
) -> Result<PathBuf> {
    let Some(l) = listening else {
        return Err(Error::software("proxy start awaited twice"));
    };
    let (first, mut lines) = l
        .await
        .map_err(|_| Error::software("reading moat-proxy"))??;
    let rec = moat_core::jsonl::parse(&first)?
        .filter(|r| r.kind == "listening")
        .ok_or_else(|| Error::unavailable("moat-proxy's first record was not `listening`"))?;
    let addr = rec.str("addr").unwrap_or_default().to_string();
    if addr != want {
        return Err(Error::unavailable(format!(
            "moat-proxy listens on {addr}, not {want}"
        )));
    }
    let ca = rec
        .str("ca")
        .map(PathBuf::from)
        .unwrap_or_else(|| store.home.ca_dir().join("ca.crt"));
    phase("proxy listening");
    crate::timings::stage("proxy start");
    store.update(id, |m| {
        m.proxy_addr = Some(addr.clone());
        m.proxy_pid = pid;
    })?;
    let tx = res.audit.as_ref().map(|a| a.tx.clone());
    let run = id.to_string();
    let (usage_store, usage_id) = (Store::new(store.home.clone()), id.to_string());
    res.proxy_pump = Some(tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            crate::budget::on_proxy_record(&usage_store, &usage_id, &l);
            crate::decoys::on_event(&l, &run).await;
            if let Some(tx) = &tx
                && moat_core::jsonl::parse(&l).ok().flatten().is_some()
            {
                let _ = tx.send(format!("{l}\n"));
            }
        }
    }));
    Ok(ca)
}

async fn wait_exit(d: &Docker, id: &str) -> Result<i64> {
    let mut s = d.wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>);
    match s.next().await {
        Some(Ok(r)) => Ok(r.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => {
            // The wait stream broke; ask for the exit code.
            let i = d
                .inspect_container(
                    id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await;
            match i.ok().and_then(|i| i.state).and_then(|s| s.exit_code) {
                Some(c) => Ok(c),
                None => Err(docker::err("waiting for the container", e)),
            }
        }
        None => Err(Error::unavailable("waiting for the container: no answer")),
    }
}

/// Container output → logs.jsonl, one record per line, as it is printed.
/// A last line without a newline is written when the stream ends.
async fn capture_logs(
    mut s: std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = std::result::Result<
                        bollard::container::LogOutput,
                        bollard::errors::Error,
                    >,
                > + Send,
        >,
    >,
    path: PathBuf,
    (run, audit): (String, Option<mpsc::UnboundedSender<String>>),
) {
    let mut file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "moat: warning: cannot write {}: {}",
                path.display(),
                moat_core::error::io_msg(&e)
            );
            return;
        }
    };
    let at = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut chunks = crate::log_chunks::Chunker::new(&run, at, audit);
    let mut partial: HashMap<&'static str, Vec<u8>> = HashMap::new();
    let write = |stream: &'static str,
                 bytes: &[u8],
                 file: &mut std::fs::File,
                 chunks: &mut crate::log_chunks::Chunker| {
        let line = String::from_utf8_lossy(bytes);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        let rec = serde_json::json!({"ts": now_rfc3339(), "stream": stream, "line": line});
        let rec = format!("{rec}\n");
        if file.write_all(rec.as_bytes()).is_ok() {
            chunks.add(rec.as_bytes());
        }
    };
    let mut tick = tokio::time::interval(crate::log_chunks::EVERY);
    let mut first = true;
    loop {
        let out = tokio::select! {
            o = s.next() => match o {
                Some(Ok(o)) => o,
                _ => break,
            },
            _ = tick.tick() => {
                chunks.flush(false);
                continue;
            }
        };
        let (stream, msg) = match out {
            bollard::container::LogOutput::StdOut { message }
            | bollard::container::LogOutput::Console { message } => ("stdout", message),
            bollard::container::LogOutput::StdErr { message } => ("stderr", message),
            bollard::container::LogOutput::StdIn { .. } => continue,
        };
        if std::mem::take(&mut first) {
            crate::timings::stage("first output");
        }
        let buf = partial.entry(stream).or_default();
        buf.extend_from_slice(&msg);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            write(stream, &line[..line.len() - 1], &mut file, &mut chunks);
        }
    }
    for (stream, buf) in partial {
        if !buf.is_empty() {
            write(stream, &buf, &mut file, &mut chunks);
        }
    }
    chunks.flush(true);
}
