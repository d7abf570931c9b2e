//! The proxy signs AWS requests (issue #23) against a loopback TLS upstream standing in for
//! an AWS endpoint, which checks the SigV4 signature it receives with the real session key.
//! The client is curl's own SigV4 signer (`--aws-sigv4`), signing with the placeholder.
//! THREATS B3 (only a request signed with the run's placeholder is signed with the real
//! session; another key gets 403 and nothing reaches the upstream), B4 (the upstream echoes
//! the request: the real token never reaches the client).

mod common;
use common::*;
use moat_secrets::sigv4;
use moat_testkit::TestEnv;

const HOST: &str = "sts.us-east-1.amazonaws.com";
const PH_KEY: &str = "ASIAPLACEHOLDERKEY01";
const PH_SECRET: &str = "placeholderSecret0000000000000000000000ab";
const PH_TOKEN: &str = "placeholder-token-0000000000000000000000000000";
const REAL_KEY: &str = "ASIAREALSESSIONKEY01";

fn rules(real_secret: &str, real_token: &str) -> String {
    format!(
        "{}\n",
        serde_json::json!({
            "v": 1,
            "type": "aws_sign",
            "grant": "aws",
            "hosts": ["*.amazonaws.com"],
            "placeholder_access_key_id": PH_KEY,
            "placeholder_secret_access_key": PH_SECRET,
            "placeholder_session_token": PH_TOKEN,
            "access_key_id": REAL_KEY,
            "secret_access_key": real_secret,
            "session_token": real_token,
        })
    )
}

/// Does the request the upstream saw carry a valid SigV4 signature by `key`/`secret`?
/// Computed here from the bytes as received, with moat-secrets' primitives.
fn verifies(s: &Seen, key: &str, secret: &str) -> Result<(), String> {
    let auth = s
        .header_all("authorization")
        .pop()
        .ok_or("no authorization")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")
        .ok_or(auth.clone())?;
    let (cred, rest) = rest.split_once(", SignedHeaders=").ok_or(auth.clone())?;
    let (signed, sig) = rest.split_once(", Signature=").ok_or(auth.clone())?;
    let scope: Vec<&str> = cred.split('/').collect();
    if scope[0] != key {
        return Err(format!("signed by {}", scope[0]));
    }
    let (date, region, service) = (scope[1], scope[2], scope[3]);
    let values: Vec<(String, String)> = signed
        .split(';')
        .map(|n| (n.to_string(), s.header_all(n).join(",")))
        .collect();
    let pairs: Vec<(&str, &str)> = values
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let (ch, sh) = sigv4::canonical_headers(&pairs);
    let (path, query) = s.target.split_once('?').unwrap_or((&s.target, ""));
    let payload = s
        .header_all("x-amz-content-sha256")
        .pop()
        .unwrap_or_else(|| sigv4::sha256_hex(&s.body));
    let cr = format!(
        "{}\n{}\n{}\n{ch}\n{sh}\n{payload}",
        s.method,
        sigv4::canonical_uri(path),
        sigv4::canonical_query(query)
    );
    let amz_date = s.header_all("x-amz-date").pop().ok_or("no x-amz-date")?;
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        sigv4::sha256_hex(cr.as_bytes())
    );
    let k = sigv4::signing_key(secret, date, region, service);
    let want = sigv4::hex(&sigv4::hmac_sha256(&k, sts.as_bytes()));
    if want == sig {
        Ok(())
    } else {
        Err(format!("signature mismatch for\n{cr}"))
    }
}

