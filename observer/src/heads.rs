//! Request attribution: the heads the kernel copies of violating plaintext
//! requests (`observer_common::head`), put back in stream order and
//! summarised with `httparse` into an allow-listed [`Summary`] (README,
//! "Request attribution").
//!
//! A violation that may have a head is held by the [`Assembler`] until its
//! head is complete, [`HEAD_BYTES`] of it arrived, or [`HEAD_WAIT`] passed;
//! then it goes out with what was seen, marked truncated if that was not a
//! whole head. Nothing is ever dropped for want of a head.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use observer_common::head::{HEAD_BYTES, HeadChunk};
use serde::Serialize;

/// How long a violation waits for the rest of its head. A proxied request's
/// head is written at once and arrives with the deciding segment; a head
/// that trickles in (tiny segments) is reported as far as it got by then.
pub const HEAD_WAIT: Duration = Duration::from_millis(500);

/// Violations held at once, at most; beyond, the oldest goes out early
/// with what it has (a violation is never dropped to make room).
pub const MAX_HELD: usize = 1024;

/// Chunks kept that came before their violation (the two rings are read one
/// after the other), at most; they wait [`HEAD_WAIT`] too.
const MAX_EARLY: usize = 64;

/// A field of the summary is cut to this many bytes.
const FIELD_BYTES: usize = 256;

/// `X-Forwarded-For` addresses kept, the last ones (the apiserver appends
/// its caller's address last).
const FORWARDED_MAX: usize = 8;

/// What the first request of a violating connection says about who sent
/// it, from an allow-list: never the query string, never another header,
/// never a body. Every field comes from the request, that is from whoever
/// called the apiserver (or the kubelet): `forwarded_for`'s last address
/// is the one the apiserver appended, the rest is what its caller claimed.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// The request method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The request target without its query string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `User-Agent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// `Kubectl-Command` (kubectl sends it: `kubectl get`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubectl_command: Option<String>,
    /// `X-Forwarded-For`, one entry per hop; the apiserver appends the
    /// address of whoever called it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forwarded_for: Vec<String>,
    /// `X-Forwarded-Uri`: the apiserver endpoint the caller used, without
    /// its query string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded_uri: Option<String>,
    /// The head was not seen whole: split beyond what arrived in time, or
    /// longer than the copy. The fields are what its complete lines say.
    pub truncated: bool,
}

impl Summary {
    /// Summarises `head`, the first bytes of a request's stream (as many as
    /// were seen in order). `truncated` when they hold no whole head.
    pub fn of(head: &[u8]) -> Self {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => Self::from_request(&req, false),
            // Too many headers, or bytes no request has: what the request
            // line says, if it is whole.
            Err(_) => Self::of_lines(head, true),
            Ok(httparse::Status::Partial) => Self::of_lines(head, false),
        }
    }

    /// A head seen in part: its complete lines, then the request line's
    /// beginning if not even that line is whole.
    fn of_lines(head: &[u8], malformed: bool) -> Self {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        if !malformed && let Some(end) = head.windows(2).rposition(|w| w == b"\r\n") {
            // The complete lines, closed as a head.
            let mut lines = head[..end + 2].to_vec();
            lines.extend_from_slice(b"\r\n");
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(_)) = req.parse(&lines) {
                return Self::from_request(&req, true);
            }
        }
        // No whole line: the method and as much of the target as came.
        let mut summary = Self {
            truncated: true,
            ..Self::default()
        };
        let line = head
            .split(|b| *b == b'\r' || *b == b'\n')
            .next()
            .unwrap_or_default();
        let mut words = line.splitn(3, |b| *b == b' ');
        let method = words.next().unwrap_or_default();
        if let Some(target) = words.next()
            && is_token(method)
        {
            summary.method = Some(text(method));
            summary.path = Some(path_of(target));
        }
        summary
    }

    fn from_request(req: &httparse::Request, truncated: bool) -> Self {
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| text(h.value))
        };
        let mut forwarded_for: Vec<String> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("X-Forwarded-For"))
            .flat_map(|h| h.value.split(|b| *b == b','))
            .map(|hop| text(hop.trim_ascii()))
            .filter(|hop| !hop.is_empty())
            .collect();
        if forwarded_for.len() > FORWARDED_MAX {
            forwarded_for.drain(..forwarded_for.len() - FORWARDED_MAX);
        }
        Self {
            method: req.method.map(|m| text(m.as_bytes())),
            path: req.path.map(|p| path_of(p.as_bytes())),
            user_agent: header("User-Agent"),
            kubectl_command: header("Kubectl-Command"),
            forwarded_for,
            forwarded_uri: req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("X-Forwarded-Uri"))
                .map(|h| path_of(h.value)),
            truncated,
        }
    }

    /// The product token of the user agent (`kubectl` of `kubectl/v1.32.4
    /// (linux/amd64) kubernetes/...`), for a metric label: only
    /// `[A-Za-z0-9._-]`, at most 32 bytes, `unknown` when there is none.
    pub fn user_agent_product(&self) -> String {
        let product: String = self
            .user_agent
            .as_deref()
            .unwrap_or_default()
            .split(['/', ' '])
            .next()
            .unwrap_or_default()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(32)
            .collect();
        if product.is_empty() {
            "unknown".to_owned()
        } else {
            product
        }
    }
}

