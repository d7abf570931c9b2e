//! What STS and SSM calls share: where a service's endpoint is (`AWS_ENDPOINT_URL_<SERVICE>`,
//! `AWS_ENDPOINT_URL`, else the regional AWS host), signing and sending one request, and
//! turning an AWS error answer into a message that carries AWS's code and message, never a
//! credential.

use crate::creds::Credentials;
use crate::env::Env;
use crate::http::{HttpClient, HttpError, Response, origin};
use crate::sigv4;
use bytes::Bytes;
use http_body_util::Full;
use std::time::SystemTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Sts,
    Ssm,
    /// Global; only used to set up test servers and for checks.
    Iam,
}

impl Service {
    /// The signing name, also the host prefix.
    pub fn name(self) -> &'static str {
        match self {
            Service::Sts => "sts",
            Service::Ssm => "ssm",
            Service::Iam => "iam",
        }
    }
    fn env_suffix(self) -> &'static str {
        match self {
            Service::Sts => "STS",
            Service::Ssm => "SSM",
            Service::Iam => "IAM",
        }
    }
}

/// A service endpoint: base URL and the region requests are signed for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub service: Service,
    pub url: http::Uri,
    pub region: String,
}

impl Endpoint {
    /// `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL_SSM`, then `AWS_ENDPOINT_URL`, else
    /// `https://<service>.<region>.amazonaws.com`.
    pub fn resolve(env: &Env, service: Service, region: &str) -> Result<Endpoint, HttpError> {
        let var = format!("AWS_ENDPOINT_URL_{}", service.env_suffix());
        let url = match env.get(&var).or_else(|| env.get("AWS_ENDPOINT_URL")) {
            Some(u) => u.to_string(),
            None if service == Service::Iam => "https://iam.amazonaws.com".to_string(),
            None => format!("https://{}.{region}.amazonaws.com", service.name()),
        };
        Self::new(service, &url, region)
    }

    pub fn new(service: Service, url: &str, region: &str) -> Result<Endpoint, HttpError> {
        let bad = || HttpError::Endpoint(url.to_string());
        let uri: http::Uri = url.trim_end_matches('/').parse().map_err(|_| bad())?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(bad()),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad());
        }
        Ok(Endpoint {
            service,
            url: uri,
            region: region.to_string(),
        })
    }

    /// `host[:port]` as the Host header must say it.
    fn host_header(&self) -> String {
        self.url
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default()
    }

    fn path(&self) -> &str {
        match self.url.path() {
            "" => "/",
            p => p,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error(transparent)]
    Http(#[from] HttpError),
    /// AWS answered with an error: `{code}: {message}` as AWS wrote them.
    #[error("{service} {action} failed: {code}: {message}")]
    Service {
        service: &'static str,
        action: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{service} {action}: unexpected answer from {endpoint}: {what}")]
    Response {
        service: &'static str,
        action: &'static str,
        endpoint: String,
        what: String,
    },
}

impl AwsError {
    /// AWS's error code (`AccessDenied`, `ParameterNotFound`), when AWS gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn exit_code(&self) -> i32 {
        use moat_core::exit;
        match self {
            AwsError::Http(e) => e.exit_code(),
            AwsError::Service { code, status, .. } => match code.as_str() {
                "AccessDenied"
                | "AccessDeniedException"
                | "UnauthorizedOperation"
                | "InvalidClientTokenId"
                | "UnrecognizedClientException"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "ExpiredTokenException" => exit::NOPERM,
                "ParameterNotFound" | "ParameterVersionNotFound" | "NoSuchEntity" => exit::NOINPUT,
                "ValidationError" | "ValidationException" | "MalformedPolicyDocument" => {
                    exit::DATAERR
                }
                _ if *status == 403 => exit::NOPERM,
                _ => exit::UNAVAILABLE,
            },
            AwsError::Response { .. } => exit::UNAVAILABLE,
        }
    }
}

impl From<AwsError> for moat_core::Error {
    fn from(e: AwsError) -> Self {
        moat_core::Error::new(e.exit_code(), e.to_string())
    }
}

const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// One Query-protocol call (a form POST of `Action`, `Version` and `params`), signed with
/// `creds`; the XML answer.
pub async fn query(
    client: &HttpClient,
    creds: &Credentials,
    endpoint: &Endpoint,
    action: &'static str,
    version: &str,
    params: &[(&str, &str)],
) -> Result<String, AwsError> {
    Ok(
        query_dated(client, creds, endpoint, action, version, params)
            .await?
            .0,
    )
}

/// [`query`], plus the server's `Date` header.
pub(crate) async fn query_dated(
    client: &HttpClient,
    creds: &Credentials,
    endpoint: &Endpoint,
    action: &'static str,
    version: &str,
    params: &[(&str, &str)],
) -> Result<(String, Option<SystemTime>), AwsError> {
    let mut form = vec![("Action", action), ("Version", version)];
    form.extend_from_slice(params);
    let resp = send(
        client,
        creds,
        Call {
            endpoint,
            action,
            content_type: FORM,
            target: None,
            body: encode_form(&form).into_bytes(),
        },
    )
    .await?;
    let date = resp
        .headers
        .get("date")
        .and_then(|d| d.to_str().ok())
        .and_then(parse_http_date);
    let text = String::from_utf8(resp.body.to_vec()).map_err(|_| AwsError::Response {
        service: endpoint.service.name(),
        action,
        endpoint: origin(&endpoint.url),
        what: "the answer is not UTF-8".into(),
    })?;
    Ok((text, date))
}

/// An HTTP `Date` (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc2822)
        .ok()
        .map(SystemTime::from)
}

