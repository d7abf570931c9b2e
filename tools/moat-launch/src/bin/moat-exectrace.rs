//! moat-exectrace: a run's exec tracer, run inside the run's container (exectrace.rs has the
//! host side and the design). moat-init starts it as root just before it would drop to
//! moatuser: `moat-exectrace -- setpriv ... COMMAND`. It
//!
//! 1. connects to the run's supervisor over the unix socket in /run/moat/exec and sends the
//!    run's one-time exec token (from MOAT_EXEC_TOKEN, removed from the environment before
//!    anything else starts);
//! 2. forks the command under PTRACE_TRACEME (no capability needed: a parent traces its own
//!    child), with PTRACE_O_TRACEEXEC|TRACEFORK|TRACEVFORK|TRACECLONE|EXITKILL, so it stops
//!    only at fork/clone and exec events (never at every system call) and every descendant is
//!    traced from its first instruction;
//! 3. drops every capability but CAP_KILL (to forward tini's signals to the command, which
//!    runs as moatuser) from its effective, permitted, inheritable and bounding sets, sets
//!    no_new_privs, and keeps a uid that is not moatuser's: 0, or 65534 when moatuser is uid 0
//!    (a workspace root owns). A process of another uid without capabilities can neither
//!    signal it, nor ptrace it, nor read its memory or descriptors;
//! 4. for every exec, sends one JSON line (time, pid, ppid, argv from /proc/PID/cmdline) and,
//!    when that process ends, one with its exit code or signal. The supervisor masks, caps and
//!    writes them to the run's `exec.jsonl`.
//!
//! It exits as the command does (128+N for a signal). If it dies, EXITKILL kills every
//! traced process: a run is never left running untraced.
//!
//! When tracing cannot start (no socket, ptrace refused by a seccomp profile, ...), it fails
//! the run (exit 125) if MOAT_EXEC_REQUIRED=1 (`tracing.disable_exec: false` in moat.yaml),
//! else says so loudly on stderr, tells the supervisor (`untraced` record) and runs the
//! command untraced.
//!
//! `unsafe` is confined to this binary (moat-launch itself forbids it): fork, ptrace, waitpid,
//! kill and the capability calls have no safe wrapper in the crates moat builds with.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};

const SOCKET: &str = "/run/moat/exec/exec.sock";
/// The longest /proc/PID/cmdline read (the supervisor caps what it records further).
const CMDLINE_MAX: usize = 64 * 1024;
/// Exit status when tracing is required and cannot start.
const EXIT_FAIL: i32 = 125;
/// The child's exit status when PTRACE_TRACEME is refused.
const TRACEME_REFUSED: i32 = 97;

/// capability(7) number of CAP_KILL.
const CAP_KILL: i32 = 5;
/// The command's pid, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// A signal another process sent the tracer (tini passing on `docker stop`'s SIGTERM) goes
/// on to the command. One the terminal sent (Ctrl-C, a resize: si_code SI_KERNEL) reached
/// the command's process group already, and is not sent twice.
extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let pid = CHILD.load(Ordering::Relaxed);
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { info.as_ref() }.map(|i| i.si_code).unwrap_or(0);
    if pid > 0 && code <= 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// ptrace(2) with pointer-sized arguments (glibc reads them as pointers).
