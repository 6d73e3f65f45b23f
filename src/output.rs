//! Crash-safe outputs: data goes to a temporary file beside the target, is fsynced, then
//! renamed into place. An error, a drop or SIGINT/SIGTERM (with the program's handler, see
//! [`set_interrupt_cleanup`]) leaves the old state and no temp file.
//! A new file takes the permission bits of the file it replaces, else of the command's input,
//! else 0600; sidecars take those of their main file. Replacing a file removes its old
//! `.sums` sidecar (a command that writes one writes the new one after the commit).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, OnceLock};

use crate::error::{Error, Result};

/// Temp files to remove if the process is interrupted.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();
static INSTALLER: OnceLock<fn()> = OnceLock::new();

/// Sets what installs the program's SIGINT/SIGTERM handler, run once when the first output
/// is opened (not before: a command that writes no file keeps its own signal handling). The
/// handler should call [`remove_pending`] and exit. A library installs no signal handler
/// unless its program sets one here; the `rbddiff` command line does.
pub fn set_interrupt_cleanup(install: fn()) {
    let _ = INSTALLER.set(install);
}

/// Removes the temporary files of every output not yet committed or dropped: for a signal
/// handler about to exit the process (see [`set_interrupt_cleanup`]).
pub fn remove_pending() {
    if let Ok(paths) = PENDING.lock() {
        for p in paths.iter() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn install_signal_cleanup() {
    HANDLER.call_once(|| {
        if let Some(install) = INSTALLER.get() {
            install();
        }
    });
}

fn register(p: &Path) {
    if let Ok(mut v) = PENDING.lock() {
        v.push(p.to_path_buf());
    }
}

fn unregister(p: &Path) {
    if let Ok(mut v) = PENDING.lock() {
        v.retain(|x| x != p);
    }
}

/// Permission bits for a new output that replaces no file: those of `like` (an input file),
/// else 0600 (backups and disk images are not for everyone to read).
pub fn mode_of(like: Option<&Path>) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    like.and_then(|p| std::fs::metadata(p).ok())
        .filter(|m| m.is_file())
        .map_or(0o600, |m| m.permissions().mode() & 0o777)
}

/// Sets the permission bits of an open file (exactly: the umask does not apply).
///
/// # Errors
/// `fchmod` fails.
pub fn set_mode(file: &File, mode: u32) -> Result<()> {
    rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(mode))
        .map_err(|e| Error::from(io::Error::from(e)))
}

/// The suffix of an output's checksum sidecar (`FILE.sums`, see [`crate::sums`]).
pub const SIDECAR_SUFFIX: &str = ".sums";

/// `path` with `suffix` appended to its name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Permission bits of the file at `p`, if there is one.
fn mode_at(p: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

/// A file being written atomically.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: Option<tempfile::NamedTempFile>,
    dest: PathBuf,
    force: bool,
    /// The sidecar that describes the file replaced (removed on commit: it does not describe
    /// the new content).
    stale: Option<PathBuf>,
}

impl AtomicFile {
    /// Starts writing `dest`. Refuses an existing `dest` unless `force`. The new file takes
    /// the permission bits of the file it replaces, else 0600. On commit, a `.sums` sidecar
    /// beside `dest` is removed (a command that writes one writes it after the commit).
    ///
    /// # Errors
    /// `dest` exists (without `force`), or the directory is not writable.
    pub fn create(dest: impl AsRef<Path>, force: bool) -> Result<Self> {
        Self::create_like(dest, force, None)
    }

    /// As [`AtomicFile::create`], but a file that replaces nothing takes the permission bits
    /// of `like` (the command's first input) when given.
    ///
    /// # Errors
    /// As [`AtomicFile::create`].
    pub fn create_like(dest: impl AsRef<Path>, force: bool, like: Option<&Path>) -> Result<Self> {
        let dest = dest.as_ref();
        let mode = mode_at(dest).unwrap_or_else(|| mode_of(like));
        let mut f = Self::open(dest, force, mode)?;
        f.stale = Some(with_suffix(dest, SIDECAR_SUFFIX));
        Ok(f)
    }

