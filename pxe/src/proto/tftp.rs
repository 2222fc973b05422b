//! TFTP codec: RFC 1350 packets, RFC 2347 option extension (OACK), RFC 2348
//! (blksize), RFC 2349 (timeout, tsize) and RFC 7440 (windowsize).
//!
//! Everything here is pure: [`decode`] and [`encode`] convert between bytes and
//! [`Packet`], [`negotiate`] turns a client's requested options into what the server
//! accepts, and [`ack_to_seq`] maps a 16-bit block number back onto the transfer's
//! 64-bit block sequence so transfers can run past block 65535.

use std::fmt;

/// RFC 1350 default block size; used when the client does not ask for `blksize`.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// RFC 2348: smallest valid `blksize`.
pub const MIN_BLKSIZE: u16 = 8;
/// RFC 2348: largest valid `blksize` (65535 minus IP and UDP headers, rounded down).
pub const MAX_BLKSIZE: u16 = 65464;
/// Header of a DATA packet: opcode + block number.
pub const DATA_HEADER_LEN: usize = 4;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// Transfer mode of a request (RFC 1350 section 5; compared case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Netascii,
    Octet,
    Mail,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Netascii => "netascii",
            Mode::Octet => "octet",
            Mode::Mail => "mail",
        }
    }
}

/// RFC 1350 error codes, plus RFC 2347's code 8. Unknown codes are kept as
/// `Other(n)` rather than failing the decode: a client's error must always be
/// understood as "stop", whatever its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined,
    FileNotFound,
    AccessViolation,
    DiskFull,
    IllegalOperation,
    UnknownTid,
    FileExists,
    NoSuchUser,
    /// RFC 2347: the client refuses the OACK (EDK2's tsize probe sends this).
    OptionRefused,
    Other(u16),
}

impl ErrorCode {
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTid => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionRefused => 8,
            ErrorCode::Other(n) => n,
        }
    }

    pub fn from_u16(n: u16) -> Self {
        match n {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTid,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionRefused,
            n => ErrorCode::Other(n),
        }
    }
}

/// A read or write request. Options keep the client's order and spelling; names
/// are matched case-insensitively by [`negotiate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    pub mode: Mode,
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, data: Vec<u8> },
    Ack { block: u16 },
    Error { code: ErrorCode, msg: String },
    Oack { options: Vec<(String, String)> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("string field not terminated by NUL")]
    Unterminated,
    #[error("string field is not valid UTF-8")]
    InvalidUtf8,
    #[error("empty filename")]
    EmptyFilename,
    #[error("unknown transfer mode {0:?}")]
    UnknownMode(String),
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
    #[error("empty option name")]
    EmptyOptionName,
    #[error("option {0:?} given twice")]
    DuplicateOption(String),
    #[error("{0} trailing bytes after packet")]
    TrailingBytes(usize),
    #[error("DATA payload of {0} bytes exceeds the RFC 2348 maximum")]
    DataTooLong(usize),
}

/// Splits `buf` at the first NUL, returning the string before it and the rest.
fn take_str(buf: &[u8]) -> Result<(&str, &[u8]), DecodeError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(DecodeError::Unterminated)?;
    let s = std::str::from_utf8(&buf[..nul]).map_err(|_| DecodeError::InvalidUtf8)?;
    Ok((s, &buf[nul + 1..]))
}

/// RFC 2347 option list: `name NUL value NUL` pairs until the end of the packet.
fn decode_options(mut rest: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
    let mut options: Vec<(String, String)> = Vec::new();
    while !rest.is_empty() {
        let (name, after) = take_str(rest)?;
        if name.is_empty() {
            return Err(DecodeError::EmptyOptionName);
        }
        if after.is_empty() {
            return Err(DecodeError::OptionWithoutValue(name.to_owned()));
        }
        let (value, after) = take_str(after)?;
        if options.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(DecodeError::DuplicateOption(name.to_owned()));
        }
        options.push((name.to_owned(), value.to_owned()));
        rest = after;
    }
    Ok(options)
}

fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    let (filename, rest) = take_str(body)?;
    if filename.is_empty() {
        return Err(DecodeError::EmptyFilename);
    }
    let (mode, rest) = take_str(rest)?;
    let mode = match mode.to_ascii_lowercase().as_str() {
        "netascii" => Mode::Netascii,
        "octet" => Mode::Octet,
        "mail" => Mode::Mail,
        _ => return Err(DecodeError::UnknownMode(mode.to_owned())),
    };
    Ok(Request {
        filename: filename.to_owned(),
        mode,
        options: decode_options(rest)?,
    })
}

/// Decodes one TFTP packet.
pub fn decode(buf: &[u8]) -> Result<Packet, DecodeError> {
    if buf.len() < 4 {
        // Every packet has a 2-byte opcode and at least 2 more bytes (block
        // number, error code or the shortest possible request).
        return Err(DecodeError::TooShort(buf.len()));
    }
    let op = u16::from_be_bytes([buf[0], buf[1]]);
    let body = &buf[2..];
    match op {
        OP_RRQ => Ok(Packet::Rrq(decode_request(body)?)),
        OP_WRQ => Ok(Packet::Wrq(decode_request(body)?)),
        OP_DATA => {
            let data = &body[2..];
            if data.len() > MAX_BLKSIZE as usize {
                return Err(DecodeError::DataTooLong(data.len()));
            }
            Ok(Packet::Data {
                block: u16::from_be_bytes([body[0], body[1]]),
                data: data.to_vec(),
            })
        }
        OP_ACK => {
            if body.len() > 2 {
                return Err(DecodeError::TrailingBytes(body.len() - 2));
            }
            Ok(Packet::Ack {
                block: u16::from_be_bytes([body[0], body[1]]),
            })
        }
        OP_ERROR => {
            let code = ErrorCode::from_u16(u16::from_be_bytes([body[0], body[1]]));
            let raw = &body[2..];
            // Lenient on purpose: some clients omit the message's NUL or send
            // non-UTF-8 text. An ERROR must always be understood, because ignoring it
            // means retransmitting at a client that has given up (the EDK2 tsize
            // probe ends with ERROR 8).
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            Ok(Packet::Error {
                code,
                msg: String::from_utf8_lossy(&raw[..end]).into_owned(),
            })
        }
        OP_OACK => Ok(Packet::Oack {
            options: decode_options(body)?,
        }),
        other => Err(DecodeError::UnknownOpcode(other)),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn put_options(out: &mut Vec<u8>, options: &[(String, String)]) {
    for (name, value) in options {
        put_str(out, name);
        put_str(out, value);
    }
}

/// Encodes one packet. The data path of the server does not use this for DATA
/// packets (see [`write_data_header`]) to avoid an allocation per block.
pub fn encode(packet: &Packet) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    match packet {
        Packet::Rrq(req) | Packet::Wrq(req) => {
            let op = if matches!(packet, Packet::Rrq(_)) {
                OP_RRQ
            } else {
                OP_WRQ
            };
            out.extend_from_slice(&op.to_be_bytes());
            put_str(&mut out, &req.filename);
            put_str(&mut out, req.mode.as_str());
            put_options(&mut out, &req.options);
        }
        Packet::Data { block, data } => {
            out.reserve(data.len());
            out.extend_from_slice(&OP_DATA.to_be_bytes());
            out.extend_from_slice(&block.to_be_bytes());
            out.extend_from_slice(data);
        }
        Packet::Ack { block } => {
            out.extend_from_slice(&OP_ACK.to_be_bytes());
            out.extend_from_slice(&block.to_be_bytes());
        }
        Packet::Error { code, msg } => {
            out.extend_from_slice(&OP_ERROR.to_be_bytes());
            out.extend_from_slice(&code.to_u16().to_be_bytes());
            put_str(&mut out, msg);
        }
        Packet::Oack { options } => {
            out.extend_from_slice(&OP_OACK.to_be_bytes());
            put_options(&mut out, options);
        }
    }
    out
}

/// Writes a DATA header for `block` into the first 4 bytes of `buf`; the caller
/// places the payload after it. Lets the server reuse one buffer for every block.
pub fn write_data_header(buf: &mut [u8], block: u16) {
    buf[..2].copy_from_slice(&OP_DATA.to_be_bytes());
    buf[2..4].copy_from_slice(&block.to_be_bytes());
}

/// The server's limits for option negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size granted (clamped to [`MAX_BLKSIZE`]).
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440 allows 1..=65535).
    pub max_windowsize: u16,
    /// Upper bound on `blksize × windowsize`: the server buffers one window for
    /// retransmission, so this bounds memory per transfer.
    pub max_window_bytes: usize,
    /// Longest RFC 2349 `timeout` (seconds) acknowledged. A client asking for more gets no
    /// `timeout` in the OACK and the server's own timeout: a never-ACKing client asking 255 s
    /// would otherwise hold a transfer slot for hours (255 s doubled per retry).
    pub max_timeout_secs: u8,
}

