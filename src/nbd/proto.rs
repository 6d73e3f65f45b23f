//! The NBD protocol, server side, read-only: one client session over any byte stream.
//!
//! Lengths from the client are checked before anything is allocated: option data is at most
//! [`MAX_OPTION`] bytes (more ends the session), a request at most [`Limits::max_request`]
//! bytes (more is refused with `EINVAL`, and a refused write's payload is read and dropped in
//! small pieces). A malformed handshake or request header ends the session; a bad request is
//! answered with an NBD error and the session goes on.

use std::io::{self, Read, Write};
use std::sync::Arc;

use super::{Export, Exports};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_FLAGS: u32 = 3;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_LIST_META_CONTEXT: u32 = 9;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
const REP_ERR_SHUTDOWN: u32 = 0x8000_0007;

const INFO_EXPORT: u16 = 0;
const INFO_NAME: u16 = 1;
const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags: has flags, read-only, flush, don't-fragment, multi-connection safe.
const TRANSMISSION_FLAGS: u16 = 1 | 2 | 4 | 128 | 256;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;

const CMD_FLAG_FUA: u16 = 1;
const CMD_FLAG_DF: u16 = 4;
const CMD_FLAG_REQ_ONE: u16 = 8;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR: u16 = 0x8001;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;

/// The one metadata context served.
pub const BASE_ALLOCATION: &str = "base:allocation";
const CONTEXT_ID: u32 = 1;

/// The largest option data accepted (names are at most 4096 bytes by the protocol).
pub const MAX_OPTION: u32 = 64 << 10;
/// The largest export name accepted.
const MAX_NAME: usize = 4096;

/// What a session allows.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest read or status request, in bytes (advertised as the maximum block size).
    pub max_request: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request: 32 << 20,
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn read_u32(r: &mut dyn Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Reads and drops `n` bytes, in small pieces.
fn discard(r: &mut dyn Read, n: u64) -> io::Result<()> {
    let got = io::copy(&mut r.take(n), &mut io::sink())?;
    if got < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// A cursor over option data that refuses to read past its end.
struct Data<'a>(&'a [u8]);

impl<'a> Data<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (h, t) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = t;
        Some(h)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        if n > MAX_NAME {
            return None;
        }
        std::str::from_utf8(self.take(n)?).ok()
    }
}

/// The state of one session.
struct Session<'e> {
    exports: &'e dyn Exports,
    limits: Limits,
    no_zeroes: bool,
    structured: bool,
    /// The export for which `base:allocation` was selected, if it was.
    meta: Option<String>,
}

fn option_reply(w: &mut dyn Write, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(20 + data.len());
    m.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    w.write_all(&m)
}

fn message(msg: &str) -> &[u8] {
    let b = msg.as_bytes();
    &b[..b.len().min(MAX_NAME)]
}

/// How option haggling ended.
enum Next {
    Options,
    Transmit(Arc<dyn Export>),
    Close,
}

