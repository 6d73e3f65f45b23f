//! Listening: TCP (loopback unless allowed otherwise) or a Unix socket, one thread per
//! client, a bounded number of clients, and a clean stop on SIGINT/SIGTERM.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::proto::{serve_client, Limits};
use super::Exports;
use crate::error::{Error, Result};

/// Where to listen.
#[derive(Clone, Debug)]
pub enum Listen {
    /// A TCP address (port 0: any free port).
    Tcp(SocketAddr),
    /// A Unix socket path (must not exist).
    Unix(PathBuf),
}

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where to listen.
    pub listen: Listen,
    /// Allow a TCP address other than loopback (plain NBD has no authentication).
    pub allow_remote: bool,
    /// The most clients served at once (more are turned away).
    pub max_clients: usize,
    /// Request limits.
    pub limits: Limits,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 10809))),
            allow_remote: false,
            max_clients: 64,
            limits: Limits::default(),
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn shutdown(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Both),
            Conn::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds the listener; returns it with the address clients use (`nbd://…` or
/// `nbd+unix:///?socket=…`).
fn bind(opts: &ServeOptions) -> Result<(Listener, String)> {
    match &opts.listen {
        Listen::Tcp(addr) => {
            if !addr.ip().is_loopback() && !opts.allow_remote {
                return Err(Error::invalid(format!(
                    "{addr} is not a loopback address: plain NBD has no authentication; \
                     pass --allow-remote to listen there anyway"
                )));
            }
            let l = TcpListener::bind(addr)
                .map_err(|e| Error::invalid(format!("cannot listen on {addr}: {e}")))?;
            let at = l.local_addr()?;
            l.set_nonblocking(true)?;
            Ok((Listener::Tcp(l), format!("nbd://{at}")))
        }
        Listen::Unix(p) => {
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(Error::invalid("the socket path exists already").with_file(p));
            }
            let l = UnixListener::bind(p).map_err(|e| Error::from(e).with_file(p))?;
            l.set_nonblocking(true)?;
            let uri = format!("nbd+unix:///?socket={}", p.display());
            Ok((Listener::Unix(l, p.clone()), uri))
        }
    }
}

fn accept(l: &Listener) -> io::Result<Option<Conn>> {
    let r = match l {
        Listener::Tcp(l) => l.accept().map(|(s, _)| Conn::Tcp(s)),
        Listener::Unix(l, _) => l.accept().map(|(s, _)| Conn::Unix(s)),
    };
    match r {
        Ok(c) => Ok(Some(c)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(e),
    }
}

fn session(conn: Conn, exports: &dyn Exports, limits: Limits, stop: &AtomicBool) {
    let stopping = || stop.load(Ordering::Relaxed);
    let _ = match conn {
        Conn::Tcp(s) => {
            let _ = s.set_nonblocking(false);
            let _ = s.set_nodelay(true);
            s.try_clone()
                .and_then(|r| serve_on(r, &s, exports, limits, &stopping))
        }
        Conn::Unix(s) => {
            let _ = s.set_nonblocking(false);
            s.try_clone()
                .and_then(|r| serve_on(r, &s, exports, limits, &stopping))
        }
    };
}

/// Serves one client reading from `r` and writing to `w` (two handles of one socket).
fn serve_on<R: Read, W: Write>(
    r: R,
    w: W,
    exports: &dyn Exports,
    limits: Limits,
    stopping: &dyn Fn() -> bool,
) -> io::Result<()> {
    serve_client(
        &mut BufReader::new(r),
        &mut BufWriter::with_capacity(256 << 10, w),
        exports,
        limits,
        stopping,
    )
}

/// Serves `exports` until `stop` is set (e.g. by SIGINT/SIGTERM): binds, calls `ready` with
/// the address clients use, then accepts clients, each on a thread of its own. On stop, the
/// open connections are shut down and their threads joined; a Unix socket is removed.
///
/// # Errors
/// The address is not loopback and `allow_remote` is not set; binding fails.
pub fn serve(
    exports: Arc<dyn Exports>,
    opts: &ServeOptions,
    stop: Arc<AtomicBool>,
    ready: &mut dyn FnMut(&str),
) -> Result<()> {
    let (listener, uri) = bind(opts)?;
    ready(&uri);
    let live: Arc<Mutex<Vec<(usize, Conn)>>> = Arc::default();
    let clients = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    let mut next_id = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let Some(conn) = accept(&listener)? else {
            std::thread::sleep(Duration::from_millis(25));
            threads.retain(|t: &std::thread::JoinHandle<()>| !t.is_finished());
            continue;
        };
        if clients.load(Ordering::Relaxed) >= opts.max_clients {
            conn.shutdown();
            continue;
        }
        let handle = match &conn {
            Conn::Tcp(s) => s.try_clone().map(Conn::Tcp),
            Conn::Unix(s) => s.try_clone().map(Conn::Unix),
        };
        let id = next_id;
        next_id += 1;
        if let (Ok(h), Ok(mut v)) = (handle, live.lock()) {
            v.push((id, h));
        }
        clients.fetch_add(1, Ordering::Relaxed);
        let (exports, stop, live, clients) =
            (exports.clone(), stop.clone(), live.clone(), clients.clone());
        let limits = opts.limits;
        threads.push(std::thread::spawn(move || {
            session(conn, &*exports, limits, &stop);
            if let Ok(mut v) = live.lock() {
                v.retain(|(i, _)| *i != id);
            }
            clients.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    if let Ok(v) = live.lock() {
        for (_, c) in v.iter() {
            c.shutdown();
        }
    }
    for t in threads {
        let _ = t.join();
    }
    drop(listener);
    Ok(())
}
