//! AWS requests signed by the proxy (issue #23): the container holds only a placeholder
//! access key, secret and session token; the supervisor hands the proxy those and the role's
//! real session credentials in an `aws_sign` record. For an HTTPS request to a covered AWS
//! host that carries an `Authorization: AWS4-HMAC-SHA256 ...` header:
//!
//! 1. the credential must be the placeholder access key (anything else: 403);
//! 2. the signature is computed again with the placeholder secret over the request as
//!    received (method, path, query, the signed headers' values, the payload hash) and must
//!    equal the client's (else 403): only a client that holds this run's placeholder gets
//!    its requests signed, and what it signed is exactly what goes upstream;
//! 3. the same canonical request (same date, region, service, signed headers; the session
//!    token header now the real token) is signed with the real secret, and `Authorization`
//!    and `x-amz-security-token` are replaced.
//!
//! The payload hash is `x-amz-content-sha256` as the client sent it (S3): a hex digest,
//! `UNSIGNED-PAYLOAD` or `STREAMING-UNSIGNED-PAYLOAD-TRAILER` pass; chunk-signed
//! `aws-chunked` bodies (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`, its `-TRAILER` and ECDSA
//! forms) are refused, since each chunk carries a signature made with the placeholder. A
//! request without that header (STS, SSM and the other query and JSON APIs) has its body
//! read into memory, up to [`MAX_BODY`], to hash it; a larger one is refused.
//!
//! A presigned request (`X-Amz-Signature` or `X-Amz-Credential` in the query) is refused:
//! re-signing it would put the real access key id and session token into the URL, which
//! servers, logs and redirects keep; the agent can send the same request signed in headers.
//! A request with no `Authorization` at all carries no credential and passes as sent
//! (anonymous S3 reads). Other algorithms (SigV2, SigV4a) are refused. Names of servers that
//! AWS customers run ([`customer_host`]: EC2 instances, load balancers, S3 website endpoints)
//! are not covered: requests there pass as sent, with the placeholder (THREATS A8).

use crate::redact::Secrets;
use http::header::{HeaderMap, HeaderValue};
use moat_core::host::HostPattern;
use moat_core::rules::AwsSign;
use moat_secrets::sigv4;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Bodies of requests without `x-amz-content-sha256` are hashed in memory up to this size.
pub const MAX_BODY: usize = 1024 * 1024;

pub struct Signer {
    pub grant: String,
    patterns: Vec<HostPattern>,
    ph_key_id: String,
    ph_secret: String,
    ph_token: String,
    key_id: String,
    secret: String,
    token: String,
    /// The real secret and token: masked wherever a response reflects them.
    pub secrets: Arc<Secrets>,
}

/// What the trace records about a signed request (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub service: String,
    pub region: String,
    pub action: Option<String>,
}

/// The client's `Authorization`, parsed.
struct ClientAuth<'a> {
    key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed: Vec<String>,
    signature: &'a str,
}

fn parse_authorization(v: &str) -> Result<ClientAuth<'_>, String> {
    let Some(rest) = v.strip_prefix(sigv4::ALGORITHM) else {
        let alg = v.split_whitespace().next().unwrap_or("");
        return Err(format!(
            "the request is signed with {alg:?}; only AWS4-HMAC-SHA256 (SigV4) requests are signed by moat"
        ));
    };
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(x) = part.strip_prefix("Credential=") {
            cred = Some(x);
        } else if let Some(x) = part.strip_prefix("SignedHeaders=") {
            signed = Some(x);
        } else if let Some(x) = part.strip_prefix("Signature=") {
            sig = Some(x);
        }
    }
    let (Some(cred), Some(signed), Some(sig)) = (cred, signed, sig) else {
        return Err("the Authorization header is not a complete SigV4 header".into());
    };
    let c: Vec<&str> = cred.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = c[..] else {
        return Err("the SigV4 credential scope is malformed".into());
    };
    Ok(ClientAuth {
        key_id,
        date,
        region,
        service,
        signed: signed.split(';').map(|s| s.to_ascii_lowercase()).collect(),
        signature: sig,
    })
}

/// Does the request need its body to be verified (no `x-amz-content-sha256`)?
pub fn needs_body(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::AUTHORIZATION) && !headers.contains_key(CONTENT_SHA256)
}

const CONTENT_SHA256: &str = "x-amz-content-sha256";
const TOKEN: &str = "x-amz-security-token";

fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut vals = headers.get_all(name).iter().peekable();
    vals.peek()?;
    let v: Vec<String> = vals
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    Some(v.join(","))
}

fn is_s3(service: &str) -> bool {
    matches!(
        service,
        "s3" | "s3-outposts" | "s3express" | "s3-object-lambda"
    )
}

impl Signer {
    pub fn new(r: AwsSign) -> Result<Signer, String> {
        let g = &r.grant;
        if r.hosts.is_empty() {
            return Err(format!("grant {g}: aws_sign record has no hosts"));
        }
        let mut patterns = Vec::new();
        for h in &r.hosts {
            patterns
                .push(HostPattern::parse(h).map_err(|e| format!("grant {g}: host {h:?}: {e}"))?);
        }
        for (what, v) in [
            ("access key id", &r.access_key_id),
            ("secret", &r.secret_access_key),
            ("session token", &r.session_token),
            ("placeholder access key id", &r.placeholder_access_key_id),
            ("placeholder secret", &r.placeholder_secret_access_key),
            ("placeholder session token", &r.placeholder_session_token),
        ] {
            if v.is_empty() || HeaderValue::from_str(v).is_err() {
                return Err(format!(
                    "grant {g}: aws_sign {what} is empty or not header-safe"
                ));
            }
        }
        if r.placeholder_access_key_id == r.access_key_id
            || r.placeholder_secret_access_key == r.secret_access_key
        {
            return Err(format!(
                "grant {g}: aws_sign placeholder equals the real credential"
            ));
        }
        let secrets = Arc::new(Secrets::new(vec![
            r.secret_access_key.as_bytes().to_vec(),
            r.session_token.as_bytes().to_vec(),
        ]));
        Ok(Signer {
            grant: r.grant,
            patterns,
            ph_key_id: r.placeholder_access_key_id,
            ph_secret: r.placeholder_secret_access_key,
            ph_token: r.placeholder_session_token,
            key_id: r.access_key_id,
            secret: r.secret_access_key,
            token: r.session_token,
            secrets,
        })
    }

