//! moat-proxy: the TLS-intercepting forward proxy that injects credentials, enforces
//! network policy and traces every request. `main` only wires: arguments become a
//! `Config`, the CA is loaded or created, and the accept loop runs until SIGTERM/SIGINT,
//! then drains in-flight requests.
#![forbid(unsafe_code)]

/// `impl AsyncWrite for $t<S>` handing every write to `self.inner`: for the wrappers that
/// only change how a stream is read (h2guard::Guarded, upstream::Fill).
macro_rules! writes_pass_through {
    ($t:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $t<S> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
            }
            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }
        }
    };
}

mod admit;
mod args;
mod awssign;
mod ca;
mod config;
mod decoy;
mod h2guard;
mod inject;
mod policy;
mod policycheck;
mod proxy;
mod redact;
mod relay;
mod router;
mod routerctl;
mod tlsprov;
mod trace;
mod upstream;
mod usage;
mod wsmask;

use args::Command;
use config::Config;
use moat_core::{Error, Result, cli};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn main() {
    cli::run_main("moat-proxy", run)
}

fn run() -> Result<()> {
    match args::parse()? {
        Command::Done => Ok(()),
        Command::CaPath { ca_dir } => {
            let dir = config::ca_dir(ca_dir)?;
            let (_, _, crt) = ca::ensure(&dir)?;
            cli::write_stdout(format!("{}\n", crt.display()).as_bytes())
        }
        Command::PolicyCheck(a) => policycheck::run(a),
        Command::Router { cmd, port, json } => {
            use args::RouterCmd;
            match cmd {
                RouterCmd::Status => {
                    let p = port.map(|p| routerctl::resolve_port(Some(p))).transpose()?;
                    routerctl::status(p, json)
                }
                RouterCmd::Start => routerctl::start(routerctl::resolve_port(port)?),
                RouterCmd::Stop => routerctl::stop(routerctl::resolve_port(port)?),
                RouterCmd::Serve => routerctl::serve(routerctl::resolve_port(port)?),
            }
        }
        Command::Serve(a) => {
            let cfg = Config::from_args(*a)?;
            // One worker thread per CPU (TOKIO_WORKER_THREADS overrides). One thread on a
            // 2-CPU machine shared with the client and the origin spent a little less CPU
            // per request but served fewer requests when the machine was busy.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("starting the runtime", e))?;
            rt.block_on(serve(cfg))
        }
    }
}

/// Rule sets after the first, each ended by `rules_end`, replace the rules in force; a set
/// that does not validate is refused (`rules_refused`, naming the line) and the old rules
/// stay. A batch cut short by EOF is not a complete set and is ignored.
fn replace_rules(
    mut input: Box<dyn std::io::BufRead + Send>,
    st: &proxy::State,
    book: &config::Rulebook,
) {
    let mut n = 0u64;
    loop {
        let (text, ended) = match config::read_batch(&mut input) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                eprintln!(
                    "moat-proxy: reading replacement rules: {}",
                    moat_core::error::io_msg(&e)
                );
                return;
            }
        };
        if !ended {
            st.sinks.event(
                "rules_refused",
                &serde_json::json!({"reason": "the rules pipe closed before rules_end"}),
            );
            return;
        }
        n += 1;
        let built = config::parse_rules(&text, "stdin").and_then(|r| book.build(r));
        let built = built.and_then(|b| st.usage.replace(&text).map(|_| b));
        let built = built.and_then(|b| Ok((b, decoy::parse(&text, "stdin")?)));
        match built {
            Ok(((injector, policy, relays), decoys)) => {
                let grants = injector.grants();
                *st.live
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(proxy::Live {
                    injector,
                    policy,
                    relays,
                    decoys,
                });
                st.sinks.event(
                    "rules_replaced",
                    &serde_json::json!({"set": n, "grants": grants}),
                );
            }
            Err(e) => st.sinks.event(
                "rules_refused",
                &serde_json::json!({"set": n, "reason": e.msg}),
            ),
        }
    }
}