/// Default for [`Limits::max_timeout_secs`]: iPXE and EDK2 never send `timeout`; tftp-hpa
/// and curl ask for 1-5 s when told to.
pub const MAX_TIMEOUT_SECS: u8 = 5;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blksize: MAX_BLKSIZE,
            max_windowsize: 64,
            max_window_bytes: 1 << 20,
            max_timeout_secs: MAX_TIMEOUT_SECS,
        }
    }
}

/// Outcome of option negotiation for a read request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    /// RFC 2349 retransmission timeout in seconds, if the client set one.
    pub timeout_secs: Option<u8>,
    /// Options to send back in an OACK, in the client's order. Empty means no
    /// OACK: the transfer starts directly with DATA block 1 (RFC 2347).
    pub oack: Vec<(String, String)>,
}

/// Decides which of a read request's options the server accepts.
///
/// Rules (unknown or invalid options are silently not acknowledged, as RFC 2347
/// requires, so the client falls back to the default):
/// - `blksize` 8..=65464; larger requests are lowered to the server maximum
///   (RFC 2348 lets the server answer with a smaller value); below 8 is ignored.
/// - `windowsize` 1..=65535, lowered to the server maximum and to what fits into
///   `max_window_bytes`; 0 is ignored.
/// - `timeout` 1..=`max_timeout_secs` seconds, accepted unchanged; anything else,
///   larger values included, is not acknowledged (RFC 2349 §"Timeout Interval Option":
///   the OACK value "must match the value specified by the client", so the server cannot
///   answer with a smaller one) and the server keeps its own timeout.
/// - `tsize` only as `0` in a read request, answered with `file_size`.
pub fn negotiate(requested: &[(String, String)], limits: &Limits, file_size: u64) -> Negotiated {
    let mut out = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout_secs: None,
        oack: Vec::new(),
    };
    let max_blksize = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
    let mut window_requested: Option<u16> = None;
    for (name, value) in requested {
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "blksize" => {
                let Ok(v) = value.parse::<u64>() else {
                    continue;
                };
                if v < MIN_BLKSIZE as u64 {
                    continue;
                }
                out.blksize = v.min(max_blksize as u64) as u16;
                out.oack.push(("blksize".into(), out.blksize.to_string()));
            }
            "windowsize" => {
                let Ok(v) = value.parse::<u64>() else {
                    continue;
                };
                if v == 0 || v > u16::MAX as u64 {
                    continue;
                }
                // Decided after the loop, once blksize is known.
                window_requested = Some(v as u16);
                out.oack.push(("windowsize".into(), String::new()));
            }
            "timeout" => {
                let Ok(v) = value.parse::<u64>() else {
                    continue;
                };
                if !(1..=u64::from(limits.max_timeout_secs.max(1))).contains(&v) {
                    continue;
                }
                out.timeout_secs = Some(v as u8);
                out.oack.push(("timeout".into(), v.to_string()));
            }
            "tsize" => {
                if value != "0" {
                    continue;
                }
                out.oack.push(("tsize".into(), file_size.to_string()));
            }
            _ => {}
        }
    }
    if let Some(wanted) = window_requested {
        let by_bytes = (limits.max_window_bytes / out.blksize as usize).clamp(1, u16::MAX as usize);
        out.windowsize = wanted
            .min(limits.max_windowsize.max(1))
            .min(by_bytes as u16);
        if let Some(slot) = out.oack.iter_mut().find(|(n, _)| n == "windowsize") {
            slot.1 = out.windowsize.to_string();
        }
    }
    out
}

