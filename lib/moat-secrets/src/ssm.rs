//! SSM Parameter Store over the JSON 1.1 protocol: `GetParameter` (decrypting SecureStrings)
//! for `ssm://` secrets, and `PutParameter` for setting one up. Values come back as
//! [`Secret`]; errors carry AWS's code (`ParameterNotFound`, `AccessDeniedException`).

use crate::aws::{self, AwsError, Endpoint};
use crate::creds::Credentials;
use crate::http::{HttpClient, origin};
use crate::secret::Secret;

const JSON: &str = "application/x-amz-json-1.1";

/// `ssm:GetParameter`: the parameter's value (decrypted when `with_decryption`).
pub async fn get_parameter(
    client: &HttpClient,
    creds: &Credentials,
    endpoint: &Endpoint,
    name: &str,
    with_decryption: bool,
) -> Result<Secret, AwsError> {
    let body = serde_json::json!({ "Name": name, "WithDecryption": with_decryption });
    let resp = aws::send(
        client,
        creds,
        aws::Call {
            endpoint,
            action: "GetParameter",
            content_type: JSON,
            target: Some("AmazonSSM.GetParameter"),
            body: body.to_string().into_bytes(),
        },
    )
    .await?;
    let v: serde_json::Value =
        serde_json::from_slice(&resp.body).map_err(|_| AwsError::Response {
            service: "ssm",
            action: "GetParameter",
            endpoint: origin(&endpoint.url),
            what: "the answer is not JSON".into(),
        })?;
    match v.pointer("/Parameter/Value").and_then(|x| x.as_str()) {
        Some(value) => Ok(Secret::new(value)),
        None => Err(AwsError::Response {
            service: "ssm",
            action: "GetParameter",
            endpoint: origin(&endpoint.url),
            what: "no Parameter.Value in the answer".into(),
        }),
    }
}

/// The parameter types `PutParameter` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParameterType {
    String,
    SecureString,
}

/// `ssm:PutParameter` (overwriting an existing value).
pub async fn put_parameter(
    client: &HttpClient,
    creds: &Credentials,
    endpoint: &Endpoint,
    name: &str,
    value: &Secret,
    kind: ParameterType,
) -> Result<(), AwsError> {
    let kind = match kind {
        ParameterType::String => "String",
        ParameterType::SecureString => "SecureString",
    };
    let body = serde_json::json!({
        "Name": name,
        "Value": value.expose(),
        "Type": kind,
        "Overwrite": true,
    });
    aws::send(
        client,
        creds,
        aws::Call {
            endpoint,
            action: "PutParameter",
            content_type: JSON,
            target: Some("AmazonSSM.PutParameter"),
            body: body.to_string().into_bytes(),
        },
    )
    .await?;
    Ok(())
}
