//! The network namespaces image builds and service sidecars run in, so neither has a path
//! around the run's proxy (THREATS L4, L5, E2).
//!
//! Builds: the classic builder (`/build`) takes no capability or mount options, and its
//! steps run as root with Docker's default capabilities, NET_RAW among them: a step with an
//! interface on a bridge could craft packets on a packet socket, which no iptables rule in
//! its namespace sees. So a build gets no interface at all. A *relay* container (the base
//! image, network mode `none`, no capabilities, the host user's ids) listens on
//! 127.0.0.1:3128 in its own loopback-only namespace and carries each connection over a unix
//! socket (bind-mounted from the run's sockets directory) to this process, which hands it to
//! the run's proxy. The build runs with `networkmode: container:<relay>`, so every step
//! (dependency install scripts, `post_build_root` as root) shares that namespace: the proxy
//! through the relay is the only thing it can reach, and the proxy traces and checks it as
//! it does the run's own traffic. Nothing a step does in that namespace can add a route out.
//! The alternative (run each step ourselves and commit, dropping NET_RAW and NET_ADMIN)
//! would re-implement the builder; a firewall in a shared namespace would leave the packet
//! socket hole open.
//!
//! Sidecars: a service must be reachable from the run's container, so it needs an interface
//! on the run's network. Each sidecar runs in the namespace of a *guard* container (from
//! `moat/guard:<hash>`: the base image and Debian's iptables, a fixed Dockerfile with no
//! user input, built once through the relay) that carries the service's name and address on
//! the run's network. The guard, alone with NET_ADMIN, installs the rules in moat-guard.sh
//! (in to the service's port and the replies, loopback; nothing else, no IPv6) and then only
//! holds the namespace. The sidecar itself starts without NET_ADMIN or NET_RAW, so it can
//! neither change the rules nor send around them.
//!
//! The run: its container comes from an image that build hooks and install scripts write as
//! root, so nothing in it (moat-init, `iptables-restore`, `/bin/sh`, libc) may be what closes
//! its network (promises 3 and 10; THREATS E2, E4, L4). It joins a *run guard* (the same
//! guard image, `MOAT_GUARD_MODE=run`) that carries the run's address on the run network,
//! its `extra_hosts` and `dns` (Docker refuses those on a container that joins another's
//! namespace), and installs the run's rules: out only to the proxy's address and port and to
//! each sidecar's address and port, loopback (not Docker's resolver at 127.0.0.11) and
//! replies; in open (the hostname router reaches `ports:`); IPv6 only on loopback. The run
//! container starts without NET_ADMIN and NET_RAW, after the guard said it is ready, and
//! the router and everything else that needs the run's address use the guard's.
//!
//! gVisor: runs do not use it yet, even where `runsc` is registered (run.rs says so on
//! stderr and uses runc), for this reason. runsc's default network (`sandbox`) does
//! not use the namespace's kernel stack: the sentry takes the interface's addresses and
//! routes into its own netstack and sends and receives every non-loopback packet through
//! an AF_PACKET socket on the interface. Packet sockets pass beside netfilter's INPUT and
//! OUTPUT chains, so the guard's rules would not bind a runsc run's traffic, and the
//! guard's own kernel stack shares the interface with the sentry. So under runsc the run
//! guard's firewall cannot be assumed to hold until it is tested with runsc registered;
//! runsc with `--network=host` (the sentry uses the namespace's own sockets) should be
//! filtered by it, and is the mode to try first.

use crate::docker::{self, LABEL_RUN};
use bollard::Docker;
use futures_util::StreamExt;
use moat_core::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const RELAY: &str = include_str!("moat-relay.pl");
const GUARD: &str = include_str!("moat-guard.sh");
/// Where the relay listens, inside the build's namespace.
pub const RELAY_ADDR: &str = "127.0.0.1:3128";
pub const LABEL_GUARD: &str = "moat.guard";
/// How long a relay or guard may take to say it is ready.
const READY: Duration = Duration::from_secs(30);