    /// HTTPS to a covered host on 443 (or the pattern's port), and not a name whose server
    /// an AWS customer runs ([`customer_host`]).
    pub fn covers(&self, host: &str, port: u16, tls: bool) -> bool {
        tls && !customer_host(host)
            && self.patterns.iter().any(|p| match p.port() {
                Some(_) => p.matches(host, port),
                None => port == 443 && p.matches(host, port),
            })
    }

    /// Verify and re-sign in place. `client_host` is the Host the client sent (what it
    /// signed), `out_host` the Host the request goes upstream with. `body` is the whole body
    /// when [`needs_body`] said so. Ok(None): no Authorization, passed as sent.
    pub fn resign(
        &self,
        method: &str,
        path_and_query: &str,
        client_host: &str,
        out_host: &str,
        headers: &mut HeaderMap,
        body: Option<&[u8]>,
    ) -> Result<Option<Signed>, String> {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let presigned = query.split('&').any(|p| {
            let k = p.split('=').next().unwrap_or("");
            k.eq_ignore_ascii_case("X-Amz-Signature") || k.eq_ignore_ascii_case("X-Amz-Credential")
        });
        if presigned {
            return Err("presigned (query-signed) requests are not signed by moat: that would put the real session credentials into the URL; sign the request in headers instead".into());
        }
        let Some(auth) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(None);
        };
        let auth = auth
            .to_str()
            .map_err(|_| "the Authorization header is not text".to_string())?
            .to_string();
        let a = parse_authorization(&auth)?;
        if a.key_id != self.ph_key_id {
            return Err(format!(
                "the request is signed with the access key {}, not this run's; moat signs only requests made with the credentials the run's credential_process gives",
                a.key_id
            ));
        }
        if !a.signed.iter().any(|h| h == "host") {
            return Err("the signature does not cover the Host header".into());
        }
        let date_time = header_value(headers, "x-amz-date")
            .ok_or_else(|| "the request has no X-Amz-Date header".to_string())?;
        if !a.signed.iter().any(|h| h == "x-amz-date") || !date_time.starts_with(a.date) {
            return Err("X-Amz-Date is not signed or does not match the credential scope".into());
        }
        let payload_hash = match header_value(headers, CONTENT_SHA256) {
            Some(h) => match h.as_str() {
                "UNSIGNED-PAYLOAD" | "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => h,
                x if x.len() == 64 && x.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    // A form body was read to find its Action: it must be what is signed.
                    if let Some(b) = body
                        && !x.eq_ignore_ascii_case(&sigv4::sha256_hex(b))
                    {
                        return Err("x-amz-content-sha256 is not the hash of the body".into());
                    }
                    h
                }
                x if x.starts_with("STREAMING-") => {
                    return Err(format!(
                        "the body is aws-chunked with per-chunk signatures ({x}), which moat does not re-sign; configure the SDK to send UNSIGNED-PAYLOAD or a whole-body hash (AWS SDK for Java 2: S3Configuration chunkedEncodingEnabled(false); Java 1: disableChunkedEncoding())"
                    ));
                }
                _ => return Err("x-amz-content-sha256 is not a payload hash".into()),
            },
            None => match body {
                Some(b) => sigv4::sha256_hex(b),
                None => return Err("the request body could not be read to hash it".into()),
            },
        };
        let canonical_uri = if is_s3(a.service) {
            if path.is_empty() {
                "/".to_string()
            } else {
                path.to_string()
            }
        } else {
            sigv4::canonical_uri(path)
        };
        let canonical_query = sigv4::canonical_query(query);
        // The signed headers' values as received; the token's checked and then swapped.
        let mut values: Vec<(String, String)> = Vec::new();
        let mut token_signed = false;
        for name in &a.signed {
            let v = if name == "host" {
                client_host.to_string()
            } else {
                header_value(headers, name)
                    .ok_or_else(|| format!("the signed header {name} is missing"))?
            };
            if name == TOKEN {
                token_signed = true;
            }
            values.push((name.clone(), v));
        }
        let scope = format!("{}/{}/{}/aws4_request", a.date, a.region, a.service);
        let sign_with = |vals: &[(String, String)], secret: &str| {
            let pairs: Vec<(&str, &str)> =
                vals.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let (ch, sh) = sigv4::canonical_headers(&pairs);
            let cr =
                format!("{method}\n{canonical_uri}\n{canonical_query}\n{ch}\n{sh}\n{payload_hash}");
            let sts = format!(
                "{}\n{date_time}\n{scope}\n{}",
                sigv4::ALGORITHM,
                sigv4::sha256_hex(cr.as_bytes())
            );
            let key = sigv4::signing_key(secret, a.date, a.region, a.service);
            (sigv4::hex(&sigv4::hmac_sha256(&key, sts.as_bytes())), sh)
        };
        let (expect, _) = sign_with(&values, &self.ph_secret);
        if !bool::from(expect.as_bytes().ct_eq(a.signature.as_bytes())) {
            return Err(
                "the request's SigV4 signature does not match this run's placeholder credentials (was the request changed after signing?)".into(),
            );
        }
        if let Some(t) = header_value(headers, TOKEN)
            && !bool::from(t.as_bytes().ct_eq(self.ph_token.as_bytes()))
        {
            return Err("x-amz-security-token is not this run's placeholder token".into());
        }
        // The same request, with the real token and the Host it goes out with.
        for (n, v) in values.iter_mut() {
            if n == "host" {
                *v = out_host.to_string();
            } else if n == TOKEN {
                *v = self.token.clone();
            }
        }
        if !token_signed {
            values.push((TOKEN.to_string(), self.token.clone()));
        }
        let (sig, signed_headers) = sign_with(&values, &self.secret);
        let authorization = format!(
            "{} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={sig}",
            sigv4::ALGORITHM,
            self.key_id
        );
        let mut tok = HeaderValue::from_str(&self.token).map_err(|_| "token".to_string())?;
        tok.set_sensitive(true);
        headers.insert(TOKEN, tok);
        let mut av = HeaderValue::from_str(&authorization).map_err(|_| "auth".to_string())?;
        av.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, av);
        Ok(Some(Signed {
            service: a.service.to_string(),
            region: a.region.to_string(),
            action: None,
        }))
    }
}

