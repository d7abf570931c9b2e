//! moat-audit: an append-only audit log. Entries form a hash chain and the leaves of an
//! RFC 6962 Merkle tree; signed checkpoints (C2SP signed-note / tlog-checkpoint) let anyone
//! with the pinned public key detect modification, insertion, deletion, reordering,
//! truncation and forks, offline, from the log or from an exported proof bundle.
#![forbid(unsafe_code)]

pub mod append;
pub mod bundle;
pub mod entry;
pub mod jcs;
pub mod logs;
pub mod merkle;
pub mod note;
pub mod report;
pub mod reports;
pub mod store;
pub mod verify;
