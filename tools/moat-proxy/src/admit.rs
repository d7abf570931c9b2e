//! Admission: at most `max` client connections are open at once, and connections that
//! have done nothing useful yet cannot crowd out those that have.
//!
//! A connection is *pending* from accept until it proves it is working: its first request
//! arrived whole (plain HTTP), or the TLS handshake inside its `CONNECT` finished, or its
//! raw tunnel was dialled. Pending connections wait in arrival order. When every slot is
//! taken and a new connection is waiting in the listen queue, the oldest pending connection
//! is closed to make room, so the listener never stops accepting while idle or stalled
//! connections hold the slots; only when all slots are *productive* does accepting wait.
//! A pending connection also has a deadline of its own (`--handshake-timeout`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

pub struct Admission {
    sem: Arc<Semaphore>,
    /// Places for evicted connections whose tasks have not ended yet (max / 2): the
    /// newcomer takes the evicted one's place at once while there is one, so accepting
    /// does not wait on a busy runtime; beyond that it waits, so at most 1.5 x max
    /// connections are ever open.
    spare: Arc<Semaphore>,
    max: usize,
    /// Pending connections by arrival (ids only grow, so the first is the oldest).
    pending: Mutex<BTreeMap<u64, Arc<Flag>>>,
    next: AtomicU64,
    evictions: AtomicU64,
}

struct Flag {
    set: AtomicBool,
    notify: Notify,
    /// The slot's place; taken by the connection that evicts this one, so the newcomer
    /// need not wait for the evicted connection's task to run and end.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

/// One admitted connection's place: held (shared by the tasks serving it) until the
/// connection is done.
pub struct Slot {
    adm: Arc<Admission>,
    id: u64,
    flag: Arc<Flag>,
}

impl Admission {
    pub fn new(max: usize) -> Arc<Admission> {
        Arc::new(Admission {
            sem: Arc::new(Semaphore::new(max)),
            spare: Arc::new(Semaphore::new(max.div_ceil(2))),
            max,
            pending: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Flag>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a connection about to be accepted. With all slots taken, closes the
    /// oldest pending connection and takes its place; waits only while every slot holds a
    /// productive connection. `None` once closed.
    pub async fn slot(self: &Arc<Self>) -> Option<Slot> {
        match self.sem.clone().try_acquire_owned() {
            Ok(p) => return Some(self.make(p)),
            Err(tokio::sync::TryAcquireError::Closed) => return None,
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        let victim = self.pending().pop_first();
        if let Some((_, f)) = victim {
            self.evictions.fetch_add(1, Ordering::Relaxed);
            // The evicted connection's tasks end as soon as they see the flag. With a spare
            // place for it until then, the newcomer takes its place at once.
            if let Ok(spare) = self.spare.clone().try_acquire_owned() {
                let p = f.swap(spare);
                f.raise();
                if let Some(p) = p {
                    return Some(self.make(p));
                }
            } else {
                f.raise();
            }
        }
        let p = self.sem.clone().acquire_owned().await.ok()?;
        Some(self.make(p))
    }

    fn make(self: &Arc<Self>, p: OwnedSemaphorePermit) -> Slot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let flag = Arc::new(Flag {
            set: AtomicBool::new(false),
            notify: Notify::new(),
            permit: Mutex::new(Some(p)),
        });
        self.pending().insert(id, flag.clone());
        Slot {
            adm: self.clone(),
            id,
            flag,
        }
    }

    /// Wait until every slot is free (all connections done).
    pub async fn drain(&self) {
        let _ = self.sem.acquire_many(self.max as u32).await;
        let _ = self.spare.acquire_many(self.max.div_ceil(2) as u32).await;
    }

    /// How many pending connections were closed to make room, since start.
    #[cfg(test)]
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

impl Flag {
    fn swap(&self, p: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
        self.permit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(p)
    }

    fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.permit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn raise(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

impl Slot {
    /// The connection did something useful: it can no longer be closed to make room.
    pub fn productive(&self) {
        self.adm.pending().remove(&self.id);
    }

    /// Resolves when this connection was chosen to make room for a newer one.
    pub async fn evicted(&self) {
        loop {
            // Created before the check, so a raise in between is not missed.
            let n = self.flag.notify.notified();
            if self.flag.set.load(Ordering::SeqCst) {
                return;
            }
            n.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.adm.pending().remove(&self.id);
        drop(self.flag.take());
    }
}

/// A listener with a deeper accept queue than tokio's 1,024 (the kernel caps it at
/// `net.core.somaxconn`): a burst of connections waits there instead of being dropped and
/// retried a second later.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_full_house_of_pending_connections_makes_room_oldest_first() {
        rt().block_on(async {
            let adm = Admission::new(2);
            let a = adm.slot().await.unwrap();
            let b = adm.slot().await.unwrap();
            // the third takes the place of `a` (the oldest) at once
            let c = tokio::time::timeout(Duration::from_secs(5), adm.slot())
                .await
                .expect("no wait for the evicted connection to end")
                .unwrap();
            tokio::time::timeout(Duration::from_secs(5), a.evicted())
                .await
                .expect("the oldest pending connection is told to go");
            assert_eq!(adm.evictions(), 1);
            // b was not touched
            assert!(
                tokio::time::timeout(Duration::from_millis(50), b.evicted())
                    .await
                    .is_err()
            );
            // the limit still holds: `a` (still alive) no longer counts, b and c do
            b.productive();
            c.productive();
            let adm2 = adm.clone();
            let mut fourth = tokio::spawn(async move { adm2.slot().await.unwrap() });
            assert!(
                tokio::time::timeout(Duration::from_millis(100), &mut fourth)
                    .await
                    .is_err()
            );
            drop(b);
            let d = tokio::time::timeout(Duration::from_secs(5), fourth)
                .await
                .unwrap()
                .unwrap();
            drop((a, c, d));
            tokio::time::timeout(Duration::from_secs(5), adm.drain())
                .await
                .unwrap();
        });
    }

    #[test]
    fn productive_connections_are_never_evicted_and_accepting_waits_for_them() {
        rt().block_on(async {
            let adm = Admission::new(2);
            let a = adm.slot().await.unwrap();
            let b = adm.slot().await.unwrap();
            a.productive();
            b.productive();
            let adm2 = adm.clone();
            let mut third = tokio::spawn(async move { adm2.slot().await.unwrap() });
            assert!(
                tokio::time::timeout(Duration::from_millis(100), &mut third)
                    .await
                    .is_err(),
                "no slot while both are productive"
            );
            assert_eq!(adm.evictions(), 0);
            assert!(
                tokio::time::timeout(Duration::from_millis(20), a.evicted())
                    .await
                    .is_err()
            );
            drop(b);
            let c = tokio::time::timeout(Duration::from_secs(5), third)
                .await
                .unwrap()
                .unwrap();
            drop((a, c));
            tokio::time::timeout(Duration::from_secs(5), adm.drain())
                .await
                .unwrap();
        });
    }
}
