//! Protocol detection from the first payload bytes of a connection.

indexed_enum! {
    /// The `protocol` label. The discriminant indexes the kernel's counter
    /// arrays.
    pub enum Protocol: u8, label "protocol" {
        /// A TLS handshake record.
        Tls = 0 => "tls",
        /// An HTTP/1.x request line.
        Http = 1 => "http",
        /// The cleartext HTTP/2 connection preface (h2c with prior knowledge).
        Http2 = 2 => "http2",
        /// An SSH identification string.
        Ssh = 3 => "ssh",
        /// Anything else.
        Other = 4 => "other",
        /// The connection closed before any payload.
        None = 5 => "none",
    }
}

impl Protocol {
    /// Plaintext protocols: the ones the default policy alerts on.
    pub const fn is_plaintext(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Other)
    }
}

/// How many leading bytes detection may need. The longest signature is the
/// h2c preface's first line, `PRI * HTTP/2.0\r\n` (16 bytes).
pub const PREFIX_LEN: usize = 16;

/// The first bytes of a stream as two little-endian words: byte `i` is bits
/// `8 * (i % 8)..` of word `i / 8`. Detection works on whole words so the
/// kernel runs a few ALU operations per signature instead of a byte loop
/// with a branch per byte, which is also what keeps the verifier fast.
pub type Prefix = [u64; 2];

/// Packs up to [`PREFIX_LEN`] bytes into a [`Prefix`].
pub const fn pack(bytes: &[u8]) -> Prefix {
    let mut w = [0u64; 2];
    let mut i = 0;
    while i < bytes.len() && i < PREFIX_LEN {
        w[i / 8] |= (bytes[i] as u64) << (8 * (i % 8));
        i += 1;
    }
    w
}

/// The mask of the first `n` bytes (`n` in `0..=16`).
#[inline(always)]
pub const fn first_bytes(n: usize) -> Prefix {
    let lo = if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    };
    let hi = if n >= 16 {
        u64::MAX
    } else if n <= 8 {
        0
    } else {
        (1u64 << (8 * (n - 8))) - 1
    };
    [lo, hi]
}

/// The result of looking at the first bytes seen so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// The protocol is known.
    Decided(Protocol),
    /// The bytes so far are a prefix of some signature: wait for more. This is
    /// what keeps a request line split across tiny segments from being
    /// called `other`.
    NeedMore,
}

struct Signature {
    bytes: Prefix,
    mask: Prefix,
    len: usize,
    protocol: Protocol,
}

const fn sig(bytes: &[u8], protocol: Protocol) -> Signature {
    Signature {
        bytes: pack(bytes),
        mask: first_bytes(bytes.len()),
        len: bytes.len(),
        protocol,
    }
}

/// Signatures besides TLS's (see [`tls`]). HTTP methods carry their
/// trailing space so that `GETX` is not taken for HTTP; SSH needs a whole
/// protocol version (RFC 4253 §4.2).
const SIGNATURES: [Signature; 12] = [
    sig(b"PRI * HTTP/2.0\r\n", Protocol::Http2),
    sig(b"SSH-2.0-", Protocol::Ssh),
    sig(b"SSH-1.99-", Protocol::Ssh),
    sig(b"GET ", Protocol::Http),
    sig(b"POST ", Protocol::Http),
    sig(b"PUT ", Protocol::Http),
    sig(b"HEAD ", Protocol::Http),
    sig(b"DELETE ", Protocol::Http),
    sig(b"OPTIONS ", Protocol::Http),
    sig(b"PATCH ", Protocol::Http),
    sig(b"CONNECT ", Protocol::Http),
    sig(b"TRACE ", Protocol::Http),
];

/// Decides the protocol from the first `len` bytes of `prefix` (the first
/// bytes the first speaker sent, in stream order; bytes past `len` are 0).
/// With `len == PREFIX_LEN` or `closed` it always decides.
#[inline(always)]
pub fn detect(prefix: &Prefix, len: usize, closed: bool) -> Detection {
    if len == 0 {
        return if closed {
            Detection::Decided(Protocol::None)
        } else {
            Detection::NeedMore
        };
    }
    let final_ = closed || len >= PREFIX_LEN;
    let have = first_bytes(if len > PREFIX_LEN { PREFIX_LEN } else { len });
    if prefix[0] & 0xff == 0x16 {
        return tls(prefix, len, final_, have);
    }
    let mut need_more = false;
    let mut s = 0;
    while s < SIGNATURES.len() {
        let sig = &SIGNATURES[s];
        let diff0 = (prefix[0] ^ sig.bytes[0]) & sig.mask[0];
        let diff1 = (prefix[1] ^ sig.bytes[1]) & sig.mask[1];
        if len >= sig.len {
            if diff0 | diff1 == 0 {
                return Detection::Decided(sig.protocol);
            }
        } else if (diff0 & have[0]) | (diff1 & have[1]) == 0 {
            need_more = true;
        }
        s += 1;
    }
    if need_more && !final_ {
        Detection::NeedMore
    } else {
        Detection::Decided(Protocol::Other)
    }
}

