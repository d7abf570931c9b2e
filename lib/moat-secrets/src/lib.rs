//! Secrets and cloud credentials resolved on the host: AWS SigV4 signing, host AWS credentials,
//! STS AssumeRole with a refreshing cache, SSM GetParameter, 1Password `op read`, and the
//! `secrets:` reference resolver that ties them together. No secret value ever reaches an error
//! message or a `Debug` output: values travel as [`Secret`], which redacts itself.
#![forbid(unsafe_code)]

pub mod aws;
pub mod creds;
pub mod env;
pub mod http;
pub mod op;
pub mod resolve;
pub mod secret;
pub mod sigv4;
pub mod ssm;
pub mod sts;
mod xml;

pub use aws::{AwsError, Endpoint, Service};
pub use creds::{Credentials, CredsError};
pub use env::Env;
pub use http::{HttpClient, HttpError};
pub use op::OpError;
pub use resolve::{ResolveError, SecretRef};
pub use secret::Secret;
pub use sts::{CredentialCache, SessionCredentials};
