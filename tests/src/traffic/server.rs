//! The lab's servers: one kind per protocol the lab speaks, plus the sink
//! and echo of the benchmarks, all on the same accept loop.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use rustls::{ServerConnection, StreamOwned};
use socket2::{Domain, SockRef, Socket, Type};

use crate::{cluster::netns::NetNs, traffic::tls::Tls};

/// How long a server waits for a client: longer than any client, so that a
/// request held back by the kernel programs ends with the agent's reset,
/// not with the server giving up first (an agent starting under the kernel
/// matrix's software emulation takes more than
/// [`IO_TIMEOUT`](super::IO_TIMEOUT)).
const SERVER_TIMEOUT: Duration = Duration::from_secs(60);
/// Listen backlog: deep enough that a burst of connections is never refused.
const BACKLOG: i32 = 4096;
/// How many failures a server (and a benchmark client) keeps the text of.
pub(crate) const FAILURES_KEPT: usize = 5;
/// The body of every HTTP answer.
const BODY: &str = "hello from the lab pod\n";

/// The h2c connection preface (RFC 9113 §3.4).
pub const H2C_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
pub(crate) const H2_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
const SSH_SERVER_BANNER: &[u8] = b"SSH-2.0-cp-observer-lab\r\n";
/// What the lab's SSH client answers with.
pub(crate) const SSH_CLIENT_BANNER: &[u8] = b"SSH-2.0-cp-observer-lab-client\r\n";
/// The byte every benchmark message is made of. It starts no protocol
/// signature, so the agent decides `other` on the first one.
pub const MESSAGE: u8 = b'x';
/// Bytes per write of the bulk workload, and the sink's read buffer (half).
pub const BULK_WRITE: usize = 128 * 1024;

/// What a server does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 over plain TCP: answers every request with 200.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// Cleartext HTTP/2 with prior knowledge: reads the preface, answers
    /// with an empty SETTINGS frame.
    H2c,
    /// An SSH server's opening: sends its identification string first.
    Ssh,
    /// Reads until the client's end of stream, then answers one byte (bulk).
    Sink,
    /// Sends back whatever it reads, until the client's end of stream.
    Echo,
}

/// A server in a namespace, logging the request lines it received and the
/// first few failures. Stop it with [`Server::stop`] to learn whether a
/// connection failed; dropping it stops it too.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

/// What the accepting threads share.
#[derive(Clone)]
struct Shared {
    addr: SocketAddr,
    kind: Kind,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Shared {
    fn serve(&self, stream: TcpStream) {
        if let Err(e) = serve(stream, self.kind, self.tls.clone(), &self.requests) {
            self.fail(&e);
        }
    }

    fn fail(&self, e: &io::Error) {
        let mut failures = self.failures.lock().expect("lock");
        if failures.len() < FAILURES_KEPT {
            failures.push(format!("server {}: {e}", self.addr));
        }
    }
}

impl Server {
    /// A lab server of `kind` on `addr` inside `ns`: any number of clients
    /// at once, each connection on a thread of its own. Panics, naming the
    /// address and namespace, if it cannot listen.
    pub fn start(ns: &NetNs, addr: SocketAddr, kind: Kind, tls: &Tls) -> Self {
        Self::with_listener(listen_in(ns, addr), kind, tls)
    }

    /// [`Self::start`] on a listener the caller made (in the namespace it
    /// wants, with the socket options it wants).
    pub fn with_listener(listener: TcpListener, kind: Kind, tls: &Tls) -> Self {
        Self::spawn(listener, kind, Some(tls.server.clone()), None)
    }

    /// A benchmark server of `kind` on `addr` inside `ns`: `workers`
    /// threads on the clients' CPU ([`super::pin_to_one_cpu`]), each
    /// accepting and serving one connection at a time, so that no thread is
    /// made while a workload runs.
    pub fn pinned(ns: &NetNs, addr: SocketAddr, kind: Kind, workers: usize) -> Self {
        Self::spawn(listen_in(ns, addr), kind, None, Some(workers.max(1)))
    }

