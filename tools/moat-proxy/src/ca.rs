//! The interception CA and the leaves it signs. The CA (ECDSA P-256) lives in the CA
//! directory (`ca.crt`, `ca.key` 0600, directory 0700) and is created once, under a lock, so
//! two proxies starting together share one CA. Leaves: one key per process, one
//! certificate per canonical server name (DNS or IP SAN), valid from an hour ago for a day,
//! kept in a bounded cache of TLS configurations.

use moat_core::{Error, Result, fsutil, lock::FileLock};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

pub const CACHE_CAP: usize = 1024;

/// Configurations by host, and hosts in insertion order for eviction.
type LeafCache = (HashMap<String, Arc<ServerConfig>>, VecDeque<String>);

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    leaf_key: KeyPair,
    leaf_signing: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<LeafCache>,
    pub cert_path: PathBuf,
}

fn ca_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::software(format!("{what}: {e}"))
}

/// Which CA: the interception CA (trusted inside containers, for any name) or the routing
/// CA (for the hostname router on the host, name-constrained to `localhost` and loopback
/// addresses, so a user who trusts it on the host trusts it for nothing else).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Interception,
    Routing,
}

/// Create the interception CA in `dir` if it does not exist yet.
pub fn ensure(dir: &Path) -> Result<(String, String, PathBuf)> {
    ensure_kind(dir, Kind::Interception)
}

/// Create a CA of `kind` in `dir` if it does not exist yet; return PEMs and the certificate's path.
pub fn ensure_kind(dir: &Path, kind: Kind) -> Result<(String, String, PathBuf)> {
    fsutil::create_private_dir(dir)?;
    let _lock = FileLock::exclusive(&dir.join("ca.lock"))?;
    let crt = dir.join("ca.crt");
    let key = dir.join("ca.key");
    if crt.exists() || key.exists() {
        let key_pem = String::from_utf8(fsutil::read_secret(&key)?)
            .map_err(|_| Error::data(format!("{}: not PEM", key.display())))?;
        let crt_pem = std::fs::read_to_string(&crt)
            .map_err(|e| Error::io(format!("reading {}", crt.display()), e))?;
        return Ok((crt_pem, key_pem, crt));
    }
    let kp = KeyPair::generate().map_err(|e| ca_err("generating the CA key", e))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        match kind {
            Kind::Interception => "moat interception CA",
            Kind::Routing => "moat localhost routing CA",
        },
    );
    dn.push(DnType::OrganizationName, "moat");
    p.distinguished_name = dn;
    if kind == Kind::Routing {
        use rcgen::{CidrSubnet, GeneralSubtree, NameConstraints};
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![
                GeneralSubtree::DnsName("localhost".into()),
                GeneralSubtree::IpAddress(CidrSubnet::V4([127, 0, 0, 0], [255, 0, 0, 0])),
                GeneralSubtree::IpAddress(CidrSubnet::V6(
                    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    [255; 16],
                )),
            ],
            excluded_subtrees: vec![],
        });
    }
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(3650);
    p.serial_number = Some(rcgen::SerialNumber::from_slice(
        &moat_core::random_bytes::<16>()[..],
    ));
    let cert = p
        .self_signed(&kp)
        .map_err(|e| ca_err("making the CA certificate", e))?;
    let key_pem = kp.serialize_pem();
    fsutil::write_secret(&key, key_pem.as_bytes())?;
    fsutil::write_atomic(&crt, cert.pem().as_bytes(), 0o644)?;
    Ok((cert.pem(), key_pem, crt))
}

impl Ca {
    pub fn load_or_create(dir: &Path) -> Result<Ca> {
        Self::load_or_create_kind(dir, Kind::Interception)
    }

    pub fn load_or_create_kind(dir: &Path, kind: Kind) -> Result<Ca> {
        let (crt_pem, key_pem, cert_path) = ensure_kind(dir, kind)?;
        let kp = KeyPair::from_pem(&key_pem).map_err(|e| ca_err("reading the CA key", e))?;
        let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(crt_pem.as_bytes())
            .map_err(|e| ca_err("reading the CA certificate", e))?;
        let issuer = Issuer::from_ca_cert_pem(&crt_pem, kp)
            .map_err(|e| ca_err("reading the CA certificate", e))?;
        let leaf_key = KeyPair::generate().map_err(|e| ca_err("generating the leaf key", e))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signing =
            any_supported_type(&der).map_err(|e| ca_err("loading the leaf key", e))?;
        Ok(Ca {
            issuer,
            ca_der,
            leaf_key,
            leaf_signing,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
            cert_path,
        })
    }

    /// Sign a leaf for a canonical host name or IP address.
    pub fn leaf(&self, host: &str) -> Result<CertificateDer<'static>> {
        let mut p = CertificateParams::default();
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.to_string()
                    .try_into()
                    .map_err(|e| ca_err("leaf name", e))?,
            ),
        };
        p.subject_alt_names = vec![san];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::hours(24);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(
            &moat_core::random_bytes::<16>()[..],
        ));
        let cert = p
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| ca_err("signing a leaf", e))?;
        Ok(cert.der().clone())
    }

    /// The client-facing TLS configuration for a canonical host (cached, bounded).
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>> {
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(host)
        {
            return Ok(c.clone());
        }
        let leaf = self.leaf(host)?;
        let ck = Arc::new(CertifiedKey::new(
            vec![leaf, self.ca_der.clone()],
            self.leaf_signing.clone(),
        ));
        let mut cfg = ServerConfig::builder_with_provider(crate::tlsprov::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_err("TLS configuration", e))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(ck)));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg.ignore_client_order = true;
        let cfg = Arc::new(cfg);
        let mut g = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.len() >= CACHE_CAP
            && let Some(old) = g.1.pop_front()
        {
            g.0.remove(&old);
        }
        if g.0.insert(host.to_string(), cfg.clone()).is_none() {
            g.1.push_back(host.to_string());
        }
        Ok(cfg)
    }

    #[cfg(test)]
    pub fn cache_len(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_is_created_once_private_and_cache_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ca");
        let a = Ca::load_or_create(&dir).unwrap();
        let b = Ca::load_or_create(&dir).unwrap();
        assert_eq!(a.ca_der, b.ca_der);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        for i in 0..(CACHE_CAP + 10) {
            a.server_config(&format!("h{i}.example")).unwrap();
        }
        assert_eq!(a.cache_len(), CACHE_CAP);
        a.server_config("127.0.0.1").unwrap();
    }
}
