//! The crypto provider of both of the proxy's TLS legs.
//!
//! Every byte through an intercepted tunnel is decrypted and encrypted twice more than on a
//! direct connection, so the cipher's cost is the proxy's largest cost on big bodies.
//! AES-128-GCM is put first (about a third fewer AES rounds than AES-256-GCM, the same
//! security margin browsers and Go's TLS stack choose by default), then ChaCha20-Poly1305
//! and AES-256-GCM for peers that insist. The client-facing leg applies this order over
//! the client's own (`ignore_client_order`).

use rustls::SupportedCipherSuite;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::{cipher_suite as cs, default_provider};
use std::sync::Arc;

const ORDER: [SupportedCipherSuite; 9] = [
    cs::TLS13_AES_128_GCM_SHA256,
    cs::TLS13_CHACHA20_POLY1305_SHA256,
    cs::TLS13_AES_256_GCM_SHA384,
    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
];

/// ring's provider with the cipher suites in the proxy's order.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: ORDER.to_vec(),
        ..default_provider()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_suites_as_ring_in_our_order() {
        let ours = super::provider();
        let ring = rustls::crypto::ring::default_provider();
        assert_eq!(ours.cipher_suites.len(), ring.cipher_suites.len());
        for s in &ring.cipher_suites {
            assert!(ours.cipher_suites.contains(s), "{:?} dropped", s.suite());
        }
        assert_eq!(
            ours.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
    }
}
