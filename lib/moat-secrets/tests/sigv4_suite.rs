//! AWS's published SigV4 test suite (tests/sigv4-suite, see its README): every case's
//! canonical request, string to sign and Authorization header, byte for byte.

use moat_secrets::creds::{Credentials, Source};
use moat_secrets::secret::Secret;
use moat_secrets::sigv4::{self, Payload, Request};
use std::path::{Path, PathBuf};

const ACCESS_KEY: &str = "AKIDEXAMPLE";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

struct Parsed {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Request line, headers (white-space-led lines continue the previous header), blank line, body.
fn parse_req(raw: &str) -> Parsed {
    let (head, body) = raw.split_once("\n\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let request_line = lines.next().expect("request line");
    let (method, rest) = request_line.split_once(' ').expect("method");
    let target = &rest[..rest.rfind(' ').expect("HTTP version")];
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            let last = headers.last_mut().expect("continuation after a header");
            last.1.push(' ');
            last.1.push_str(line);
            continue;
        }
        let (n, v) = line.split_once(':').expect("header line");
        headers.push((n.to_string(), v.to_string()));
    }
    Parsed {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        headers,
        body: body.as_bytes().to_vec(),
    }
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sigv4-suite");
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "req") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn read(p: &Path, ext: &str) -> String {
    std::fs::read_to_string(p.with_extension(ext)).unwrap()
}

#[test]
fn published_suite_cases_sign_byte_for_byte() {
    let cases = cases();
    assert!(cases.len() >= 30, "fixtures missing: {}", cases.len());
    let mut failures = Vec::new();
    for req_path in &cases {
        let name = req_path.file_stem().unwrap().to_string_lossy().to_string();
        let req = parse_req(&read(req_path, "req"));
        let token = std::fs::read_to_string(req_path.with_extension("token")).ok();
        let creds = Credentials::new(
            ACCESS_KEY,
            SECRET_KEY,
            token.map(Secret::from),
            Source::Static,
        );
        let date = req
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-date"))
            .map(|(_, v)| v.clone())
            .expect("X-Amz-Date");
        let when = sigv4::parse_amz_date(&date).expect("date");
        let signed = sigv4::sign(
            &Request {
                method: &req.method,
                path: &req.path,
                query: &req.query,
                headers: req.headers.clone(),
                payload: Payload::Bytes(&req.body),
                content_sha256_header: false,
            },
            &creds,
            "us-east-1",
            "service",
            when,
        );
        for (what, got, want) in [
            ("creq", &signed.canonical_request, read(req_path, "creq")),
            ("sts", &signed.string_to_sign, read(req_path, "sts")),
            ("authz", &signed.authorization, read(req_path, "authz")),
        ] {
            if *got != want {
                failures.push(format!("{name} {what}:\n got: {got:?}\nwant: {want:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn session_token_is_added_and_signed() {
    let creds = Credentials::new(
        ACCESS_KEY,
        SECRET_KEY,
        Some(Secret::new("tok")),
        Source::Static,
    );
    let when = sigv4::parse_amz_date("20150830T123600Z").unwrap();
    let signed = sigv4::sign(
        &Request {
            method: "GET",
            path: "/",
            query: "",
            headers: vec![("host".into(), "example.amazonaws.com".into())],
            payload: Payload::Unsigned,
            content_sha256_header: true,
        },
        &creds,
        "us-east-1",
        "s3",
        when,
    );
    let names: Vec<&str> = signed.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "x-amz-date",
            "x-amz-security-token",
            "x-amz-content-sha256",
            "authorization"
        ]
    );
    assert!(
        signed.canonical_request.ends_with(
            "host;x-amz-content-sha256;x-amz-date;x-amz-security-token\nUNSIGNED-PAYLOAD"
        )
    );
    assert!(!signed.authorization.contains(SECRET_KEY));
}
