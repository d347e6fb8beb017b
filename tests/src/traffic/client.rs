//! Servers and clients that talk across the lab, counting what they send
//! and receive so tests can compare with what the agent counted.

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

use rustls::{ClientConnection, ServerConnection, StreamOwned, pki_types::ServerName};

use crate::{cluster::netns::NetNs, traffic::tls::Tls};

/// Socket timeouts: every exchange in the lab is local and small.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server waits for a client: longer than any client, so that a
/// request held back by the kernel programs ends with the agent's reset,
/// not with the server giving up first (an agent starting under the kernel
/// matrix's software emulation takes more than `IO_TIMEOUT`).
const SERVER_TIMEOUT: Duration = Duration::from_secs(60);
const BODY: &str = "hello from the lab pod\n";

/// What the server side does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 over plain TCP.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// Cleartext HTTP/2 with prior knowledge: reads the preface, answers
    /// with an empty SETTINGS frame.
    H2c,
    /// An SSH server's opening: sends its identification string first.
    Ssh,
}

/// The h2c connection preface (RFC 9113 §3.4).
pub const H2C_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const H2_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
const SSH_SERVER_BANNER: &[u8] = b"SSH-2.0-cp-observer-lab\r\n";
const SSH_CLIENT_BANNER: &[u8] = b"SSH-2.0-cp-observer-lab-client\r\n";

/// A server in a namespace, answering every request with 200 and logging
/// the request lines it received. Stops on drop.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server of `kind` on `addr` inside `ns`.
    pub fn start(ns: &NetNs, addr: SocketAddr, kind: Kind, tls: &Tls) -> Self {
        let listener =
            ns.run(move || TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")));
        Self::with_listener(listener, kind, tls)
    }

    /// Starts a server of `kind` on a listener the caller made (in the
    /// namespace it wants, with the socket options it wants).
    pub fn with_listener(listener: TcpListener, kind: Kind, tls: &Tls) -> Self {
        let addr = listener.local_addr().expect("a bound listener");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop2, requests2, config) = (stop.clone(), requests.clone(), tls.server.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let log = requests2.clone();
                        let config = config.clone();
                        std::thread::spawn(move || {
                            // A client that fails or is blocked mid-way is not an error here.
                            let _ = serve(stream, kind, config, &log);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept on {addr}: {e}"),
                }
            }
        });
        Self {
            addr,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    /// Request lines received so far (complete requests only).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    stream: TcpStream,
    kind: Kind,
    config: Arc<rustls::ServerConfig>,
    log: &Mutex<Vec<String>>,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(SERVER_TIMEOUT))?;
    stream.set_write_timeout(Some(SERVER_TIMEOUT))?;
    match kind {
        Kind::Http => handle(stream, log),
        Kind::Https => {
            let conn = ServerConnection::new(config).map_err(io::Error::other)?;
            handle(StreamOwned::new(conn, stream), log)
        }
        Kind::H2c => {
            let mut s = stream;
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
            let mut s = stream;
            s.write_all(SSH_SERVER_BANNER)?;
            let line = read_line(&mut s)?;
            log.lock().expect("lock").push(line);
            Ok(())
        }
    }
}

fn read_line(s: &mut impl Read) -> io::Result<String> {
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

/// True for the errors a client sees when its connection is reset (by the
/// peer's RST, or its own socket destroyed).
pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// One finished client exchange, with the TCP payload bytes each way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exchange {
    /// The response's status line.
    pub status: String,
    /// Payload bytes the client sent (TLS records included).
    pub sent: u64,
    /// Payload bytes the client received.
    pub received: u64,
}

/// A TCP stream that counts bytes.
pub(crate) struct Counting {
    pub(crate) inner: TcpStream,
    pub(crate) sent: u64,
    pub(crate) received: u64,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.received += n as u64;
        Ok(n)
    }
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn connect(to: SocketAddr) -> io::Result<Counting> {
    let inner = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    inner.set_read_timeout(Some(IO_TIMEOUT))?;
    inner.set_write_timeout(Some(IO_TIMEOUT))?;
    inner.set_nodelay(true)?;
    Ok(Counting {
        inner,
        sent: 0,
        received: 0,
    })
}

pub(crate) fn request(host: SocketAddr) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cp-observer-lab\r\nConnection: close\r\n\r\n"
    )
}

/// `GET /` over plain HTTP from inside `ns`.
pub fn http_get(ns: &NetNs, to: SocketAddr) -> io::Result<Exchange> {
    http_get_waiting(ns, to, IO_TIMEOUT)
}

/// [`http_get`], waiting up to `timeout` for the answer: for a client that
/// must outwait something slower than the lab's usual exchanges (an agent
/// starting on an emulated machine).
pub fn http_get_waiting(ns: &NetNs, to: SocketAddr, timeout: Duration) -> io::Result<Exchange> {
    ns.run(move || {
        let mut s = connect(to)?;
        s.inner.set_read_timeout(Some(timeout))?;
        s.write_all(request(to).as_bytes())?;
        finish(s)
    })
}