    /// `workers`: `None` for one accepting thread and a thread per
    /// connection, `Some(n)` for `n` pinned threads serving in turn.
    fn spawn(
        listener: TcpListener,
        kind: Kind,
        tls: Option<Arc<rustls::ServerConfig>>,
        workers: Option<usize>,
    ) -> Self {
        let addr = listener.local_addr().expect("a bound listener");
        let shared = Shared {
            addr,
            kind,
            tls,
            stop: Arc::new(AtomicBool::new(false)),
            requests: Arc::new(Mutex::new(Vec::new())),
            failures: Arc::new(Mutex::new(Vec::new())),
        };
        let threads = (0..workers.unwrap_or(1))
            .map(|_| {
                let listener = listener.try_clone().expect("a listener fd to clone");
                let shared = shared.clone();
                std::thread::spawn(move || {
                    if workers.is_some() {
                        super::pin_to_one_cpu();
                    }
                    loop {
                        let accepted = listener.accept();
                        if shared.stop.load(Ordering::Relaxed) {
                            return;
                        }
                        match accepted {
                            Ok((stream, _)) if workers.is_some() => shared.serve(stream),
                            Ok((stream, _)) => {
                                let shared = shared.clone();
                                std::thread::spawn(move || shared.serve(stream));
                            }
                            Err(e) => shared.fail(&e),
                        }
                    }
                })
            })
            .collect();
        Self {
            addr,
            listener,
            stop: shared.stop,
            requests: shared.requests,
            failures: shared.failures,
            threads,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Request lines received so far (complete requests only).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }

    /// Stops accepting, waits for the accepting threads and returns the
    /// first few failures, e.g. a connection reset. (A client blocked or
    /// reset mid-way is a failure here; only the benchmarks look.)
    pub fn stop(mut self) -> Vec<String> {
        self.shut_down();
        std::mem::take(&mut *self.failures.lock().expect("lock"))
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Shutting a listening socket down wakes every thread blocked in
        // accept(2) on it (with EINVAL).
        let _ = SockRef::from(&self.listener).shutdown(Shutdown::Read);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// A listener on `addr` inside `ns` (the IPv6 unspecified address listens
/// on both families). Panics, naming the address and namespace, on failure.
fn listen_in(ns: &NetNs, addr: SocketAddr) -> TcpListener {
    let name = ns.name().to_owned();
    ns.run(move || {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(BACKLOG)?;
        io::Result::Ok(TcpListener::from(s))
    })
    .unwrap_or_else(|e| panic!("cannot listen on {addr} in namespace {name}: {e}"))
}

fn serve(
    mut s: TcpStream,
    kind: Kind,
    tls: Option<Arc<rustls::ServerConfig>>,
    log: &Mutex<Vec<String>>,
) -> io::Result<()> {
    s.set_read_timeout(Some(SERVER_TIMEOUT))?;
    s.set_write_timeout(Some(SERVER_TIMEOUT))?;
    match kind {
        Kind::Http => handle(s, log),
        Kind::Https => {
            let config = tls.ok_or_else(|| io::Error::other("no TLS configuration"))?;
            let conn = ServerConnection::new(config).map_err(io::Error::other)?;
            handle(StreamOwned::new(conn, s), log)
        }
        Kind::H2c => {
            let mut preface = [0u8; 24];
            s.read_exact(&mut preface)?;
            if preface != H2C_PREFACE {
                return Err(io::Error::other("not an h2c preface"));
            }
            log.lock().expect("lock").push("h2c preface".to_owned());
            s.write_all(&H2_SETTINGS)?;
            // Drain the client's frames: closing with unread data would reset.
            io::copy(&mut s, &mut io::sink()).map(|_| ())
        }
        Kind::Ssh => {
            s.write_all(SSH_SERVER_BANNER)?;
            let line = read_line(&mut s)?;
            log.lock().expect("lock").push(line);
            Ok(())
        }
        Kind::Sink => {
            let mut buf = vec![0u8; 2 * BULK_WRITE];
            while s.read(&mut buf)? != 0 {}
            s.write_all(&[MESSAGE])
        }
        Kind::Echo => {
            s.set_nodelay(true)?;
            let mut buf = [0u8; 64];
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                s.write_all(&buf[..n])?;
            }
        }
    }
}

/// Reads one line (at most 256 bytes), without its line ending.
pub(crate) fn read_line(s: &mut impl Read) -> io::Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\n") && buf.len() < 256 {
        if s.read(&mut byte)? == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).trim_end().to_owned())
}

fn handle(mut s: impl Read + Write, log: &Mutex<Vec<String>>) -> io::Result<()> {
    let head = read_head(&mut s)?;
    let line = head.lines().next().unwrap_or_default().to_owned();
    log.lock().expect("lock").push(line);
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    s.write_all(resp.as_bytes())?;
    s.flush()
}

/// Reads up to the end of an HTTP head (`\r\n\r\n`).
fn read_head(s: &mut impl Read) -> io::Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the end of the head",
            ));
        }
        buf.push(byte[0]);
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("head too long"));
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