/// An RFC 9110 token (a method's characters).
fn is_token(b: &[u8]) -> bool {
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c))
}

/// Bytes as text, cut to [`FIELD_BYTES`] (at a character boundary).
fn text(b: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(&b[..b.len().min(FIELD_BYTES)]).into_owned();
    // A cut inside a character leaves a replacement character: drop it.
    if b.len() > FIELD_BYTES && s.ends_with('\u{fffd}') {
        s.pop();
    }
    s
}

/// The path of a request target, cut to [`FIELD_BYTES`]: without its query
/// string or fragment, without the scheme and authority of an absolute
/// form (`http://user:password@host/x`), and ending at the first space or
/// control character (a head cut short, or bytes no request has).
fn path_of(target: &[u8]) -> String {
    let end = target
        .iter()
        .position(|b| matches!(b, b'?' | b'#') || b.is_ascii_whitespace() || b.is_ascii_control())
        .unwrap_or(target.len());
    let mut path = &target[..end];
    if let Some(scheme_end) = path.windows(3).position(|w| w == b"://") {
        let rest = &path[scheme_end + 3..];
        path = rest
            .iter()
            .position(|b| *b == b'/')
            .map_or(b"/".as_slice(), |slash| &rest[slash..]);
    }
    text(path)
}

/// One connection: what ties a violation to its head's chunks. The ends
/// alone would not do: a client can reuse them for a second connection at
/// once (a reset, then the same port), and one connection's head must not
/// be printed under the other's violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Connection {
    /// The client (sent the SYN).
    pub client: SocketAddr,
    /// The server.
    pub server: SocketAddr,
    /// Sequence number of the client's first stream byte.
    pub stream_start: u32,
}

impl Connection {
    /// The connection a chunk belongs to.
    pub fn of_chunk(c: &HeadChunk) -> Self {
        Self {
            client: SocketAddr::new(IpAddr::from(c.client), c.client_port),
            server: SocketAddr::new(IpAddr::from(c.server), c.server_port),
            stream_start: c.stream_start,
        }
    }
}

/// One connection's head being put together: the bytes seen at each
/// stream offset, the first copy of a byte kept (as the receiving TCP
/// keeps the bytes it queued first).
#[derive(Debug)]
struct Head {
    bytes: Vec<u8>,
    seen: Vec<bool>,
}

impl Head {
    fn new() -> Self {
        Self {
            bytes: vec![0; HEAD_BYTES],
            seen: vec![false; HEAD_BYTES],
        }
    }

    /// Adds a chunk's bytes (the caller matched its connection).
    fn add(&mut self, c: &HeadChunk) {
        let start = (c.offset as usize).min(HEAD_BYTES);
        let end = start
            .saturating_add(c.len as usize)
            .min(HEAD_BYTES)
            .min(start + c.bytes.len());
        for (i, b) in (start..end).zip(&c.bytes) {
            if !self.seen[i] {
                self.seen[i] = true;
                self.bytes[i] = *b;
            }
        }
    }

    /// The bytes seen in order from the stream's start.
    fn in_order(&self) -> &[u8] {
        let n = self.seen.iter().position(|s| !s).unwrap_or(HEAD_BYTES);
        &self.bytes[..n]
    }

    /// True once nothing more can change the summary: the head is whole,
    /// or the copy's limit is reached in order.
    fn done(&self) -> bool {
        let b = self.in_order();
        b.len() == HEAD_BYTES || b.windows(4).any(|w| w == b"\r\n\r\n")
    }

