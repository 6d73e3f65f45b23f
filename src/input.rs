//! Opening inputs: regular files are read with positioned reads (never mapped, so their
//! pages do not count in the process's memory), `-` is stdin (streamed); the kind of stream
//! is detected by its first bytes, never by its name.
//!
//! zstd-compressed inputs (rbddiff archives or files written by `zstd`) are read
//! transparently: [`Input::kind`] is the kind of the decompressed content,
//! [`Input::into_reader`] decompresses, [`Input::file`] is `None` (compressed bytes are
//! never parsed as a diff) and [`Input::archive`] gives random access to an indexed archive.
//!
//! A file truncated by another process while it is read ends early: [`Input::check_truncated`]
//! (or a [`Watch`] taken before the input is handed on) turns the result into an error naming
//! the file, whatever the reader made of the early end; no atomic output is committed then.

use std::fs::File;
use std::io::{self, Cursor, Read, Write};
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::positioned::Positioned;
use crate::zst::{ZstArchive, ZstdReader};

pub use crate::format::{sniff, Kind, ZSTD_MAGIC};

enum Data {
    /// A regular file and its length when it was opened.
    File(File, u64),
    Empty,
    Stream(Box<dyn Read + Send>),
}

/// An opened input: a regular file (read with positioned reads) or a stream.
pub struct Input {
    name: String,
    kind: Kind,
    data: Data,
    compressed: bool,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Input({}, {:?})", self.name, self.kind)
    }
}

/// Watches a file input for truncation after it has been handed on (see [`Input::watch`]).
#[derive(Debug)]
pub struct Watch {
    name: String,
    /// The file and its length when it was opened.
    file: Option<(File, u64)>,
}

impl Watch {
    /// True when the file is now shorter than when it was opened.
    pub fn truncated(&self) -> bool {
        self.file
            .as_ref()
            .is_some_and(|(f, len)| f.metadata().is_ok_and(|m| m.len() < *len))
    }

    /// `r`, or a truncation error naming the file when it was truncated while read (whatever
    /// `r` says: its content was not what was read).
    ///
    /// # Errors
    /// `r`'s error, or the truncation.
    pub fn check<T>(&self, r: Result<T>) -> Result<T> {
        if self.truncated() {
            return Err(truncated_error(&self.name));
        }
        r
    }
}

/// The error for an input truncated while it was read.
fn truncated_error(name: &str) -> Error {
    Error::new(ErrorKind::Truncated {
        what: "input: the file shrank while it was being read (another process truncated \
               it); nothing was written from it"
            .into(),
    })
    .with_file(name)
}

impl Input {
    /// Opens `path`; `-` means stdin.
    ///
    /// # Errors
    /// The file cannot be opened or read.
    pub fn open(path: &str) -> Result<Input> {
        if path == "-" {
            return Self::from_reader("-", Box::new(io::stdin()));
        }
        let wrap = |e: io::Error| Error::from(e).with_file(path);
        let file = File::open(Path::new(path)).map_err(wrap)?;
        let meta = file.metadata().map_err(wrap)?;
        if !meta.is_file() {
            // Pipes, FIFOs and devices are streamed.
            return Self::from_reader(path, Box::new(file));
        }
        Self::from_file(path, file, meta.len())
    }

    /// A regular file of `len` bytes, its kind told by its first bytes (by positioned reads:
    /// the file's own offset stays at 0).
    fn from_file(name: &str, file: File, len: u64) -> Result<Input> {
        if len == 0 {
            return Ok(Input {
                name: name.to_string(),
                kind: Kind::Unknown,
                data: Data::Empty,
                compressed: false,
            });
        }
        let raw = Positioned::File(&file, len);
        let (prefix, _) = prefix_of(name, raw.reader(0))?;
        let mut kind = sniff(&prefix);
        let compressed = kind == Kind::Zstd;
        if compressed {
            let z = ZstdReader::new(raw.reader(0)).map_err(|e| e.with_file(name))?;
            kind = sniff(&prefix_of(name, z)?.0);
        }
        Ok(Input {
            name: name.to_string(),
            kind,
            data: Data::File(file, len),
            compressed,
        })
    }