/// THREATS A8: names under the AWS domains that lead to servers AWS customers run (EC2
/// instances, load balancers, S3 website endpoints, API Gateway and AppSync APIs, Elastic
/// Beanstalk environments, VPC endpoint services, Cloud9 previews, EMR and SageMaker
/// notebooks, Lambda function URLs): anyone can get one, so a request there is never signed
/// with the run's session (it passes as the client sent it, with the placeholder), and an
/// AWS grant does not reach it under strict policy. Written after the public-suffix list's
/// AWS entries; a label that also names an AWS API counts as customer-run (fails closed).
pub fn customer_host(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    // Whole domains where every name is a customer's.
    for d in [
        "on.aws",
        "elasticbeanstalk.com",
        "elasticbeanstalk.com.cn",
        "sagemaker.aws",
        "awsapprunner.com",
        "amplifyapp.com",
        "awsglobalaccelerator.com",
    ] {
        if h == d || h.ends_with(&format!(".{d}")) {
            return true;
        }
    }
    let Some(rest) = h
        .strip_suffix(".amazonaws.com")
        .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
    else {
        return false;
    };
    rest.split('.').enumerate().any(|(i, l)| {
        // `elasticbeanstalk.REGION` is the service's API; a name in front is an environment.
        (l == "elasticbeanstalk" && i > 0)
            || l == "compute"
            || (l.starts_with("compute-") && l[8..].bytes().all(|b| b.is_ascii_digit()))
            || matches!(
                l,
                "elb"
                    | "cloud9"
                    | "execute-api"
                    | "appsync-api"
                    | "appsync-realtime-api"
                    | "eb"
                    | "vpce"
                    | "emrappui-prod"
                    | "emrnotebooks-prod"
                    | "emrstudio-prod"
                    | "analytics-gateway"
            )
            || l.starts_with("s3-website")
    })
}

/// The API action of a request, for the trace and `service:Action` rules: `X-Amz-Target`
/// (JSON APIs: `AmazonSSM.GetParameter`), an `Action=` query or form parameter (query APIs:
/// STS, IAM, EC2; names and values percent-decoded, `+` a space), or for S3 the method and
/// the path's shape. Err: `Action` appears more than once (in query and body together).
pub fn action(
    service: &str,
    host: &str,
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Result<Option<String>, String> {
    if let Some(t) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return Ok(t.rsplit('.').next().map(String::from));
    }
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut found: Vec<String> = action_params(query);
    if let Some(b) = body {
        found.extend(action_params(&String::from_utf8_lossy(b)));
    }
    match found.len() {
        0 => {}
        1 => return Ok(found.pop()),
        _ => {
            return Err(
                "the request names its Action more than once, so moat cannot tell which one AWS would run"
                    .into(),
            );
        }
    }
    // REST APIs whose answer is a credential (see [`refuse_credential_answers`]).
    let p = path.trim_end_matches('/').to_ascii_lowercase();
    match service.to_ascii_lowercase().as_str() {
        "codeartifact" if p == "/v1/authorization-token" => {
            return Ok(Some("GetAuthorizationToken".into()));
        }
        "sso" | "awsssoportal" if p == "/federation/credentials" => {
            return Ok(Some("GetRoleCredentials".into()));
        }
        _ => {}
    }
    if !is_s3(service) {
        return Ok(None);
    }
    Ok(s3_action(host, method, path, query, headers))
}

