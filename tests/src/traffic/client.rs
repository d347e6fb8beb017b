//! The lab's clients: one per protocol the lab's servers speak, each
//! counting the payload bytes it sends and receives so tests can compare
//! with what the agent counted.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpStream},
    time::Duration,
};

use rustls::{ClientConnection, StreamOwned, pki_types::ServerName};

use crate::{
    cluster::netns::NetNs,
    traffic::{
        IO_TIMEOUT,
        server::{H2_SETTINGS, H2C_PREFACE, SSH_CLIENT_BANNER, read_line},
        tls::Tls,
    },
};

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

impl Counting {
    /// [`super::connect`], Nagle off: a request written in parts leaves in
    /// as many segments.
    pub(crate) fn connect(to: SocketAddr) -> io::Result<Self> {
        let inner = super::connect(to)?;
        inner.set_nodelay(true)?;
        Ok(Self::new(inner))
    }

    pub(crate) fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            sent: 0,
            received: 0,
        }
    }

    /// The exchange so far, with `status`.
    fn exchange(&self, status: impl Into<String>) -> Exchange {
        Exchange {
            status: status.into(),
            sent: self.sent,
            received: self.received,
        }
    }

    /// Half-closes and reads to the end of the stream.
    fn drain(&mut self) -> io::Result<()> {
        self.inner.shutdown(Shutdown::Write)?;
        self.read_to_end(&mut Vec::new()).map(|_| ())
    }
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

/// The lab's `GET /` request to `host`.
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
        let mut s = Counting::connect(to)?;
        s.inner.set_read_timeout(Some(timeout))?;
        s.write_all(request(to).as_bytes())?;
        finish(s)
    })
}

/// `GET /` over plain HTTP, the request written `chunk` bytes per TCP
/// segment with a pause between segments (Nagle off), as a client trying to
/// slip past detection would.
pub fn http_get_split(ns: &NetNs, to: SocketAddr, chunk: usize) -> io::Result<Exchange> {
    http_request_split(ns, to, request(to).into_bytes(), chunk)
}

/// [`http_get_split`] with a request of the caller's.
pub fn http_request_split(
    ns: &NetNs,
    to: SocketAddr,
    request: Vec<u8>,
    chunk: usize,
) -> io::Result<Exchange> {
    ns.run(move || {
        let mut s = Counting::connect(to)?;
        for part in request.chunks(chunk) {
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
        let mut s = StreamOwned::new(conn, Counting::connect(to)?);
        s.write_all(request(to).as_bytes())?;
        s.flush()?;
        let mut resp = Vec::new();
        read_to_end_lenient(&mut s, &mut resp)?;
        s.conn.send_close_notify();
        let _ = s.conn.complete_io(&mut s.sock);
        let _ = s.sock.inner.shutdown(Shutdown::Both);
        Ok(s.sock.exchange(status_line(&resp)))
    })
}

/// Reads the response to the end and closes: the exchange.
pub(crate) fn finish(mut s: Counting) -> io::Result<Exchange> {
    let mut resp = Vec::new();
    read_to_end_lenient(&mut s, &mut resp)?;
    let _ = s.inner.shutdown(Shutdown::Both);
    Ok(s.exchange(status_line(&resp)))
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
        let mut s = Counting::connect(to)?;
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
        Ok(s.exchange(status))
    })
}

/// An SSH client's opening: waits for the server's identification string
/// (the server speaks first), answers with its own, closes.
pub fn ssh_hello(ns: &NetNs, to: SocketAddr) -> io::Result<Exchange> {
    ns.run(move || {
        let mut s = Counting::connect(to)?;
        let banner = read_line(&mut s)?;
        s.write_all(SSH_CLIENT_BANNER)?;
        s.drain()?;
        Ok(s.exchange(banner))
    })
}

/// Sends `bytes` (not a protocol the lab knows), half-closes, reads to EOF.
pub fn raw(ns: &NetNs, to: SocketAddr, bytes: &'static [u8]) -> io::Result<Exchange> {
    ns.run(move || {
        let mut s = Counting::connect(to)?;
        s.write_all(bytes)?;
        s.drain()?;
        Ok(s.exchange("sent"))
    })
}

/// Connects and closes without a byte of payload.
pub fn connect_close(ns: &NetNs, to: SocketAddr) -> io::Result<Exchange> {
    ns.run(move || {
        let s = Counting::connect(to)?;
        s.inner.shutdown(Shutdown::Both)?;
        Ok(s.exchange("closed"))
    })
}

/// Connects from the local address `from` (which `ns` must have), then
/// closes without payload.
pub fn connect_close_from(ns: &NetNs, from: IpAddr, to: SocketAddr) -> io::Result<()> {
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
