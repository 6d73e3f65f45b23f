//! Opening inputs: files are memory-mapped (zero-copy), `-` is stdin (streamed); the kind of
//! stream is detected by its first bytes, never by its name.
//!
//! zstd-compressed inputs (rbddiff archives or files written by `zstd`) are read
//! transparently: [`Input::kind`] is the kind of the decompressed content,
//! [`Input::into_reader`] decompresses, [`Input::bytes`] is `None` (compressed bytes are
//! never parsed as a diff) and [`Input::archive`] gives random access to an indexed archive.
//!
//! A mapped file truncated by another process while it is read does not kill the process
//! with `SIGBUS`: the pages past its new end read as zeros, and [`Input::check_truncated`]
//! (or a [`Watch`] taken before the input is handed on) turns the result into an error naming
//! the file; no atomic output is committed after such a truncation.

use std::fs::File;
use std::io::{self, Cursor, Read, Write};
use std::path::Path;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

use memmap2::Mmap;

use crate::error::{Error, ErrorKind, Result};

use crate::zst::{ZstArchive, ZstdReader};

pub use crate::format::{sniff, Kind, ZSTD_MAGIC};

enum Data {
    /// The mapping and the file it maps.
    Map(Mapped, File),
    Empty,
    Stream(Box<dyn Read + Send>),
}

/// An opened input: a memory-mapped file or a stream.
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

/// A read-only mapping of a whole file, registered with the `SIGBUS` guard below.
///
/// A file truncated by another process while it is mapped makes reads past its new end fault
/// with `SIGBUS`, which kills the process. The guard's handler maps zero pages over the rest
/// of a registered mapping instead and records it; [`Input::check_truncated`] then turns the
/// result of the command into an error naming the file.
struct Mapped {
    map: Mmap,
    /// Index in [`GUARDED`] (`None`: the table was full, the mapping is unguarded).
    slot: Option<usize>,
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // Unregistered before `map` is unmapped (fields drop after this).
        if let Some(i) = self.slot {
            GUARDED[i].end.store(0, Ordering::SeqCst);
            GUARDED[i].start.store(0, Ordering::SeqCst);
        }
    }
}