/// The values of every `Action` parameter (name compared case-insensitively) in a query
/// string or form body, decoded.
fn action_params(s: &str) -> Vec<String> {
    s.split('&')
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            form_decode(k)
                .eq_ignore_ascii_case("action")
                .then(|| form_decode(v))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Is this an S3 path-style endpoint (the bucket in the path)? By the host's shape:
/// `s3`, `s3-…` (`s3-fips`, `s3-external-1`, `s3-us-west-2`) first, followed only by
/// `dualstack` and region labels, under the AWS domains. A virtual-hosted bucket (even one
/// named `s3.something`) has other labels in front of its endpoint.
fn s3_path_style(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    let Some(rest) = h
        .strip_suffix(".amazonaws.com")
        .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
        .or_else(|| h.strip_suffix(".api.aws"))
    else {
        return false;
    };
    let mut labels = rest.split('.');
    let first = labels.next().unwrap_or("");
    (first == "s3" || first.starts_with("s3-"))
        && labels.all(|l| {
            l == "dualstack"
                || (l.contains('-')
                    && !l.starts_with("s3")
                    && l.ends_with(|c: char| c.is_ascii_digit())
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        })
}

fn s3_action(
    host: &str,
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
) -> Option<String> {
    let has = |k: &str| query.split('&').any(|p| p.split('=').next() == Some(k));
    // Path style (s3.region..., s3-fips..., s3.dualstack...) names the bucket in the path.
    let virtual_host = !s3_path_style(host);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (bucket, key) = if virtual_host {
        (true, !segs.is_empty())
    } else {
        (!segs.is_empty(), segs.len() > 1)
    };
    let m = method.to_ascii_uppercase();
    let a = match (m.as_str(), bucket, key) {
        ("GET", false, _) => "ListBuckets",
        ("GET", true, false) if has("list-type") => "ListObjectsV2",
        ("GET", true, false) if has("uploads") => "ListMultipartUploads",
        ("GET", true, false) if has("location") => "GetBucketLocation",
        ("GET", true, false) => "ListObjects",
        ("HEAD", true, false) => "HeadBucket",
        ("PUT", true, false) => "CreateBucket",
        ("DELETE", true, false) => "DeleteBucket",
        ("POST", true, false) if has("delete") => "DeleteObjects",
        ("GET", true, true) if has("uploadId") => "ListParts",
        ("GET", true, true) => "GetObject",
        ("HEAD", true, true) => "HeadObject",
        ("PUT", true, true) if has("partNumber") => "UploadPart",
        ("PUT", true, true) if headers.contains_key("x-amz-copy-source") => "CopyObject",
        ("PUT", true, true) => "PutObject",
        ("POST", true, true) if has("uploads") => "CreateMultipartUpload",
        ("POST", true, true) if has("uploadId") => "CompleteMultipartUpload",
        ("DELETE", true, true) if has("uploadId") => "AbortMultipartUpload",
        ("DELETE", true, true) => "DeleteObject",
        _ => return None,
    };
    Some(a.to_string())
}

/// The proxy's step for a request to a host the signer covers: read the body when it must
/// be hashed, verify, re-sign. Ok((body, None)): unsigned, passed as sent. Err: the 403's
/// message.
pub async fn apply(
    signer: &Signer,
    method: &str,
    path_and_query: &str,
    client_host: &str,
    out_host: &str,
    headers: &mut HeaderMap,
    body: crate::proxy::Body,
) -> Result<(crate::proxy::Body, Option<Signed>), String> {
    use http_body_util::BodyExt;
    if !headers.contains_key(http::header::AUTHORIZATION) {
        // Still refuse a presigned query (checked inside).
        signer.resign(method, path_and_query, client_host, out_host, headers, None)?;
        return Ok((body, None));
    }
    // A form body (query APIs: IAM, STS) is always read: its Action decides the rules.
    let (body, bytes) = if needs_body(headers) || is_form(headers) {
        let b = read_body(body).await?;
        let full = http_body_util::Full::new(b.clone())
            .map_err(never)
            .boxed_unsync();
        (full, Some(b))
    } else {
        (body, None)
    };
    let host = client_host.split(':').next().unwrap_or(client_host);
    let signed = signer.resign(
        method,
        path_and_query,
        client_host,
        out_host,
        headers,
        bytes.as_deref(),
    )?;
    let signed = match signed {
        Some(mut s) => {
            s.action = action(
                &s.service,
                host,
                method,
                path_and_query,
                headers,
                bytes.as_deref(),
            )?;
            refuse_credential_answers(&s.service, s.action.as_deref())?;
            Some(s)
        }
        None => None,
    };
    Ok((body, signed))
}

fn is_form(headers: &HeaderMap) -> bool {
    headers.get_all(http::header::CONTENT_TYPE).iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    })
}

/// Actions whose answer is a usable credential (THREATS B3: it would reach the container):
/// new STS sessions, IAM access keys and service passwords, SSO role credentials, Cognito
/// identity credentials and OpenID tokens, registry and cluster tokens.
/// Services whose action moat always works out (query and JSON protocols) are refused when it
/// did not; for the REST ones (`sso`, `codeartifact`) the credential action is found by path.
const CREDENTIAL_ACTIONS: &[(&str, &[&str])] = &[
    (
        "sts",
        &[
            "AssumeRole",
            "AssumeRoleWithWebIdentity",
            "AssumeRoleWithSAML",
            "AssumeRoot",
            "GetSessionToken",
            "GetFederationToken",
        ],
    ),
    (
        "iam",
        &[
            "CreateAccessKey",
            "CreateServiceSpecificCredential",
            "ResetServiceSpecificCredential",
        ],
    ),
    ("sso", &["GetRoleCredentials"]),
    ("awsssoportal", &["GetRoleCredentials"]),
    (
        "cognito-identity",
        &[
            "GetCredentialsForIdentity",
            "GetOpenIdToken",
            "GetOpenIdTokenForDeveloperIdentity",
        ],
    ),
    ("ecr", &["GetAuthorizationToken"]),
    ("ecr-public", &["GetAuthorizationToken"]),
    ("codeartifact", &["GetAuthorizationToken"]),
    (
        "redshift",
        &["GetClusterCredentials", "GetClusterCredentialsWithIAM"],
    ),
];

/// Refuse to sign an action whose answer is a credential; for those services an action
/// that could not be worked out is refused too (fail closed).
pub fn refuse_credential_answers(service: &str, action: Option<&str>) -> Result<(), String> {
    let service = service.to_ascii_lowercase();
    let service = service.as_str();
    let Some((_, actions)) = CREDENTIAL_ACTIONS
        .iter()
        .find(|(s, _)| s.eq_ignore_ascii_case(service))
    else {
        return Ok(());
    };
    match action {
        None if matches!(service, "sso" | "awsssoportal" | "codeartifact") => Ok(()),
        Some(a) if !actions.iter().any(|x| x.eq_ignore_ascii_case(a)) => Ok(()),
        Some(a) => Err(format!(
            "moat does not sign requests whose answer is a credential; {service}:{a} would hand a usable credential to the container. Get it outside the run and grant it instead"
        )),
        None => Err(format!(
            "moat could not determine the {service} action of this request, and some {service} actions answer with a credential, so it does not sign it"
        )),
    }
}

fn never(n: std::convert::Infallible) -> crate::proxy::BoxError {
    match n {}
}

