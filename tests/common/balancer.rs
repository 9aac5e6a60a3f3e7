//! A round-robin TCP balancer on 127.0.0.1 in front of several backends (the fleet hosts'
//! plain-HTTP ports): each accepted connection goes to the next backend in turn, and the
//! balancer counts connections per backend so a test can prove that traffic (Pebble's
//! validation requests) reached more than one host. It can hold new connections (accepted,
//! not yet forwarded) to keep an order in flight while a test does something to a host.
//!
//! Threads only; the listener is bound to a kernel-chosen port and kept, so there is no
//! port race. The accept thread ends with the process (tests are short-lived).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

struct Shared {
    backends: Vec<u16>,
    next: AtomicUsize,
    /// Connections forwarded to each backend.
    counts: Mutex<Vec<usize>>,
    /// New connections wait (unforwarded) while this is set.
    hold: AtomicBool,
    /// Connections accepted and waiting for `hold` to clear.
    waiting: AtomicUsize,
    /// Connections accepted in all.
    accepted: AtomicUsize,
}

pub struct Balancer {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Balancer {
    /// Listens on a kernel-chosen loopback port and forwards to `backends` (127.0.0.1 ports)
    /// round robin.
    pub fn start(backends: &[u16]) -> Balancer {
        assert!(!backends.is_empty(), "a balancer needs backends");
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("bind a loopback port for the balancer");
        let port = listener
            .local_addr()
            .expect("local_addr of a bound listener")
            .port();
        let shared = Arc::new(Shared {
            backends: backends.to_vec(),
            next: AtomicUsize::new(0),
            counts: Mutex::new(vec![0; backends.len()]),
            hold: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
        });
        let s = shared.clone();
        thread::spawn(move || {
            for inbound in listener.incoming().flatten() {
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                thread::spawn(move || forward(&s, inbound));
            }
        });
        Balancer { port, shared }
    }

    /// Connections forwarded to each backend so far, in the order of `backends`.
    pub fn counts(&self) -> Vec<usize> {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many backends got at least one connection.
    pub fn backends_reached(&self) -> usize {
        self.counts().iter().filter(|&&n| n > 0).count()
    }

    /// Connections accepted so far (forwarded or not).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// From now on, accepted connections wait unforwarded until [`Balancer::release`].
    pub fn hold(&self) {
        self.shared.hold.store(true, Ordering::SeqCst);
    }

    /// Lets held connections (and every later one) through.
    pub fn release(&self) {
        self.shared.hold.store(false, Ordering::SeqCst);
    }

    /// Connections waiting while held.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.release();
    }
}

fn forward(s: &Shared, inbound: TcpStream) {
    if s.hold.load(Ordering::SeqCst) {
        s.waiting.fetch_add(1, Ordering::SeqCst);
        while s.hold.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(10));
        }
        s.waiting.fetch_sub(1, Ordering::SeqCst);
    }
    let i = s.next.fetch_add(1, Ordering::SeqCst) % s.backends.len();
    let Ok(outbound) = TcpStream::connect(("127.0.0.1", s.backends[i])) else {
        return; // the client sees the connection closed, as behind a real balancer
    };
    if let Ok(mut counts) = s.counts.lock() {
        counts[i] += 1;
    }
    let (Ok(in2), Ok(out2)) = (inbound.try_clone(), outbound.try_clone()) else {
        return;
    };
    thread::spawn(move || copy(in2, out2));
    copy(outbound, inbound);
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