    fn summary(&self) -> Summary {
        Summary::of(self.in_order())
    }
}

/// Violations waiting for their heads, by connection, and chunks that came
/// first. `T` is what is held (the agent's `Violation`).
#[derive(Debug)]
pub struct Assembler<T> {
    held: HashMap<Connection, (T, Head, Instant)>,
    /// Held connections, oldest first (with their deadlines); may name ones no
    /// longer held, which are skipped.
    order: VecDeque<(Instant, Connection)>,
    early: VecDeque<(Instant, Box<HeadChunk>)>,
    /// Chunks neither a held violation nor [`MAX_EARLY`] had room for.
    pub unmatched: u64,
}

impl<T> Default for Assembler<T> {
    fn default() -> Self {
        Self {
            held: HashMap::new(),
            order: VecDeque::new(),
            early: VecDeque::new(),
            unmatched: 0,
        }
    }
}

impl<T> Assembler<T> {
    /// Holds `item`, the violation of the connection `conn`, until its head
    /// is known. Returns what is ready at once: an earlier violation on the
    /// same connection, the oldest one when [`MAX_HELD`] are held, or this one if
    /// its head came before it.
    pub fn hold(&mut self, conn: Connection, item: T, now: Instant) -> Vec<(T, Summary)> {
        let mut ready = Vec::new();
        if let Some((old, head, _)) = self.held.remove(&conn) {
            ready.push((old, head.summary()));
        }
        while self.held.len() >= MAX_HELD {
            match self.order.pop_front() {
                Some((_, oldest)) => ready.extend(self.release(&oldest)),
                None => break,
            }
        }
        let mut head = Head::new();
        let early = std::mem::take(&mut self.early);
        for (deadline, c) in early {
            if Connection::of_chunk(&c) == conn {
                head.add(&c);
            } else {
                self.early.push_back((deadline, c));
            }
        }
        if head.done() {
            ready.push((item, head.summary()));
            return ready;
        }
        let deadline = now + HEAD_WAIT;
        self.held.insert(conn, (item, head, deadline));
        self.order.push_back((deadline, conn));
        ready
    }

    /// Adds a chunk; returns its violation if that completes the head.
    pub fn chunk(&mut self, c: Box<HeadChunk>, now: Instant) -> Option<(T, Summary)> {
        let conn = Connection::of_chunk(&c);
        let Some((_, head, _)) = self.held.get_mut(&conn) else {
            // Its violation may not be read yet.
            if self.early.len() >= MAX_EARLY {
                self.early.pop_front();
                self.unmatched += 1;
            }
            self.early.push_back((now + HEAD_WAIT, c));
            return None;
        };
        head.add(&c);
        if head.done() {
            self.release(&conn)
        } else {
            None
        }
    }

    /// Releases every violation whose wait is over, and forgets early
    /// chunks nobody claimed.
    pub fn expire(&mut self, now: Instant) -> Vec<(T, Summary)> {
        let mut ready = Vec::new();
        while let Some((deadline, conn)) = self.order.front().copied() {
            if deadline > now {
                break;
            }
            self.order.pop_front();
            // Only if still held under this deadline (not re-held since).
            if self.held.get(&conn).is_some_and(|(_, _, d)| *d == deadline) {
                ready.extend(self.release(&conn));
            }
        }
        while self.early.front().is_some_and(|(d, _)| *d <= now) {
            self.early.pop_front();
            self.unmatched += 1;
        }
        ready
    }

    /// Releases everything held (the agent stops).
    pub fn drain(&mut self) -> Vec<(T, Summary)> {
        self.order.clear();
        self.held
            .drain()
            .map(|(_, (item, head, _))| (item, head.summary()))
            .collect()
    }

    /// When [`Self::expire`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let held = self.order.front().map(|(d, _)| *d);
        let early = self.early.front().map(|(d, _)| *d);
        held.into_iter().chain(early).min()
    }

    /// How many violations are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn release(&mut self, conn: &Connection) -> Option<(T, Summary)> {
        self.held
            .remove(conn)
            .map(|(item, head, _)| (item, head.summary()))
    }
}

