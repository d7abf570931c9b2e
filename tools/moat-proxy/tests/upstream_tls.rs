//! Bad upstream certificates: each kind ends the request with a 502 that says why, and the
//! upstream receives no request (the credential never reaches the socket).

mod common;
use common::*;
use moat_testkit::TestEnv;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa,
    NameConstraints,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

const NAME: &str = "api.github.com";

struct Case {
    name: &'static str,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The CA file given to --extra-ca.
    trust: String,
}

fn cases() -> Vec<Case> {
    let root = Ca::new("trusted root");
    let trust = root.pem.clone();
    let now = OffsetDateTime::now_utc();
    let mut v = Vec::new();
    let mut add = |name, chain, key, trust: &str| {
        v.push(Case {
            name,
            chain,
            key,
            trust: trust.to_string(),
        })
    };

    // 1 self-signed leaf
    let k = rcgen::KeyPair::generate().unwrap();
    let c = leaf_params(&[NAME]).self_signed(&k).unwrap();
    add(
        "self-signed",
        vec![c.der().clone()],
        PrivateKeyDer::Pkcs8(k.serialize_der().into()),
        &trust,
    );
    // 2 expired
    let mut p = leaf_params(&[NAME]);
    p.not_before = now - Duration::days(30);
    p.not_after = now - Duration::days(1);
    let (c, k) = root.leaf(p);
    add("expired", vec![c], k, &trust);
    // 3 not yet valid
    let mut p = leaf_params(&[NAME]);
    p.not_before = now + Duration::days(1);
    p.not_after = now + Duration::days(30);
    let (c, k) = root.leaf(p);
    add("not-yet-valid", vec![c], k, &trust);
    // 4 wrong name
    let (c, k) = root.leaf(leaf_params(&["other.example"]));
    add("wrong-name", vec![c], k, &trust);
    // 5 untrusted root
    let rogue = Ca::new("rogue root");
    let (c, k) = rogue.leaf(leaf_params(&[NAME]));
    add("untrusted-root", vec![c], k, &trust);
    // 6 missing intermediate
    let inter = root.sub(ca_params("intermediate"));
    let (c, k) = inter.leaf(leaf_params(&[NAME]));
    add("missing-intermediate", vec![c], k, &trust);
    // 7 CA:TRUE used as the leaf
    let mut p = ca_params(NAME);
    p.subject_alt_names = vec![rcgen::SanType::DnsName(NAME.try_into().unwrap())];
    let (c, k) = root.leaf(p);
    add("ca-as-leaf", vec![c], k, &trust);
    // 8 clientAuth-only EKU
    let mut p = leaf_params(&[NAME]);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let (c, k) = root.leaf(p);
    add("client-auth-eku", vec![c], k, &trust);
    // 9 issuer is not a CA
    let mut p = leaf_params(&["not-a-ca.example"]);
    p.is_ca = IsCa::ExplicitNoCa;
    let fake = root.sub(p);
    let (c, k) = fake.leaf(leaf_params(&[NAME]));
    add("issuer-not-ca", vec![c, fake.der.clone()], k, &trust);
    // 10 name constraints exclude the name
    let mut p = ca_params("constrained");
    p.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![],
        excluded_subtrees: vec![GeneralSubtree::DnsName("github.com".into())],
    });
    let cons = root.sub(p);
    let (c, k) = cons.leaf(leaf_params(&[NAME]));
    add(
        "name-constraints-excluded",
        vec![c, cons.der.clone()],
        k,
        &trust,
    );
    // 11 CN only, no SAN
    let mut p = CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, NAME);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (c, k) = root.leaf(p);
    add("cn-only", vec![c], k, &trust);
    // 12 wildcard one level too deep
    let (c, k) = root.leaf(leaf_params(&["*.api.github.com"]));
    add("wildcard-wrong-level", vec![c], k, &trust);
    // 13 IP SAN only
    let mut p = leaf_params(&[]);
    p.subject_alt_names = vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let (c, k) = root.leaf(p);
    add("ip-san-only", vec![c], k, &trust);
    // 14 expired intermediate
    let mut p = ca_params("old intermediate");
    p.not_before = now - Duration::days(30);
    p.not_after = now - Duration::days(1);
    let old = root.sub(p);
    let (c, k) = old.leaf(leaf_params(&[NAME]));
    add("expired-intermediate", vec![c, old.der.clone()], k, &trust);
    // 15 path length exceeded (an intermediate that allows no further intermediates)
    let mut p = ca_params("pathlen0 intermediate");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let i0 = root.sub(p);
    let i1 = i0.sub(ca_params("intermediate under pathlen 0"));
    let (c, k) = i1.leaf(leaf_params(&[NAME]));
    add(
        "pathlen-exceeded",
        vec![c, i1.der.clone(), i0.der.clone()],
        k,
        &trust,
    );
    // 16 permitted subtree that does not include the name
    let mut p = ca_params("permitted elsewhere");
    p.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName("example.org".into()),
            GeneralSubtree::IpAddress(CidrSubnet::V4([10, 0, 0, 0], [255, 0, 0, 0])),
        ],
        excluded_subtrees: vec![],
    });
    let perm = root.sub(p);
    let (c, k) = perm.leaf(leaf_params(&[NAME]));
    add(
        "name-constraints-not-permitted",
        vec![c, perm.der.clone()],
        k,
        &trust,
    );
    // 17 chain sent in the wrong order with an untrusted cross
    let (c, k) = rogue.leaf(leaf_params(&[NAME]));
    add(
        "untrusted-with-root-in-chain",
        vec![c, rogue.der.clone()],
        k,
        &trust,
    );
    v
}