/// Block number on the wire for the `seq`-th block of a transfer (1-based).
/// RFC 1350 has only 16 bits; past 65535 the number wraps to 0, which is what
/// tftp-hpa, curl, atftp and iPXE expect.
pub fn block_number(seq: u64) -> u16 {
    (seq & 0xFFFF) as u16
}

/// Maps an ACKed 16-bit block number onto the transfer's block sequence.
///
/// `acked` is the highest sequence already acknowledged (0 = nothing or just the
/// OACK), `sent` the highest sequence sent. Returns the sequence the ACK
/// acknowledges if it moves the window forward, or `None` for a duplicate or stale
/// ACK — which the sender must ignore rather than answer, or both sides end up
/// sending everything twice (the "Sorcerer's Apprentice" bug, RFC 1123 4.2.3.1).
/// Unique as long as fewer than 65536 blocks are in flight, which windowsize
/// guarantees.
pub fn ack_to_seq(ack: u16, acked: u64, sent: u64) -> Option<u64> {
    let offset = ack.wrapping_sub(block_number(acked)) as u64;
    (offset >= 1 && acked + offset <= sent).then_some(acked + offset)
}

/// Number of DATA packets needed for `size` bytes: a transfer always ends with a
/// block shorter than `blksize`, which is empty when `size` is a multiple of it.
pub fn block_count(size: u64, blksize: u16) -> u64 {
    size / blksize as u64 + 1
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn roundtrip(p: Packet) {
        let bytes = encode(&p);
        assert_eq!(decode(&bytes), Ok(p.clone()), "bytes {bytes:?}");
        // encode(decode(x)) == x as well.
        assert_eq!(encode(&decode(&bytes).unwrap()), bytes);
    }

    #[test]
    fn roundtrip_every_packet_kind() {
        roundtrip(Packet::Rrq(Request {
            filename: "undionly.kpxe".into(),
            mode: Mode::Octet,
            options: vec![],
        }));
        roundtrip(Packet::Rrq(Request {
            filename: "/efi/snponly.efi".into(),
            mode: Mode::Netascii,
            options: opts(&[("blksize", "1468"), ("windowsize", "4"), ("tsize", "0")]),
        }));
        roundtrip(Packet::Wrq(Request {
            filename: "up".into(),
            mode: Mode::Mail,
            options: opts(&[("timeout", "3")]),
        }));
        roundtrip(Packet::Data {
            block: 65535,
            data: vec![7; 512],
        });
        roundtrip(Packet::Data {
            block: 0,
            data: vec![],
        });
        roundtrip(Packet::Data {
            block: 1,
            data: vec![1; MAX_BLKSIZE as usize],
        });
        roundtrip(Packet::Ack { block: 0 });
        roundtrip(Packet::Ack { block: 4242 });
        roundtrip(Packet::Error {
            code: ErrorCode::OptionRefused,
            msg: "tsize probe".into(),
        });
        roundtrip(Packet::Error {
            code: ErrorCode::Other(99),
            msg: String::new(),
        });
        roundtrip(Packet::Oack {
            options: opts(&[("tsize", "123456"), ("blksize", "1468")]),
        });
    }

    #[test]
    fn error_codes_map_both_ways() {
        for n in 0..=10u16 {
            assert_eq!(ErrorCode::from_u16(n).to_u16(), n);
        }
        assert_eq!(ErrorCode::from_u16(8), ErrorCode::OptionRefused);
        assert_eq!(ErrorCode::from_u16(9), ErrorCode::Other(9));
    }

    #[test]
    fn decodes_known_wire_bytes() {
        // RRQ as sent by EDK2's first (probe) request.
        let wire = b"\x00\x01snponly.efi\x00octet\x00tsize\x000\x00";
        assert_eq!(
            decode(wire),
            Ok(Packet::Rrq(Request {
                filename: "snponly.efi".into(),
                mode: Mode::Octet,
                options: opts(&[("tsize", "0")]),
            }))
        );
        assert_eq!(decode(b"\x00\x04\x01\x02"), Ok(Packet::Ack { block: 258 }));
        let mut data = vec![0, 3, 0xff, 0xff];
        data.extend_from_slice(b"abc");
        let mut out = vec![0u8; 7];
        write_data_header(&mut out, 65535);
        out[4..].copy_from_slice(b"abc");
        assert_eq!(out, data);
    }

    #[test]
    fn mode_is_case_insensitive() {
        let p = decode(b"\x00\x01f\x00OcTeT\x00").unwrap();
        assert!(matches!(
            p,
            Packet::Rrq(Request {
                mode: Mode::Octet,
                ..
            })
        ));
        let p = decode(b"\x00\x01f\x00NETASCII\x00").unwrap();
        assert!(matches!(
            p,
            Packet::Rrq(Request {
                mode: Mode::Netascii,
                ..
            })
        ));
    }

    #[test]
    fn malformed_packets_are_rejected() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"", DecodeError::TooShort(0)),
            (b"\x00", DecodeError::TooShort(1)),
            (b"\x00\x04\x00", DecodeError::TooShort(3)),
            // An OACK without options acknowledges nothing: never valid.
            (b"\x00\x06", DecodeError::TooShort(2)),
            (b"\x00\x07\x00\x00", DecodeError::UnknownOpcode(7)),
            (b"\x00\x00\x00\x00", DecodeError::UnknownOpcode(0)),
            (b"\x00\x01file", DecodeError::Unterminated),
            (b"\x00\x01file\x00octet", DecodeError::Unterminated),
            (b"\x00\x01\x00octet\x00", DecodeError::EmptyFilename),
            (
                b"\x00\x01f\x00binary\x00",
                DecodeError::UnknownMode("binary".into()),
            ),
            (b"\x00\x01\xff\xfe\x00octet\x00", DecodeError::InvalidUtf8),
            (
                b"\x00\x01f\x00octet\x00blksize\x00",
                DecodeError::OptionWithoutValue("blksize".into()),
            ),
            (
                b"\x00\x01f\x00octet\x00blksize\x001468",
                DecodeError::Unterminated,
            ),
            (
                b"\x00\x01f\x00octet\x00\x001\x00",
                DecodeError::EmptyOptionName,
            ),
            (
                b"\x00\x01f\x00octet\x00tsize\x000\x00TSIZE\x000\x00",
                DecodeError::DuplicateOption("TSIZE".into()),
            ),
            (
                b"\x00\x02f\x00octet\x00x\x00",
                DecodeError::OptionWithoutValue("x".into()),
            ),
            (b"\x00\x04\x00\x01\x00", DecodeError::TrailingBytes(1)),
            (
                b"\x00\x06blksize\x00",
                DecodeError::OptionWithoutValue("blksize".into()),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode(bytes).as_ref(), Err(want), "input {bytes:?}");
        }
        let mut big = vec![0, 3, 0, 1];
        big.resize(4 + MAX_BLKSIZE as usize + 1, 0);
        assert_eq!(
            decode(&big),
            Err(DecodeError::DataTooLong(MAX_BLKSIZE as usize + 1))
        );
    }

    #[test]
    fn error_packet_decoding_is_lenient() {
        // No terminating NUL, invalid UTF-8: still an ERROR the server must obey.
        assert_eq!(
            decode(b"\x00\x05\x00\x08abort"),
            Ok(Packet::Error {
                code: ErrorCode::OptionRefused,
                msg: "abort".into()
            })
        );
        assert_eq!(
            decode(b"\x00\x05\x00\x00"),
            Ok(Packet::Error {
                code: ErrorCode::NotDefined,
                msg: String::new()
            })
        );
        let p = decode(b"\x00\x05\x00\x01\xff\x00junk").unwrap();
        assert!(matches!(
            p,
            Packet::Error {
                code: ErrorCode::FileNotFound,
                ..
            }
        ));
    }

    fn neg(pairs: &[(&str, &str)]) -> Negotiated {
        negotiate(&opts(pairs), &Limits::default(), 1000)
    }

    #[test]
    fn no_options_means_no_oack() {
        let n = neg(&[]);
        assert_eq!(n.blksize, 512);
        assert_eq!(n.windowsize, 1);
        assert_eq!(n.timeout_secs, None);
        assert!(n.oack.is_empty());
        // Unknown options are ignored, not refused.
        assert!(
            neg(&[("multicast", ""), ("utimeout", "5000")])
                .oack
                .is_empty()
        );
    }

    #[test]
    fn blksize_is_clamped() {
        assert_eq!(neg(&[("blksize", "1468")]).blksize, 1468);
        assert_eq!(neg(&[("blksize", "8")]).blksize, 8);
        assert_eq!(neg(&[("blksize", "65464")]).blksize, 65464);
        let n = neg(&[("blksize", "65535")]);
        assert_eq!(n.blksize, 65464);
        assert_eq!(n.oack, opts(&[("blksize", "65464")]));
        assert_eq!(
            neg(&[("blksize", "99999999999999999999")]).oack,
            vec![],
            "unparsable"
        );
        for bad in ["7", "0", "-1", "abc", ""] {
            let n = neg(&[("blksize", bad)]);
            assert_eq!((n.blksize, n.oack.len()), (512, 0), "blksize {bad:?}");
        }
        let limits = Limits {
            max_blksize: 1024,
            ..Limits::default()
        };
        let n = negotiate(&opts(&[("BlkSize", "1468")]), &limits, 0);
        assert_eq!(n.oack, opts(&[("blksize", "1024")]));
    }

    #[test]
    fn windowsize_is_clamped() {
        assert_eq!(neg(&[("windowsize", "16")]).windowsize, 16);
        assert_eq!(neg(&[("windowsize", "1")]).windowsize, 1);
        assert_eq!(neg(&[("windowsize", "65535")]).windowsize, 64);
        for bad in ["0", "65536", "x"] {
            let n = neg(&[("windowsize", bad)]);
            assert_eq!((n.windowsize, n.oack.len()), (1, 0), "windowsize {bad:?}");
        }
        // The memory bound: 65464 × 16 > 1 MiB, so the window shrinks to 16.
        let n = neg(&[("windowsize", "64"), ("blksize", "65464")]);
        assert_eq!(n.windowsize, 16);
        assert_eq!(n.oack, opts(&[("windowsize", "16"), ("blksize", "65464")]));
        let limits = Limits {
            max_windowsize: 65535,
            max_window_bytes: usize::MAX,
            ..Limits::default()
        };
        let n = negotiate(&opts(&[("windowsize", "65535")]), &limits, 0);
        assert_eq!(n.windowsize, 65535);
        // A window never shrinks below one block.
        let limits = Limits {
            max_window_bytes: 1,
            ..Limits::default()
        };
        assert_eq!(
            negotiate(&opts(&[("windowsize", "8")]), &limits, 0).windowsize,
            1
        );
    }

    #[test]
    fn timeout_in_range_only() {
        assert_eq!(neg(&[("timeout", "1")]).timeout_secs, Some(1));
        assert_eq!(neg(&[("timeout", "5")]).timeout_secs, Some(5));
        for bad in ["0", "256", "1.5", ""] {
            let n = neg(&[("timeout", bad)]);
            assert_eq!((n.timeout_secs, n.oack.len()), (None, 0), "timeout {bad:?}");
        }
    }

    /// Protects the transfer slots: a client asking `timeout 255` and never ACKing would
    /// hold a slot for 255 s per retry, doubling (hours). Past the limit the option is not
    /// acknowledged at all (RFC 2349 forbids answering another value) and the other options
    /// still are.
    #[test]
    fn a_long_timeout_is_not_acknowledged() {
        for long in ["6", "30", "255"] {
            let n = neg(&[("blksize", "1468"), ("timeout", long), ("tsize", "0")]);
            assert_eq!(n.timeout_secs, None, "timeout {long}");
            assert_eq!(n.oack, opts(&[("blksize", "1468"), ("tsize", "1000")]));
        }
        let limits = Limits {
            max_timeout_secs: 255,
            ..Limits::default()
        };
        let n = negotiate(&opts(&[("timeout", "255")]), &limits, 0);
        assert_eq!(n.timeout_secs, Some(255));
        // A zero limit still lets a 1 s timeout through rather than none at all.
        let limits = Limits {
            max_timeout_secs: 0,
            ..Limits::default()
        };
        assert_eq!(
            negotiate(&opts(&[("timeout", "1")]), &limits, 0).timeout_secs,
            Some(1)
        );
    }

    #[test]
    fn tsize_only_as_zero() {
        assert_eq!(neg(&[("tsize", "0")]).oack, opts(&[("tsize", "1000")]));
        assert!(neg(&[("tsize", "5")]).oack.is_empty());
        let n = negotiate(&opts(&[("tsize", "0")]), &Limits::default(), 0);
        assert_eq!(n.oack, opts(&[("tsize", "0")]));
    }

    #[test]
    fn edk2_requests() {
        // EDK2: probe with tsize only, then the real request.
        assert_eq!(neg(&[("tsize", "0")]).oack, opts(&[("tsize", "1000")]));
        let n = neg(&[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")]);
        assert_eq!((n.blksize, n.windowsize), (1468, 4));
        assert_eq!(
            n.oack,
            opts(&[("tsize", "1000"), ("blksize", "1468"), ("windowsize", "4")])
        );
    }

    #[test]
    fn block_numbers_wrap_to_zero() {
        assert_eq!(block_number(1), 1);
        assert_eq!(block_number(65535), 65535);
        assert_eq!(block_number(65536), 0);
        assert_eq!(block_number(65537), 1);
        assert_eq!(block_number(3 * 65536 + 5), 5);
    }

    #[test]
    fn block_count_includes_the_short_final_block() {
        assert_eq!(block_count(0, 512), 1);
        assert_eq!(block_count(511, 512), 1);
        assert_eq!(block_count(512, 512), 2);
        assert_eq!(block_count(1025, 512), 3);
    }

    #[test]
    fn ack_mapping() {
        // Lock-step: block 1 sent, ACK 1 moves on, ACK 0 (OACK ack) is stale.
        assert_eq!(ack_to_seq(1, 0, 1), Some(1));
        assert_eq!(ack_to_seq(0, 0, 1), None);
        // Window 1..=16 sent: a mid-window ACK acknowledges up to there.
        assert_eq!(ack_to_seq(5, 0, 16), Some(5));
        assert_eq!(ack_to_seq(16, 0, 16), Some(16));
        // An ACK beyond what was sent is bogus.
        assert_eq!(ack_to_seq(17, 0, 16), None);
        // Duplicate of the last ACK, and older ACKs, are ignored.
        assert_eq!(ack_to_seq(16, 16, 32), None);
        assert_eq!(ack_to_seq(3, 16, 32), None);
        // Across the 16-bit wrap: seq 65536 is block 0.
        assert_eq!(ack_to_seq(0, 65535, 65536), Some(65536));
        assert_eq!(ack_to_seq(2, 65530, 65540), Some(65538));
        assert_eq!(ack_to_seq(65535, 65530, 65540), Some(65535));
        assert_eq!(ack_to_seq(65529, 65530, 65540), None);
        // Far into a long transfer.
        let base = 7 * 65536 + 65530;
        assert_eq!(
            ack_to_seq(block_number(base + 9), base, base + 16),
            Some(base + 9)
        );
    }
}