/// The build relay of one run: its container and the accept loop on the host side.
pub struct Relay {
    pub container: String,
    task: tokio::task::JoinHandle<()>,
    /// The run's directory holding the unix socket; removed with the relay.
    dir: PathBuf,
}

impl Relay {
    /// Start the relay for a build: `dir` is a private directory of this run (it gets the
    /// unix socket), `proxy` the proxy's `ip:port`, `image` a Debian-based image with perl
    /// (the base). The container's id goes to `started` at once, for clean-up.
    pub async fn start(
        d: &Docker,
        run_id: &str,
        dir: &Path,
        proxy: &str,
        image: &str,
        started: &mut Vec<String>,
    ) -> Result<Relay> {
        use std::os::unix::fs::MetadataExt;
        moat_core::fsutil::create_private_dir(dir)?;
        let socket = dir.join("proxy.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(|e| Error::io(format!("listening on {}", socket.display()), e))?;
        let proxy = proxy.to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut u, _)) = listener.accept().await {
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    if let Ok(mut t) = tokio::net::TcpStream::connect(&proxy).await {
                        let _ = tokio::io::copy_bidirectional(&mut u, &mut t).await;
                    }
                });
            }
        });
        let meta =
            std::fs::metadata(dir).map_err(|e| Error::io(format!("{}", dir.display()), e))?;
        let body = bollard::models::ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["perl".into(), "-e".into(), RELAY.into()]),
            cmd: Some(vec![]),
            user: Some(format!("{}:{}", meta.uid(), meta.gid())),
            labels: Some(HashMap::from([
                (LABEL_RUN.to_string(), run_id.to_string()),
                (LABEL_GUARD.to_string(), "build".to_string()),
            ])),
            host_config: Some(bollard::models::HostConfig {
                network_mode: Some("none".into()),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                binds: Some(vec![format!("{}:/run/moat-relay", dir.display())]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let relay = Relay {
            container: String::new(),
            task,
            dir: dir.to_path_buf(),
        };
        let id = match create_and_start(d, &format!("moat-{run_id}-build"), body, started).await {
            Ok(id) => id,
            Err(e) => {
                relay.task.abort();
                return Err(e);
            }
        };
        if let Err(e) = ready(d, &id, "moat-relay: listening", "the build relay").await {
            relay.task.abort();
            return Err(e);
        }
        Ok(Relay {
            container: id,
            ..relay
        })
    }

    /// `networkmode` for a build whose steps share the relay's namespace.
    pub fn network_mode(&self) -> String {
        format!("container:{}", self.container)
    }

    /// The proxy URL a build step uses (the run's token, through the relay).
    pub fn proxy_url(token: &str) -> String {
        format!("http://moat:{token}@{RELAY_ADDR}")
    }

    pub async fn stop(self, d: &Docker) {
        if let Err(e) = docker::force_remove(d, &self.container).await {
            eprintln!(
                "moat: warning: removing the build relay: {}",
                docker::short(&e)
            );
        }
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn create_and_start(
    d: &Docker,
    name: &str,
    body: bollard::models::ContainerCreateBody,
    started: &mut Vec<String>,
) -> Result<String> {
    let id = create(d, name, body, started).await?;
    start(d, &id, name).await?;
    Ok(id)
}

/// Create a container named `name`; its id goes to `started` at once, for clean-up.
async fn create(
    d: &Docker,
    name: &str,
    body: bollard::models::ContainerCreateBody,
    started: &mut Vec<String>,
) -> Result<String> {
    let opts = bollard::query_parameters::CreateContainerOptions {
        name: Some(name.to_string()),
        ..Default::default()
    };
    let created = d
        .create_container(Some(opts), body)
        .await
        .map_err(|e| docker::err(format!("creating {name}"), e))?;
    started.push(created.id.clone());
    Ok(created.id)
}

async fn start(d: &Docker, id: &str, what: &str) -> Result<()> {
    d.start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
        .await
        .map_err(|e| docker::err(format!("starting {what}"), e))
}

/// Wait (bounded) until the container prints `needle`; its output is the error otherwise.
async fn ready(d: &Docker, id: &str, needle: &str, what: &str) -> Result<()> {
    let opts = bollard::query_parameters::LogsOptions {
        stdout: true,
        stderr: true,
        follow: true,
        ..Default::default()
    };
    let mut s = d.logs(id, Some(opts));
    let mut text = String::new();
    let read = async {
        while let Some(Ok(l)) = s.next().await {
            text.push_str(&l.to_string());
            if text.contains(needle) {
                return true;
            }
        }
        false
    };
    match tokio::time::timeout(READY, read).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::unavailable(format!(
            "{what} stopped before it was ready: {}",
            text.trim().replace('\n', " | ")
        ))),
        Err(_) => Err(Error::unavailable(format!(
            "{what} was not ready after {}s",
            READY.as_secs()
        ))),
    }
}

/// The guard image's build context: the base, Debian's iptables and moat-guard.sh.
fn guard_context(base: &str) -> Vec<u8> {
    let df = format!(
        "# Generated by moat-launch: holds a sidecar's or a run's network namespace.\n\
         FROM {base}\n\
         USER root\n\
         RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables >/dev/null && rm -rf /var/lib/apt/lists/*\n\
         COPY moat-guard /usr/local/bin/moat-guard\n\
         ENTRYPOINT [\"/bin/sh\", \"/usr/local/bin/moat-guard\"]\n"
    );
    crate::image::tar(&[
        ("Dockerfile", df.as_bytes(), 0o644),
        ("moat-guard", GUARD.as_bytes(), 0o755),
    ])
}

/// The guard image's tag for `base` (which must be present): a hash of the base's id and
/// the context, so it is rebuilt when either changes.
pub async fn guard_image(d: &Docker, base: &str) -> Result<String> {
    let id = docker::image_id(d, base).await?.unwrap_or_default();
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(guard_context(base));
    Ok(format!(
        "moat/guard:{}",
        &moat_core::hex(&h.finalize())[..16]
    ))
}

/// Build the guard image `tag` from `base` in the relay's namespace, unless it is there.
pub async fn ensure_guard_image(
    d: &Docker,
    base: &str,
    tag: &str,
    relay: &Relay,
    token: &str,
    log: &mut dyn Write,
) -> Result<()> {
    let lock =
        std::env::temp_dir().join(format!("moat-build-{}.lock", tag.replace(['/', ':'], "-")));
    let _l = moat_core::lock::FileLock::exclusive(&lock)?;
    if docker::image_id(d, tag).await?.is_some() {
        return Ok(());
    }
    let _ = writeln!(log, "moat: building image {tag} (the network guard)");
    crate::image::build(
        d,
        &guard_context(base),
        tag,
        false,
        HashMap::new(),
        &relay.network_mode(),
        &Relay::proxy_url(token),
        log,
    )
    .await
}

/// Start the guard of `service` on `network` (it carries the service's name there) and wait
/// until its rules are in place. Returns the guard's id and its address on the network.
pub async fn start_guard(
    d: &Docker,
    run_id: &str,
    network: &str,
    service: &str,
    port: u16,
    image: &str,
    started: &mut Vec<String>,
) -> Result<(String, String)> {
    let endpoints = HashMap::from([(
        network.to_string(),
        bollard::models::EndpointSettings {
            aliases: Some(vec![service.to_string()]),
            ..Default::default()
        },
    )]);
    let body = bollard::models::ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(vec![format!("MOAT_GUARD_PORT={port}")]),
        hostname: Some(service.to_string()),
        labels: Some(HashMap::from([
            (LABEL_RUN.to_string(), run_id.to_string()),
            (LABEL_GUARD.to_string(), service.to_string()),
        ])),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some(network.to_string()),
            cap_add: Some(vec!["NET_ADMIN".into()]),
            ..Default::default()
        }),
        networking_config: Some(bollard::models::NetworkingConfig {
            endpoints_config: Some(endpoints),
        }),
        ..Default::default()
    };
    let what = format!("the {service} sidecar's guard");
    let id = create_and_start(d, &format!("moat-{run_id}-{service}-guard"), body, started).await?;
    ready(d, &id, "moat-guard: ready", &what).await?;
    let ip = docker::address_on(d, &id, network, &what)
        .await?
        .ok_or_else(|| Error::unavailable(format!("{what} has no address on the run's network")))?;
    Ok((id, ip))
}

