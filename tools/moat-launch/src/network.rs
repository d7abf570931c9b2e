//! Each run's own Docker network: an internal bridge (no route out) whose gateway address is
//! where the run's proxy listens; the container's firewall admits only that address and port.
//!
//! Creating a network costs about a tenth of a second, and starting its guard most of a
//! run's start-up, so once its container started a run makes sure two spares (label
//! `moat.spare`, each with a spare guard, guard.rs) wait for the next runs, which claim one
//! instead of creating a network. A spare is never shared: a claim is a file created
//! exclusively (and kept), and the run removes its network when it ends. `moat clean` removes
//! unclaimed spares. Once Docker's default address pools are used up, networks get a /27 of
//! `MOAT_NETWORK_POOL`.

use crate::docker::{self, LABEL_RUN};
use bollard::Docker;
use moat_core::{Error, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

pub const LABEL_SPARE: &str = "moat.spare";

fn claims_dir() -> PathBuf {
    std::env::temp_dir().join("moat-network-claims")
}

fn claim_file(name: &str) -> PathBuf {
    claims_dir().join(name)
}

/// Take `name` for this process; false when another run has it.
fn claim(name: &str) -> bool {
    let _ = moat_core::fsutil::create_private_dir(&claims_dir());
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(claim_file(name))
        .is_ok()
}

async fn spares(d: &Docker) -> Vec<String> {
    let opts = bollard::query_parameters::ListNetworksOptions {
        filters: Some(docker::label_filter([format!("{LABEL_SPARE}=1")])),
    };
    d.list_networks(Some(opts))
        .await
        .map(|ns| ns.into_iter().filter_map(|n| n.name).collect())
        .unwrap_or_default()
}

/// `MOAT_NETWORK_POOL`: where run networks get a subnet (a /27 each) once Docker's default
/// address pools are used up (about 31 bridge networks on a default engine).
pub const POOL_ENV: &str = "MOAT_NETWORK_POOL";
const DEFAULT_POOL: &str = "10.231.0.0/16";
const SUBNET_BITS: u32 = 27;

/// The pool as (first address, prefix length); a bad value is a config error.
pub fn pool() -> Result<(u32, u32)> {
    parse_pool(&std::env::var(POOL_ENV).unwrap_or_else(|_| DEFAULT_POOL.to_string()))
}

fn parse_pool(v: &str) -> Result<(u32, u32)> {
    let bad = || {
        Error::config(format!(
            "{POOL_ENV}={v:?} is not an IPv4 network of /8 to /{SUBNET_BITS}, such as {DEFAULT_POOL}"
        ))
    };
    let (ip, len) = v.split_once('/').ok_or_else(bad)?;
    let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    if !(8..=SUBNET_BITS).contains(&len) {
        return Err(bad());
    }
    let base = u32::from(ip);
    if base & !(u32::MAX << (32 - len)) != 0 {
        return Err(bad());
    }
    Ok((base, len))
}

/// The `i`th /27 of the pool: (subnet, gateway).
fn subnet(base: u32, len: u32, i: u32) -> (String, String) {
    let count = 1u32 << (SUBNET_BITS - len);
    let net = base + (i % count) * (1 << (32 - SUBNET_BITS));
    (
        format!("{}/{SUBNET_BITS}", std::net::Ipv4Addr::from(net)),
        std::net::Ipv4Addr::from(net + 1).to_string(),
    )
}

fn pools_used_up(e: &bollard::errors::Error) -> bool {
    e.to_string().contains("non-overlapping IPv4 address pool")
}

async fn create(d: &Docker, name: &str, labels: HashMap<String, String>) -> Result<()> {
    let mut req = bollard::models::NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        internal: Some(true),
        labels: Some(labels),
        ..Default::default()
    };
    match d.create_network(req.clone()).await {
        Ok(_) => return Ok(()),
        Err(e) if pools_used_up(&e) => {}
        Err(e) => return Err(docker::err("creating the run's network", e)),
    }
    // Docker's pools are used up: a /27 of moat's pool, from a random place in it, the next
    // one while Docker says it overlaps a network it has.
    let (base, len) = pool()?;
    let start = u32::from_le_bytes(moat_core::random_bytes::<4>());
    let tries = (1u32 << (SUBNET_BITS - len)).min(64);
    let mut last = None;
    for k in 0..tries {
        let (sub, gw) = subnet(base, len, start.wrapping_add(k));
        req.ipam = Some(bollard::models::Ipam {
            config: Some(vec![bollard::models::IpamConfig {
                subnet: Some(sub),
                gateway: Some(gw),
                ..Default::default()
            }]),
            ..Default::default()
        });
        match d.create_network(req.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.to_string().contains("overlaps") => last = Some(e),
            Err(e) => return Err(docker::err("creating the run's network", e)),
        }
    }
    Err(match last {
        Some(e) => docker::err(
            format!(
                "creating the run's network (Docker's address pools and {POOL_ENV} are used up)"
            ),
            e,
        ),
        None => Error::unavailable("creating the run's network: no free subnet"),
    })
}

