//! Images: the base from `dependencies`, a generated Dockerfile, a build context tagged by a
//! hash of everything that went into it (reused until that changes), built through the Engine
//! API with progress streamed; and `image bootstrap`, which makes `debian:bookworm-slim` from
//! Debian packages (mmdebstrap reads the host's apt sources) for machines with no registry.
//!
//! The moat CA is not baked into images (it is appended to the trust store by the entrypoint
//! at start) unless a build hook needs HTTPS, so one image serves every MOAT_HOME and survives
//! CA rotation.

use crate::config::RunSpec;
use crate::deps::Kind;
use crate::docker::{self, LABEL_IMAGE};
use bollard::Docker;
use futures_util::StreamExt;
use moat_core::lock::FileLock;
use moat_core::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

pub const BASE: &str = "debian:bookworm-slim";
const SOURCES_HOOK: &str = r#"rm -f "$1/etc/apt/sources.list"; for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do if [ -f "$f" ]; then cp "$f" "$1$f"; fi; done"#;
pub const INIT: &str = include_str!("moat-init.sh");

/// What the dependencies ask of the image.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub base: String,
    /// Debian images this base can't be replaced by when missing.
    pub fallback: Option<Fallback>,
    pub packages: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Shell steps run as root after the packages.
    pub run: Vec<String>,
}

#[derive(Debug, PartialEq)]
pub struct Fallback {
    pub packages: Vec<String>,
    pub env: Vec<(String, String)>,
}