/// What the run's guard needs: the proxy's `ip:port`, each sidecar's `ip:port`, and the
/// settings Docker takes only on the container that owns the namespace.
pub struct RunGuard<'a> {
    pub network: &'a str,
    pub proxy: &'a str,
    pub services: &'a [String],
    pub extra_hosts: &'a [String],
    pub dns: &'a [String],
    pub labels: &'a HashMap<String, String>,
}

/// Create the run's guard on its network (not yet started): the run container can be created
/// joining it (`container:<id>`) while the guard starts. Returns the guard's id.
pub async fn create_run_guard(
    d: &Docker,
    run_id: &str,
    g: &RunGuard<'_>,
    image: &str,
    started: &mut Vec<String>,
) -> Result<String> {
    let mut labels = g.labels.clone();
    labels.insert(LABEL_RUN.to_string(), run_id.to_string());
    labels.insert(LABEL_GUARD.to_string(), "run".to_string());
    let mut env = vec![
        "MOAT_GUARD_MODE=run".to_string(),
        format!("MOAT_PROXY_ADDR={}", g.proxy),
    ];
    if !g.services.is_empty() {
        env.push(format!("MOAT_SERVICE_ADDRS={}", g.services.join(",")));
    }
    let body = bollard::models::ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(env),
        labels: Some(labels),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some(g.network.to_string()),
            cap_add: Some(vec!["NET_ADMIN".into()]),
            dns: (!g.dns.is_empty()).then(|| g.dns.to_vec()),
            extra_hosts: (!g.extra_hosts.is_empty()).then(|| g.extra_hosts.to_vec()),
            ..Default::default()
        }),
        ..Default::default()
    };
    create(d, &format!("moat-{run_id}-guard"), body, started).await
}

