//! Each run's own Docker network: an internal bridge (no route out) whose gateway address is
//! where the run's proxy listens; the container's firewall admits only that address and port.
//!
//! Creating a network costs about a tenth of a second, so a finished run leaves one spare
//! behind (label `moat.spare`) and the next run claims it instead of creating one. A spare is
//! never shared: a claim is a file created exclusively (and kept), and the run removes its
//! network when it ends. `moat clean` removes unclaimed spares.

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

async fn create(d: &Docker, name: &str, labels: HashMap<String, String>) -> Result<()> {
    let req = bollard::models::NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        internal: Some(true),
        labels: Some(labels),
        ..Default::default()
    };
    d.create_network(req)
        .await
        .map(|_| ())
        .map_err(|e| docker::err("creating the run's network", e))
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

/// Leave one unclaimed spare for the next run. Claims are never released (a removed network
/// must not be claimed again by a run that listed it a moment earlier); old ones are pruned.
pub async fn replenish(d: &Docker) {
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
    if free == 0 {
        let name = format!(
            "moat-spare-{}",
            moat_core::hex(&moat_core::random_bytes::<6>())
        );
        let labels = HashMap::from([(LABEL_SPARE.to_string(), "1".to_string())]);
        let _ = create(d, &name, labels).await;
    }
}

pub async fn remove(d: &Docker, name: &str) {
    for _ in 0..5 {
        match d.remove_network(name).await {
            Ok(()) => break,
            Err(e) if docker::is_not_found(&e) => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `moat clean`: spares nobody has claimed.
pub async fn remove_spares(d: &Docker) -> usize {
    let mut n = 0;
    for name in spares(d).await {
        if claim(&name) {
            remove(d, &name).await;
            n += 1;
        }
    }
    n
}
