//! A TCP proxy on loopback between meterd and PostgreSQL that can lose the reply to one COMMIT:
//! once armed with a piece of SQL, the first connection that sends it has its next COMMIT
//! forwarded to the server, the server's reply read and thrown away, and both sides closed. The
//! transaction is committed; the client only hears that its connection went away. It can also
//! blackhole: every connection, open or new, stays open and nothing more passes either way (a
//! database that stopped answering) until healed, which closes the connections it held (their
//! bytes in between are gone, as after a partition). It can close every open connection at once
//! (a reset). Every other byte passes unchanged.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A simple-query message `COMMIT` (tokio-postgres commits a transaction with one).
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The SQL that arms the next connection sending it (taken by that connection).
    armed: Mutex<Option<Vec<u8>>>,
    /// COMMIT replies thrown away so far.
    lost: AtomicUsize,
    /// Nothing passes any more.
    blackholed: AtomicBool,
    /// The open connections (both ends), by number, so that they can be closed from outside.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next: AtomicU64,
}

impl Proxy {
    /// Listens on 127.0.0.1 at a free port and forwards to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                forward(client, server, accepting.clone());
            }
        });
        Proxy { port, shared }
    }

    /// The PostgreSQL URL through this proxy.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Loses the reply to the COMMIT of the next transaction that sends `sql`.
    pub fn lose_commit_reply_after(&self, sql: &str) {
        *self.shared.armed.lock().unwrap() = Some(sql.as_bytes().to_vec());
    }

    /// From now on nothing passes, on open connections or new ones; none is closed.
    pub fn blackhole(&self) {
        self.shared.blackholed.store(true, Ordering::SeqCst);
    }

    /// Things pass again; the connections that were open are closed (what they sent meanwhile
    /// is gone, so they could not go on).
    pub fn heal(&self) {
        self.shared.blackholed.store(false, Ordering::SeqCst);
        self.reset();
    }

    /// Closes every open connection, both ways, at once; new ones are accepted as before.
    pub fn reset(&self) {
        let open: Vec<_> = self.shared.open.lock().unwrap().drain().collect();
        for (_, (client, server)) in open {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// Forgets a [`Proxy::lose_commit_reply_after`] that has not fired yet.
    pub fn disarm(&self) {
        *self.shared.armed.lock().unwrap() = None;
    }

    /// How many COMMIT replies were lost.
    pub fn lost(&self) -> usize {
        self.shared.lost.load(Ordering::SeqCst)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Two threads, one per direction.
fn forward(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let number = shared.next.fetch_add(1, Ordering::SeqCst);
    if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
        shared.open.lock().unwrap().insert(number, (c, s));
    }
    let lose_reply = Arc::new(AtomicBool::new(false));
    let (mut from_client, mut to_server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (mut from_server, mut to_client) = (server, client);
    let losing = lose_reply.clone();
    let upstream_shared = shared.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        // The end of the bytes before, so that a marker split between two reads is found.
        let mut seen: Vec<u8> = Vec::new();
        let mut marked = false;
        loop {
            let n = match from_client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if upstream_shared.blackholed.load(Ordering::SeqCst) {
                continue;
            }
            seen.extend_from_slice(&buf[..n]);
            if !marked {
                let mut armed = upstream_shared.armed.lock().unwrap();
                if armed.as_ref().is_some_and(|sql| contains(&seen, sql)) {
                    *armed = None;
                    marked = true;
                    seen.clear();
                }
            } else if contains(&seen, COMMIT) {
                // Told before the COMMIT leaves: whatever the server sends next is its reply.
                losing.store(true, Ordering::SeqCst);
            }
            let keep = seen.len().saturating_sub(4096);
            seen.drain(..keep);
            if to_server.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_server.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_server.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if shared.blackholed.load(Ordering::SeqCst) {
                continue;
            }
            if lose_reply.load(Ordering::SeqCst) {
                shared.lost.fetch_add(1, Ordering::SeqCst);
                let _ = from_server.shutdown(Shutdown::Both);
                break;
            }
            if to_client.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_client.shutdown(Shutdown::Both);
        shared.open.lock().unwrap().remove(&number);
    });
}