    /// Starts writing a sidecar of `main` (a `.sums` or state file) at `dest`, replacing any:
    /// it takes the permission bits of `main` (0600 if `main` is missing).
    ///
    /// # Errors
    /// The directory is not writable.
    pub fn create_sidecar(dest: impl AsRef<Path>, main: &Path) -> Result<Self> {
        Self::open(dest.as_ref(), true, mode_at(main).unwrap_or(0o600))
    }

    fn open(dest: &Path, force: bool, mode: u32) -> Result<Self> {
        let dest = dest.to_path_buf();
        if !force && dest.exists() {
            return Err(Error::from(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "output exists (use --force to replace it)",
            ))
            .with_file(&dest));
        }
        install_signal_cleanup();
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // `.NAME.XXXXXX.tmp` stays within a file name's 255 bytes.
        let mut cut = name.len().min(200);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode & 0o600))
            .tempfile_in(&dir)
            .map_err(|e| Error::from(e).with_file(&dest))?;
        register(tmp.path());
        // Exactly `mode`, whatever the umask.
        set_mode(tmp.as_file(), mode).map_err(|e| e.with_file(&dest))?;
        Ok(AtomicFile {
            tmp: Some(tmp),
            dest,
            force,
            stale: None,
        })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        // `tmp` is only taken by `commit`, which consumes self.
        self.tmp
            .as_mut()
            .map(|t| t.as_file_mut())
            .expect("temp file present until commit")
    }

    /// The final path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flushes, fsyncs and renames the file into place (and fsyncs the directory).
    ///
    /// # Errors
    /// I/O errors, or `dest` created meanwhile (without `force`).
    pub fn commit(mut self) -> Result<()> {
        let Some(tmp) = self.tmp.take() else {
            return Ok(());
        };
        let path = tmp.path().to_path_buf();
        let wrap = |e: io::Error| Error::from(e).with_file(&self.dest);
        tmp.as_file().sync_all().map_err(wrap)?;
        let remove_stale = |side: &Path| match std::fs::remove_file(side) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::from(e).with_file(side)),
            _ => Ok(()),
        };
        let r = if self.force {
            // Before the rename: the old file is then left without a sidecar at worst, never
            // the new one with a sidecar of other content (which reads as damage).
            if let Some(side) = &self.stale {
                remove_stale(side)?;
            }
            tmp.persist(&self.dest).map(|_| ())
        } else {
            tmp.persist_noclobber(&self.dest).map(|_| ())
        };
        unregister(&path);
        r.map_err(|e| wrap(e.error))?;
        if !self.force {
            // Only once the name was ours: the sidecar described no file (another run's
            // committed file, which made the commit fail, keeps its own).
            if let Some(side) = &self.stale {
                remove_stale(side)?;
            }
        }
        if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(t) = &self.tmp {
            unregister(t.path());
        }
        // NamedTempFile removes the file itself.
    }
}

/// The device and inode of the file at `path` (`-`: of stdin or stdout, as `stdout` says),
/// when it exists.
fn identity(path: &Path, stdout: bool) -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    let st = if path.as_os_str() != "-" {
        rustix::fs::stat(path).ok()?
    } else if stdout {
        rustix::fs::fstat(io::stdout().as_fd()).ok()?
    } else {
        rustix::fs::fstat(io::stdin().as_fd()).ok()?
    };
    // A terminal, pipe or /dev/null on both sides is no overlap.
    use rustix::fs::FileType;
    let data = matches!(
        FileType::from_raw_mode(st.st_mode),
        FileType::RegularFile | FileType::BlockDevice
    );
    #[allow(clippy::useless_conversion)]
    data.then(|| (u64::from(st.st_dev), u64::from(st.st_ino)))
}

/// Refuses an output (`-` = stdout) that is one of `inputs` (`-` = stdin): same device and
/// inode, so hard and symbolic links count, as zstd does. Replacing an input while it is
/// read would lose it, even with `--force`.
///
/// # Errors
/// The output is an input.
pub fn refuse_input_as_output(out: &str, inputs: &[&Path]) -> Result<()> {
    let Some(o) = identity(Path::new(out), true) else {
        return Ok(());
    };
    match inputs.iter().find(|i| identity(i, false) == Some(o)) {
        Some(i) => {
            let stdin = i.as_os_str() == "-";
            let name = if stdin {
                "stdin".into()
            } else {
                i.display().to_string()
            };
            let what = if out == "-" { "stdout" } else { "the output" };
            Err(Error::invalid(format!(
                "{what} is the input {name}: refusing to replace it"
            ))
            .with_file(if out == "-" { i } else { Path::new(out) }))
        }
        None => Ok(()),
    }
}