async fn gateway(d: &Docker, name: &str) -> Result<String> {
    let info = d
        .inspect_network(
            name,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .map_err(|e| docker::err("inspecting the run's network", e))?;
    let gw = info
        .ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().find_map(|c| c.gateway))
        .ok_or_else(|| Error::unavailable("the run's network has no gateway address"))?;
    Ok(gw.split('/').next().unwrap_or(&gw).to_string())
}

/// The run's network: a claimed spare, else a new `moat-<run id>`. Returns name and gateway.
pub async fn acquire(d: &Docker, run_id: &str) -> Result<(String, String)> {
    pool()?;
    for name in spares(d).await {
        if claim(&name) {
            match gateway(d, &name).await {
                Ok(gw) => return Ok((name, gw)),
                Err(_) => continue,
            }
        }
    }
    let name = format!("moat-{run_id}");
    let labels = HashMap::from([(LABEL_RUN.to_string(), run_id.to_string())]);
    create(d, &name, labels).await?;
    let gw = gateway(d, &name).await?;
    Ok((name, gw))
}

/// Unclaimed spares kept ready: two, so that a run started right after another finds one
/// ready while the other's replacement is still being made.
const SPARES: usize = 2;

/// Leave `SPARES` unclaimed spares for the next runs, each with a spare guard from
/// `guard_image` when it is known (guard.rs). Claims of networks are never released (a
/// removed network must not be claimed again by a run that listed it a moment earlier); old
/// ones are pruned. Runs take turns (a lock), so they leave `SPARES`, not that many each.
pub async fn replenish(d: &Docker, guard_image: Option<&str>) {
    let lock = std::env::temp_dir().join("moat-spare.lock");
    let _l = tokio::task::spawn_blocking(move || moat_core::lock::FileLock::exclusive(&lock))
        .await
        .ok()
        .and_then(|l| l.ok());
    if let Ok(rd) = std::fs::read_dir(claims_dir()) {
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(86400));
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let free = spares(d)
        .await
        .into_iter()
        .filter(|n| !claim_file(n).exists())
        .count();
    for _ in free..SPARES {
        let name = format!(
            "moat-spare-{}",
            moat_core::hex(&moat_core::random_bytes::<6>())
        );
        // Claimed by this process while it is made, so no run takes it before its guard
        // waits for a run; then open to claims (its name is new: nobody claimed it before).
        if !claim(&name) {
            continue;
        }
        let labels = HashMap::from([(LABEL_SPARE.to_string(), "1".to_string())]);
        if create(d, &name, labels).await.is_ok()
            && let Some(image) = guard_image
            && let Err(e) = crate::guard::create_spare(d, &name, image).await
        {
            eprintln!("moat: warning: no spare guard: {}", e.msg);
            crate::guard::remove_spare(d, &name).await;
        }
        let _ = std::fs::remove_file(claim_file(&name));
    }
}

pub async fn remove(d: &Docker, name: &str) {
    // A spare guard still on it (guard.rs) goes first, claimed or not.
    crate::guard::remove_spare(d, name).await;
    for _ in 0..5 {
        match d.remove_network(name).await {
            Ok(()) => break,
            Err(e) if docker::is_not_found(&e) => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `moat clean`: spares nobody has claimed, and spare guards that are not running (one whose
/// network went before it started).
pub async fn remove_spares(d: &Docker) -> usize {
    let opts = bollard::query_parameters::ListContainersOptions {
        all: true,
        filters: Some(docker::label_filter([format!(
            "{}=spare",
            crate::guard::LABEL_GUARD
        )])),
        ..Default::default()
    };
    for c in d.list_containers(Some(opts)).await.unwrap_or_default() {
        if c.state.map(|s| s.to_string()).as_deref() != Some("running")
            && let Some(id) = c.id
        {
            let _ = docker::force_remove(d, &id).await;
        }
    }
    let mut n = 0;
    for name in spares(d).await {
        if claim(&name) {
            remove(d, &name).await;
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_27s_inside_the_pool_and_wrap() {
        let (base, len) = (u32::from(std::net::Ipv4Addr::new(10, 231, 0, 0)), 16);
        assert_eq!(
            subnet(base, len, 0),
            ("10.231.0.0/27".to_string(), "10.231.0.1".to_string())
        );
        assert_eq!(subnet(base, len, 9).0, "10.231.1.32/27");
        // 2048 /27s in a /16: the 2048th is the first again, never outside the pool.
        assert_eq!(subnet(base, len, 2048).0, "10.231.0.0/27");
        assert_eq!(subnet(base, len, 2047).0, "10.231.255.224/27");
    }

    #[test]
    fn a_pool_must_be_an_aligned_ipv4_network_of_8_to_27_bits() {
        assert_eq!(parse_pool("10.231.0.0/16").unwrap(), (0x0ae7_0000, 16));
        assert_eq!(parse_pool("192.168.64.0/27").unwrap().1, 27);
        for bad in [
            "10.231.0.0",
            "10.231.0.1/16",
            "10.0.0.0/28",
            "10.0.0.0/7",
            "fd00::/8",
            "x/16",
            "",
        ] {
            let e = parse_pool(bad).unwrap_err();
            assert_eq!(e.code, moat_core::exit::CONFIG, "{bad}");
            assert!(e.msg.contains(POOL_ENV), "{}", e.msg);
        }
    }
}