/// `GET /` over plain HTTP, the request written `chunk` bytes per TCP
/// segment with a pause between segments (Nagle off), as a client trying to
/// slip past detection would.
pub fn http_get_split(ns: &NetNs, to: SocketAddr, chunk: usize) -> io::Result<Exchange> {
    ns.run(move || {
        let mut s = connect(to)?;
        for part in request(to).as_bytes().chunks(chunk) {
            s.write_all(part)?;
            std::thread::sleep(Duration::from_millis(2));
        }
        finish(s)
    })
}

/// `GET /` over TLS from inside `ns`.
pub fn https_get(ns: &NetNs, to: SocketAddr, tls: &Tls) -> io::Result<Exchange> {
    let config = tls.client.clone();
    ns.run(move || {
        let name = ServerName::IpAddress(to.ip().into());
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut s = StreamOwned::new(conn, connect(to)?);
        s.write_all(request(to).as_bytes())?;
        s.flush()?;
        let mut resp = Vec::new();
        read_to_end_lenient(&mut s, &mut resp)?;
        s.conn.send_close_notify();
        let _ = s.conn.complete_io(&mut s.sock);
        let _ = s.sock.inner.shutdown(Shutdown::Both);
        Ok(Exchange {
            status: status_line(&resp),
            sent: s.sock.sent,
            received: s.sock.received,
        })
    })
}

pub(crate) fn finish(mut s: Counting) -> io::Result<Exchange> {
    let mut resp = Vec::new();
    read_to_end_lenient(&mut s, &mut resp)?;
    let _ = s.inner.shutdown(Shutdown::Both);
    Ok(Exchange {
        status: status_line(&resp),
        sent: s.sent,
        received: s.received,
    })
}

/// Reads to EOF; a TLS peer that closes without close_notify still ends the read.
fn read_to_end_lenient(s: &mut impl Read, out: &mut Vec<u8>) -> io::Result<()> {
    match s.read_to_end(out) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(()),
        Err(e) => Err(e),
    }
}

fn status_line(resp: &[u8]) -> String {
    String::from_utf8_lossy(resp)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The h2c preface and a SETTINGS frame; reads the server's answer.
pub fn h2c_hello(ns: &NetNs, to: SocketAddr) -> io::Result<Exchange> {
    ns.run(move || {
        let mut s = connect(to)?;
        s.write_all(H2C_PREFACE)?;
        s.write_all(&H2_SETTINGS)?;
        s.inner.shutdown(Shutdown::Write)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let status = if resp.starts_with(&H2_SETTINGS[..4]) {
            "SETTINGS"
        } else {
            "no SETTINGS"
        };
        Ok(Exchange {
            status: status.to_owned(),
            sent: s.sent,
            received: s.received,
        })
    })
}

/// An SSH client's opening: waits for the server's identification string
/// (the server speaks first), answers with its own, closes.
pub fn ssh_hello(ns: &NetNs, to: SocketAddr) -> io::Result<Exchange> {
    ns.run(move || {
        let mut s = connect(to)?;
        let banner = read_line(&mut s)?;
        s.write_all(SSH_CLIENT_BANNER)?;
        s.inner.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        Ok(Exchange {
            status: banner,
            sent: s.sent,
            received: s.received,
        })
    })
}

/// Sends `bytes` (not a protocol the lab knows), half-closes, reads to EOF.
pub fn raw(ns: &NetNs, to: SocketAddr, bytes: &'static [u8]) -> io::Result<Exchange> {
    ns.run(move || {
        let mut s = connect(to)?;
        s.write_all(bytes)?;
        s.inner.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        Ok(Exchange {
            status: "sent".to_owned(),
            sent: s.sent,
            received: s.received,
        })
    })
}

/// Connects and closes without a byte of payload.
pub fn connect_close(ns: &NetNs, to: SocketAddr) -> io::Result<Exchange> {
    ns.run(move || {
        let s = connect(to)?;
        s.inner.shutdown(Shutdown::Both)?;
        Ok(Exchange {
            status: "closed".to_owned(),
            sent: 0,
            received: 0,
        })
    })
}

/// Connects from the local address `from` (which `ns` must have), then
/// closes without payload.
pub fn connect_close_from(ns: &NetNs, from: std::net::IpAddr, to: SocketAddr) -> io::Result<()> {
    ns.run(move || {
        let domain = if to.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        s.bind(&SocketAddr::new(from, 0).into())?;
        s.connect_timeout(&to.into(), IO_TIMEOUT)?;
        s.shutdown(Shutdown::Both)
    })
}