/// The checks of [`Output::create_for`], for a command to make before its work: `out` is
/// none of `inputs`, and not a terminal.
///
/// # Errors
/// As [`refuse_input_as_output`] and [`refuse_terminal`].
pub fn check_output(out: &str, inputs: &[&Path]) -> Result<()> {
    refuse_input_as_output(out, inputs)?;
    if out == "-" {
        refuse_terminal()?;
    }
    Ok(())
}

/// Refuses to write binary data to stdout when it is a terminal (as zstd does): redirect it
/// to a file or a pipe, or give an output file.
///
/// # Errors
/// Stdout is a terminal.
pub fn refuse_terminal() -> Result<()> {
    use std::io::IsTerminal;
    if io::stdout().is_terminal() {
        return Err(Error::invalid(
            "stdout is a terminal: refusing to write binary data to it \
             (redirect it to a file or pipe, or give an output file with -o)",
        ));
    }
    Ok(())
}

/// Where a command writes: an atomic file, or stdout for `-`.
#[derive(Debug)]
pub enum Output {
    /// A file written atomically.
    File(BufWriter<AtomicFileWriter>),
    /// Standard output.
    Stdout(BufWriter<io::Stdout>),
}

/// Bytes written between two write-behind hints.
const WRITE_BEHIND: u64 = 8 << 20;

/// Starts asynchronous write-back of `len` bytes of `file` at `offset` (POSIX_FADV_DONTNEED,
/// which also drops those pages from the cache once clean). A hint only: a failure changes
/// nothing but speed.
fn start_write_back(file: &File, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(file, offset, len, rustix::fs::Advice::DontNeed);
}

/// Write-behind for one file: once [`WRITE_BEHIND`] bytes have been written, their write-back
/// is started on a helper thread, so that the final fsync waits only for the tail and the
/// writer does not wait while the kernel submits the I/O. Dropping it waits for the hints
/// already sent.
#[derive(Debug, Default)]
pub(crate) struct WriteBack {
    /// Written range whose write-back has not been started yet.
    pending: Option<(u64, u64)>,
    tx: Option<std::sync::mpsc::SyncSender<(u64, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriteBack {
    /// Records that `file` was written at `start..end`, and starts write-back when enough is
    /// pending (writes mostly ascend; the range pending is their hull).
    pub(crate) fn wrote(&mut self, file: &File, start: u64, end: u64) {
        let (s, e) = self
            .pending
            .map_or((start, end), |(s, e)| (s.min(start), e.max(end)));
        if e - s < WRITE_BEHIND {
            self.pending = Some((s, e));
            return;
        }
        self.pending = None;
        if self.thread.is_none() {
            self.start_thread(file);
        }
        match &self.tx {
            Some(tx) if tx.send((s, e - s)).is_ok() => {}
            _ => start_write_back(file, s, e - s),
        }
    }

    /// Starts the helper thread (hints are given inline if it cannot be started).
    fn start_thread(&mut self, file: &File) {
        let Ok(f) = file.try_clone() else { return };
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, u64)>(64);
        let spawned = std::thread::Builder::new()
            .name("write-back".into())
            .spawn(move || {
                for (offset, len) in rx {
                    start_write_back(&f, offset, len);
                }
            });
        if let Ok(t) = spawned {
            self.tx = Some(tx);
            self.thread = Some(t);
        }
    }
}

impl Drop for WriteBack {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `Write` adapter over an [`AtomicFile`] with write-behind (a writer thread): the copy and
/// the disk work at the same time.
#[derive(Debug)]
pub struct AtomicFileWriter {
    file: AtomicFile,
    written: u64,
    write_back: WriteBack,
}

impl AtomicFileWriter {
    /// Wraps `file`.
    pub fn new(file: AtomicFile) -> Self {
        AtomicFileWriter {
            file,
            written: 0,
            write_back: WriteBack::default(),
        }
    }