/// `application/x-www-form-urlencoded` with AWS's escaping.
pub fn encode_form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                sigv4::uri_encode(k.as_bytes(), false),
                sigv4::uri_encode(v.as_bytes(), false)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Where an AWS request goes and what it says.
pub(crate) struct Call<'a> {
    pub endpoint: &'a Endpoint,
    pub action: &'static str,
    pub content_type: &'static str,
    pub target: Option<&'static str>,
    pub body: Vec<u8>,
}

/// Sign and send; a non-2xx answer becomes [`AwsError::Service`] when AWS said why.
pub(crate) async fn send(
    client: &HttpClient,
    creds: &Credentials,
    call: Call<'_>,
) -> Result<Response, AwsError> {
    let ep = call.endpoint;
    let host = ep.host_header();
    let mut headers = vec![
        ("host".to_string(), host),
        ("content-type".to_string(), call.content_type.to_string()),
    ];
    if let Some(t) = call.target {
        headers.push(("x-amz-target".to_string(), t.to_string()));
    }
    let signed = sigv4::sign(
        &sigv4::Request {
            method: "POST",
            path: ep.path(),
            query: "",
            headers: headers.clone(),
            payload: sigv4::Payload::Bytes(&call.body),
            content_sha256_header: false,
        },
        creds,
        &ep.region,
        ep.service.name(),
        SystemTime::now(),
    );
    let mut b = http::Request::builder()
        .method("POST")
        .uri(ep.url.clone())
        .header("accept", "*/*")
        .header("user-agent", concat!("moat/", env!("CARGO_PKG_VERSION")));
    for (n, v) in headers.iter().chain(signed.headers.iter()) {
        b = b.header(n.as_str(), v.as_str());
    }
    let req = b
        .body(Full::new(Bytes::from(call.body)))
        .map_err(|e| AwsError::Response {
            service: ep.service.name(),
            action: call.action,
            endpoint: origin(&ep.url),
            what: format!("building the request: {e}"),
        })?;
    let resp = client.send(req).await?;
    if resp.status.is_success() {
        return Ok(resp);
    }
    Err(error_from(ep, call.action, &resp))
}

/// An AWS error answer: JSON (`__type`, `message`) or XML (`<Code>`, `<Message>`).
fn error_from(ep: &Endpoint, action: &'static str, resp: &Response) -> AwsError {
    let text = String::from_utf8_lossy(&resp.body);
    let mut code = None;
    let mut message = None;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        code = v
            .get("__type")
            .or_else(|| v.get("code"))
            .and_then(|c| c.as_str())
            .map(|c| c.rsplit('#').next().unwrap_or(c).to_string());
        message = v
            .get("message")
            .or_else(|| v.get("Message"))
            .and_then(|m| m.as_str())
            .map(str::to_string);
    } else if text.trim_start().starts_with('<') {
        code = crate::xml::text(&text, "Code");
        message = crate::xml::text(&text, "Message");
    }
    if code.is_none()
        && let Some(h) = resp
            .headers
            .get("x-amzn-errortype")
            .and_then(|h| h.to_str().ok())
    {
        code = Some(h.split(':').next().unwrap_or(h).to_string());
    }
    match code {
        Some(code) => AwsError::Service {
            service: ep.service.name(),
            action,
            status: resp.status.as_u16(),
            code,
            message: message.unwrap_or_else(|| format!("HTTP {}", resp.status.as_u16())),
        },
        None => AwsError::Response {
            service: ep.service.name(),
            action,
            endpoint: origin(&ep.url),
            what: format!("HTTP {} without an AWS error code", resp.status.as_u16()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(moat_core::timefmt::rfc3339(t), "1994-11-06T08:49:37.000Z");
        assert!(parse_http_date("yesterday").is_none());
    }

    #[test]
    fn endpoint_order() {
        let env = Env::from_pairs([
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000/"),
            ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:6000"),
        ]);
        let sts = Endpoint::resolve(&env, Service::Sts, "eu-west-1").unwrap();
        assert_eq!(sts.url.to_string(), "http://127.0.0.1:5000/");
        assert_eq!(sts.host_header(), "127.0.0.1:5000");
        let ssm = Endpoint::resolve(&env, Service::Ssm, "eu-west-1").unwrap();
        assert_eq!(ssm.host_header(), "127.0.0.1:6000");
        let def = Endpoint::resolve(&Env::default(), Service::Sts, "eu-west-1").unwrap();
        assert_eq!(def.url.to_string(), "https://sts.eu-west-1.amazonaws.com/");
        assert!(Endpoint::new(Service::Sts, "ftp://x", "r").is_err());
        assert!(Endpoint::new(Service::Sts, "not a url", "r").is_err());
    }
}