/// Start the run's guard (made by `create_run_guard`) and wait until the run's rules are in
/// place. Returns the guard's (the run's) address on `network`.
pub async fn start_run_guard(d: &Docker, id: &str, network: &str) -> Result<String> {
    let what = "the run's guard";
    start(d, id, what).await?;
    ready(d, id, "moat-guard: ready", what).await?;
    docker::address_on(d, id, network, what)
        .await?
        .ok_or_else(|| Error::unavailable(format!("{what} has no address on the run's network")))
}

/// The run container's network settings: the guard's namespace, and no capability that could
/// change its rules or send around them.
pub fn run_network_mode(guard: &str) -> (String, Vec<String>) {
    (
        format!("container:{guard}"),
        vec!["NET_RAW".into(), "NET_ADMIN".into()],
    )
}

// ---------------------------------------------------------------- spare run guards
//
// Starting the run's guard (create, start, iptables) is most of a run's start-up. So the
// spare network a finished run leaves behind (network.rs) gets a *spare guard*: a guard
// container (`MOAT_GUARD_MODE=spare`) on that network, started at once with everything closed
// but loopback, that then waits for one line on a fifo in a private host directory
// (`<tmp>/moat-guards/<network>/in`, bind-mounted at /run/moat-guard; the run container
// joins the guard's network namespace, not its mounts, so it never sees the fifo). The run
// that claims the network (an exclusive claim file, network.rs) and needs nothing the guard
// takes only at creation (no sidecars, `extra_hosts` or `dns`) writes its proxy's address and
// a fresh nonce there; the guard installs the run's rules for that address and prints
// `moat-guard: ready <nonce>`, and only then does the run container start. The guard reads
// one line, once. A spare guard that is not running, is from another guard image, or does
// not take its line is removed, and the run starts a guard of its own as before. A spare
// guard is named `<network>-guard`: whoever removes the network removes it first.