#[test]
fn bad_upstream_certificates_get_502_before_a_byte_is_sent() {
    assert!(cases().len() >= 15);
    let h1: &[&[u8]] = &[b"http/1.1"];
    let h2: &[&[u8]] = &[b"h2", b"http/1.1"];
    for alpn in [h1, h2] {
        for case in cases() {
            let env = TestEnv::new();
            let secret = canary();
            let up = tls_upstream(case.chain, case.key, alpn);
            let trust = env.path().join("trust.pem");
            std::fs::write(&trust, &case.trust).unwrap();
            let rules = bearer_rule("github", &[NAME], &secret);
            let p = Proxy::to_upstream(&env, &rules, NAME, up.port(), &trust);
            let r = curl(
                &env,
                &[
                    "-x",
                    &p.url(),
                    "--cacert",
                    p.ca.to_str().unwrap(),
                    "-w",
                    "\n%{http_code}",
                    &format!("https://{NAME}/"),
                ],
            );
            assert!(
                r.stdout.ends_with("\n502"),
                "{}: {}{}",
                case.name,
                r.stdout,
                r.stderr
            );
            assert!(
                r.stdout.contains("TLS with api.github.com failed"),
                "{}: {}",
                case.name,
                r.stdout
            );
            assert!(
                up.seen().is_empty(),
                "{}: the upstream received a request",
                case.name
            );
            let t = p.wait_trace(1);
            assert_eq!(t[0]["error"]["side"], "upstream", "{}", case.name);
            assert_eq!(t[0]["status"], 502);
            p.assert_no_leak(&secret);
        }
    }
}

#[test]
fn a_good_chain_with_an_intermediate_works() {
    let env = TestEnv::new();
    let secret = canary();
    let root = Ca::new("trusted root");
    let inter = root.sub(ca_params("intermediate"));
    let (c, k) = inter.leaf(leaf_params(&[NAME]));
    let up = tls_upstream(vec![c, inter.der.clone()], k, &[b"h2", b"http/1.1"]);
    let trust = root.write(&env.path().join("trust.pem"));
    let rules = bearer_rule("github", &[NAME], &secret);
    let p = Proxy::to_upstream(&env, &rules, NAME, up.port(), &trust);
    let r = curl(
        &env,
        &[
            "-x",
            &p.url(),
            "--cacert",
            p.ca.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{NAME}/"),
        ],
    );
    assert_eq!(r.stdout, "200", "{}", r.stderr);
    assert_eq!(up.seen().len(), 1);
    // SSL_CERT_FILE feeds the OS store the proxy trusts, as on a corporate machine.
    let mut env2 = TestEnv::new();
    env2.env("SSL_CERT_FILE", &trust);
    let ct = format!("{NAME}:443:127.0.0.1:{}", up.port());
    let p2 = Proxy::start(&env2, &rules, &["--connect-to", &ct]);
    let r = curl(
        &env2,
        &[
            "-x",
            &p2.url(),
            "--cacert",
            p2.ca.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{NAME}/"),
        ],
    );
    assert_eq!(r.stdout, "200", "{}", r.stderr);
    p.assert_no_leak(&secret);
    p2.assert_no_leak(&secret);
}