impl Session<'_> {
    fn option(
        &mut self,
        w: &mut dyn Write,
        opt: u32,
        data: &[u8],
        stopping: bool,
    ) -> io::Result<Next> {
        if stopping && opt != OPT_ABORT {
            option_reply(w, opt, REP_ERR_SHUTDOWN, b"the server is shutting down")?;
            return Ok(Next::Options);
        }
        match opt {
            OPT_EXPORT_NAME => {
                let Some(export) = std::str::from_utf8(data)
                    .ok()
                    .filter(|n| n.len() <= MAX_NAME)
                    .and_then(|n| self.exports.open(n).ok())
                else {
                    // No error can be sent for this option: the session ends.
                    return Ok(Next::Close);
                };
                let mut m = Vec::with_capacity(134);
                m.extend_from_slice(&export.size().to_be_bytes());
                m.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !self.no_zeroes {
                    m.extend_from_slice(&[0; 124]);
                }
                w.write_all(&m)?;
                Ok(Next::Transmit(export))
            }
            OPT_ABORT => {
                option_reply(w, opt, REP_ACK, &[])?;
                Ok(Next::Close)
            }
            OPT_LIST => {
                if !data.is_empty() {
                    option_reply(w, opt, REP_ERR_INVALID, b"LIST takes no data")?;
                    return Ok(Next::Options);
                }
                for name in self.exports.names() {
                    let mut d = Vec::with_capacity(4 + name.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name.as_bytes());
                    option_reply(w, opt, REP_SERVER, &d)?;
                }
                option_reply(w, opt, REP_ACK, &[])?;
                Ok(Next::Options)
            }
            OPT_INFO | OPT_GO => self.info(w, opt, data),
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    option_reply(w, opt, REP_ERR_INVALID, b"STRUCTURED_REPLY takes no data")?;
                } else {
                    self.structured = true;
                    option_reply(w, opt, REP_ACK, &[])?;
                }
                Ok(Next::Options)
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                self.meta_context(w, opt, data)?;
                Ok(Next::Options)
            }
            _ => {
                option_reply(w, opt, REP_ERR_UNSUP, b"option not supported")?;
                Ok(Next::Options)
            }
        }
    }

    fn info(&mut self, w: &mut dyn Write, opt: u32, data: &[u8]) -> io::Result<Next> {
        let mut d = Data(data);
        let parsed = (|| {
            let name = d.string()?;
            let n = d.u16()?;
            let infos: Option<Vec<u16>> = (0..n).map(|_| d.u16()).collect();
            d.0.is_empty().then_some((name, infos?))
        })();
        let Some((name, infos)) = parsed else {
            option_reply(w, opt, REP_ERR_INVALID, b"malformed INFO/GO request")?;
            return Ok(Next::Options);
        };
        let export = match self.exports.open(name) {
            Ok(e) => e,
            Err(msg) => {
                option_reply(w, opt, REP_ERR_UNKNOWN, message(&msg))?;
                return Ok(Next::Options);
            }
        };
        let mut info = INFO_EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&export.size().to_be_bytes());
        info.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
        option_reply(w, opt, REP_INFO, &info)?;
        if infos.contains(&INFO_NAME) {
            let mut i = INFO_NAME.to_be_bytes().to_vec();
            i.extend_from_slice(name.as_bytes());
            option_reply(w, opt, REP_INFO, &i)?;
        }
        if infos.contains(&INFO_BLOCK_SIZE) {
            let mut i = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
            for v in [1u32, 4096, self.limits.max_request] {
                i.extend_from_slice(&v.to_be_bytes());
            }
            option_reply(w, opt, REP_INFO, &i)?;
        }
        option_reply(w, opt, REP_ACK, &[])?;
        if opt == OPT_GO {
            if self.meta.as_deref() != Some(name) {
                self.meta = None;
            }
            return Ok(Next::Transmit(export));
        }
        Ok(Next::Options)
    }

    fn meta_context(&mut self, w: &mut dyn Write, opt: u32, data: &[u8]) -> io::Result<()> {
        let set = opt == OPT_SET_META_CONTEXT;
        if set && !self.structured {
            return option_reply(
                w,
                opt,
                REP_ERR_INVALID,
                b"negotiate structured replies first",
            );
        }
        let mut d = Data(data);
        let parsed = (|| {
            let name = d.string()?;
            let n = d.u32()?;
            let mut queries = Vec::new();
            for _ in 0..n {
                queries.push(d.string()?);
            }
            d.0.is_empty().then_some((name, queries))
        })();
        let Some((name, queries)) = parsed else {
            return option_reply(w, opt, REP_ERR_INVALID, b"malformed META_CONTEXT request");
        };
        if let Err(msg) = self.exports.open(name) {
            return option_reply(w, opt, REP_ERR_UNKNOWN, message(&msg));
        }
        let matched = if queries.is_empty() {
            !set
        } else {
            queries
                .iter()
                .any(|q| *q == BASE_ALLOCATION || (!set && (*q == "base:" || q.is_empty())))
        };
        if set {
            self.meta = matched.then(|| name.to_string());
        }
        if matched {
            let mut d = CONTEXT_ID.to_be_bytes().to_vec();
            d.extend_from_slice(BASE_ALLOCATION.as_bytes());
            option_reply(w, opt, REP_META_CONTEXT, &d)?;
        }
        option_reply(w, opt, REP_ACK, &[])
    }

    /// Answers one request with an error.
    fn error(&self, w: &mut dyn Write, cookie: u64, err: u32, msg: &str) -> io::Result<()> {
        let mut m = Vec::with_capacity(32 + msg.len());
        if self.structured {
            let msg = &message(msg)[..msg.len().min(1024)];
            m.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
            m.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
            m.extend_from_slice(&REPLY_TYPE_ERROR.to_be_bytes());
            m.extend_from_slice(&cookie.to_be_bytes());
            m.extend_from_slice(&(6 + msg.len() as u32).to_be_bytes());
            m.extend_from_slice(&err.to_be_bytes());
            m.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            m.extend_from_slice(msg);
        } else {
            m.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            m.extend_from_slice(&err.to_be_bytes());
            m.extend_from_slice(&cookie.to_be_bytes());
        }
        w.write_all(&m)
    }

    fn ok(&self, w: &mut dyn Write, cookie: u64) -> io::Result<()> {
        let mut m = Vec::with_capacity(16);
        m.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        w.write_all(&m)
    }

    /// Serves requests on `export` until the client disconnects.
    fn transmit(&self, r: &mut dyn Read, w: &mut dyn Write, export: &dyn Export) -> io::Result<()> {
        let size = export.size();
        let mut buf = Vec::new();
        loop {
            let mut h = [0u8; 28];
            match r.read_exact(&mut h) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let mut d = Data(&h);
            let (magic, flags, kind) = (d.u32(), d.u16(), d.u16());
            let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap_or_default());
            let offset = u64::from_be_bytes(h[16..24].try_into().unwrap_or_default());
            let len = u32::from_be_bytes(h[24..28].try_into().unwrap_or_default());
            let (Some(magic), Some(flags), Some(kind)) = (magic, flags, kind) else {
                return Err(invalid("short request"));
            };
            if magic != REQUEST_MAGIC {
                return Err(invalid("bad request magic"));
            }
            let in_range = len > 0
                && offset
                    .checked_add(u64::from(len))
                    .is_some_and(|e| e <= size);
            match kind {
                CMD_DISC => return Ok(()),
                CMD_WRITE => {
                    discard(r, u64::from(len))?;
                    self.error(w, cookie, EPERM, "the export is read-only")?;
                }
                CMD_TRIM | CMD_WRITE_ZEROES => {
                    self.error(w, cookie, EPERM, "the export is read-only")?;
                }
                CMD_FLUSH => {
                    if flags & !CMD_FLAG_FUA != 0 {
                        self.error(w, cookie, EINVAL, "unknown command flag")?;
                    } else {
                        self.ok(w, cookie)?;
                    }
                }
                CMD_READ => {
                    if flags & !(CMD_FLAG_FUA | CMD_FLAG_DF) != 0 {
                        self.error(w, cookie, EINVAL, "unknown command flag")?;
                    } else if len > self.limits.max_request {
                        self.error(
                            w,
                            cookie,
                            EINVAL,
                            "request larger than the maximum block size",
                        )?;
                    } else if !in_range {
                        self.error(w, cookie, EINVAL, "read outside the export")?;
                    } else {
                        buf.clear();
                        buf.resize(len as usize, 0);
                        match export.read(offset, &mut buf) {
                            Ok(()) => self.data(w, cookie, offset, &buf)?,
                            Err(e) => self.error(w, cookie, EIO, &e.to_string())?,
                        }
                    }
                }
                CMD_BLOCK_STATUS => {
                    if !self.structured || self.meta.is_none() {
                        self.error(w, cookie, EINVAL, "no metadata context was negotiated")?;
                    } else if flags & !(CMD_FLAG_FUA | CMD_FLAG_REQ_ONE) != 0 {
                        self.error(w, cookie, EINVAL, "unknown command flag")?;
                    } else if !in_range {
                        self.error(w, cookie, EINVAL, "status outside the export")?;
                    } else {
                        match export.status(offset, u64::from(len)) {
                            Ok(runs) => {
                                self.status(w, cookie, &runs, flags & CMD_FLAG_REQ_ONE != 0)?
                            }
                            Err(e) => self.error(w, cookie, EIO, &e.to_string())?,
                        }
                    }
                }
                _ => self.error(w, cookie, EINVAL, "unknown command")?,
            }
            w.flush()?;
        }
    }

    fn data(&self, w: &mut dyn Write, cookie: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut m = Vec::with_capacity(40);
        if self.structured {
            m.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
            m.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
            m.extend_from_slice(&REPLY_TYPE_OFFSET_DATA.to_be_bytes());
            m.extend_from_slice(&cookie.to_be_bytes());
            m.extend_from_slice(&(8 + data.len() as u32).to_be_bytes());
            m.extend_from_slice(&offset.to_be_bytes());
        } else {
            m.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            m.extend_from_slice(&0u32.to_be_bytes());
            m.extend_from_slice(&cookie.to_be_bytes());
        }
        w.write_all(&m)?;
        w.write_all(data)
    }

    fn status(
        &self,
        w: &mut dyn Write,
        cookie: u64,
        runs: &[(u64, u32)],
        one: bool,
    ) -> io::Result<()> {
        let runs = if one {
            &runs[..runs.len().min(1)]
        } else {
            runs
        };
        if runs.is_empty() {
            return self.error(w, cookie, EIO, "no status");
        }
        let mut m = Vec::with_capacity(24 + 8 * runs.len());
        m.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        m.extend_from_slice(&REPLY_TYPE_BLOCK_STATUS.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&(4 + 8 * runs.len() as u32).to_be_bytes());
        m.extend_from_slice(&CONTEXT_ID.to_be_bytes());
        for &(len, flags) in runs {
            m.extend_from_slice(&(len.min(u64::from(u32::MAX)) as u32).to_be_bytes());
            m.extend_from_slice(&flags.to_be_bytes());
        }
        w.write_all(&m)
    }
}