/// Bytes a TLS ClientHello's first [`TLS_LEN`] bytes must have: record
/// type 22 (handshake), record version major 3, handshake type 1
/// (ClientHello), handshake length below 64 KiB, client version major 3.
const TLS_FIXED: Signature = sig(
    &[0x16, 0x03, 0, 0, 0, 0x01, 0x00, 0, 0, 0x03],
    Protocol::Tls,
);
/// Which of [`TLS_FIXED`]'s bytes are fixed (byte offsets 0, 1, 5, 6, 9).
const TLS_FIXED_MASK: Prefix = [0x00ff_ff00_0000_ffff, 0xff00];
/// How many bytes [`tls`] needs to decide.
const TLS_LEN: usize = 11;
/// The smallest ClientHello body: version, random, and the four length
/// fields of an empty session id, cipher suite, compression and extension
/// list (RFC 8446 §4.1.2), less the extensions' own.
const CLIENT_HELLO_MIN: u64 = 2 + 32 + 1 + 2 + 2 + 1;
/// The largest TLS plaintext record (RFC 8446 §5.1).
const RECORD_MAX: u64 = 1 << 14;

/// A stream starting with byte 22 is TLS only if it starts with the header
/// of a record carrying a ClientHello, with consistent lengths: a
/// TLS-looking prefix followed by anything else is `other`.
#[inline(always)]
fn tls(prefix: &Prefix, len: usize, final_: bool, have: Prefix) -> Detection {
    let byte = |i: usize| (prefix[i / 8] >> (8 * (i % 8))) & 0xff;
    let fixed_ok = (prefix[0] ^ TLS_FIXED.bytes[0]) & TLS_FIXED_MASK[0] & have[0] == 0
        && (prefix[1] ^ TLS_FIXED.bytes[1]) & TLS_FIXED_MASK[1] & have[1] == 0;
    // Minor versions: SSL 3.0 (0) to TLS 1.3 (4), in the record and hello.
    let versions_ok = (len <= 2 || byte(2) <= 4) && (len <= 10 || byte(10) <= 4);
    if !fixed_ok || !versions_ok {
        return Detection::Decided(Protocol::Other);
    }
    if len < TLS_LEN {
        return if final_ {
            Detection::Decided(Protocol::Other)
        } else {
            Detection::NeedMore
        };
    }
    let record = (byte(3) << 8) | byte(4);
    let hello = (byte(7) << 8) | byte(8);
    // The hello fills the record, or continues in the next ones.
    let lengths_ok = hello >= CLIENT_HELLO_MIN
        && (4 + CLIENT_HELLO_MIN..=RECORD_MAX).contains(&record)
        && hello + 4 >= record;
    Detection::Decided(if lengths_ok {
        Protocol::Tls
    } else {
        Protocol::Other
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn run(bytes: &[u8], closed: bool) -> Detection {
        detect(&pack(bytes), bytes.len().min(PREFIX_LEN), closed)
    }

    fn decided(bytes: &[u8]) -> Protocol {
        match run(bytes, false) {
            Detection::Decided(p) => p,
            Detection::NeedMore => panic!("{bytes:?} left undecided"),
        }
    }

    #[test]
    fn signatures() {
        assert_eq!(
            decided(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Protocol::Http
        );
        assert_eq!(decided(b"POST /api HTTP/1.1\r\n"), Protocol::Http);
        assert_eq!(decided(b"OPTIONS * HTTP/1.1\r\n"), Protocol::Http);
        assert_eq!(
            decided(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Protocol::Http2
        );
        assert_eq!(decided(b"SSH-2.0-OpenSSH_9.2p1\r\n"), Protocol::Ssh);
        assert_eq!(decided(b"SSH-1.99-x\r\n"), Protocol::Ssh);
        assert_eq!(decided(b"SSH-3.0-x\r\n"), Protocol::Other);
        assert_eq!(decided(CLIENT_HELLO), Protocol::Tls);
        assert_eq!(decided(&[0x16, 0x03, 0x09]), Protocol::Other);
        assert_eq!(decided(&[0x17, 0x03, 0x03]), Protocol::Other);
        assert_eq!(decided(b"\x00\x00\x00\x01hello"), Protocol::Other);
        assert_eq!(decided(b"GETX / HTTP/1.1"), Protocol::Other);
        assert_eq!(decided(b"get / HTTP/1.1\r\n"), Protocol::Other);
        // "PRI " is the start of the h2c preface, not an HTTP/1 method.
        assert_eq!(decided(b"PRI * HTTP/1.1\r\nX"), Protocol::Other);
    }

    /// The start of a TLS 1.2/1.3 ClientHello: a 512-byte record holding a
    /// 508-byte hello, client version 3.3.
    const CLIENT_HELLO: &[u8] = &[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0xaa, 0xbb,
    ];

    /// A TLS-looking start followed by anything but a ClientHello is not
    /// TLS: the record type alone proves nothing.
    #[test]
    fn tls_needs_a_whole_client_hello_header() {
        let mut bad: Vec<(&str, Vec<u8>)> = Vec::new();
        let with = |i: usize, b: u8| {
            let mut v = CLIENT_HELLO.to_vec();
            v[i] = b;
            v
        };
        bad.push((
            "a request after 3 record bytes",
            b"\x16\x03\x01GET / HTTP/1.1\r\n".to_vec(),
        ));
        bad.push(("record major version 2", with(1, 0x02)));
        bad.push(("record minor version 5", with(2, 0x05)));
        bad.push(("a ServerHello", with(5, 0x02)));
        bad.push(("a hello of 64 KiB or more", with(6, 0x01)));
        bad.push(("client version 2.x", with(9, 0x02)));
        bad.push(("client minor version 9", with(10, 0x09)));
        bad.push(("a record longer than TLS allows", with(3, 0x40)));
        bad.push(("a hello shorter than the record", with(7, 0x00)));
        bad.push((
            "a record too short for a hello",
            [&CLIENT_HELLO[..3], &[0x00, 0x10], &CLIENT_HELLO[5..]].concat(),
        ));
        for (what, bytes) in bad {
            assert_eq!(decided(&bytes), Protocol::Other, "{what}: {bytes:02x?}");
        }
        // A hello continued in the next record is fine.
        assert_eq!(decided(&with(7, 0x40)), Protocol::Tls);
        // TLS 1.3's record version 3.1 and hello version 3.3; SSL 3.0.
        assert_eq!(decided(&with(2, 0x00)), Protocol::Tls);
        // Ten bytes are not enough, unless one already is wrong.
        assert_eq!(run(&CLIENT_HELLO[..10], false), Detection::NeedMore);
        assert_eq!(
            run(&CLIENT_HELLO[..10], true),
            Detection::Decided(Protocol::Other)
        );
        assert_eq!(run(b"\x16\x03\x01G", false), Detection::NeedMore);
        assert_eq!(
            run(b"\x16\x03\x01\x02\x00G", false),
            Detection::Decided(Protocol::Other)
        );
    }

    #[test]
    fn every_prefix_of_a_signature_waits() {
        let samples: [&[u8]; 6] = [
            b"GET / HTTP/1.1\r\n",
            b"CONNECT x:1 HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"SSH-2.0-x\r\n",
            CLIENT_HELLO,
            b"DELETE /x HTTP/1.1\r\n",
        ];
        for s in samples {
            let full = decided(s);
            for cut in 1..s.len().min(PREFIX_LEN) {
                match run(&s[..cut], false) {
                    Detection::NeedMore => {}
                    Detection::Decided(p) => {
                        assert_eq!(p, full, "prefix {:?} of {:?}", &s[..cut], s);
                    }
                }
            }
        }
    }

    #[test]
    fn closing_decides() {
        assert_eq!(run(b"", true), Detection::Decided(Protocol::None));
        assert_eq!(run(b"", false), Detection::NeedMore);
        assert_eq!(run(b"GE", true), Detection::Decided(Protocol::Other));
        assert_eq!(run(&[0x16], true), Detection::Decided(Protocol::Other));
    }

    #[test]
    fn a_full_buffer_always_decides() {
        let all: Vec<u8> = (0..=255u8).collect();
        for w in all.windows(PREFIX_LEN) {
            assert!(matches!(run(w, false), Detection::Decided(_)));
        }
    }

    #[test]
    fn masks() {
        assert_eq!(first_bytes(0), [0, 0]);
        assert_eq!(first_bytes(3), [0xff_ffff, 0]);
        assert_eq!(first_bytes(8), [u64::MAX, 0]);
        assert_eq!(first_bytes(9), [u64::MAX, 0xff]);
        assert_eq!(first_bytes(16), [u64::MAX, u64::MAX]);
        assert_eq!(pack(b"GET "), [u64::from(u32::from_le_bytes(*b"GET ")), 0]);
    }
}
