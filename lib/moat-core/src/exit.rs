//! Exit codes: 0 ok, 1 "the answer is no", and the sysexits.h codes for everything that
//! went wrong. Every tool uses these and the man pages list them.

pub const OK: i32 = 0;
/// The answer is no: verification failed, policy denied.
pub const NO: i32 = 1;
pub const USAGE: i32 = 64;
pub const DATAERR: i32 = 65;
pub const NOINPUT: i32 = 66;
pub const NOUSER: i32 = 67;
pub const UNAVAILABLE: i32 = 69;
pub const SOFTWARE: i32 = 70;
pub const OSERR: i32 = 71;
pub const CANTCREAT: i32 = 73;
pub const IOERR: i32 = 74;
pub const TEMPFAIL: i32 = 75;
pub const NOPERM: i32 = 77;
pub const CONFIG: i32 = 78;