    /// Wraps a stream, reading just enough of it to tell its kind.
    ///
    /// # Errors
    /// Reading the first bytes fails.
    pub fn from_reader(name: &str, r: Box<dyn Read + Send>) -> Result<Input> {
        let (prefix, r) = prefix_of(name, r)?;
        let mut kind = sniff(&prefix);
        let mut data: Box<dyn Read + Send> = Box::new(Cursor::new(prefix).chain(r));
        let compressed = kind == Kind::Zstd;
        if compressed {
            let z = ZstdReader::new(data).map_err(|e| e.with_file(name))?;
            let (prefix, z) = prefix_of(name, z)?;
            kind = sniff(&prefix);
            data = Box::new(Cursor::new(prefix).chain(z));
        }
        Ok(Input {
            name: name.to_string(),
            kind,
            data: Data::Stream(data),
            compressed,
        })
    }

    /// Copies a stream into an anonymous temporary file (in `$TMPDIR`, removed when closed),
    /// so that callers needing random access can treat it as a file. Costs disk space equal
    /// to the stream's length, no memory; refuses to fill the file system (the last 5 % of
    /// it stays free).
    ///
    /// # Errors
    /// Creating, writing or reading the temporary file, or reading `r`.
    pub fn spill(name: &str, mut r: impl Read) -> Result<Input> {
        let mut f = Spill::new().map_err(|e| e.with_file(name))?;
        io::copy(&mut r, &mut f).map_err(|e| Error::from(e).with_file(name))?;
        Self::from_file(name, f.file, f.written)
    }

    /// This input with random access: a plain file as is; a stream or a compressed file
    /// decoded and spilled with [`Input::spill`] (an indexed archive frame-parallel).
    ///
    /// # Errors
    /// As [`Input::spill`].
    pub fn into_seekable(self) -> Result<Input> {
        if let (true, Data::File(f, len)) = (self.compressed, &self.data) {
            let raw = Positioned::File(f, *len);
            if let Ok(Some((frames, _))) = crate::zst::seek_table(raw) {
                if crate::zst::frames_fit(&frames) {
                    let name = self.name.clone();
                    let mut f = Spill::new().map_err(|e| e.with_file(&name))?;
                    let threads = crate::parallel::default_threads();
                    let mut quiet = |_, _| {};
                    let mut tick = crate::progress::Ticker::new(&mut quiet, 0);
                    let n = crate::zst::decompress_frames(
                        &name, raw, &frames, &mut f, threads, &mut tick,
                    )
                    .map_err(|e| e.with_file(&name));
                    let n = self.check_truncated(n)?;
                    return Self::from_file(&name, f.file, n);
                }
            }
        }
        if self.compressed || matches!(self.data, Data::Stream(_)) {
            let name = self.name.clone();
            return Self::spill(&name, self.into_reader());
        }
        Ok(self)
    }

    /// A watch for truncation of this input's file, usable after the input is consumed
    /// (nothing to watch for a stream or an empty file).
    pub fn watch(&self) -> Watch {
        Watch {
            name: self.name.clone(),
            file: match &self.data {
                Data::File(f, len) => f.try_clone().ok().map(|f| (f, *len)),
                _ => None,
            },
        }
    }

    /// `r`, or a truncation error naming the file when the file was truncated while it was
    /// read (see [`Watch::check`]).
    ///
    /// # Errors
    /// `r`'s error, or the truncation.
    pub fn check_truncated<T>(&self, r: Result<T>) -> Result<T> {
        self.watch().check(r)
    }