/// The name of the spare guard on `network`.
pub fn spare_name(network: &str) -> String {
    format!("{network}-guard")
}

fn spare_dir(network: &str) -> PathBuf {
    std::env::temp_dir().join("moat-guards").join(network)
}

/// Start a spare guard on the new spare `network` and wait until it waits for a run.
pub async fn create_spare(d: &Docker, network: &str, image: &str) -> Result<()> {
    let dir = spare_dir(network);
    moat_core::fsutil::create_private_dir(dir.parent().unwrap_or(&dir))?;
    moat_core::fsutil::create_private_dir(&dir)?;
    let fifo = dir.join("in");
    let _ = std::fs::remove_file(&fifo);
    let ok = tokio::process::Command::new("mkfifo")
        .arg("-m")
        .arg("600")
        .arg(&fifo)
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Err(Error::unavailable("mkfifo failed"));
    }
    let body = bollard::models::ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(vec!["MOAT_GUARD_MODE=spare".to_string()]),
        labels: Some(HashMap::from([
            (crate::network::LABEL_SPARE.to_string(), network.to_string()),
            (LABEL_GUARD.to_string(), "spare".to_string()),
        ])),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some(network.to_string()),
            cap_add: Some(vec!["NET_ADMIN".into()]),
            binds: Some(vec![format!("{}:/run/moat-guard", dir.display())]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = create_and_start(d, &spare_name(network), body, &mut vec![]).await?;
    ready(d, &id, "moat-guard: waiting", "the spare guard").await
}

/// Remove the spare guard of `network` (if any) and its directory.
pub async fn remove_spare(d: &Docker, network: &str) {
    let _ = docker::force_remove(d, &spare_name(network)).await;
    let _ = std::fs::remove_dir_all(spare_dir(network));
}

/// The spare guard of the claimed `network`, if it is running from `image`: its id. One that
/// is there but does not fit is removed (in the background).
pub async fn claim_spare(d: &Docker, network: &str, image: &str) -> Option<String> {
    let name = spare_name(network);
    let i = d
        .inspect_container(
            &name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .ok()?;
    let fits = i.state.as_ref().and_then(|s| s.running) == Some(true)
        && i.config.as_ref().and_then(|c| c.image.as_deref()) == Some(image)
        && i.config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(crate::network::LABEL_SPARE))
            .map(String::as_str)
            == Some(network)
        && spare_dir(network).join("in").exists();
    match (fits, i.id) {
        (true, Some(id)) => Some(id),
        _ => {
            let (d, n) = (d.clone(), network.to_string());
            tokio::spawn(async move { remove_spare(&d, &n).await });
            None
        }
    }
}

/// The claimed spare guard's fifo, opened without waiting: `None` when nobody reads it (a
/// guard that died or is not that far yet); the caller removes it and starts a guard of its
/// own.
pub fn open_spare(network: &str) -> Option<tokio::net::unix::pipe::Sender> {
    tokio::net::unix::pipe::OpenOptions::new()
        .open_sender(spare_dir(network).join("in"))
        .ok()
}

/// Hand the claimed spare guard `id` the run's proxy address (through `fifo`, from
/// `open_spare`) and wait until its rules are in place.
pub async fn configure_spare(
    d: &Docker,
    id: &str,
    mut fifo: tokio::net::unix::pipe::Sender,
    proxy: &str,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let nonce = moat_core::hex(&moat_core::random_bytes::<8>());
    fifo.write_all(format!("{proxy} {nonce}\n").as_bytes())
        .await
        .map_err(|e| Error::io("configuring the run's guard", e))?;
    drop(fifo);
    ready(
        d,
        id,
        &format!("moat-guard: ready {nonce}"),
        "the run's guard",
    )
    .await
}