fn fallback(i: &crate::deps::Install) -> Fallback {
    Fallback {
        packages: i.packages.clone(),
        env: i.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// What Debian carries for runtimes, as the registry says ("node 18, python 3.11, go 1.19").
pub fn debian_runtimes() -> String {
    crate::deps::registry()
        .iter()
        .filter(|e| e.kind == Kind::Runtime)
        .flat_map(|e| e.debian.keys().map(move |v| format!("{} {v}", e.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The image's base, packages, environment and build steps, from the registry entries of
/// `dependencies` and `language_servers`.
pub fn plan(
    spec_deps: &[String],
    language_servers: &[String],
    want_git: bool,
    want_ssh: bool,
) -> Result<Plan> {
    let mut p = Plan {
        base: BASE.into(),
        fallback: None,
        packages: vec![],
        env: vec![],
        run: vec![],
    };
    let mut first_runtime = true;
    for d in spec_deps {
        let dep = crate::deps::resolve(d).map_err(Error::config)?;
        let e = dep.entry;
        match e.kind {
            Kind::Runtime => {
                let deb = e.debian.get(&dep.version).map(fallback);
                if first_runtime {
                    first_runtime = false;
                    p.base = e.image_for(&dep.version).expect("checked at load");
                    p.fallback = deb;
                } else {
                    let f = deb.ok_or_else(|| {
                        Error::unavailable(format!(
                            "{d}: only the first runtime dependency chooses the base image, and Debian bookworm does not carry {} {}",
                            e.name, dep.version
                        ))
                        .with_hint(format!("Debian bookworm carries {}", debian_runtimes()))
                    })?;
                    p.packages.extend(f.packages);
                    p.env.extend(f.env);
                }
            }
            // Services run in sidecars (services.rs); nothing goes in this image.
            Kind::Service => {}
            Kind::Docker if e.name == "docker:dind" => {
                return Err(Error::unavailable(
                    "docker:dind is not available: a privileged Docker daemon inside the run would let the agent undo the run's firewall (a privileged nested container can change the network it shares)",
                )
                .with_hint("use docker:host if you accept that the agent controls the host's Docker engine, or build images outside the run"));
            }
            Kind::Tool | Kind::Docker | Kind::LanguageServer => {
                p.packages.extend(e.packages.iter().cloned());
                p.env
                    .extend(e.env.iter().map(|(k, v)| (k.clone(), v.clone())));
                p.run.extend(e.run.iter().cloned());
            }
        }
    }
    for l in language_servers {
        let e = crate::deps::language_server(l).map_err(Error::config)?;
        p.packages.extend(e.packages.iter().cloned());
        p.env
            .extend(e.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        p.run.extend(e.run.iter().cloned());
    }
    if want_git {
        p.packages.push("git".into());
    }
    if want_ssh {
        p.packages.push("openssh-client".into());
    }
    let mut seen = std::collections::HashSet::new();
    p.packages.retain(|x| seen.insert(x.clone()));
    Ok(p)
}

/// The host user's ids; moatuser gets them so files in /workspace belong to the user.
pub fn host_ids(workspace: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    // The workspace owner is who the files should belong to; fall back to root.
    match std::fs::metadata(workspace) {
        Ok(m) => (m.uid(), m.gid()),
        Err(_) => (0, 0),
    }
}

pub struct Context {
    /// The base image the Dockerfile starts from (present on the engine).
    pub base: String,
    pub dockerfile: String,
    pub tar: Vec<u8>,
    pub tag: String,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// The Dockerfile for a plan whose fallback (if any) has been applied.
pub fn dockerfile(plan: &Plan, uid: u32, gid: u32, spec: &RunSpec, ca: bool) -> String {
    let (base, packages, env, run) = (&plan.base, &plan.packages, &plan.env, &plan.run);
    let mut f = String::new();
    let w = &mut f;
    let mut line = |s: &str| {
        w.push_str(s);
        w.push('\n');
    };
    line("# Generated by moat-launch; kept in the run directory for reference.");
    line(&format!("FROM {base}"));
    line("USER root");
    line("ENV DEBIAN_FRONTEND=noninteractive");
    let mut pk: Vec<String> = ["ca-certificates", "curl", "iptables", "util-linux"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    pk.extend(packages.iter().cloned());
    if let Some(p) = &spec.claude_plugins
        && crate::plugins::needs_git(p)
        && !pk.iter().any(|x| x == "git")
    {
        pk.push("git".into());
    }
    if spec.agent_cli.is_some() && !base.starts_with("node:") {
        for p in ["nodejs", "npm"] {
            if !pk.iter().any(|x| x == p) {
                pk.push(p.into());
            }
        }
    }
    // Interactive Codex records its background app server with ps(1), and without it the
    // first message ends the session.
    if spec.agent_cli.as_ref().is_some_and(|a| a.cli == "codex")
        && !pk.iter().any(|x| x == "procps")
    {
        pk.push("procps".into());
    }
    line(&format!(
        "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends {} >/dev/null && rm -rf /var/lib/apt/lists/*",
        pk.join(" ")
    ));
    let user = if uid == 0 {
        // uid 0 is outside useradd's range and it says so; the account is what we want.
        "useradd -o -u 0 -g 0 -M -d /home/moatuser -s /bin/bash moatuser 2>/dev/null".to_string()
    } else {
        format!(
            "(getent group {gid} >/dev/null || groupadd -g {gid} moatuser) && useradd -o -u {uid} -g {gid} -M -d /home/moatuser -s /bin/bash moatuser"
        )
    };
    line(&format!(
        "RUN {user} && mkdir -p /home/moatuser /workspace && chown {uid}:{gid} /home/moatuser"
    ));
    line("RUN printf '[http]\\n\\tproxyAuthMethod = basic\\n' >> /etc/gitconfig");
    if let Some(a) = &spec.agent_cli {
        for l in crate::agent::dockerfile_lines(a, spec.npm_registry.as_deref()) {
            line(&l);
        }
        if let Some(p) = &spec.claude_plugins {
            for l in crate::plugins::dockerfile_lines(p) {
                line(&l);
            }
        }
    }
    line("COPY moat-init /usr/local/bin/moat-init");
    line("RUN chmod 0755 /usr/local/bin/moat-init");
    if ca {
        line("COPY moat-ca.crt /usr/local/share/ca-certificates/moat-ca.crt");
        line("RUN update-ca-certificates >/dev/null");
    }
    let bundle = "/etc/ssl/certs/ca-certificates.crt";
    line(&format!(
        "ENV SSL_CERT_FILE={bundle} REQUESTS_CA_BUNDLE={bundle} CURL_CA_BUNDLE={bundle} GIT_SSL_CAINFO={bundle} NODE_EXTRA_CA_CERTS=/run/moat/ca.crt"
    ));
    for (k, v) in env {
        line(&format!("ENV {k}={}", json_str(v)));
    }
    for r in run {
        let r = npm_step(r, spec.npm_registry.as_deref());
        if r.contains("$MOAT_BUILD_CA") {
            line("ARG MOAT_BUILD_CA");
        }
        line(&format!("RUN [\"/bin/sh\", \"-c\", {}]", json_str(&r)));
    }
    if let Some(h) = &spec.hooks.post_build_root {
        line(&format!("RUN [\"/bin/sh\", \"-c\", {}]", json_str(h)));
    }
    if let Some(h) = &spec.hooks.post_build {
        line("USER moatuser");
        line("ENV HOME=/home/moatuser");
        line("WORKDIR /home/moatuser");
        line(&format!("RUN [\"/bin/sh\", \"-c\", {}]", json_str(h)));
        line("USER root");
    }
    line("ENV HOME=/home/moatuser");
    line("WORKDIR /workspace");
    line("ENTRYPOINT [\"/usr/local/bin/moat-init\"]");
    line("CMD [\"/bin/bash\"]");
    f
}

/// A registry `npm install` step (the language servers'), made to trust the build-time proxy
/// (the moat CA in the `MOAT_BUILD_CA` build argument) and to use the host's npm registry.
fn npm_step(step: &str, registry: Option<&str>) -> String {
    let Some(rest) = step.strip_prefix("npm install ") else {
        return step.to_string();
    };
    let reg = registry
        .map(|r| format!(" --registry={r}"))
        .unwrap_or_default();
    crate::agent::npm_with_build_ca(&format!("npm install{reg} {rest}"))
}

/// A minimal deterministic ustar archive (mtime 0, root-owned) for the build context.
pub fn tar(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data, mode) in files {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let oct = |buf: &mut [u8], v: u64| {
            let s = format!("{:0width$o}\0", v, width = buf.len() - 1);
            buf.copy_from_slice(s.as_bytes());
        };
        oct(&mut h[100..108], u64::from(*mode));
        oct(&mut h[108..116], 0);
        oct(&mut h[116..124], 0);
        oct(&mut h[124..136], data.len() as u64);
        oct(&mut h[136..148], 0);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Hosts of the host's apt mirrors (the bootstrap image inherits these sources).
pub fn apt_mirror_hosts() -> Vec<String> {
    let mut texts = vec![std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    let mut hosts = vec![];
    for t in texts {
        hosts.extend(mirror_hosts_in(&t));
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

fn mirror_hosts_in(text: &str) -> Vec<String> {
    let mut out = vec![];
    for l in text.lines() {
        let l = l.trim();
        if l.starts_with('#') {
            continue;
        }
        for w in l.split_whitespace() {
            let Some(rest) = w.strip_prefix("http://") else {
                continue;
            };
            let host = rest.split('/').next().unwrap_or_default();
            let host = host.rsplit('@').next().unwrap_or_default();
            let host = host.split(':').next().unwrap_or_default();
            if !host.is_empty() {
                out.push(host.to_string());
            }
        }
    }
    out
}

/// Work out the base (pulling it or falling back to Debian packages) and the context.
pub async fn prepare(
    d: &Docker,
    spec: &RunSpec,
    ca_pem: Option<&[u8]>,
    log: &mut dyn Write,
) -> Result<Context> {
    let want_git = spec.grants.iter().any(|g| g == "github");
    let want_ssh = spec.grants.iter().any(|g| g.starts_with("ssh:"));
    let plan = plan(
        &spec.dependencies,
        &spec.language_servers,
        want_git,
        want_ssh,
    )?;
    let (mut base, mut packages, mut env) =
        (plan.base.clone(), plan.packages.clone(), plan.env.clone());
    let mut base_id = docker::image_id(d, &base).await?;
    if base_id.is_none() {
        match &plan.fallback {
            Some(f) => {
                let _ = writeln!(
                    log,
                    "moat: {base} is not here; using Debian's packages on {BASE}"
                );
                base = BASE.into();
                packages.splice(0..0, f.packages.iter().cloned());
                env.splice(0..0, f.env.iter().cloned());
            }
            None => {
                let _ = writeln!(log, "moat: pulling {base}...");
                if let Err(e) = pull(d, &base).await {
                    let mut err = Error::unavailable(format!(
                        "base image {base} is missing and could not be pulled: {}",
                        e.msg
                    ));
                    err = if base == BASE {
                        err.with_hint(
                            "build it from Debian packages with: moat-launch image bootstrap",
                        )
                    } else {
                        err.with_hint(format!(
                            "no registry answered and Debian bookworm does not carry this version (it has {}); load {base} with `docker load`, or choose one of those",
                            debian_runtimes()
                        ))
                    };
                    return Err(err);
                }
            }
        }
        base_id = docker::image_id(d, &base).await?;
        if base_id.is_none() && base == BASE {
            let _ = writeln!(log, "moat: pulling {BASE}...");
            if let Err(e) = pull(d, BASE).await {
                return Err(Error::unavailable(format!(
                    "base image {BASE} is missing and could not be pulled: {}",
                    e.msg
                ))
                .with_hint("build it from Debian packages with: moat-launch image bootstrap"));
            }
            base_id = docker::image_id(d, BASE).await?;
        }
    }
    let (uid, gid) = host_ids(&spec.workspace);
    let bake_ca = spec.hooks.post_build_root.is_some() || spec.hooks.post_build.is_some();
    let ca = if bake_ca { ca_pem } else { None };
    let applied = Plan {
        base: base.clone(),
        fallback: None,
        packages,
        env,
        run: plan.run.clone(),
    };
    let df = dockerfile(&applied, uid, gid, spec, ca.is_some());
    let mut files: Vec<(&str, &[u8], u32)> = vec![
        ("Dockerfile", df.as_bytes(), 0o644),
        ("moat-init", INIT.as_bytes(), 0o755),
    ];
    if let Some(pem) = ca {
        files.push(("moat-ca.crt", pem, 0o644));
    }
    let marketplaces = match &spec.claude_plugins {
        Some(p) if !crate::plugins::dockerfile_lines(p).is_empty() => {
            crate::plugins::context_files(p)?
        }
        _ => vec![],
    };
    for (n, b, m) in &marketplaces {
        files.push((n.as_str(), b.as_slice(), *m));
    }
    let tar = tar(&files);
    let mut h = Sha256::new();
    h.update(base_id.unwrap_or_default().as_bytes());
    h.update(&tar);
    let tag = format!("moat/run:{}", &moat_core::hex(&h.finalize())[..16]);
    Ok(Context {
        base,
        dockerfile: df,
        tar,
        tag,
    })
}

pub async fn pull(d: &Docker, image: &str) -> Result<()> {
    let opts = bollard::query_parameters::CreateImageOptions {
        from_image: Some(image.into()),
        ..Default::default()
    };
    let fut = async {
        let mut s = d.create_image(Some(opts), None, None);
        while let Some(r) = s.next().await {
            r.map_err(|e| docker::err("pull", e))?;
        }
        Ok::<_, Error>(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), fut)
        .await
        .map_err(|_| Error::unavailable("pull timed out"))?
}

/// Build `ctx` unless its tag exists (or `rebuild`). The build's steps run in the network
/// namespace `network_mode` names (the run's build relay, see guard.rs: loopback only), and
/// `proxy_url` reaches the run's proxy from there; it goes in the predefined proxy build
/// args, which Docker keeps out of the image history.
pub async fn ensure(
    d: &Docker,
    ctx: &Context,
    rebuild: bool,
    network_mode: &str,
    proxy_url: &str,
    ca_pem: Option<&[u8]>,
    log: &mut dyn Write,
) -> Result<bool> {
    if !rebuild && docker::image_id(d, &ctx.tag).await?.is_some() {
        return Ok(false);
    }
    // Concurrent runs with the same image build it once.
    let lock_path = std::env::temp_dir().join(format!(
        "moat-build-{}.lock",
        ctx.tag.replace(['/', ':'], "-")
    ));
    let _l = FileLock::exclusive(&lock_path)?;
    if !rebuild && docker::image_id(d, &ctx.tag).await?.is_some() {
        return Ok(false);
    }
    let _ = writeln!(log, "moat: building image {}", ctx.tag);
    let mut args = HashMap::new();
    if let Some(pem) = ca_pem {
        // Public; lets an agent CLI's npm install trust the build-time proxy.
        args.insert(
            "MOAT_BUILD_CA".to_string(),
            String::from_utf8_lossy(pem).trim().to_string(),
        );
    }
    build(
        d,
        &ctx.tar,
        &ctx.tag,
        rebuild,
        args,
        network_mode,
        proxy_url,
        log,
    )
    .await?;
    Ok(true)
}

/// One build through the Engine API: `tar` is the context, `args` the build arguments (the
/// proxy ones are added), every step in the namespace `network_mode` names.
#[allow(clippy::too_many_arguments)]
pub async fn build(
    d: &Docker,
    tar: &[u8],
    tag: &str,
    nocache: bool,
    mut args: HashMap<String, String>,
    network_mode: &str,
    proxy_url: &str,
    log: &mut dyn Write,
) -> Result<()> {
    for k in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"] {
        args.insert(k.to_string(), proxy_url.to_string());
    }
    let mut labels = HashMap::from([(LABEL_IMAGE.to_string(), "1".to_string())]);
    if let Ok(h) = moat_core::MoatHome::from_env() {
        labels.insert(
            docker::LABEL_HOME.to_string(),
            h.root().display().to_string(),
        );
    }
    let opts = bollard::query_parameters::BuildImageOptions {
        dockerfile: "Dockerfile".into(),
        t: Some(tag.to_string()),
        rm: true,
        forcerm: true,
        nocache,
        buildargs: Some(args),
        labels: Some(labels),
        networkmode: Some(network_mode.to_string()),
        ..Default::default()
    };
    let body = bollard::body_full(bytes::Bytes::from(tar.to_vec()));
    let mut s = d.build_image(opts, None, Some(body));
    while let Some(r) = s.next().await {
        match r {
            Ok(info) => {
                if let Some(t) = info.stream {
                    // The engine colours a step's stderr; the log is plain text.
                    let t = t.replace("\u{1b}[91m", "").replace("\u{1b}[0m", "");
                    let _ = log.write_all(t.as_bytes());
                    let _ = log.flush();
                }
                if let Some(e) = info.error_detail.and_then(|e| e.message) {
                    return Err(Error::unavailable(format!(
                        "building the image: {}",
                        e.trim()
                    )));
                }
            }
            Err(e) => return Err(docker::err("building the image", e)),
        }
    }
    if docker::image_id(d, tag).await?.is_none() {
        return Err(Error::unavailable(
            "building the image: the build ended without an image",
        ));
    }
    Ok(())
}

/// `image bootstrap`: `debian:bookworm-slim` from Debian packages, imported and tagged.
/// Idempotent and cheap when the image exists; concurrent callers wait on one lock.
pub async fn bootstrap(force: bool) -> Result<()> {
    let d = docker::connect().await?;
    if !force && docker::image_id(&d, BASE).await?.is_some() {
        eprintln!("moat-launch: {BASE} is already present");
        return Ok(());
    }
    let _l = FileLock::exclusive(&std::env::temp_dir().join("moat-image-bootstrap.lock"))?;
    if !force && docker::image_id(&d, BASE).await?.is_some() {
        eprintln!("moat-launch: {BASE} is already present");
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("moat-bootstrap-{}", std::process::id()));
    moat_core::fsutil::create_private_dir(&dir)?;
    let out = dir.join("rootfs.tar");
    eprintln!(
        "moat-launch: building {BASE} with mmdebstrap (the mirror comes from this host's apt sources)"
    );
    let progress = crate::progress::Progress::start(&format!("building {BASE}"));
    let st = tokio::process::Command::new("mmdebstrap")
        .args(["--variant=minbase", "--quiet"])
        // The image gets this host's apt sources, so builds use the same mirrors.
        .arg(format!("--customize-hook={SOURCES_HOOK}"))
        .arg("bookworm")
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .status()
        .await;
    let res = match st {
        Ok(s) if s.success() => import(&d, &out).await,
        Ok(s) => Err(Error::unavailable(format!("mmdebstrap failed ({s})"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::unavailable(
            "mmdebstrap is not installed",
        )
        .with_hint("install it (apt-get install mmdebstrap), or load debian:bookworm-slim with docker load")),
        Err(e) => Err(Error::io("running mmdebstrap", e)),
    };
    let _ = std::fs::remove_dir_all(&dir);
    drop(progress);
    res?;
    eprintln!("moat-launch: {BASE} is ready");
    Ok(())
}

async fn import(d: &Docker, tar: &Path) -> Result<()> {
    let data = tokio::fs::read(tar)
        .await
        .map_err(|e| Error::io(format!("reading {}", tar.display()), e))?;
    let opts = bollard::query_parameters::CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some("debian".into()),
        tag: Some("bookworm-slim".into()),
        changes: vec!["CMD [\"bash\"]".into()],
        ..Default::default()
    };
    let mut s = d.create_image(
        Some(opts),
        Some(bollard::body_full(bytes::Bytes::from(data))),
        None,
    );
    while let Some(r) = s.next().await {
        r.map_err(|e| docker::err("importing the image", e))?;
    }
    if docker::image_id(d, BASE).await?.is_none() {
        return Err(Error::unavailable(
            "importing the image: the engine did not keep it",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_the_reference_table() {
        assert_eq!(plan(&[], &[], false, false).unwrap().base, BASE);
        let p = plan(&["node@20".into(), "git".into()], &[], true, false).unwrap();
        assert_eq!(p.base, "node:20-slim");
        assert!(p.fallback.is_none());
        assert_eq!(p.packages, ["git"]);
        let p = plan(&["node@18".into()], &[], false, false).unwrap();
        assert_eq!(p.fallback.unwrap().packages, ["nodejs", "npm"]);
        let e = plan(&["node@18".into(), "python@3.12".into()], &[], false, false).unwrap_err();
        assert!(e.hint.unwrap().contains("python 3.11"));
        // A service is a sidecar: nothing in the image.
        let p = plan(&["postgres@17".into(), "psql".into()], &[], false, false).unwrap();
        assert_eq!(
            (p.base.as_str(), p.packages),
            (BASE, vec!["postgresql-client".to_string()])
        );
        let e = plan(&["docker:dind".into()], &[], false, false).unwrap_err();
        assert_eq!(e.code, moat_core::exit::UNAVAILABLE);
        let p = plan(&["docker:host".into()], &["go".into()], false, false).unwrap();
        assert_eq!(p.packages, ["docker.io", "gopls", "golang-go"]);
        assert_eq!(
            plan(&["nod@20".into()], &[], false, false)
                .unwrap_err()
                .code,
            moat_core::exit::CONFIG
        );
    }

    #[test]
    fn mirrors_come_from_both_source_formats() {
        let t = "deb http://a.example/debian bookworm main\n# deb http://no.example/x\nURIs: http://b.example:8080/x\n";
        assert_eq!(mirror_hosts_in(t), ["a.example", "b.example"]);
    }

    #[test]
    fn tar_headers_are_valid_ustar() {
        let t = tar(&[("a", b"hello", 0o644)]);
        assert_eq!(t.len(), 512 + 512 + 1024);
        assert_eq!(&t[257..262], b"ustar");
        assert_eq!(&t[512..517], b"hello");
    }
}