/// The whole body, up to [`MAX_BODY`].
async fn read_body(mut body: crate::proxy::Body) -> Result<bytes::Bytes, String> {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| format!("the request body could not be read: {e}"))?;
        if let Ok(d) = f.into_data() {
            buf.extend_from_slice(&d);
            if buf.len() > MAX_BODY {
                return Err(format!(
                    "the request body is larger than {} KiB, so moat cannot hash it (no x-amz-content-sha256 header) or read its Action (a form body) to sign it; send x-amz-content-sha256, or a smaller form body",
                    MAX_BODY / 1024
                ));
            }
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    //! THREATS B3 (the placeholder is checked and only the run's own signed requests get
    //! the real key: a request signed with another key, changed after signing, or presigned
    //! is refused), A8 (no signing for hosts AWS customers run); the re-signed request is
    //! exactly what moat-secrets' signer (checked against AWS's suite) makes with the real
    //! key.
    use super::*;
    use moat_secrets::creds::{Credentials, Source};
    use moat_secrets::sigv4::{Payload, Request};

    const PH_KEY: &str = "ASIAPLACEHOLDER00001";
    const PH_SECRET: &str = "PlaceholderSecret0000000000000000000000a";
    const PH_TOKEN: &str = "placeholder-session-token-e2e";
    const KEY: &str = "ASIAREALKEY000000002";
    const SECRET: &str = "RealSecret-Canary-0000000000000000000000b";
    const TOKEN: &str = "real-session-token-Canary";

    fn record(ph_key: &str, ph_secret: &str) -> AwsSign {
        AwsSign {
            grant: "aws".into(),
            hosts: vec!["*.amazonaws.com".into(), "amazonaws.com".into()],
            placeholder_access_key_id: ph_key.into(),
            placeholder_secret_access_key: ph_secret.into(),
            placeholder_session_token: PH_TOKEN.into(),
            access_key_id: KEY.into(),
            secret_access_key: SECRET.into(),
            session_token: TOKEN.into(),
            expiration: None,
        }
    }

    fn signer() -> Signer {
        Signer::new(record(PH_KEY, PH_SECRET)).unwrap()
    }

    fn creds(k: &str, s: &str, t: &str) -> Credentials {
        Credentials::new(k, s, Some(t.into()), Source::Static)
    }

    fn when() -> std::time::SystemTime {
        sigv4::parse_amz_date("20261207T120000Z").unwrap()
    }

    /// A request as the CLI would send it, signed with `c`.
    fn signed_headers(req: &Request<'_>, c: &Credentials, region: &str, svc: &str) -> HeaderMap {
        let s = sigv4::sign(req, c, region, svc, when());
        let mut h = HeaderMap::new();
        for (n, v) in req.headers.iter().chain(s.headers.iter()) {
            h.append(
                http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h.remove(http::header::HOST);
        h
    }

    fn sts_request(body: &[u8]) -> Request<'_> {
        Request {
            method: "POST",
            path: "/",
            query: "",
            headers: vec![
                ("host".into(), "sts.us-east-1.amazonaws.com".into()),
                (
                    "content-type".into(),
                    "application/x-www-form-urlencoded; charset=utf-8".into(),
                ),
            ],
            payload: Payload::Bytes(body),
            content_sha256_header: false,
        }
    }

    #[test]
    fn a_placeholder_signed_request_is_signed_again_exactly_as_with_the_real_key() {
        let body = b"Action=GetCallerIdentity&Version=2011-06-15";
        let req = sts_request(body);
        let mut h = signed_headers(
            &req,
            &creds(PH_KEY, PH_SECRET, PH_TOKEN),
            "us-east-1",
            "sts",
        );
        let host = "sts.us-east-1.amazonaws.com";
        let s = signer()
            .resign("POST", "/", host, host, &mut h, Some(body))
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.service.as_str(), s.region.as_str()),
            ("sts", "us-east-1")
        );
        let want = sigv4::sign(&req, &creds(KEY, SECRET, TOKEN), "us-east-1", "sts", when());
        assert_eq!(h["authorization"].to_str().unwrap(), want.authorization);
        assert_eq!(h["x-amz-security-token"], TOKEN);
        let all = format!("{h:?}");
        assert!(!all.contains(PH_SECRET) && !all.contains(PH_TOKEN) && !all.contains(PH_KEY));
        assert_eq!(
            action("sts", host, "POST", "/", &h, Some(body))
                .unwrap()
                .as_deref(),
            Some("GetCallerIdentity")
        );
    }

    #[test]
    fn s3_unsigned_payload_and_raw_paths_are_signed_again() {
        for (path, hash) in [
            ("/bucket/dir/file%20name.bin", "UNSIGNED-PAYLOAD"),
            (
                "/bucket/k",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
        ] {
            let mk = || Request {
                method: "PUT",
                path,
                query: "",
                headers: vec![
                    ("host".into(), "s3.us-east-1.amazonaws.com".into()),
                    ("x-amz-content-sha256".into(), hash.into()),
                    ("content-md5".into(), "1B2M2Y8AsgTpgAmY7PhCfg==".into()),
                ],
                payload: if hash == "UNSIGNED-PAYLOAD" {
                    Payload::Unsigned
                } else {
                    Payload::Bytes(b"")
                },
                content_sha256_header: false,
            };
            // moat-secrets encodes the path once more (every service but S3); S3 signs the
            // path as sent, so the client's side is built from the decoded path.
            let decoded = path.replace("%20", " ");
            let mut client_req = mk();
            client_req.path = &decoded;
            let c = creds(PH_KEY, PH_SECRET, PH_TOKEN);
            let mut h = signed_headers(&client_req, &c, "us-east-1", "s3");
            let host = "s3.us-east-1.amazonaws.com";
            signer()
                .resign("PUT", path, host, host, &mut h, None)
                .unwrap()
                .unwrap();
            let want = sigv4::sign(
                &client_req,
                &creds(KEY, SECRET, TOKEN),
                "us-east-1",
                "s3",
                when(),
            );
            assert_eq!(
                h["authorization"].to_str().unwrap(),
                want.authorization,
                "{path}"
            );
            assert_eq!(
                action("s3", host, "PUT", path, &h, None)
                    .unwrap()
                    .as_deref(),
                Some("PutObject")
            );
        }
    }

    #[test]
    fn aws_suite_requests_verify_with_the_suite_key_as_placeholder() {
        // get-vanilla and post-x-www-form-urlencoded from AWS's suite (tests/sigv4-suite in
        // moat-secrets): signed with AKIDEXAMPLE, which here plays the placeholder.
        let s = Signer::new(record(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        ))
        .unwrap();
        let host = "example.amazonaws.com";
        let mut h = HeaderMap::new();
        h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        h.insert("authorization", HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"));
        let mut bad = h.clone();
        assert!(
            s.resign("GET", "/", host, host, &mut h, Some(b""))
                .unwrap()
                .is_some()
        );
        assert!(h["authorization"].to_str().unwrap().contains(&format!("Credential={KEY}/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, ")));
        // The same request to another path: the signature no longer verifies.
        assert!(
            s.resign("GET", "/x", host, host, &mut bad, Some(b""))
                .is_err()
        );

        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        h.insert("authorization", HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"));
        let mut tampered = h.clone();
        assert!(
            s.resign("POST", "/", host, host, &mut h, Some(b"Param1=value1"))
                .unwrap()
                .is_some()
        );
        let e = s
            .resign(
                "POST",
                "/",
                host,
                host,
                &mut tampered,
                Some(b"Param1=value2"),
            )
            .unwrap_err();
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn other_keys_changes_presigned_and_chunk_signed_requests_are_refused() {
        let body = b"Action=GetCallerIdentity&Version=2011-06-15";
        let host = "sts.us-east-1.amazonaws.com";
        let req = sts_request(body);
        // Another key (the real one, say, or the host's).
        let mut h = signed_headers(&req, &creds(KEY, SECRET, TOKEN), "us-east-1", "sts");
        let e = signer()
            .resign("POST", "/", host, host, &mut h, Some(body))
            .unwrap_err();
        assert!(e.contains("not this run's"), "{e}");
        // The placeholder id with a guessed secret.
        let mut h = signed_headers(&req, &creds(PH_KEY, SECRET, PH_TOKEN), "us-east-1", "sts");
        let e = signer()
            .resign("POST", "/", host, host, &mut h, Some(body))
            .unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        // A header changed after signing.
        let mut h = signed_headers(
            &req,
            &creds(PH_KEY, PH_SECRET, PH_TOKEN),
            "us-east-1",
            "sts",
        );
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert!(
            signer()
                .resign("POST", "/", host, host, &mut h, Some(body))
                .is_err()
        );
        // A token that is not the placeholder, even correctly signed.
        let mut h = signed_headers(&req, &creds(PH_KEY, PH_SECRET, "other"), "us-east-1", "sts");
        let e = signer()
            .resign("POST", "/", host, host, &mut h, Some(body))
            .unwrap_err();
        assert!(e.contains("placeholder token"), "{e}");
        // Presigned.
        let mut h = HeaderMap::new();
        let e = signer()
            .resign(
                "GET",
                "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=x&X-Amz-Signature=y",
                "s3.amazonaws.com",
                "s3.amazonaws.com",
                &mut h,
                None,
            )
            .unwrap_err();
        assert!(e.contains("presigned"), "{e}");
        // Chunk-signed aws-chunked: refused with the setting that avoids it.
        let s3 = Request {
            method: "PUT",
            path: "/b/k",
            query: "",
            headers: vec![
                ("host".into(), "s3.us-east-1.amazonaws.com".into()),
                (
                    "x-amz-content-sha256".into(),
                    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD".into(),
                ),
            ],
            payload: Payload::Unsigned,
            content_sha256_header: false,
        };
        let mut h = signed_headers(&s3, &creds(PH_KEY, PH_SECRET, PH_TOKEN), "us-east-1", "s3");
        let e = signer()
            .resign(
                "PUT",
                "/b/k",
                "s3.us-east-1.amazonaws.com",
                "s3.us-east-1.amazonaws.com",
                &mut h,
                None,
            )
            .unwrap_err();
        assert!(e.contains("chunkedEncodingEnabled(false)"), "{e}");
        // SigV2.
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("AWS AKIA:sig"));
        assert!(
            signer()
                .resign("GET", "/", host, host, &mut h, None)
                .is_err()
        );
        // No Authorization: passes untouched.
        let mut h = HeaderMap::new();
        assert!(
            signer()
                .resign("GET", "/", host, host, &mut h, None)
                .unwrap()
                .is_none()
        );
        assert!(h.is_empty());
    }

    #[test]
    fn covers_https_aws_hosts_only() {
        let s = signer();
        assert!(s.covers("sts.us-east-1.amazonaws.com", 443, true));
        assert!(s.covers("bucket.s3.dualstack.us-east-1.amazonaws.com", 443, true));
        assert!(s.covers("s3-fips.us-east-1.amazonaws.com", 443, true));
        assert!(!s.covers("sts.us-east-1.amazonaws.com", 80, false));
        assert!(!s.covers("sts.us-east-1.amazonaws.com", 8443, true));
        assert!(!s.covers("amazonaws.com.evil.example", 443, true));
        // Servers AWS customers run (THREATS A8): never signed for.
        for h in [
            "ec2-203-0-113-5.compute-1.amazonaws.com",
            "ec2-203-0-113-5.eu-west-1.compute.amazonaws.com",
            "my-lb-123.us-east-1.elb.amazonaws.com",
            "bucket.s3-website-us-east-1.amazonaws.com",
            "x.vfs.cloud9.us-east-1.amazonaws.com",
            "bucket.s3-website.eu-west-1.amazonaws.com",
            "abc123.execute-api.us-east-1.amazonaws.com",
            "abc123.execute-api.cn-north-1.amazonaws.com.cn",
            "abc.appsync-api.us-east-1.amazonaws.com",
            "abc.appsync-realtime-api.us-east-1.amazonaws.com",
            "env.us-east-1.elasticbeanstalk.amazonaws.com",
            "env.cn-north-1.eb.amazonaws.com.cn",
            "vpce-0123-abcd.vpce-svc-0123.us-east-1.vpce.amazonaws.com",
            "j-1.emrappui-prod.us-east-1.amazonaws.com",
            "x.emrnotebooks-prod.us-east-1.amazonaws.com",
            "x.emrstudio-prod.us-east-1.amazonaws.com",
            "x.analytics-gateway.us-east-1.amazonaws.com",
            "ec2-1-2-3-4.cn-north-1.compute.amazonaws.com.cn",
            "ELB.us-east-1.ELB.amazonaws.com.",
            // Outside the AWS API domains, should a grant ever list them.
            "abc123.lambda-url.us-east-1.on.aws",
            "env.us-east-1.elasticbeanstalk.com",
            "x.notebook.us-east-1.sagemaker.aws",
            "x.us-east-1.awsapprunner.com",
            "main.x.amplifyapp.com",
        ] {
            assert!(customer_host(h), "{h}");
            assert!(!s.covers(h, 443, true), "{h}");
        }
        assert!(s.covers("ec2.us-east-1.amazonaws.com", 443, true));
        for h in [
            "apigateway.us-east-1.amazonaws.com",
            "appsync.us-east-1.amazonaws.com",
            "elasticbeanstalk.us-east-1.amazonaws.com",
            "lambda.us-east-1.amazonaws.com",
            "sts.cn-north-1.amazonaws.com.cn",
            "bucket.s3.us-east-1.amazonaws.com",
            "bucket.s3-accesspoint.us-east-1.amazonaws.com",
        ] {
            assert!(!customer_host(h), "{h}");
            assert!(s.covers(h, 443, true) || h.ends_with(".cn"), "{h}");
        }
        assert!(s.covers("elasticloadbalancing.us-east-1.amazonaws.com", 443, true));
        assert!(Signer::new(record(KEY, PH_SECRET)).is_err());
    }

    #[test]
    fn s3_actions_from_method_and_path_shape() {
        let h = HeaderMap::new();
        let a = |host: &str, m: &str, pq: &str| action("s3", host, m, pq, &h, None).unwrap();
        assert_eq!(
            a("s3.us-east-1.amazonaws.com", "GET", "/").as_deref(),
            Some("ListBuckets")
        );
        assert_eq!(
            a("b.s3.us-east-1.amazonaws.com", "GET", "/k/x").as_deref(),
            Some("GetObject")
        );
        assert_eq!(
            a("b.s3.us-east-1.amazonaws.com", "GET", "/?list-type=2").as_deref(),
            Some("ListObjectsV2")
        );
        assert_eq!(
            a("s3.us-east-1.amazonaws.com", "POST", "/b/k?uploads").as_deref(),
            Some("CreateMultipartUpload")
        );
        assert_eq!(
            a(
                "s3.us-east-1.amazonaws.com",
                "PUT",
                "/b/k?partNumber=1&uploadId=x"
            )
            .as_deref(),
            Some("UploadPart")
        );
        let mut t = HeaderMap::new();
        t.insert(
            "x-amz-target",
            HeaderValue::from_static("AmazonSSM.GetParameter"),
        );
        assert_eq!(
            action("ssm", "ssm.us-east-1.amazonaws.com", "POST", "/", &t, None)
                .unwrap()
                .as_deref(),
            Some("GetParameter")
        );
    }

    /// THREATS A5 (review of #23: `deny service:Action` walked around): `Action` is read
    /// percent-decoded from query and form, twice is refused; S3 path style is told from the
    /// host's shape, so a bucket named `s3.something` is still virtual-hosted.
    #[test]
    fn actions_are_decoded_and_s3_path_style_is_told_by_host_shape() {
        let h = HeaderMap::new();
        let q = |pq: &str, body: Option<&[u8]>| {
            action("iam", "iam.amazonaws.com", "POST", pq, &h, body)
        };
        assert_eq!(
            q("/", Some(b"Action=%44eleteRole&RoleName=x"))
                .unwrap()
                .as_deref(),
            Some("DeleteRole")
        );
        assert_eq!(
            q("/", Some(b"%41ction=Delete%52ole")).unwrap().as_deref(),
            Some("DeleteRole")
        );
        assert_eq!(
            q("/?action=DeleteRole", None).unwrap().as_deref(),
            Some("DeleteRole")
        );
        assert_eq!(q("/", Some(b"Version=2010-05-08")).unwrap(), None);
        for (pq, body) in [
            ("/", &b"Action=ListRoles&Action=DeleteRole"[..]),
            ("/?Action=ListRoles", &b"Action=DeleteRole"[..]),
            ("/", &b"Action=ListRoles&%41ction=DeleteRole"[..]),
        ] {
            let e = q(pq, Some(body)).unwrap_err();
            assert!(e.contains("more than once"), "{e}");
        }
        assert_eq!(form_decode("a+b%2Fc%zz%4"), "a b/c%zz%4");
        for path in [
            "s3.amazonaws.com",
            "s3.us-east-1.amazonaws.com",
            "s3-us-west-2.amazonaws.com",
            "s3-external-1.amazonaws.com",
            "s3-fips.us-gov-west-1.amazonaws.com",
            "s3.dualstack.eu-west-1.amazonaws.com",
            "s3-fips.dualstack.us-east-1.amazonaws.com",
            "s3.cn-north-1.amazonaws.com.cn",
        ] {
            assert!(s3_path_style(path), "{path}");
        }
        for vhost in [
            "s3.something.s3.us-east-1.amazonaws.com",
            "s3.us-east-1.s3.us-east-1.amazonaws.com",
            "s3-bucket.s3.amazonaws.com",
            "bucket.s3.us-east-1.amazonaws.com",
            "s3.example.com",
        ] {
            assert!(!s3_path_style(vhost), "{vhost}");
        }
        let s3 = |host: &str, m: &str, pq: &str| action("s3", host, m, pq, &h, None).unwrap();
        assert_eq!(
            s3("s3.x.s3.us-east-1.amazonaws.com", "DELETE", "/k").as_deref(),
            Some("DeleteObject")
        );
        assert_eq!(
            s3("s3.x.s3.us-east-1.amazonaws.com", "DELETE", "/").as_deref(),
            Some("DeleteBucket")
        );
    }

    /// THREATS B4/B5 (review of #23): an action whose answer is a usable credential is never
    /// signed, nor, for the services that have one, an action moat could not work out.
    #[test]
    fn credential_answers_are_not_signed() {
        for (svc, act) in [
            ("sts", "AssumeRole"),
            ("sts", "assumerolewithwebidentity"),
            ("sts", "AssumeRoleWithSAML"),
            ("sts", "GetSessionToken"),
            ("sts", "GetFederationToken"),
            ("STS", "AssumeRoot"),
            ("iam", "CreateAccessKey"),
            ("iam", "CreateServiceSpecificCredential"),
            ("sso", "GetRoleCredentials"),
            ("cognito-identity", "GetCredentialsForIdentity"),
            ("cognito-identity", "GetOpenIdToken"),
            ("cognito-identity", "GetOpenIdTokenForDeveloperIdentity"),
            ("ecr", "GetAuthorizationToken"),
            ("codeartifact", "GetAuthorizationToken"),
            ("redshift", "GetClusterCredentials"),
            ("redshift", "GetClusterCredentialsWithIAM"),
            ("iam", "ResetServiceSpecificCredential"),
            ("ecr-public", "GetAuthorizationToken"),
            ("awsssoportal", "GetRoleCredentials"),
        ] {
            let e = refuse_credential_answers(svc, Some(act)).unwrap_err();
            assert!(
                e.starts_with("moat does not sign requests whose answer is a credential"),
                "{e}"
            );
        }
        for svc in ["sts", "iam", "cognito-identity", "ecr", "redshift"] {
            assert!(refuse_credential_answers(svc, None).is_err(), "{svc}");
        }
        for (svc, act) in [
            ("sts", Some("GetCallerIdentity")),
            ("iam", Some("ListRoles")),
            ("s3", Some("GetObject")),
            ("s3", None),
            ("codeartifact", None),
        ] {
            assert!(refuse_credential_answers(svc, act).is_ok(), "{svc} {act:?}");
        }
        let h = HeaderMap::new();
        assert_eq!(
            action(
                "codeartifact",
                "codeartifact.us-east-1.amazonaws.com",
                "POST",
                "/v1/authorization-token?domain=d",
                &h,
                None
            )
            .unwrap()
            .as_deref(),
            Some("GetAuthorizationToken")
        );
    }

    /// A request signed by hand over `payload_hash` as the client claims it.
    fn hand_signed(path: &str, host: &str, payload_hash: &str, secret: &str) -> HeaderMap {
        let date = "20261207T120000Z";
        let pairs = [
            ("host", host),
            ("x-amz-content-sha256", payload_hash),
            ("x-amz-date", date),
            ("x-amz-security-token", PH_TOKEN),
        ];
        let (ch, sh) = sigv4::canonical_headers(&pairs);
        let cr = format!("PUT\n{path}\n\n{ch}\n{sh}\n{payload_hash}");
        let scope = "20261207/us-east-1/s3/aws4_request";
        let sts = format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            sigv4::sha256_hex(cr.as_bytes())
        );
        let k = sigv4::signing_key(secret, "20261207", "us-east-1", "s3");
        let sig = sigv4::hex(&sigv4::hmac_sha256(&k, sts.as_bytes()));
        let mut h = HeaderMap::new();
        for (n, v) in &pairs[1..] {
            h.insert(*n, HeaderValue::from_str(v).unwrap());
        }
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!(
                "AWS4-HMAC-SHA256 Credential={PH_KEY}/{scope}, SignedHeaders={sh}, Signature={sig}"
            ))
            .unwrap(),
        );
        h
    }

    #[test]
    fn unsigned_streaming_trailers_pass_and_are_signed_again() {
        let host = "b.s3.us-east-1.amazonaws.com";
        let hash = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
        let mut h = hand_signed("/k", host, hash, PH_SECRET);
        let s = signer()
            .resign("PUT", "/k", host, host, &mut h, None)
            .unwrap()
            .unwrap();
        assert_eq!(s.service, "s3");
        assert_eq!(h["x-amz-content-sha256"], hash);
        let real = h["authorization"].to_str().unwrap().to_string();
        let sig = |a: &str| a.rsplit("Signature=").next().unwrap().to_string();
        assert!(
            real.starts_with(&format!("AWS4-HMAC-SHA256 Credential={KEY}/")),
            "{real}"
        );
        // The same canonical request with the real token, signed with the real key.
        let pairs = [
            ("host", host),
            ("x-amz-content-sha256", hash),
            ("x-amz-date", "20261207T120000Z"),
            ("x-amz-security-token", TOKEN),
        ];
        let (ch, sh) = sigv4::canonical_headers(&pairs);
        let cr = format!("PUT\n/k\n\n{ch}\n{sh}\n{hash}");
        let sts = format!(
            "AWS4-HMAC-SHA256\n20261207T120000Z\n20261207/us-east-1/s3/aws4_request\n{}",
            sigv4::sha256_hex(cr.as_bytes())
        );
        let k = sigv4::signing_key(SECRET, "20261207", "us-east-1", "s3");
        assert_eq!(
            sig(&real),
            sigv4::hex(&sigv4::hmac_sha256(&k, sts.as_bytes()))
        );
    }

    #[test]
    fn bodies_without_a_payload_header_are_hashed_up_to_the_limit() {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let big = vec![b'a'; MAX_BODY + 1];
        let body = http_body_util::Full::new(bytes::Bytes::from(big))
            .map_err(never)
            .boxed_unsync();
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=x/y/z/w/aws4_request, SignedHeaders=host, Signature=0",
            ),
        );
        let host = "ssm.us-east-1.amazonaws.com";
        let e = rt
            .block_on(apply(&signer(), "POST", "/", host, host, &mut h, body))
            .err()
            .unwrap();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
        // Within the limit, the body is read, hashed and handed on whole.
        let body = b"{\"Name\":\"/p\"}";
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: vec![
                ("host".into(), host.into()),
                ("x-amz-target".into(), "AmazonSSM.GetParameter".into()),
            ],
            payload: Payload::Bytes(body),
            content_sha256_header: false,
        };
        let mut h = signed_headers(
            &req,
            &creds(PH_KEY, PH_SECRET, PH_TOKEN),
            "us-east-1",
            "ssm",
        );
        let b = http_body_util::Full::new(bytes::Bytes::from_static(body))
            .map_err(never)
            .boxed_unsync();
        let (b, s) = rt
            .block_on(apply(&signer(), "POST", "/", host, host, &mut h, b))
            .unwrap();
        assert_eq!(s.unwrap().action.as_deref(), Some("GetParameter"));
        let got = rt.block_on(b.collect()).unwrap().to_bytes();
        assert_eq!(&got[..], body);
    }
}
