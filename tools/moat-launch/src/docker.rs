//! The Docker Engine API connection (bollard): `DOCKER_HOST` honoured, API version negotiated,
//! errors turned into one-line messages with the engine's own words.

use bollard::Docker;
use moat_core::{Error, Result};

pub const LABEL_RUN: &str = "moat.run";
pub const LABEL_IMAGE: &str = "moat.image";
/// The MOAT_HOME a container or image was made for (several homes may share an engine).
pub const LABEL_HOME: &str = "moat.home";
pub const LABEL_NAME: &str = "moat.name";

/// A list filter matching objects that carry every one of `labels` (`KEY` or `KEY=VALUE`).
pub fn label_filter<S: Into<String>>(
    labels: impl IntoIterator<Item = S>,
) -> std::collections::HashMap<String, Vec<String>> {
    std::collections::HashMap::from([(
        "label".to_string(),
        labels.into_iter().map(Into::into).collect(),
    )])
}

pub async fn connect() -> Result<Docker> {
    let d = Docker::connect_with_defaults()
        .map_err(|e| Error::unavailable(format!("connecting to Docker: {e}")))?;
    d.negotiate_version().await.map_err(|e| {
        Error::unavailable(format!("connecting to Docker: {}", short(&e)))
            .with_hint("is the Docker daemon running? (DOCKER_HOST selects a remote engine)")
    })
}

/// The engine's message without bollard's wrapping.
pub fn short(e: &bollard::errors::Error) -> String {
    use bollard::errors::Error as B;
    match e {
        B::DockerResponseServerError {
            message,
            status_code,
        } => {
            format!("{} (HTTP {status_code})", message.trim())
        }
        B::DockerStreamError { error } => error.trim().to_string(),
        other => other.to_string(),
    }
}

pub fn err(what: impl std::fmt::Display, e: bollard::errors::Error) -> Error {
    Error::unavailable(format!("{what}: {}", short(&e)))
}

pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Remove a container, running or not, with its anonymous volumes; one already gone is fine.
pub async fn force_remove(d: &Docker, id: &str) -> std::result::Result<(), bollard::errors::Error> {
    let opts = bollard::query_parameters::RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match d.remove_container(id, Some(opts)).await {
        Err(e) if !is_not_found(&e) => Err(e),
        _ => Ok(()),
    }
}

pub async fn image_id(d: &Docker, name: &str) -> Result<Option<String>> {
    match d.inspect_image(name).await {
        Ok(i) => Ok(Some(i.id.unwrap_or_default())),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(err(format!("inspecting image {name}"), e)),
    }
}

/// The address `container` has on `network`; None when it has none (it exited, or is not on
/// that network). `what` names the container in an error.
pub async fn address_on(
    d: &Docker,
    container: &str,
    network: &str,
    what: &str,
) -> Result<Option<String>> {
    let info = d
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .map_err(|e| err(format!("inspecting {what}"), e))?;
    Ok(info
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|mut n| n.remove(network))
        .and_then(|e| e.ip_address)
        .filter(|ip| !ip.is_empty()))
}

/// Does Docker have gVisor's `runsc` registered?
pub async fn has_runsc(d: &Docker) -> Result<bool> {
    let info = d.info().await.map_err(|e| err("reading Docker info", e))?;
    Ok(info
        .runtimes
        .map(|r| r.contains_key("runsc"))
        .unwrap_or(false))
}
