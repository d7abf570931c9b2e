//! Service dependencies (`postgres@17`, `redis@7`, ...): one sidecar container each on the
//! run's internal network, with a password generated for the run, labelled with the run id
//! (so reconciliation and `clean` find it) and removed with the run. The main container gets
//! the `MOAT_<SERVICE>_*` variables, the sidecar's name in /etc/hosts (its firewall blocks
//! Docker's DNS) and a firewall rule for exactly the sidecar's address and port.
//!
//! Each sidecar runs in the network namespace of its guard (guard.rs), which carries the
//! service's name and address and lets in only connections to the service's port: the
//! sidecar reaches nothing, neither the host nor the run's proxy. It starts without NET_RAW
//! or NET_ADMIN, so it cannot change that. Where the registry gives a service an
//! `agent_user` (postgres, mysql), the run is told about that account, not the
//! administrator: `setup` makes it inside the sidecar once the server is ready, before the
//! run's command starts; the administrator's password stays with this process and the
//! sidecar's configuration.
//!
//! The passwords live in this process's memory and in the containers' configuration; they
//! are never written under MOAT_HOME, logged or put in an audit event.

use crate::config::{RunSpec, ServiceConfig};
use crate::deps::{self, Kind};
use crate::docker::{self, LABEL_RUN};
use bollard::Docker;
use futures_util::StreamExt;
use moat_core::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

pub const LABEL_SERVICE: &str = "moat.service";
/// How long a service may take to answer its readiness check.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// One started sidecar.
#[derive(Clone)]
pub struct Sidecar {
    pub service: String,
    pub container: String,
    pub ip: String,
    pub port: u16,
    pub wait: bool,
    pub image: String,
    ready: Vec<String>,
    ready_env: Vec<String>,
    password: String,
    /// User and database as the sidecar got them (None when the service has none).
    user: Option<String>,
    db: Option<String>,
    /// The run's own account (user, password), made by `setup` once the server is ready.
    agent: Option<(String, String)>,
    setup: Vec<String>,
    setup_env: Vec<String>,
}

/// What the main container needs to reach the sidecars.
#[derive(Default)]
pub struct Wiring {
    /// `MOAT_<PREFIX>_*=...` (holds passwords: only for the container's environment).
    pub env: Vec<String>,
    /// `name:ip` for /etc/hosts.
    pub hosts: Vec<String>,
    /// `ip:port` the firewall admits.
    pub allow: Vec<String>,
}

/// 32 random letters and digits (rejection sampling, so every character is equally likely).
pub fn password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(32);
    while out.len() < 32 {
        for b in moat_core::random_bytes::<64>() {
            // 248 = 4 * 62: bytes at or above it would favour the first characters.
            if b < 248 && out.len() < 32 {
                out.push(ALPHABET[usize::from(b) % 62] as char);
            }
        }
    }
    out
}

fn fill(t: &str, user: &str, password: &str, db: &str, host: &str, port: u16) -> String {
    t.replace("{user}", user)
        .replace("{password}", password)
        .replace("{db}", db)
        .replace("{host}", host)
        .replace("{port}", &port.to_string())
}

/// The service dependencies of a spec, with their overrides.
pub fn wanted(spec: &RunSpec) -> Vec<(deps::Dep, ServiceConfig)> {
    spec.dependencies
        .iter()
        .filter_map(|d| deps::resolve(d).ok())
        .filter(|d| d.entry.kind == Kind::Service)
        .map(|d| {
            let o = spec
                .services
                .get(&d.entry.name)
                .cloned()
                .unwrap_or_default();
            (d, o)
        })
        .collect()
}