    /// The wrapped file (once the write-back hints already given have been handed over).
    pub fn into_inner(self) -> AtomicFile {
        drop(self.write_back);
        self.file
    }
}

impl Write for AtomicFileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.file().write(buf)?;
        let start = self.written;
        self.written += n as u64;
        self.write_back.wrote(self.file.file(), start, self.written);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.file().flush()
    }
}

impl Output {
    /// Opens `path` for writing (`-` = stdout).
    ///
    /// # Errors
    /// As [`AtomicFile::create`].
    pub fn create(path: &str, force: bool) -> Result<Output> {
        Self::create_like(path, force, None)
    }

    /// Opens `path` for writing (`-` = stdout); a new file takes the permission bits of
    /// `like` (see [`AtomicFile::create_like`]).
    ///
    /// # Errors
    /// As [`AtomicFile::create`].
    pub fn create_like(path: &str, force: bool, like: Option<&Path>) -> Result<Output> {
        if path == "-" {
            return Ok(Output::Stdout(BufWriter::with_capacity(
                1 << 20,
                io::stdout(),
            )));
        }
        let f = AtomicFile::create_like(path, force, like)?;
        Ok(Output::File(BufWriter::with_capacity(
            1 << 20,
            AtomicFileWriter::new(f),
        )))
    }

    /// Opens the output of a command that reads `inputs` (`-` = stdin): refuses an output
    /// that is one of them (see [`refuse_input_as_output`]) and binary data for a terminal
    /// (see [`refuse_terminal`]); a new file takes the permission bits of the first input.
    ///
    /// # Errors
    /// As [`refuse_input_as_output`], [`refuse_terminal`] and [`AtomicFile::create`].
    pub fn create_for(path: &str, force: bool, inputs: &[&Path]) -> Result<Output> {
        check_output(path, inputs)?;
        let like = inputs.first().filter(|i| i.as_os_str() != "-").copied();
        Self::create_like(path, force, like)
    }

    /// Finishes the output: flush + fsync + rename for files, flush for stdout.
    ///
    /// # Errors
    /// I/O errors.
    pub fn commit(self) -> Result<()> {
        match self {
            Output::Stdout(mut w) => Ok(w.flush()?),
            Output::File(w) => {
                let inner = w.into_inner().map_err(|e| Error::from(e.into_error()))?;
                inner.into_inner().commit()
            }
        }
    }

    /// Allocates disk space for `len` bytes about to be written (the file keeps its size).
    /// Allocating it at once rather than block by block while writing makes a large copy
    /// measurably faster, and a full disk is found before anything is written. Nothing
    /// happens for stdout or where the file system cannot preallocate.
    ///
    /// # Errors
    /// The file system has no room (or quota) for `len` bytes.
    pub fn reserve(&mut self, len: u64) -> Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        let Some(f) = self.file_mut().filter(|_| len > 0) else {
            return Ok(());
        };
        match fallocate(&*f, FallocateFlags::KEEP_SIZE, 0, len) {
            Err(e) if e == rustix::io::Errno::NOSPC || e == rustix::io::Errno::DQUOT => {
                let e = io::Error::from(e);
                Err(Error::from(io::Error::new(
                    e.kind(),
                    format!("{e}: no room for the {len} payload bytes to be written"),
                )))
            }
            _ => Ok(()),
        }
    }

    /// The underlying file when writing to a file (for `copy_file_range` and the like).
    pub fn file_mut(&mut self) -> Option<&mut File> {
        match self {
            Output::File(w) => Some(w.get_mut().file.file()),
            Output::Stdout(_) => None,
        }
    }
}

/// Writes at least this long skip the output buffer (after it is flushed): payload chunks
/// go to the file without another copy, while record heads are gathered.
const WRITE_DIRECT: usize = 64 << 10;

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::File(w) if buf.len() >= WRITE_DIRECT => {
                w.flush()?;
                w.get_mut().write(buf)
            }
            Output::File(w) => w.write(buf),
            Output::Stdout(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::File(w) => w.flush(),
            Output::Stdout(w) => w.flush(),
        }
    }
}