/// One guarded mapping: `start..end` (0..0 when free) and whether a fault was repaired in it.
struct Guarded {
    start: AtomicUsize,
    end: AtomicUsize,
    hit: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Guarded = Guarded {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    hit: AtomicBool::new(false),
};

/// The guarded mappings: a fixed table of atomics, which the signal handler can read.
static GUARDED: [Guarded; 64] = [FREE; 64];
/// Page size, read once before the handler is installed.
static PAGE: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();
/// Set once any fault was repaired (for outputs: see [`any_truncated`]).
static ANY_HIT: AtomicBool = AtomicBool::new(false);

/// True when some input of this process was truncated while it was mapped: what was read
/// from it past its new end were zeros, so nothing made from it may be committed.
pub fn any_truncated() -> bool {
    ANY_HIT.load(Ordering::SeqCst)
}

/// The `SIGBUS` action: repairs a fault inside a guarded mapping, else restores the default
/// action (the fault then kills the process as it would have).
#[allow(unsafe_code)]
fn on_sigbus(addr: usize) {
    let page = PAGE.load(Ordering::SeqCst).max(1);
    for g in &GUARDED {
        let (start, end) = (g.start.load(Ordering::SeqCst), g.end.load(Ordering::SeqCst));
        if start <= addr && addr < end {
            let from = addr & !(page - 1);
            let len = end.next_multiple_of(page) - from;
            // SAFETY: `from..from + len` lies inside a live read-only file mapping made by
            // `map` (registered until it is unmapped, see `Mapped::drop`); replacing its pages
            // past the file's new end with anonymous zero pages keeps every reference into it
            // valid (same addresses, same protection). mmap is a plain system call here.
            let r = unsafe {
                rustix::mm::mmap_anonymous(
                    from as *mut std::ffi::c_void,
                    len,
                    rustix::mm::ProtFlags::READ,
                    rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::FIXED,
                )
            };
            if r.is_ok() {
                g.hit.store(true, Ordering::SeqCst);
                ANY_HIT.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
    // Not a guarded mapping: the default action (the process dies, as without the guard).
    // SAFETY: signal and raise are async-signal-safe.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
        libc::raise(libc::SIGBUS);
    }
}

#[allow(unsafe_code)]
fn install_guard() {
    INSTALL.call_once(|| {
        PAGE.store(rustix::param::page_size(), Ordering::SeqCst);
        // SAFETY: resets SIGBUS to its default action before the guard is installed. The
        // guard chains to the handler found here, and the standard library's (for stack
        // overflows, which Linux reports as SIGSEGV) would reset SIGBUS to the default on the
        // first fault, so that a second thread's fault would kill the process.
        unsafe {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
        }
        // SAFETY: the action is async-signal-safe: it reads and writes atomics of a static
        // table, calls mmap, or resets the signal to its default action and raises it; it
        // neither allocates, locks nor panics. For SIGBUS the kernel fills in `si_addr`, the
        // faulting address, which the action reads.
        let _ = unsafe {
            signal_hook_registry::register_sigaction(libc::SIGBUS, |info| {
                on_sigbus(info.si_addr() as usize)
            })
        };
    });
}

/// Maps a whole file read-only and registers the mapping with the `SIGBUS` guard.
///
/// rbddiff never writes to its inputs and opens outputs as new files renamed into place; a
/// file truncated by another process meanwhile reads as zeros past its new end (see
/// [`Mapped`]), which [`Input::check_truncated`] reports.
#[allow(unsafe_code)]
fn map(file: &File) -> io::Result<Mapped> {
    install_guard();
    // SAFETY: the file is opened read-only; if it is truncated while mapped, the SIGBUS guard
    // above replaces the pages past its end with zeros and records it.
    let map = unsafe { Mmap::map(file) }?;
    let (start, end) = (map.as_ptr() as usize, map.as_ptr() as usize + map.len());
    let slot = GUARDED.iter().position(|g| {
        g.start
            .compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    });
    if let Some(i) = slot {
        GUARDED[i].hit.store(false, Ordering::SeqCst);
        GUARDED[i].end.store(end, Ordering::SeqCst);
    }
    Ok(Mapped { map, slot })
}

/// Watches a mapped input for truncation after it has been handed on (see
/// [`Input::watch`]).
#[derive(Debug)]
pub struct Watch {
    name: String,
    /// The file and the length mapped.
    file: Option<(File, u64)>,
    slot: Option<usize>,
}

impl Watch {
    /// True when the file was truncated while it was mapped (a fault was repaired, or it is
    /// now shorter than the mapping).
    pub fn truncated(&self) -> bool {
        let hit = self
            .slot
            .is_some_and(|i| GUARDED[i].hit.load(Ordering::SeqCst));
        let shorter = self
            .file
            .as_ref()
            .is_some_and(|(f, len)| f.metadata().is_ok_and(|m| m.len() < *len));
        hit || shorter
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
    /// The file cannot be opened, mapped or read.
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
        if meta.len() == 0 {
            return Ok(Input {
                name: path.to_string(),
                kind: Kind::Unknown,
                data: Data::Empty,
                compressed: false,
            });
        }
        let m = map(&file).map_err(wrap)?;
        let mut kind = sniff(&m);
        let compressed = kind == Kind::Zstd;
        if compressed {
            let z = ZstdReader::new(&m[..]).map_err(|e| e.with_file(path))?;
            kind = sniff(&prefix_of(path, z)?.0);
        }
        Ok(Input {
            name: path.to_string(),
            kind,
            data: Data::Map(m, file),
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

    /// Copies a stream into an anonymous temporary file (in `$TMPDIR`, removed when closed)
    /// and maps it, so that callers needing random access can treat it as a file. Costs disk
    /// space equal to the stream's length, no anonymous memory; refuses to fill the file
    /// system (the last 5 % of it stays free).
    ///
    /// # Errors
    /// Creating, writing or mapping the temporary file, or reading `r`.
    pub fn spill(name: &str, mut r: impl Read) -> Result<Input> {
        let mut f = Spill::new().map_err(|e| e.with_file(name))?;
        io::copy(&mut r, &mut f).map_err(|e| Error::from(e).with_file(name))?;
        Self::map_spilled(name, f.file, f.written)
    }

    /// Maps a spilled temporary file of `n` bytes.
    fn map_spilled(name: &str, file: File, n: u64) -> Result<Input> {
        let wrap = |e: io::Error| Error::from(e).with_file(name);
        if n == 0 {
            return Ok(Input {
                name: name.to_string(),
                kind: Kind::Unknown,
                data: Data::Empty,
                compressed: false,
            });
        }
        let m = map(&file).map_err(wrap)?;
        Ok(Input {
            name: name.to_string(),
            kind: sniff(&m),
            data: Data::Map(m, file),
            compressed: false,
        })
    }

    /// This input with random access: a mapped plain file as is; a stream or a compressed
    /// file decoded and spilled with [`Input::spill`].
    ///
    /// # Errors
    /// As [`Input::spill`].
    pub fn into_mapped(self) -> Result<Input> {
        if let (true, Data::Map(m, _)) = (self.compressed, &self.data) {
            // An archive in a mapped file is decompressed frame-parallel.
            let raw: &[u8] = m.as_ref();
            if let Ok(Some((frames, _))) = crate::zst::parse_seek_table(raw) {
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
                    return Self::map_spilled(&name, f.file, n);
                }
            }
        }
        if self.compressed || matches!(self.data, Data::Stream(_)) {
            let name = self.name.clone();
            return Self::spill(&name, self.into_reader());
        }
        Ok(self)
    }

    /// A watch for truncation of this input's mapped file, usable after the input is
    /// consumed (nothing to watch for a stream or an empty file).
    pub fn watch(&self) -> Watch {
        match &self.data {
            Data::Map(m, f) => Watch {
                name: self.name.clone(),
                file: f.try_clone().ok().map(|f| (f, m.len() as u64)),
                slot: m.slot,
            },
            _ => Watch {
                name: self.name.clone(),
                file: None,
                slot: None,
            },
        }
    }

    /// `r`, or a truncation error naming the file when the mapped file was truncated while it
    /// was read (see [`Watch::check`]).
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

    /// The raw (possibly compressed) bytes of a mapped file.
    pub fn raw_bytes(&self) -> Option<&[u8]> {
        match &self.data {
            Data::Map(m, _) => Some(m),
            Data::Empty => Some(&[]),
            Data::Stream(_) => None,
        }
    }

    /// Random access to an indexed rbddiff archive in a mapped file (seek table and record
    /// index parsed, nothing decompressed). `None` for anything else, including zstd files
    /// without an index and compressed stdin: use [`Input::into_reader`] then.
    ///
    /// # Errors
    /// The archive's seek table or index is corrupt.
    pub fn archive(&self) -> Result<Option<ZstArchive<'_>>> {
        match (&self.data, self.compressed) {
            (Data::Map(m, _), true) => ZstArchive::open(m).map_err(|e| e.with_file(&self.name)),
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

    /// The whole content, when it is a mapped, uncompressed file.
    pub fn bytes(&self) -> Option<&[u8]> {
        if self.compressed {
            return None;
        }
        match &self.data {
            Data::Map(m, _) => Some(m),
            Data::Empty => Some(&[]),
            Data::Stream(_) => None,
        }
    }

    /// The mapped file, when this input is a mapped, uncompressed file (for positioned reads:
    /// its bytes are [`Input::bytes`]).
    pub fn file(&self) -> Option<&File> {
        match (&self.data, self.compressed) {
            (Data::Map(_, f), false) => Some(f),
            _ => None,
        }
    }

    /// The file behind a mapped input, compressed or not (its raw bytes are
    /// [`Input::raw_bytes`]).
    pub fn mapped_file(&self) -> Option<&File> {
        match &self.data {
            Data::Map(_, f) => Some(f),
            _ => None,
        }
    }

    /// The content as a reader (a mapped file is read from memory; zstd is decompressed).
    pub fn into_reader(self) -> Box<dyn Read + Send + 'static> {
        match self.data {
            Data::Map(m, _) if self.compressed => match ZstdReader::new(Cursor::new(m)) {
                Ok(z) => Box::new(z),
                Err(e) => Box::new(Failed(Some(e))),
            },
            Data::Map(m, _) => Box::new(Cursor::new(m)),
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
