//! A TCP proxy in front of PostgreSQL that makes the faults a network and a
//! database operator make: it cuts a connection right after the client sent
//! `COMMIT` (forwarded: the server commits, but its answer is dropped), cuts
//! every connection at once, or refuses connections (a database that is
//! down). The store's tests and the chaos driver (`creditd-bench chaos`)
//! put it between creditd and the server.
//!
//! It reads the protocol no further than it must: a `COMMIT` is the simple
//! query message `Q`, length 11, `COMMIT\0`, which is how the writer commits
//! (and, unencrypted, nothing else looks like it in practice).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The simple query `COMMIT`, as the client sends it.
const COMMIT_QUERY: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
/// The server's `CommandComplete` tags that end a COMMIT.
const COMMIT_DONE: [&[u8]; 2] = [b"COMMIT\0", b"ROLLBACK\0"];

#[derive(Default)]
struct Control {
    /// COMMITs still to cut, whichever connection sends them.
    cut_next: AtomicU64,
    /// Cut every Nth COMMIT seen (0: never).
    cut_every: AtomicU64,
    commits: AtomicU64,
    cuts: AtomicU64,
    /// Refuse new connections (accepted and closed at once).
    down: AtomicBool,
    /// Every open connection's two sockets, to cut them all.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    connections: AtomicU64,
}

impl Control {
    fn should_cut(&self) -> bool {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        let next = self.cut_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1)).is_ok();
        let every = self.cut_every.load(Ordering::SeqCst);
        next || (every > 0 && n.is_multiple_of(every))
    }
}

/// The proxy; it stops accepting when dropped (open connections live on
/// until either side closes them).
pub struct PgProxy {
    addr: SocketAddr,
    control: Arc<Control>,
    stop: Arc<AtomicBool>,
}

impl PgProxy {
    /// Listens on a free local port and forwards every connection to
    /// `upstream` (`host:port`).
    pub fn start(upstream: &str) -> std::io::Result<PgProxy> {
        PgProxy::start_on("127.0.0.1:0", upstream)
    }

    /// Listens on `listen` (`host:port`).
    pub fn start_on(listen: &str, upstream: &str) -> std::io::Result<PgProxy> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let control = Arc::new(Control::default());
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_string();
        let (c, s) = (control.clone(), stop.clone());
        std::thread::Builder::new().name("pg-proxy".into()).spawn(move || accept(listener, &upstream, &c, &s))?;
        Ok(PgProxy { addr, control, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` (a `postgres://user@host:port/db` URL) with the proxy as its
    /// host and port.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let user = authority.rsplit_once('@').map(|(user, _)| format!("{user}@")).unwrap_or_default();
        format!("{scheme}://{user}{}/{path}", self.addr)
    }

    /// Cuts the next `n` COMMITs: each forwarded, its answer dropped, its
    /// connection closed.
    pub fn cut_next_commits(&self, n: u64) {
        self.control.cut_next.store(n, Ordering::SeqCst);
    }

    /// Cuts every `n`th COMMIT (0: none).
    pub fn cut_every_commit(&self, n: u64) {
        self.control.cut_every.store(n, Ordering::SeqCst);
    }

    /// COMMITs seen, and cut, so far.
    pub fn commits(&self) -> (u64, u64) {
        (self.control.commits.load(Ordering::SeqCst), self.control.cuts.load(Ordering::SeqCst))
    }

    /// Closes every open connection, both ways, at once.
    pub fn cut_all(&self) {
        let open = std::mem::take(&mut *self.control.open.lock().unwrap_or_else(|e| e.into_inner()));
        for (client, server) in open.into_values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// Down: every open connection cut and new ones refused; up again.
    pub fn set_down(&self, down: bool) {
        self.control.down.store(down, Ordering::SeqCst);
        if down {
            self.cut_all();
        }
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn accept(listener: TcpListener, upstream: &str, control: &Arc<Control>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        if control.down.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect(upstream) else { continue };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) =
            (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone())
        else {
            continue;
        };
        let id = control.connections.fetch_add(1, Ordering::SeqCst);
        control.open.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (c3, s3));
        let muted = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicBool::new(false));
        let (m, a, c) = (muted.clone(), answered.clone(), control.clone());
        let _ = std::thread::Builder::new().name("pg-proxy-up".into()).spawn(move || {
            client_to_server(client, server, &m, &a, &c);
            c.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
        let _ = std::thread::Builder::new()
            .name("pg-proxy-down".into())
            .spawn(move || server_to_client(s2, c2, &muted, &answered));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn client_to_server(
    mut client: TcpStream,
    mut server: TcpStream,
    muted: &AtomicBool,
    answered: &AtomicBool,
    control: &Control,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the previous read, so that a COMMIT split across two reads is seen.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut window = std::mem::take(&mut tail);
        window.extend_from_slice(&buf[..n]);
        let commit = contains(&window, COMMIT_QUERY);
        tail = window[window.len().saturating_sub(COMMIT_QUERY.len() - 1)..].to_vec();
        if commit && control.should_cut() {
            control.cuts.fetch_add(1, Ordering::SeqCst);
            // The server gets the COMMIT; the client never hears the answer.
            muted.store(true, Ordering::SeqCst);
            let _ = server.write_all(&buf[..n]);
            let until = Instant::now() + Duration::from_secs(2);
            while !answered.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
            break;
        }
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

fn server_to_client(mut server: TcpStream, mut client: TcpStream, muted: &AtomicBool, answered: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if muted.load(Ordering::SeqCst) {
            if COMMIT_DONE.iter().any(|tag| contains(&buf[..n], tag)) {
                answered.store(true, Ordering::SeqCst);
            }
            continue;
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    answered.store(true, Ordering::SeqCst);
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}