/// Resolve `op://` / `ssm://` references among `services.<name>.env` values.
async fn resolve_env(env: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut refs = vec![];
    for (k, v) in env {
        if moat_secrets::SecretRef::parse(v).is_ok() {
            refs.push((k.clone(), v.clone()));
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    if !refs.is_empty() {
        let resolved = moat_secrets::resolve::Resolver::new(moat_secrets::Env::process())
            .resolve_all(refs)
            .await?;
        for (k, v) in resolved {
            out.insert(k, v.expose().to_string());
        }
    }
    Ok(out)
}

/// Create and start every service's sidecar, each in the namespace of its guard (from
/// `guard_image`) on `network`. Every container is pushed to `ids` as soon as it exists, and
/// each started sidecar to `started`, so the caller removes them whatever fails later.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    d: &Docker,
    run_id: &str,
    network: &str,
    spec: &RunSpec,
    guard_image: &str,
    ids: &mut Vec<String>,
    started: &mut Vec<Sidecar>,
    log: &mut dyn Write,
) -> Result<()> {
    for (dep, o) in wanted(spec) {
        let e = dep.entry;
        let s = e.service.as_ref().expect("checked at load");
        let name = e.name.clone();
        let image = o
            .image
            .clone()
            .unwrap_or_else(|| e.image_for(&dep.version).expect("checked at load"));
        if docker::image_id(d, &image).await?.is_none() {
            let _ = writeln!(log, "moat: pulling {image} for {name}...");
            if let Err(err) = crate::image::pull(d, &image).await {
                return Err(Error::unavailable(format!(
                    "{}: the image {image} is not here and could not be pulled: {}",
                    dep.spec(),
                    err.msg
                ))
                .with_hint(format!(
                    "load it with `docker load`, or build an image that runs the server and name it in services.{name}.image"
                )));
            }
        }
        let user_env = resolve_env(&o.env).await?;
        let pick = |over: &Option<String>, default: Option<&String>| {
            over.as_ref()
                .and_then(|k| user_env.get(k))
                .or(default)
                .cloned()
                .unwrap_or_default()
        };
        let generated = password();
        let password = match s.password_env.as_ref().and_then(|k| user_env.get(k)) {
            Some(p) => p.clone(),
            None => generated,
        };
        let user = pick(&s.user_env, s.user.as_ref());
        let db = pick(&s.db_env, s.db.as_ref());
        let agent = s.agent_user.as_ref().map(|u| (u.clone(), self::password()));
        let f = |t: &str| {
            let t = match &agent {
                Some((u, p)) => t.replace("{agent_user}", u).replace("{agent_password}", p),
                None => t.to_string(),
            };
            fill(&t, &user, &password, &db, &name, s.port)
        };
        let mut env: BTreeMap<String, String> =
            s.env.iter().map(|(k, v)| (k.clone(), f(v))).collect();
        env.extend(user_env.clone());
        let cname = format!("moat-{run_id}-{name}");
        let labels = HashMap::from([
            (LABEL_RUN.to_string(), run_id.to_string()),
            (LABEL_SERVICE.to_string(), name.clone()),
        ]);
        let (guard, ip) =
            crate::guard::start_guard(d, run_id, network, &name, s.port, guard_image, ids).await?;
        let body = bollard::models::ContainerCreateBody {
            image: Some(image.clone()),
            cmd: if s.command.is_empty() {
                None
            } else {
                Some(s.command.iter().map(|c| f(c)).collect())
            },
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            host_config: Some(bollard::models::HostConfig {
                network_mode: Some(format!("container:{guard}")),
                // A packet socket would send around the guard's rules.
                cap_drop: Some(vec!["NET_RAW".into(), "NET_ADMIN".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = bollard::query_parameters::CreateContainerOptions {
            name: Some(cname.clone()),
            ..Default::default()
        };
        let created = d
            .create_container(Some(opts), body)
            .await
            .map_err(|err| docker::err(format!("creating the {name} sidecar"), err))?;
        ids.push(created.id.clone());
        let car = Sidecar {
            service: name.clone(),
            container: created.id.clone(),
            ip,
            port: s.port,
            wait: o.wait != Some(false),
            image: image.clone(),
            ready: s.ready.iter().map(|c| f(c)).collect(),
            ready_env: s
                .ready_env
                .iter()
                .map(|(k, v)| format!("{k}={}", f(v)))
                .collect(),
            password: password.clone(),
            user: s.user.as_ref().map(|_| user.clone()),
            db: s.db.as_ref().map(|_| db.clone()),
            setup: s.setup.iter().map(|c| f(c)).collect(),
            setup_env: s
                .setup_env
                .iter()
                .map(|(k, v)| format!("{k}={}", f(v)))
                .collect(),
            agent,
        };
        d.start_container(
            &created.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .map_err(|err| docker::err(format!("starting the {name} sidecar"), err))?;
        started.push(car);
    }
    Ok(())
}

/// The variables, hosts entries and firewall openings for the main container.
pub fn wiring(spec: &RunSpec, cars: &[Sidecar]) -> Wiring {
    let mut w = Wiring::default();
    for car in cars {
        let Some(dep) = spec
            .dependencies
            .iter()
            .filter_map(|d| deps::resolve(d).ok())
            .find(|d| d.entry.name == car.service)
        else {
            continue;
        };
        let s = dep.entry.service.as_ref().expect("checked at load");
        let p = &s.prefix;
        // The run's own account where the service has one; never the administrator's then.
        let (user, password) = match &car.agent {
            Some((u, pw)) => (Some(u.as_str()), pw.as_str()),
            None => (car.user.as_deref(), car.password.as_str()),
        };
        let url = fill(
            &s.url,
            user.unwrap_or_default(),
            password,
            car.db.as_deref().unwrap_or_default(),
            &car.service,
            car.port,
        );
        w.env.push(format!("MOAT_{p}_URL={url}"));
        w.env.push(format!("MOAT_{p}_HOST={}", car.service));
        w.env.push(format!("MOAT_{p}_PORT={}", car.port));
        if let Some(u) = user {
            w.env.push(format!("MOAT_{p}_USER={u}"));
        }
        w.env.push(format!("MOAT_{p}_PASSWORD={password}"));
        if let Some(db) = &car.db {
            w.env.push(format!("MOAT_{p}_DB={db}"));
        }
        w.hosts.push(format!("{}:{}", car.service, car.ip));
        w.allow.push(format!("{}:{}", car.ip, car.port));
    }
    w
}

/// Run `cmd` inside the sidecar; whether it exited 0, and what it printed (bounded).
async fn exec(d: &Docker, car: &Sidecar, cmd: &[String], env: &[String]) -> Result<(bool, String)> {
    let what = format!("checking {}", car.service);
    let cfg = bollard::models::ExecConfig {
        cmd: Some(cmd.to_vec()),
        env: Some(env.to_vec()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let ex = d
        .create_exec(&car.container, cfg)
        .await
        .map_err(|e| docker::err(&what, e))?;
    let mut text = String::new();
    if let bollard::exec::StartExecResults::Attached { mut output, .. } = d
        .start_exec(&ex.id, None::<bollard::exec::StartExecOptions>)
        .await
        .map_err(|e| docker::err(&what, e))?
    {
        let drain = async {
            while let Some(o) = output.next().await {
                if let Ok(o) = o
                    && text.len() < 4096
                {
                    text.push_str(&o.to_string());
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    }
    let i = d
        .inspect_exec(&ex.id)
        .await
        .map_err(|e| docker::err(&what, e))?;
    Ok((i.exit_code == Some(0), text))
}

/// Run the sidecar's readiness command once; true when it exits 0.
async fn check(d: &Docker, car: &Sidecar) -> Result<bool> {
    Ok(exec(d, car, &car.ready, &car.ready_env).await?.0)
}

/// Make the run's own account (a ready server); its failure fails the run.
async fn setup(d: &Docker, car: &Sidecar) -> Result<()> {
    let Some((user, pw)) = &car.agent else {
        return Ok(());
    };
    let (ok, text) = exec(d, car, &car.setup, &car.setup_env).await?;
    if ok {
        return Ok(());
    }
    let text = text
        .replace(&car.password, "********")
        .replace(pw, "********");
    Err(Error::unavailable(format!(
        "the {} sidecar ({}): could not make the run's account {user}: {}",
        car.service,
        car.image,
        text.trim().replace('\n', " | ")
    )))
}

async fn running(d: &Docker, car: &Sidecar) -> bool {
    d.inspect_container(
        &car.container,
        None::<bollard::query_parameters::InspectContainerOptions>,
    )
    .await
    .ok()
    .and_then(|i| i.state)
    .and_then(|s| s.running)
    .unwrap_or(false)
}

/// The last lines of a sidecar's output, with its password blanked out.
async fn last_words(d: &Docker, car: &Sidecar) -> String {
    let opts = bollard::query_parameters::LogsOptions {
        stdout: true,
        stderr: true,
        tail: "5".into(),
        ..Default::default()
    };
    let mut s = d.logs(&car.container, Some(opts));
    let mut text = String::new();
    let read = async {
        while let Some(Ok(l)) = s.next().await {
            text.push_str(&l.to_string());
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    let mut text = text.replace(&car.password, "********");
    if let Some((_, pw)) = &car.agent {
        text = text.replace(pw, "********");
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Wait (bounded) until every sidecar that is waited for answers its readiness check, and
/// make the run's account in each. A sidecar not waited for gets its account in the
/// background, as soon as it is ready.
pub async fn wait_ready(d: &Docker, cars: &[Sidecar], log: &mut dyn Write) -> Result<()> {
    for car in cars.iter().filter(|c| !c.wait && c.agent.is_some()) {
        let (d, car) = (d.clone(), car.clone());
        tokio::spawn(async move {
            if let Err(e) = ready_then_setup(&d, &car).await {
                eprintln!("moat: warning: {}", e.msg);
            }
        });
    }
    let checks = cars
        .iter()
        .filter(|c| c.wait)
        .map(|car| ready_then_setup(d, car));
    for (car, r) in cars
        .iter()
        .filter(|c| c.wait)
        .zip(futures_util::future::join_all(checks).await)
    {
        let took = r?;
        let _ = writeln!(
            log,
            "moat: {} is ready ({} ms)",
            car.service,
            took.as_millis()
        );
    }
    Ok(())
}

async fn ready_then_setup(d: &Docker, car: &Sidecar) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        // A check that cannot even run (the sidecar stopped) is judged by the state below.
        let checked = check(d, car).await;
        if matches!(checked, Ok(true)) {
            setup(d, car).await?;
            return Ok(t0.elapsed());
        }
        if !running(d, car).await {
            let words = last_words(d, car).await;
            return Err(Error::unavailable(format!(
                "the {} sidecar ({}) exited before it was ready: {words}",
                car.service, car.image
            )));
        }
        checked?;
        if t0.elapsed() > READY_TIMEOUT {
            return Err(Error::unavailable(format!(
                "the {} sidecar ({}) was not ready after {}s ({} kept failing)",
                car.service,
                car.image,
                READY_TIMEOUT.as_secs(),
                car.ready.first().map(String::as_str).unwrap_or("the check")
            ))
            .with_hint(format!(
                "services.{}.wait: false starts the run without waiting",
                car.service
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Remove sidecars (force); missing ones are fine.
pub async fn remove(d: &Docker, ids: &[String]) {
    for c in ids {
        if let Err(e) = docker::force_remove(d, c).await {
            eprintln!("moat: warning: removing sidecar: {}", docker::short(&e));
        }
    }
}

/// Every container labelled with `run_id` (the run's main container and its sidecars).
pub async fn containers_of(d: &Docker, run_id: &str) -> Vec<String> {
    let opts = bollard::query_parameters::ListContainersOptions {
        all: true,
        filters: Some(docker::label_filter([format!("{LABEL_RUN}={run_id}")])),
        ..Default::default()
    };
    d.list_containers(Some(opts))
        .await
        .map(|cs| cs.into_iter().filter_map(|c| c.id).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_random_and_alphanumeric() {
        let a = password();
        let b = password();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn the_reference_variables_are_set() {
        let spec: RunSpec = serde_json::from_value(serde_json::json!({
            "name": "t", "agent": "t", "workspace": "/tmp", "grants": [], "env": {}, "binds": [],
            "command": null, "interactive": false, "dependencies": ["postgres@17", "redis@7"],
            "hooks": {}, "policy": "permissive", "allow": [], "net_rules": [], "memory_mb": null,
            "cpus": null, "dns": [], "sandbox": false, "rebuild": false, "detach": false,
            "services": {"postgres": {"env": {"POSTGRES_DB": "myapp"}}}
        }))
        .unwrap();
        let car = |svc: &str, port| Sidecar {
            service: svc.into(),
            container: "c".into(),
            ip: "10.0.0.5".into(),
            port,
            wait: true,
            image: "i".into(),
            ready: vec![],
            ready_env: vec![],
            password: "PW".into(),
            user: (svc == "postgres").then(|| "postgres".to_string()),
            db: (svc == "postgres").then(|| "myapp".to_string()),
            agent: Some(("moat_agent".to_string(), "AGENTPW".to_string())),
            setup: vec![],
            setup_env: vec![],
        };
        let w = wiring(&spec, &[car("postgres", 5432), car("redis", 6379)]);
        for want in [
            "MOAT_POSTGRES_URL=postgresql://moat_agent:AGENTPW@postgres:5432/myapp",
            "MOAT_POSTGRES_HOST=postgres",
            "MOAT_POSTGRES_PORT=5432",
            "MOAT_POSTGRES_USER=moat_agent",
            "MOAT_POSTGRES_PASSWORD=AGENTPW",
            "MOAT_POSTGRES_DB=myapp",
            "MOAT_REDIS_URL=redis://moat_agent:AGENTPW@redis:6379",
            "MOAT_REDIS_USER=moat_agent",
            "MOAT_REDIS_PASSWORD=AGENTPW",
        ] {
            assert!(w.env.contains(&want.to_string()), "{want}: {:?}", w.env);
        }
        // The administrator's account is not the run's where the service has its own.
        assert!(
            !w.env
                .iter()
                .any(|e| e.contains("PW") && !e.contains("AGENTPW")),
            "{:?}",
            w.env
        );
        assert_eq!(w.allow, ["10.0.0.5:5432", "10.0.0.5:6379"]);
        assert_eq!(w.hosts, ["postgres:10.0.0.5", "redis:10.0.0.5"]);
    }
}