/// A chunk record read from the `HEADS` ring: its header and `len` bytes.
/// `None` for a record too short for what it claims.
pub fn decode_chunk(record: &[u8]) -> Option<Box<HeadChunk>> {
    if record.len() < HeadChunk::HEADER {
        return None;
    }
    let mut c = Box::new(HeadChunk {
        client: Default::default(),
        server: Default::default(),
        client_port: 0,
        server_port: 0,
        stream_start: 0,
        offset: 0,
        len: 0,
        bytes: [0; HEAD_BYTES],
    });
    let n = record.len().min(size_of::<HeadChunk>());
    // SAFETY: `HeadChunk` is #[repr(C)] plain data, valid for any bits; the
    // record's bytes are copied over its first `n` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(record.as_ptr(), (&raw mut *c).cast::<u8>(), n);
    }
    (c.len as usize <= n - HeadChunk::HEADER).then_some(c)
}

#[cfg(test)]
mod tests {
    use observer_common::config::Addr;

    use super::*;

    /// What the tests' kube-apiserver (v1.20) sends a pod for
    /// `kubectl get --raw .../pods/web:8080/proxy/who/metrics?token=SECRET`.
    const PROXIED: &[u8] = b"GET /who/metrics?token=SECRET HTTP/1.1\r\n\
        Host: 198.18.16.2:8080\r\n\
        User-Agent: kubectl/v1.32.4 (linux/amd64) kubernetes/59526cd\r\n\
        Accept: application/json, */*\r\n\
        Accept-Encoding: gzip\r\n\
        Kubectl-Command: kubectl get\r\n\
        Kubectl-Session: 0d1c1b83-4f5e-4c6f-9b0a-1f3c1e2b4a5d\r\n\
        X-Forwarded-For: 203.0.113.9, 198.18.0.2\r\n\
        X-Forwarded-Uri: /api/v1/namespaces/default/pods/web:8080/proxy/who/metrics?token=SECRET\r\n\
        Authorization: Bearer must-never-show\r\n\
        \r\n\
        body that must never show";

    fn whole() -> Summary {
        Summary {
            method: Some("GET".into()),
            path: Some("/who/metrics".into()),
            user_agent: Some("kubectl/v1.32.4 (linux/amd64) kubernetes/59526cd".into()),
            kubectl_command: Some("kubectl get".into()),
            forwarded_for: vec!["203.0.113.9".into(), "198.18.0.2".into()],
            forwarded_uri: Some(
                "/api/v1/namespaces/default/pods/web:8080/proxy/who/metrics".into(),
            ),
            truncated: false,
        }
    }

    #[test]
    fn a_whole_head_gives_the_allow_list_only() {
        let s = Summary::of(PROXIED);
        assert_eq!(s, whole());
        let json = serde_json::to_string(&s).unwrap();
        for secret in ["SECRET", "must-never-show", "Session", "body", "Accept"] {
            assert!(!json.contains(secret), "{secret} in {json}");
        }
        assert_eq!(s.user_agent_product(), "kubectl");
    }

    #[test]
    fn a_head_cut_anywhere_gives_what_its_whole_lines_say() {
        let head_end = PROXIED.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        for cut in 0..head_end {
            let s = Summary::of(&PROXIED[..cut]);
            assert!(s.truncated, "cut at {cut}: {s:?}");
            let json = serde_json::to_string(&s).unwrap();
            assert!(
                !json.contains("SECRET") && !json.contains("must-never"),
                "{json}"
            );
            // Every field present is the whole head's, or a beginning of it.
            let w = whole();
            if let Some(m) = &s.method {
                assert_eq!(Some(m), w.method.as_ref(), "cut at {cut}");
            }
            if let Some(p) = &s.path {
                assert!(
                    w.path.as_ref().unwrap().starts_with(p.as_str()),
                    "cut at {cut}: {p}"
                );
            }
            let line_end = |name: &str| {
                let at = PROXIED
                    .windows(name.len())
                    .position(|w| w == name.as_bytes())
                    .unwrap();
                at + PROXIED[at..].windows(2).position(|w| w == b"\r\n").unwrap() + 2
            };
            assert_eq!(
                s.user_agent.is_some(),
                cut >= line_end("User-Agent"),
                "cut at {cut}"
            );
            assert_eq!(
                s.forwarded_uri.as_deref(),
                (cut >= line_end("X-Forwarded-Uri"))
                    .then_some("/api/v1/namespaces/default/pods/web:8080/proxy/who/metrics"),
                "cut at {cut}"
            );
        }
        assert_eq!(Summary::of(&PROXIED[..4]).method.as_deref(), Some("GET"));
        assert_eq!(Summary::of(&PROXIED[..8]).path.as_deref(), Some("/who"));
        assert_eq!(Summary::of(&PROXIED[..head_end]), whole());
    }

