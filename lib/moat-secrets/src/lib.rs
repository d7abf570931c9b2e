//! Secrets and cloud credentials resolved on the host: AWS SigV4 signing, host AWS credentials,
//! STS AssumeRole with a refreshing cache, SSM GetParameter, 1Password `op read`, and the
//! `secrets:` reference resolver that ties them together. No secret value ever reaches an error
//! message or a `Debug` output: values travel as [`Secret`], which redacts itself.
//!
//! The launcher resolves `secrets:` before the container starts:
//!
//! ```no_run
//! # async fn f() -> Result<(), moat_core::Error> {
//! use moat_secrets::{Env, resolve::Resolver};
//! let secrets = [("OPENAI_API_KEY", "op://Dev/OpenAI/api-key"), ("DATABASE_URL", "ssm:///prod/db/url")];
//! for (name, value) in Resolver::new(Env::process()).resolve_all(secrets).await? {
//!     // container env: name=value.expose(); audit: name only
//! #   let _ = (name, value);
//! }
//! # Ok(()) }
//! ```
//!
//! The proxy answers the container's `credential_process` for an AWS grant:
//!
//! ```no_run
//! # async fn f() -> Result<(), moat_core::Error> {
//! use moat_secrets::{Env, sts::{AssumeRole, CredentialCache}};
//! let mut role = AssumeRole::new("arn:aws:iam::123456789012:role/Agent");
//! role.external_id = None;
//! let cache = CredentialCache::from_env(&Env::process(), None, "us-east-1", role)?;
//! let body = cache.get().await?.credential_process_json(); // the response body
//! # let _ = body;
//! # Ok(()) }
//! ```
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