    /// True when the input is zstd-compressed (and is decompressed transparently).
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// The raw (possibly compressed) bytes of a regular file, to read at offsets.
    pub fn raw(&self) -> Option<Positioned<'_>> {
        match &self.data {
            Data::File(f, len) => Some(Positioned::File(f, *len)),
            Data::Empty => Some(Positioned::Mem(&[])),
            Data::Stream(_) => None,
        }
    }

    /// Length of a regular file (possibly compressed) when it was opened.
    pub fn raw_len(&self) -> Option<u64> {
        self.raw().map(|r| r.len())
    }

    /// Random access to an indexed rbddiff archive in a regular file (seek table and record
    /// index read, nothing decompressed). `None` for anything else, including zstd files
    /// without an index and compressed stdin: use [`Input::into_reader`] then.
    ///
    /// # Errors
    /// The archive's seek table or index is corrupt.
    pub fn archive(&self) -> Result<Option<ZstArchive<'_>>> {
        match (&self.data, self.compressed) {
            (Data::File(f, len), true) => {
                ZstArchive::open_file(f, *len).map_err(|e| e.with_file(&self.name))
            }
            _ => Ok(None),
        }
    }

    /// The name given to [`Input::open`] (`-` for stdin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The detected kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The file and its length, when this input is an uncompressed regular file (not
    /// empty): for positioned reads.
    pub fn file(&self) -> Option<(&File, u64)> {
        match (&self.data, self.compressed) {
            (Data::File(f, len), false) => Some((f, *len)),
            _ => None,
        }
    }

    /// The file behind a regular file input, compressed or not, and its length.
    pub fn raw_file(&self) -> Option<(&File, u64)> {
        match &self.data {
            Data::File(f, len) => Some((f, *len)),
            _ => None,
        }
    }

    /// The content as a reader (a file is read from its start; zstd is decompressed).
    pub fn into_reader(self) -> Box<dyn Read + Send + 'static> {
        match self.data {
            Data::File(f, len) if self.compressed => match ZstdReader::new(f.take(len)) {
                Ok(z) => Box::new(z),
                Err(e) => Box::new(Failed(Some(e))),
            },
            Data::File(f, len) => Box::new(f.take(len)),
            Data::Empty => Box::new(io::empty()),
            Data::Stream(r) => r,
        }
    }
}

/// An anonymous temporary file in `$TMPDIR` that refuses to fill its file system: it never
/// writes into the last 5 % (at least 64 MiB, at most 1 GiB), checked every 64 MiB; its
/// errors name the directory.
struct Spill {
    file: File,
    dir: std::path::PathBuf,
    room: u64,
    written: u64,
}

impl Spill {
    fn new() -> Result<Spill> {
        let dir = std::env::temp_dir();
        let file = tempfile::tempfile_in(&dir).map_err(|e| Error::from(in_spill_dir(&dir, e)))?;
        Ok(Spill {
            file,
            dir,
            room: 0,
            written: 0,
        })
    }

    fn check_room(&mut self, want: u64) -> io::Result<()> {
        let st = rustix::fs::fstatvfs(&self.file)?;
        let total = st.f_blocks.saturating_mul(st.f_frsize);
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let reserve = (total / 20).clamp(64 << 20, 1 << 30);
        self.room = free.saturating_sub(reserve).min(64 << 20);
        if self.room < want {
            return Err(io::Error::other(format!(
                "decompressing to a temporary file in {} would fill its file system (after \
                     {} bytes): set TMPDIR to a directory with more room",
                self.dir.display(),
                self.written
            )));
        }
        Ok(())
    }
}

/// `e`, saying that it happened to a temporary file in `dir`.
fn in_spill_dir(dir: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("temporary file in {}: {e}", dir.display()),
    )
}

impl Write for Spill {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let want = b.len().min(1 << 20) as u64;
        if self.room < want {
            self.check_room(want)?;
        }
        let n = self
            .file
            .write(&b[..want as usize])
            .map_err(|e| in_spill_dir(&self.dir, e))?;
        self.room -= n as u64;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Reads up to 13 bytes of `r`, returning them and the reader positioned after them.
fn prefix_of<R: Read>(name: &str, mut r: R) -> Result<(Vec<u8>, R)> {
    let mut prefix = Vec::with_capacity(13);
    (&mut r)
        .take(13)
        .read_to_end(&mut prefix)
        .map_err(|e| Error::from(e).with_file(name))?;
    Ok((prefix, r))
}

/// A reader that fails with a stored error.
struct Failed(Option<Error>);

impl Read for Failed {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        match self.0.take() {
            Some(e) => Err(e.into()),
            None => Ok(0),
        }
    }
}
