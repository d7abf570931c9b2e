//! Secrets and cloud credentials resolved on the host (skeleton).
#![forbid(unsafe_code)]