async fn serve(cfg: Config) -> Result<()> {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let ca = ca::Ca::load_or_create(&cfg.ca_dir)?;
    let sinks = Arc::new(trace::Sinks::new(cfg.trace.as_deref())?);
    // Dialing private addresses depends on `--allow` only, which a rule replacement keeps.
    let p2 = Arc::new(crate::policy::Policy::new(
        cfg.rulebook.mode,
        cfg.rulebook.allow.clone(),
        vec![],
        vec![],
    ));
    let dial = Arc::new(upstream::DialPolicy {
        connect_to: cfg.connect_to.clone(),
        private_ok: Box::new(move |h, p| p2.explicitly_allows_port(h, p)),
    });
    let tls_h2 = Arc::new(upstream::client_tls(&cfg.extra_ca, true)?);
    let tls_h1 = Arc::new(upstream::client_tls(&cfg.extra_ca, false)?);
    let mk = |tls| {
        Client::builder(TokioExecutor::new())
            .http1_max_buf_size(upstream::UPSTREAM_MAX_BUF)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(upstream::Connector::new(dial.clone(), tls))
    };
    let client = mk(tls_h2);
    let client_h1 = mk(tls_h1);
    let listener = admit::listen(cfg.listen).map_err(|e| {
        Error::unavailable(format!(
            "listening on {}: {}",
            cfg.listen,
            moat_core::error::io_msg(&e)
        ))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("listening", e))?;
    let (sd_tx, sd_rx) = watch::channel(false);
    let st = Arc::new(proxy::State {
        token: cfg.token,
        live: std::sync::RwLock::new(Arc::new(proxy::Live {
            injector: cfg.injector,
            policy: cfg.policy,
            relays: cfg.relays,
            decoys: cfg.decoys,
        })),
        ca,
        sinks: sinks.clone(),
        client,
        client_h1,
        header_timeout: cfg.header_timeout,
        handshake_timeout: cfg.handshake_timeout,
        shutdown: sd_rx,
        tunnels: cfg.tunnels,
        dial,
        usage: Arc::new(usage::Meter::new(cfg.usage)),
    });
    sinks.event(
        "listening",
        &serde_json::json!({"addr": addr.to_string(), "ca": st.ca.cert_path.display().to_string()}),
    );
    if let Some(input) = cfg.updates {
        let (st2, book) = (st.clone(), cfg.rulebook.clone());
        std::thread::spawn(move || replace_rules(input, &st2, &book));
    }

    let adm = admit::Admission::new(cfg.max_connections);
    accept_until_signal(&listener, &adm, |tcp, _, slot| {
        tokio::spawn(proxy::serve_client(st.clone(), tcp, slot));
    })
    .await?;
    drop(listener);
    let _ = sd_tx.send(true);
    // Drain: every connection task holds its slot until it is done.
    let _ = tokio::time::timeout(Duration::from_secs(30), adm.drain()).await;
    sinks.sync(Duration::from_secs(5));
    Ok(())
}

/// Accept connections until SIGTERM or SIGINT, at most as many at once as `adm` has
/// slots (see `admit`: with all taken, the oldest connection that has done nothing useful
/// yet makes room): each accepted connection goes to `serve` with its slot, to hold until
/// it is done.
async fn accept_until_signal(
    listener: &tokio::net::TcpListener,
    adm: &Arc<admit::Admission>,
    mut serve: impl FnMut(tokio::net::TcpStream, std::net::SocketAddr, admit::Slot),
) -> Result<()> {
    let sig =
        |k| tokio::signal::unix::signal(k).map_err(|e| Error::io("installing signal handlers", e));
    let mut term = sig(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = sig(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let slot = tokio::select! {
                    s = adm.slot() => match s { Some(s) => s, None => break },
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                };
                serve(tcp, peer, slot)
            }
            Err(e) => {
                // EMFILE and friends: back off instead of ending the accept loop.
                eprintln!(
                    "moat-proxy: accepting a connection: {}",
                    moat_core::error::io_msg(&e)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}
