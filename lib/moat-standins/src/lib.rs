//! Stand-ins for the providers' APIs, for tests (skeleton).
#![forbid(unsafe_code)]