    #[test]
    fn long_and_hostile_values_are_bounded() {
        let mut req = b"GET /x HTTP/1.1\r\nUser-Agent: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 5000));
        req.extend_from_slice(b"\r\nX-Forwarded-For: ");
        for i in 0..20 {
            req.extend_from_slice(format!("10.0.0.{i}, ").as_bytes());
        }
        req.extend_from_slice(b"198.18.0.2\r\n\r\n");
        let s = Summary::of(&req);
        assert_eq!(s.user_agent.as_ref().unwrap().len(), FIELD_BYTES);
        assert_eq!(s.forwarded_for.len(), FORWARDED_MAX);
        assert_eq!(
            s.forwarded_for.last().unwrap(),
            "198.18.0.2",
            "the apiserver's hop is kept"
        );
        assert_eq!(s.user_agent_product(), "a".repeat(32));
        let odd = Summary {
            user_agent: Some("{evil=\"1\"}/2".into()),
            ..Summary::default()
        };
        assert_eq!(odd.user_agent_product(), "unknown");
        assert_eq!(Summary::of(b"\x00\x01garbage\r\n\r\n").method, None);
    }

    fn chunk(offset: usize, bytes: &[u8], start: u32) -> Box<HeadChunk> {
        let mut c = decode_chunk(&[0; HeadChunk::HEADER]).unwrap();
        c.client = Addr::from_v4([198, 18, 0, 1]);
        c.server = Addr::from_v4([198, 18, 16, 2]);
        c.client_port = 40000;
        c.server_port = 8080;
        c.stream_start = start;
        c.offset = offset as u32;
        c.len = bytes.len() as u32;
        c.bytes[..bytes.len()].copy_from_slice(bytes);
        c
    }

    /// The connection of a client port.
    fn port(p: u16) -> Connection {
        Connection {
            client: SocketAddr::from(([198, 18, 0, 1], p)),
            ..conn()
        }
    }

    fn conn() -> Connection {
        Connection::of_chunk(&chunk(0, b"", 7))
    }

    #[test]
    fn one_byte_chunks_in_any_order_with_duplicates_assemble() {
        let t = Instant::now();
        let mut a = Assembler::default();
        assert!(a.hold(conn(), "v", t).is_empty());
        let head_end = PROXIED.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        // Even offsets first, then odd ones, each twice; a rewrite of the
        // first byte after it was seen changes nothing.
        let mut done = None;
        for pass in [0, 1] {
            for i in (pass..head_end).step_by(2) {
                assert!(done.is_none(), "done before every byte came");
                for _ in 0..2 {
                    if let Some(r) = a.chunk(chunk(i, &PROXIED[i..=i], 7), t) {
                        done = Some(r);
                    }
                }
                assert!(a.chunk(chunk(0, b"P", 7), t).is_none() || done.is_some());
            }
        }
        assert!(
            a.chunk(chunk(0, b"PUT", 8), t).is_none(),
            "another connection's"
        );
        let (v, s) = done.expect("complete");
        assert_eq!((v, s), ("v", whole()));
        assert!(a.is_empty());
    }

    #[test]
    fn an_unfinished_head_goes_out_at_its_deadline_truncated() {
        let t = Instant::now();
        let mut a = Assembler::default();
        a.hold(conn(), 1, t);
        assert!(a.chunk(chunk(0, &PROXIED[..60], 7), t).is_none());
        assert!(
            a.chunk(chunk(100, &PROXIED[100..120], 7), t).is_none(),
            "after a gap"
        );
        assert!(a.expire(t + HEAD_WAIT / 2).is_empty());
        assert_eq!(a.next_deadline(), Some(t + HEAD_WAIT));
        let out = a.expire(t + HEAD_WAIT);
        assert_eq!(out.len(), 1);
        let (_, s) = &out[0];
        assert!(s.truncated);
        assert_eq!(s.method.as_deref(), Some("GET"));
        assert_eq!(s.path.as_deref(), Some("/who/metrics"));
        assert_eq!(s.user_agent, None, "its line was beyond the gap");
    }