/// Serves one client: the handshake, then requests until it disconnects. `stopping` is
/// polled between options (options are then refused with `NBD_REP_ERR_SHUTDOWN`).
///
/// # Errors
/// I/O errors, and a client that breaks the protocol (bad magic, unknown client flags,
/// option data over [`MAX_OPTION`]): the session then ends.
pub fn serve_client(
    r: &mut dyn Read,
    w: &mut dyn Write,
    exports: &dyn Exports,
    limits: Limits,
    stopping: &dyn Fn() -> bool,
) -> io::Result<()> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&hello)?;
    w.flush()?;
    let client = read_u32(r)?;
    if client & !CLIENT_FLAGS != 0 {
        return Err(invalid("unknown client flags"));
    }
    let mut s = Session {
        exports,
        limits,
        no_zeroes: client & u32::from(FLAG_NO_ZEROES) != 0,
        structured: false,
        meta: None,
    };
    loop {
        if read_u64(r)? != IHAVEOPT {
            return Err(invalid("bad option magic"));
        }
        let opt = read_u32(r)?;
        let len = read_u32(r)?;
        if len > MAX_OPTION {
            return Err(invalid("option data too long"));
        }
        let mut data = vec![0; len as usize];
        r.read_exact(&mut data)?;
        let next = s.option(w, opt, &data, stopping())?;
        w.flush()?;
        match next {
            Next::Options => {}
            Next::Close => return Ok(()),
            Next::Transmit(export) => return s.transmit(r, w, &*export),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::{STATE_HOLE, STATE_ZERO};

    struct Mem(Vec<u8>);

    impl Export for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read(&self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
            let o = offset as usize;
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
            Ok(())
        }
        fn status(&self, offset: u64, len: u64) -> crate::Result<Vec<(u64, u32)>> {
            let half = self.size() / 2;
            Ok(if offset < half {
                vec![
                    (half - offset, 0),
                    (len - (half - offset), STATE_HOLE | STATE_ZERO),
                ]
            } else {
                vec![(len, STATE_HOLE | STATE_ZERO)]
            })
        }
    }

    struct One(Arc<Mem>);

    impl Exports for One {
        fn names(&self) -> Vec<String> {
            vec!["snap1".into()]
        }
        fn open(&self, name: &str) -> std::result::Result<Arc<dyn Export>, String> {
            match name {
                "" | "snap1" => Ok(self.0.clone()),
                _ => Err(format!("no export '{name}'")),
            }
        }
    }

    fn opt(m: &mut Vec<u8>, opt: u32, data: &[u8]) {
        m.extend_from_slice(b"IHAVEOPT");
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
    }

    fn req(m: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, off: u64, len: u32) {
        m.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&off.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
    }

    fn meta(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        d
    }

    /// Reads a big-endian integer of `n` bytes from `r` at `*at`.
    fn take(r: &[u8], at: &mut usize, n: usize) -> u64 {
        let v = r[*at..*at + n]
            .iter()
            .fold(0u64, |a, &b| a << 8 | u64::from(b));
        *at += n;
        v
    }

    /// Option replies up to the final one: (type, data).
    fn replies(r: &[u8], at: &mut usize) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            assert_eq!(take(r, at, 8), REPLY_MAGIC);
            let _opt = take(r, at, 4);
            let kind = take(r, at, 4) as u32;
            let len = take(r, at, 4) as usize;
            out.push((kind, r[*at..*at + len].to_vec()));
            *at += len;
            if kind == REP_ACK || kind & 0x8000_0000 != 0 {
                return out;
            }
        }
    }

    #[test]
    fn a_structured_session_negotiates_reads_and_reports_status() {
        let image: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let exports = One(Arc::new(Mem(image.clone())));
        let mut c = 3u32.to_be_bytes().to_vec();
        opt(
            &mut c,
            OPT_SET_META_CONTEXT,
            &meta("snap1", &[BASE_ALLOCATION]),
        );
        opt(&mut c, OPT_STRUCTURED_REPLY, &[]);
        opt(&mut c, OPT_LIST_META_CONTEXT, &meta("snap1", &[]));
        opt(
            &mut c,
            OPT_SET_META_CONTEXT,
            &meta("snap1", &["x:y", BASE_ALLOCATION]),
        );
        opt(&mut c, OPT_LIST, &[]);
        let mut go = meta("snap1", &[]);
        go.truncate(4 + 5);
        go.extend_from_slice(&2u16.to_be_bytes());
        go.extend_from_slice(&INFO_NAME.to_be_bytes());
        go.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        opt(&mut c, OPT_GO, &go);
        req(&mut c, CMD_FLAG_DF, CMD_READ, 11, 1000, 3000);
        req(&mut c, 0, CMD_BLOCK_STATUS, 12, 1024, 40960);
        req(&mut c, CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 13, 1024, 40960);
        req(&mut c, 0, CMD_READ, 14, 65536 - 10, 20);
        req(&mut c, 0, CMD_DISC, 15, 0, 0);
        let mut out = Vec::new();
        serve_client(
            &mut c.as_slice(),
            &mut out,
            &exports,
            Limits::default(),
            &|| false,
        )
        .unwrap();
        let r = out.as_slice();
        let mut at = 16;
        assert_eq!(take(r, &mut at, 2), 3, "fixed newstyle, no zeroes");
        // SET before STRUCTURED_REPLY is refused; then the context is listed and set.
        assert_eq!(replies(r, &mut at)[0].0, REP_ERR_INVALID);
        assert_eq!(replies(r, &mut at), [(REP_ACK, vec![])]);
        for _ in 0..2 {
            let got = replies(r, &mut at);
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].0, REP_META_CONTEXT);
            assert_eq!(&got[0].1[4..], BASE_ALLOCATION.as_bytes());
        }
        let list = replies(r, &mut at);
        assert_eq!(list[0], (REP_SERVER, b"\0\0\0\x05snap1".to_vec()));
        let go = replies(r, &mut at);
        assert_eq!(go.len(), 4, "{go:?}");
        assert_eq!(&go[0].1[2..10], &65536u64.to_be_bytes());
        assert_eq!(go[1].1, b"\0\x01snap1");
        assert_eq!(&go[2].1[10..14], &(32u32 << 20).to_be_bytes());
        // The read: one data chunk, done.
        assert_eq!(take(r, &mut at, 4), u64::from(STRUCTURED_REPLY_MAGIC));
        assert_eq!(take(r, &mut at, 2), u64::from(REPLY_FLAG_DONE));
        assert_eq!(take(r, &mut at, 2), u64::from(REPLY_TYPE_OFFSET_DATA));
        assert_eq!(take(r, &mut at, 8), 11);
        assert_eq!(take(r, &mut at, 4), 3008);
        assert_eq!(take(r, &mut at, 8), 1000);
        assert_eq!(&r[at..at + 3000], &image[1000..4000]);
        at += 3000;
        // Block status: two descriptors, then one with REQ_ONE.
        for (cookie, n) in [(12, 2), (13, 1)] {
            assert_eq!(take(r, &mut at, 4), u64::from(STRUCTURED_REPLY_MAGIC));
            at += 2;
            assert_eq!(take(r, &mut at, 2), u64::from(REPLY_TYPE_BLOCK_STATUS));
            assert_eq!(take(r, &mut at, 8), cookie);
            assert_eq!(take(r, &mut at, 4), 4 + 8 * n);
            assert_eq!(take(r, &mut at, 4), u64::from(CONTEXT_ID));
            assert_eq!(take(r, &mut at, 4), 32768 - 1024);
            assert_eq!(take(r, &mut at, 4), 0);
            if n == 2 {
                assert_eq!(take(r, &mut at, 4), 40960 - (32768 - 1024));
                assert_eq!(take(r, &mut at, 4), u64::from(STATE_HOLE | STATE_ZERO));
            }
        }
        // Past the end: an error chunk.
        assert_eq!(take(r, &mut at, 4), u64::from(STRUCTURED_REPLY_MAGIC));
        at += 2;
        assert_eq!(take(r, &mut at, 2), u64::from(REPLY_TYPE_ERROR));
        assert_eq!(take(r, &mut at, 8), 14);
        let len = take(r, &mut at, 4) as usize;
        assert_eq!(take(r, &mut at, 4), u64::from(EINVAL));
        at += len - 4;
        assert_eq!(at, r.len(), "nothing after DISC");
    }

    #[test]
    fn old_style_export_name_and_abort() {
        let exports = One(Arc::new(Mem(vec![7; 4096])));
        let mut c = 1u32.to_be_bytes().to_vec();
        opt(&mut c, OPT_EXPORT_NAME, b"snap1");
        req(&mut c, 0, CMD_READ, 1, 0, 16);
        let mut out = Vec::new();
        serve_client(
            &mut c.as_slice(),
            &mut out,
            &exports,
            Limits::default(),
            &|| false,
        )
        .unwrap();
        // Size, flags, 124 zeros (no NO_ZEROES), then a simple reply with 16 bytes.
        assert_eq!(&out[18..26], &4096u64.to_be_bytes());
        assert_eq!(out.len(), 18 + 8 + 2 + 124 + 16 + 16);
        assert_eq!(&out[out.len() - 16..], &[7; 16]);
        let mut c = 3u32.to_be_bytes().to_vec();
        opt(&mut c, OPT_EXPORT_NAME, b"other");
        let mut out = Vec::new();
        serve_client(
            &mut c.as_slice(),
            &mut out,
            &exports,
            Limits::default(),
            &|| false,
        )
        .unwrap();
        assert_eq!(
            out.len(),
            18,
            "an unknown name ends the session without a reply"
        );
        let mut c = 3u32.to_be_bytes().to_vec();
        opt(&mut c, OPT_ABORT, &[]);
        let mut out = Vec::new();
        serve_client(
            &mut c.as_slice(),
            &mut out,
            &exports,
            Limits::default(),
            &|| true,
        )
        .unwrap();
        assert_eq!(
            out.len(),
            18 + 20,
            "ABORT is acknowledged even while stopping"
        );
    }
}
