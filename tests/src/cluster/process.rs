//! A process of its own on one of the lab's hosts: it may hold a listener
//! there, and makes the lab's requests on command. For what depends on
//! *which process* connects, not from where (the agent recognises an
//! apiserver that runs on the node by the listener its process holds):
//! every other client of the lab is a thread of the test's own process.
//!
//! The child is `cp-observer-lab-process` (`src/bin/process.rs`), which
//! runs [`serve`]; [`HostProcess`] is its parent's handle. One line each
//! way per request: `http IP:PORT` in, `ok SENT RECEIVED STATUS` or
//! `err ERRNO MESSAGE` out.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use crate::{
    cluster::netns::NetNs,
    traffic::{self, Exchange},
};

/// A running `cp-observer-lab-process`. Killed on drop.
#[derive(Debug)]
pub struct HostProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl HostProcess {
    /// Starts `bin` (the `cp-observer-lab-process` executable: an
    /// integration test passes `env!("CARGO_BIN_EXE_cp-observer-lab-process")`)
    /// acting in namespace `ns`, listening on `listen` there if given, and
    /// waits until it is ready. Panics if it does not come up.
    pub fn start(bin: impl AsRef<Path>, ns: &NetNs, listen: Option<SocketAddr>) -> Self {
        let mut cmd = Command::new(bin.as_ref());
        cmd.args(["--ns", ns.name()]);
        if let Some(addr) = listen {
            cmd.args(["--listen", &addr.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?} cannot start: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut p = Self {
            child,
            stdin,
            stdout,
        };
        let ready = p.line();
        assert_eq!(ready, "ready", "{cmd:?} did not come up");
        p
    }

    /// Its process id (a tgid of the host's PID namespace, as the kernel
    /// programs see it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /` over plain HTTP to `to`, made by this process
    /// ([`traffic::http_get`] in it): the exchange, or the client's error
    /// (its errno kept, so [`traffic::is_reset`] reads it as here).
    pub fn http_get(&mut self, to: SocketAddr) -> io::Result<Exchange> {
        writeln!(self.stdin, "http {to}").expect("the lab process takes a command");
        let answer = self.line();
        let mut words = answer.splitn(4, ' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("ok"), Some(sent), Some(received), status) => Ok(Exchange {
                status: status.unwrap_or_default().to_owned(),
                sent: sent.parse().expect("a byte count"),
                received: received.parse().expect("a byte count"),
            }),
            (Some("err"), Some(errno), message, rest) => {
                let message = [message, rest].into_iter().flatten().collect::<Vec<_>>();
                Err(match errno.parse::<i32>() {
                    Ok(errno) if errno > 0 => io::Error::from_raw_os_error(errno),
                    _ => io::Error::other(message.join(" ")),
                })
            }
            _ => panic!("the lab process answered {answer:?}"),
        }
    }

    /// The next line the child prints, without its newline.
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .expect("the lab process's stdout");
        assert!(n > 0, "the lab process exited");
        line.trim_end().to_owned()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side (`cp-observer-lab-process --ns NAME [--listen
/// IP:PORT]`): binds the listener in namespace `NAME` if asked (and never
/// accepts: holding it is the point), says `ready`, then answers each
/// command on stdin until it ends.
pub fn serve(args: &[String]) {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let ns = NetNs::existing(value("--ns").expect("--ns NAME"));
    let _listener = value("--listen").map(|addr| {
        let addr: SocketAddr = addr.parse().expect("--listen IP:PORT");
        ns.run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"))
    });
    let mut out = io::stdout().lock();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .expect("stdout");
    for line in io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let to: SocketAddr = match line.split_once(' ') {
            Some(("http", to)) => to.parse().expect("http IP:PORT"),
            _ => panic!("unknown command {line:?}"),
        };
        let answer = match traffic::http_get(&ns, to) {
            Ok(x) => format!("ok {} {} {}", x.sent, x.received, x.status),
            Err(e) => format!("err {} {e}", e.raw_os_error().unwrap_or(-1)),
        };
        writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .expect("stdout");
    }
}