    #[test]
    fn a_head_longer_than_the_copy_is_done_at_the_limit() {
        let t = Instant::now();
        let mut a = Assembler::default();
        a.hold(conn(), (), t);
        let mut long = PROXIED[..PROXIED.len() - 40].to_vec();
        long.splice(
            40..40,
            b"Cookie: "
                .iter()
                .copied()
                .chain([b'c'; 2000])
                .chain(*b"\r\n"),
        );
        let (_, s) = a
            .chunk(chunk(0, &long[..HEAD_BYTES], 7), t)
            .expect("the copy's limit ends the wait");
        assert!(s.truncated);
        assert_eq!(s.path.as_deref(), Some("/who/metrics"));
        assert_eq!(s.user_agent, None, "beyond the copy");
    }

    #[test]
    fn chunks_before_their_violation_are_kept_briefly() {
        let t = Instant::now();
        let mut a = Assembler::default();
        assert!(a.chunk(chunk(0, PROXIED, 7), t).is_none());
        let ready = a.hold(conn(), "v", t);
        assert_eq!(ready.len(), 1, "the head was already whole");
        assert_eq!(ready[0].1, whole());
        assert!(a.chunk(chunk(0, PROXIED, 7), t).is_none());
        assert!(a.expire(t + HEAD_WAIT).is_empty());
        assert_eq!(a.unmatched, 1, "an unclaimed chunk is counted");
    }

    #[test]
    fn holding_is_bounded_and_never_drops_a_violation() {
        let t = Instant::now();
        let mut a = Assembler::default();
        let mut out = 0;
        for i in 0..MAX_HELD + 10 {
            out += a.hold(port(i as u16), i, t).len();
        }
        assert_eq!(out, 10);
        assert_eq!(a.len(), MAX_HELD);
        // The same connection again: the earlier one goes out first.
        let r = a.hold(port(20), 99999, t);
        assert_eq!(r.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![20]);
        assert_eq!(a.drain().len(), MAX_HELD);
    }

    /// A client reuses its ends at once (a reset, the same port): each
    /// violation gets its own connection's head, whatever the order.
    #[test]
    fn a_second_connection_on_the_same_ends_never_lends_its_head() {
        let t = Instant::now();
        let mut a = Assembler::default();
        let first = Connection::of_chunk(&chunk(0, b"", 7));
        let second = Connection::of_chunk(&chunk(0, b"", 9000));
        assert!(a.hold(first, "first", t).is_empty());
        assert!(a.hold(second, "second", t).is_empty(), "both held");
        let benign = b"GET /healthz HTTP/1.1\r\nUser-Agent: benign\r\n\r\n";
        let (v, s) = a.chunk(chunk(0, benign, 7), t).expect("the first's head");
        assert_eq!((v, s.path.as_deref()), ("first", Some("/healthz")));
        let (v, s) = a.chunk(chunk(0, PROXIED, 9000), t).expect("the second's");
        assert_eq!((v, s), ("second", whole()));
    }

    #[test]
    fn targets_give_their_path_only() {
        for (target, path) in [
            (&b"GET /x\nX-Token:SECRET\nHost: h"[..], "/x"),
            (
                b"GET http://admin:hunter2@host:8080/x?t=S HTTP/1.1\r\n",
                "/x",
            ),
            (b"GET https://host HTTP/1.1\r\n", "/"),
            (b"GET /a#frag HTTP/1.1\r\n", "/a"),
            (b"GET /a\x00b HTTP/1.1\r\n", "/a"),
        ] {
            let s = Summary::of(target);
            assert_eq!(
                s.path.as_deref(),
                Some(path),
                "{:?}",
                String::from_utf8_lossy(target)
            );
        }
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "p".repeat(900));
        let s = Summary::of(long.as_bytes());
        assert!(!s.truncated);
        assert_eq!(s.path.unwrap().len(), FIELD_BYTES);
    }

    #[test]
    fn records_shorter_than_they_claim_are_refused() {
        let mut rec = vec![0u8; HeadChunk::HEADER + 4];
        rec[HeadChunk::HEADER - 4..HeadChunk::HEADER].copy_from_slice(&4u32.to_ne_bytes());
        assert_eq!(decode_chunk(&rec).unwrap().len, 4);
        rec[HeadChunk::HEADER - 4..HeadChunk::HEADER].copy_from_slice(&5u32.to_ne_bytes());
        assert!(decode_chunk(&rec).is_none());
        assert!(decode_chunk(&rec[..10]).is_none());
    }
}