fn pt(req: libc::c_uint, pid: i32, addr: usize, data: usize) -> libc::c_long {
    // SAFETY: no request used here writes through addr; data is a signal number, options,
    // or (GETSIGINFO) a pointer to a live siginfo_t.
    unsafe {
        libc::ptrace(
            req,
            pid as libc::pid_t,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    }
}

/// prctl(2) with unsigned long arguments.
fn prctl(op: libc::c_int, a: u64) -> libc::c_int {
    // SAFETY: the operations used take integers only.
    unsafe {
        libc::prctl(
            op,
            a as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().map(|a| a.as_bytes()) == Some(b"--check") {
        // moat-init runs this first: a binary that cannot load in the image fails here.
        println!("moat-exectrace ok");
        return;
    }
    // `--agent-uid N`: the uid the command runs as (moatuser's).
    let mut args = args.as_slice();
    let mut agent_uid: Option<u32> = None;
    if args.first().map(|a| a.as_bytes()) == Some(b"--agent-uid") {
        agent_uid = args
            .get(1)
            .and_then(|a| a.to_str())
            .and_then(|a| a.parse().ok());
        if agent_uid.is_none() {
            eprintln!("moat-exectrace: --agent-uid needs a number");
            std::process::exit(64);
        }
        args = &args[2..];
    }
    let cmd: Vec<OsString> = match args.first().map(|a| a.as_bytes()) {
        Some(b"--") => args[1..].to_vec(),
        _ => args.to_vec(),
    };
    if cmd.is_empty() {
        eprintln!("usage: moat-exectrace [--agent-uid UID] -- COMMAND [ARG...]");
        std::process::exit(64);
    }
    let required = std::env::var("MOAT_EXEC_REQUIRED").as_deref() == Ok("1");
    let token = std::env::var("MOAT_EXEC_TOKEN").unwrap_or_default();
    // The command sees neither.
    // SAFETY: single-threaded here; nothing else reads the environment concurrently.
    unsafe {
        std::env::remove_var("MOAT_EXEC_TOKEN");
        std::env::remove_var("MOAT_EXEC_REQUIRED");
    }
    let argv: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();

    let mut out = match connect(&token) {
        Ok(s) => s,
        Err(e) => untraced(
            required,
            None,
            &format!("cannot reach the run's supervisor: {e}"),
            &argv,
        ),
    };

    let pid = unsafe { libc::fork() };
    if pid < 0 {
        untraced(
            required,
            Some(&mut out),
            &format!("fork: {}", errno()),
            &argv,
        );
    }
    if pid == 0 {
        // The child: be traced, stop so the parent can set its options, then exec.
        unsafe {
            if pt(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                libc::_exit(TRACEME_REFUSED);
            }
            libc::raise(libc::SIGSTOP);
        }
        exec(&argv);
    }
    let mut status = 0;
    let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    if r != pid || !libc::WIFSTOPPED(status) {
        let why = if r == pid
            && libc::WIFEXITED(status)
            && libc::WEXITSTATUS(status) == TRACEME_REFUSED
        {
            "ptrace(PTRACE_TRACEME) is refused in this container (a seccomp profile?)".to_string()
        } else {
            format!("the traced child did not start (status {status})")
        };
        untraced(required, Some(&mut out), &why, &argv);
    }
    CHILD.store(pid, Ordering::Relaxed);
    let opts = libc::PTRACE_O_TRACEEXEC
        | libc::PTRACE_O_TRACEFORK
        | libc::PTRACE_O_TRACEVFORK
        | libc::PTRACE_O_TRACECLONE
        | libc::PTRACE_O_EXITKILL;
    if pt(libc::PTRACE_SETOPTIONS, pid, 0, opts as usize) != 0 {
        let e = errno();
        unsafe { libc::kill(pid, libc::SIGKILL) };
        eprintln!("moat-exectrace: PTRACE_SETOPTIONS: {e}");
        std::process::exit(EXIT_FAIL);
    }
    if let Err(e) = drop_privileges(agent_uid.unwrap_or(u32::MAX)) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
        eprintln!("moat-exectrace: cannot drop capabilities: {e}");
        std::process::exit(EXIT_FAIL);
    }
    for sig in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ] {
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as usize;
            sa.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // The terminal's stop signals must not stop the tracer (and with it every traced process).
    for sig in [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let code = trace(pid, out);
    std::process::exit(code);
}

fn exec(argv: &[CString]) -> ! {
    // Rust ignores SIGPIPE in its programs; the command gets the default back.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    unsafe { libc::execvp(ptrs[0], ptrs.as_ptr()) };
    eprintln!(
        "moat-exectrace: cannot run {}: {}",
        argv[0].to_string_lossy(),
        errno()
    );
    unsafe { libc::_exit(127) }
}

fn connect(token: &str) -> std::io::Result<UnixStream> {
    if token.is_empty() {
        return Err(std::io::Error::other("no exec token"));
    }
    let mut s = UnixStream::connect(SOCKET)?;
    s.write_all(format!("{token}\n").as_bytes())?;
    Ok(s)
}

/// Tracing cannot start: fail (required) or run the command untraced, loudly.
fn untraced(required: bool, out: Option<&mut UnixStream>, why: &str, argv: &[CString]) -> ! {
    if required {
        eprintln!(
            "moat-exectrace: exec tracing cannot start: {why}; the run stops (tracing.disable_exec: false asks for it; set it to true to run untraced)"
        );
        std::process::exit(EXIT_FAIL);
    }
    eprintln!(
        "moat: WARNING: exec tracing cannot start ({why}); this run records no exec trace (set tracing.disable_exec: true to say so, or false to refuse such runs)"
    );
    if let Some(o) = out {
        let _ = o.write_all(
            format!(
                "{{\"event\":\"untraced\",\"ts_ns\":{},\"reason\":{}}}\n",
                now_ns(),
                json_str(why)
            )
            .as_bytes(),
        );
    }
    exec(argv)
}

/// Every capability but CAP_KILL, for good, and a uid that is not the command's: uid 0, or
/// when the command itself runs as uid 0 (a workspace root owns), nobody (65534). A process
/// of another uid without capabilities can neither signal nor ptrace it.
fn drop_privileges(agent_uid: u32) -> std::io::Result<()> {
    for cap in 0..64 {
        if cap == CAP_KILL {
            continue;
        }
        let r = prctl(libc::PR_CAPBSET_DROP, cap as u64);
        if r != 0 {
            let e = errno();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break; // past the last capability this kernel knows
            }
            return Err(e);
        }
    }
    if agent_uid == 0 {
        const NOBODY: libc::uid_t = 65534;
        // Keep the permitted set across the uid change; capset below narrows it to CAP_KILL.
        if prctl(libc::PR_SET_KEEPCAPS, 1) != 0 {
            return Err(errno());
        }
        // SAFETY: plain system calls on integers (setgroups with an empty list).
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(NOBODY, NOBODY, NOBODY) != 0
                || libc::setresuid(NOBODY, NOBODY, NOBODY) != 0
            {
                return Err(errno());
            }
        }
    }
    // capset(2) v3: two 32-bit words of effective, permitted, inheritable.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let kill = 1u32 << CAP_KILL;
    let data = [
        Data {
            effective: kill,
            permitted: kill,
            inheritable: 0,
        },
        Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    if unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) } != 0 {
        return Err(errno());
    }
    // The ambient set is cleared with the permitted one; no_new_privs for good measure.
    if prctl(libc::PR_SET_NO_NEW_PRIVS, 1) != 0 {
        return Err(errno());
    }
    Ok(())
}