/// The status of the last response in curl's `-i` output (after the CONNECT's own).
fn status(out: &str) -> &str {
    out.lines()
        .rfind(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
}

#[test]
fn placeholder_signed_requests_reach_aws_signed_with_the_real_session() {
    let env = TestEnv::new();
    let (secret, token) = (canary(), canary());
    let (up, ca) = granted_upstream(&env, HOST, &[b"http/1.1"]);
    let ct = format!("{HOST}:443:127.0.0.1:{}", up.port());
    let p = Proxy::start(
        &env,
        &rules(&secret, &token),
        &["--connect-to", &ct, "--extra-ca", ca.to_str().unwrap()],
    );
    let (purl, pca) = (p.url(), p.ca.to_str().unwrap().to_string());
    let url = format!("https://{HOST}/");
    let body = "Action=GetCallerIdentity&Version=2011-06-15";
    let sign = |user: &str, tok: &str| {
        curl(
            &env,
            &[
                "-x",
                &purl,
                "--cacert",
                &pca,
                "-i",
                "--aws-sigv4",
                "aws:amz:us-east-1:sts",
                "-u",
                user,
                "-H",
                &format!("x-amz-security-token: {tok}"),
                "-d",
                body,
                &url,
            ],
        )
    };

    let r = sign(&format!("{PH_KEY}:{PH_SECRET}"), PH_TOKEN);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(status(&r.stdout), "200", "{}", r.stdout);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    verifies(&seen[0], REAL_KEY, &secret).unwrap();
    assert_eq!(
        seen[0].header_all("x-amz-security-token"),
        vec![token.clone()]
    );
    assert_eq!(seen[0].body, body.as_bytes());
    let raw = seen[0].raw();
    assert!(
        !raw.contains(PH_SECRET) && !raw.contains(PH_TOKEN) && !raw.contains(PH_KEY),
        "{raw}"
    );
    // The upstream echoed the request: the client sees neither the token nor the secret.
    assert!(!r.stdout.contains(&token) && !r.stdout.contains(&secret));
    assert!(r.stdout.contains(REAL_KEY), "{}", r.stdout);

    // Another key, or the placeholder's id with a wrong secret: 403 from the proxy, and the
    // upstream sees nothing.
    for user in [
        "AKIAOTHERKEY00000000:other".to_string(),
        format!("{PH_KEY}:{secret}"),
    ] {
        let r = sign(&user, PH_TOKEN);
        assert!(status(&r.stdout) == "403", "{}", r.stdout);
        assert!(
            r.stdout.contains("x-moat-blocked: aws-signature"),
            "{}",
            r.stdout
        );
        assert!(
            r.stdout.contains("Moat: AWS request refused."),
            "{}",
            r.stdout
        );
    }
    assert_eq!(up.seen().len(), 1, "a refused request reached the upstream");
    // The placeholder triple with a token that is not the placeholder's.
    let r = sign(&format!("{PH_KEY}:{PH_SECRET}"), "some-other-token");
    assert!(status(&r.stdout) == "403", "{}", r.stdout);
    assert_eq!(up.seen().len(), 1);
    let f = moat_testkit::files_containing(env.path(), secret.as_bytes());
    assert!(f.is_empty(), "the real secret in {f:?}");
}

/// THREATS A5 (review of #23: `deny service:Action` walked around) and B4/B5 (an answer that
/// is a credential): through the proxy, a form body's Action is read even when the client
/// sends `x-amz-content-sha256`, percent-encoded names are decoded, a second Action is
/// refused, and `sts:AssumeRole` is never signed. None of these reach the upstream; the
/// allowed control request does, and the real token never reaches the client.
#[test]
fn action_rules_and_credential_answers_hold_against_other_spellings() {
    let env = TestEnv::new();
    let (secret, token) = (canary(), canary());
    let (up, ca) = granted_upstream(&env, HOST, &[b"http/1.1"]);
    let ct = format!("{HOST}:443:127.0.0.1:{}", up.port());
    let mut rules = rules(&secret, &token);
    rules.push_str(
        r#"{"v":1,"type":"net_rule","host":"*.amazonaws.com","rules":["deny iam:DeleteRole"]}"#,
    );
    rules.push('\n');
    let p = Proxy::start(
        &env,
        &rules,
        &["--connect-to", &ct, "--extra-ca", ca.to_str().unwrap()],
    );
    let (purl, pca) = (p.url(), p.ca.to_str().unwrap().to_string());
    let url = format!("https://{HOST}/");
    // `hashed`: the body whose digest goes into x-amz-content-sha256, if any.
    let send = |service: &str, body: &str, hashed: Option<&str>| {
        let scope = format!("aws:amz:us-east-1:{service}");
        let user = format!("{PH_KEY}:{PH_SECRET}");
        let tok = format!("x-amz-security-token: {PH_TOKEN}");
        let hash = format!(
            "x-amz-content-sha256: {}",
            sigv4::sha256_hex(hashed.unwrap_or("").as_bytes())
        );
        let mut args = vec![
            "-x",
            &purl,
            "--cacert",
            &pca,
            "-i",
            "--aws-sigv4",
            &scope,
            "-u",
            &user,
            "-H",
            &tok,
            "-d",
            body,
        ];
        if hashed.is_some() {
            args.extend(["-H", &hash]);
        }
        args.push(&url);
        curl(&env, &args)
    };
    for (service, body, hash, says) in [
        (
            "iam",
            "Action=DeleteRole&RoleName=r&Version=2010-05-08",
            Some("Action=DeleteRole&RoleName=r&Version=2010-05-08"),
            "is denied by rule",
        ),
        (
            "iam",
            "Action=%44eleteRole&RoleName=r&Version=2010-05-08",
            None,
            "is denied by rule",
        ),
        (
            "iam",
            "Action=ListRoles&Action=DeleteRole&RoleName=r",
            Some("Action=ListRoles&Action=DeleteRole&RoleName=r"),
            "more than once",
        ),
        (
            "iam",
            "Action=DeleteRole&RoleName=r",
            Some("Action=ListRoles"),
            "is not the hash of the body",
        ),
        (
            "iam",
            "Action=ListRoles&Action=DeleteRole&RoleName=r",
            None,
            "more than once",
        ),
        (
            "sts",
            "Action=AssumeRole&RoleArn=arn:aws:iam::1:role/x&RoleSessionName=s&Version=2011-06-15",
            Some(
                "Action=AssumeRole&RoleArn=arn:aws:iam::1:role/x&RoleSessionName=s&Version=2011-06-15",
            ),
            "moat does not sign requests whose answer is a credential",
        ),
        (
            "sts",
            "Action=GetSessionToken&Version=2011-06-15",
            None,
            "moat does not sign requests whose answer is a credential",
        ),
    ] {
        let r = send(service, body, hash);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(status(&r.stdout), "403", "{body}: {}", r.stdout);
        assert!(r.stdout.contains(says), "{body}: {}", r.stdout);
    }
    assert!(
        up.seen().is_empty(),
        "a refused request reached the upstream"
    );
    let ok = "Action=ListRoles&Version=2010-05-08";
    let r = send("iam", ok, Some(ok));
    assert_eq!(status(&r.stdout), "200", "{}", r.stdout);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    verifies(&seen[0], REAL_KEY, &secret).unwrap();
    assert!(!r.stdout.contains(&token) && !r.stdout.contains(&secret));
    let f = moat_testkit::files_containing(env.path(), secret.as_bytes());
    assert!(f.is_empty(), "the real secret in {f:?}");
}