fn cmdline(pid: i32) -> Vec<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(format!("/proc/{pid}/cmdline")) {
        let _ = f.take(CMDLINE_MAX as u64).read_to_end(&mut buf);
    }
    if buf.last() == Some(&0) {
        buf.pop();
    }
    if buf.is_empty() {
        return vec![];
    }
    buf.split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn ppid(pid: i32) -> i32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // pid (comm) state ppid ...: comm may hold anything but its last ')'.
    s.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn send(out: &mut Option<UnixStream>, line: String) {
    if let Some(s) = out
        && s.write_all(line.as_bytes()).is_err()
    {
        // The supervisor is gone: the run is ending; keep the command going.
        *out = None;
    }
}

fn argv_json(argv: &[String]) -> String {
    serde_json::Value::from(argv.to_vec()).to_string()
}

/// The event loop: returns the command's exit status.
fn trace(root: i32, out: UnixStream) -> i32 {
    let mut out = Some(out);
    // Processes past their first stop; the argv of those that exec'd (for their exit record).
    let mut started: HashSet<i32> = HashSet::from([root]);
    let mut execd: HashMap<i32, (Vec<String>, i32)> = HashMap::new();
    let mut root_exec_seen = false;
    let mut code = None;
    pt(libc::PTRACE_CONT, root, 0, 0);
    loop {
        let mut status = 0;
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
        if pid < 0 {
            match errno().raw_os_error() {
                Some(libc::EINTR) => continue,
                _ => break, // ECHILD: nothing left to trace
            }
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            let (exit_code, signal) = if libc::WIFEXITED(status) {
                (Some(libc::WEXITSTATUS(status)), None)
            } else {
                (None, Some(libc::WTERMSIG(status)))
            };
            started.remove(&pid);
            if let Some((argv, pp)) = execd.remove(&pid) {
                send(
                    &mut out,
                    format!(
                        "{{\"event\":\"exit\",\"ts_ns\":{},\"pid\":{pid},\"ppid\":{pp},\"argv\":{},\"exit_code\":{},\"signal\":{}}}\n",
                        now_ns(),
                        argv_json(&argv),
                        exit_code.map(|c| c.to_string()).unwrap_or("null".into()),
                        signal.map(|c| c.to_string()).unwrap_or("null".into()),
                    ),
                );
            }
            if pid == root {
                code = Some(exit_code.unwrap_or_else(|| 128 + signal.unwrap_or(0)));
                // The command is done: the run ends with it (EXITKILL ends the rest).
                break;
            }
            continue;
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        let mut inject = 0;
        if sig == libc::SIGTRAP && event != 0 {
            if event == libc::PTRACE_EVENT_EXEC {
                let argv = cmdline(pid);
                let pp = ppid(pid);
                // The first exec of the command is moat-init's setpriv: not the run's.
                if pid == root && !root_exec_seen {
                    root_exec_seen = true;
                } else {
                    send(
                        &mut out,
                        format!(
                            "{{\"event\":\"exec\",\"ts_ns\":{},\"pid\":{pid},\"ppid\":{pp},\"argv\":{}}}\n",
                            now_ns(),
                            argv_json(&argv)
                        ),
                    );
                    execd.insert(pid, (argv, pp));
                }
            }
        } else if !started.contains(&pid) && sig == libc::SIGSTOP {
            // A new traced process's first stop.
            started.insert(pid);
        } else {
            // A signal for the process: deliver it. A group-stop (GETSIGINFO fails) is
            // resumed: a process traced without PTRACE_SEIZE cannot be held in it.
            let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
            if pt(libc::PTRACE_GETSIGINFO, pid, 0, &mut si as *mut _ as usize) == 0 {
                inject = sig;
            }
        }
        pt(libc::PTRACE_CONT, pid, 0, inject as usize);
    }
    code.unwrap_or(EXIT_FAIL)
}
