//! Where an archive's objects live: a [`Store`] holds flat, named objects (the diff files,
//! their `.sums` sidecars, the catalog, a lock object) and is either a local directory
//! ([`DirStore`]) or, with the feature `s3`, an object store ([`ObjStore`]: S3 or Ceph RGW
//! through `object_store`, or in memory for tests).
//!
//! An object becomes visible only when it is complete: an [`Upload`] is written as a stream
//! and made visible by [`Upload::commit`] (a directory: temporary file beside it, fsynced
//! and renamed; an object store: the completion of a multipart upload). An upload dropped
//! or aborted leaves nothing visible. Locks use [`Store::create_if_absent`] (`O_EXCL` in a
//! directory, a conditional put with `If-None-Match: *` on S3).
//!
//! The object store runs on a private tokio runtime inside [`ObjStore`]; every method here
//! is synchronous.

use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One object of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its name in the archive (no `/`).
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
    /// When it was last written, seconds since the epoch.
    pub mtime: u64,
}

/// A streaming write of one object, visible only once committed.
pub trait Upload: Write + Send {
    /// Makes the object visible (it replaces an object of the same name); returns its
    /// length.
    ///
    /// # Errors
    /// Writing, syncing or completing fails: then nothing is visible.
    fn commit(self: Box<Self>) -> Result<u64>;
    /// Drops what was written; nothing becomes visible.
    ///
    /// # Errors
    /// The store could not be told (the leftover is removed by a later clean-up).
    fn abort(self: Box<Self>) -> Result<()>;
}

/// The objects of one archive (see the module docs). Names are plain file names.
pub trait Store: Send + Sync {
    /// The archive's location (`DIR` or `s3://BUCKET/PREFIX`), for messages and reports.
    fn url(&self) -> String;
    /// The location of the object `name`, for messages and reports.
    fn location(&self, name: &str) -> String {
        format!("{}/{name}", self.url().trim_end_matches('/'))
    }
    /// The objects whose names start with `prefix`, sorted by name (a missing archive is
    /// empty).
    ///
    /// # Errors
    /// The archive cannot be listed.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// The object `name`, if it exists.
    ///
    /// # Errors
    /// The store cannot be asked.
    fn head(&self, name: &str) -> Result<Option<ObjectInfo>>;
    /// The bytes `range` of `name` (fewer only at its end).
    ///
    /// # Errors
    /// The object is missing or cannot be read.
    fn read_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>>;
    /// [`Store::read_range`] of a range the caller knows lies within the object (an object
    /// store then asks once, with no request for its length first).
    ///
    /// # Errors
    /// The object cannot be read.
    fn read_within(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>> {
        self.read_range(name, range)
    }
    /// The whole object `name` when it exists and is at most `max` bytes.
    ///
    /// # Errors
    /// It is longer than `max`, or cannot be read.
    fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>>;
    /// A reader of the first `len` bytes of `name`, front to back (on an object store with
    /// a few ranged reads in flight ahead of the reader).
    ///
    /// # Errors
    /// The object cannot be opened.
    fn reader(&self, name: &str, len: u64) -> Result<Box<dyn Read + Send>>;
    /// Starts writing the object `name` (see [`Upload`]).
    ///
    /// # Errors
    /// The upload cannot be started.
    fn put(&self, name: &str) -> Result<Box<dyn Upload + '_>>;
    /// Writes the small object `name` whole, replacing it atomically.
    ///
    /// # Errors
    /// Writing fails.
    fn put_small(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut u = self.put(name)?;
        u.write_all(bytes)
            .map_err(|e| Error::from(e).with_file(self.location(name)))?;
        u.commit().map(|_| ())
    }
    /// Creates `name` with `bytes` only if no object of that name exists: false when one
    /// does.
    ///
    /// # Errors
    /// The store cannot be asked or written.
    fn create_if_absent(&self, name: &str, bytes: &[u8]) -> Result<bool>;
    /// Removes `name` (a missing object is no error).
    ///
    /// # Errors
    /// The removal fails.
    fn delete(&self, name: &str) -> Result<()>;
    /// Removes what interrupted uploads of objects whose names start with `prefix` left
    /// (temporary files; unfinished multipart uploads), returning what was removed. Call
    /// it only while no upload of such names runs (holding the archive's exclusive lock).
    ///
    /// # Errors
    /// Listing or removing fails.
    fn clean_uploads(&self, prefix: &str) -> Result<Vec<String>>;
    /// The directory, for a store in one (its runs lock it with [`crate::dirlock`]).
    fn local_dir(&self) -> Option<&Path> {
        None
    }
}

/// Where an archive is: a local directory or an object store location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory.
    Dir(PathBuf),
    /// `s3://BUCKET/PREFIX` (the prefix without slashes at its ends, maybe empty).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix of the archive's objects.
        prefix: String,
    },
}

impl Location {
    /// Reads `s`: `s3://BUCKET[/PREFIX]`, else a directory path.
    ///
    /// # Errors
    /// An `s3://` location without a valid bucket name, or with an empty or `.`/`..` part in
    /// its prefix.
    pub fn parse(s: &str) -> Result<Location> {
        let Some(rest) = s.strip_prefix("s3://") else {
            return Ok(Location::Dir(PathBuf::from(s)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let ok_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !ok_bucket {
            return Err(Error::invalid(format!(
                "{s}: not an s3://BUCKET/PREFIX location (a bucket name is 3 to 63 lowercase \
                 letters, digits, '-' and '.')"
            )));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == ".." || p.chars().any(char::is_control))
        {
            return Err(Error::invalid(format!(
                "{s}: the prefix has an empty, '.' or '..' part, or a control character"
            )));
        }
        Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// True for an `s3://` location.
    pub fn is_remote(&self) -> bool {
        matches!(self, Location::S3 { .. })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dir(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// How to reach an object store: given explicitly (flags), else from the `AWS_*`
/// environment variables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Config {
    /// The endpoint URL (`AWS_ENDPOINT_URL`, `--s3-endpoint`), e.g. a Ceph RGW's
    /// `http://127.0.0.1:7480`; none: AWS.
    pub endpoint: Option<String>,
    /// The region (`AWS_REGION`, `AWS_DEFAULT_REGION`, `--s3-region`; default `us-east-1`).
    pub region: Option<String>,
    /// Path-style requests (`http://HOST/BUCKET/KEY`); on by default when an endpoint is
    /// given (`--s3-path-style`, `--s3-virtual-hosted`).
    pub path_style: Option<bool>,
    /// Allow a plain-http endpoint (`AWS_ALLOW_HTTP=true`, `--s3-allow-http`).
    pub allow_http: Option<bool>,
    /// Upload part size in bytes (default [`PART_SIZE`]; at least 5 MiB).
    pub part_size: Option<usize>,
    /// Parts uploaded at once (default [`PARTS_IN_FLIGHT`]).
    pub parts_in_flight: Option<usize>,
}

/// The default upload part size: 8 MiB.
pub const PART_SIZE: usize = 8 << 20;
/// The default number of parts uploaded at once.
pub const PARTS_IN_FLIGHT: usize = 4;
/// Ranged reads a reader keeps in flight ahead of what it hands out.
pub const READS_IN_FLIGHT: usize = 4;
/// The length of one ranged read of a reader.
pub const READ_SIZE: u64 = 8 << 20;

/// Opens the archive at `loc`.
///
/// # Errors
/// An `s3://` location in a build without the feature `s3`; the object store cannot be
/// configured.
pub fn open(loc: &Location, cfg: &S3Config) -> Result<Box<dyn Store>> {
    match loc {
        Location::Dir(d) => Ok(Box::new(DirStore::new(d))),
        #[cfg(feature = "s3")]
        Location::S3 { bucket, prefix } => Ok(Box::new(ObjStore::s3(bucket, prefix, cfg)?)),
        #[cfg(not(feature = "s3"))]
        Location::S3 { .. } => {
            let _ = cfg;
            Err(Error::invalid(format!(
                "{loc}: this rbddiff is built without object storage (feature s3)"
            )))
        }
    }
}

/// A reader of an object through ranged reads of `chunk` bytes, one at a time.
pub struct RangeReader<'s, S: Store + ?Sized> {
    store: &'s S,
    name: String,
    pos: u64,
    len: u64,
    chunk: u64,
    buf: Vec<u8>,
    at: usize,
}

impl<'s, S: Store + ?Sized> RangeReader<'s, S> {
    /// Reads the first `len` bytes of `name` in reads of `chunk` bytes.
    pub fn new(store: &'s S, name: &str, len: u64, chunk: u64) -> Self {
        RangeReader {
            store,
            name: name.to_string(),
            pos: 0,
            len,
            chunk: chunk.max(1),
            buf: Vec::new(),
            at: 0,
        }
    }
}

impl<S: Store + ?Sized> Read for RangeReader<'_, S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            if self.pos >= self.len {
                return Ok(0);
            }
            let end = self.len.min(self.pos + self.chunk);
            self.buf = self
                .store
                .read_range(&self.name, self.pos..end)
                .map_err(io::Error::other)?;
            if self.buf.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} ends before byte {}", self.name, self.len),
                ));
            }
            self.pos += self.buf.len() as u64;
            self.at = 0;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The first `len` bytes of the object `name` of a store, read at offsets by ranged reads
/// (one request per read): what lets an indexed archive in a store be opened as
/// [`crate::zst::ZstArchive`] and only the frames a merge needs be fetched.
pub struct StoreObject<'s> {
    store: &'s dyn Store,
    name: String,
    len: u64,
}

impl std::fmt::Debug for StoreObject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreObject({}, {} bytes)", self.name, self.len)
    }
}

impl<'s> StoreObject<'s> {
    /// The first `len` bytes of `name` in `store`.
    pub fn new(store: &'s dyn Store, name: &str, len: u64) -> Self {
        StoreObject {
            store,
            name: name.to_string(),
            len,
        }
    }

    /// The bytes, to read at offsets.
    pub fn positioned(&self) -> crate::positioned::Positioned<'_> {
        crate::positioned::Positioned::Other(self, self.len)
    }
}

impl crate::positioned::ReadAt for StoreObject<'_> {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let end = at
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} bytes at byte {at} are past the end of {}",
                        buf.len(),
                        self.name
                    ),
                )
            })?;
        if buf.is_empty() {
            return Ok(());
        }
        let got = self
            .store
            .read_within(&self.name, at..end)
            .map_err(io::Error::other)?;
        if got.len() != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends before byte {end}", self.name),
            ));
        }
        buf.copy_from_slice(&got);
        Ok(())
    }
}

/// An archive in a local directory: objects are files, written atomically
/// ([`crate::output::AtomicFile`]), as the directory commands write them.
#[derive(Clone, Debug)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// The directory `dir` (created by the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirStore { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::invalid(format!("not an object name: {name:?}")));
        }
        Ok(self.dir.join(name))
    }

    fn make_dir(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::from(e).with_file(&self.dir))
    }
}

fn secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An [`Upload`] into a directory: an [`crate::output::AtomicFile`].
struct DirUpload {
    file: crate::output::AtomicFile,
    written: u64,
}

impl Write for DirUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.file().write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.file().flush()
    }
}

impl Upload for DirUpload {
    fn commit(self: Box<Self>) -> Result<u64> {
        let n = self.written;
        self.file.commit()?;
        Ok(n)
    }
    fn abort(self: Box<Self>) -> Result<()> {
        // Dropping the temporary file removes it.
        Ok(())
    }
}

impl Store for DirStore {
    fn url(&self) -> String {
        self.dir.display().to_string()
    }

    fn location(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::from(e).with_file(&self.dir)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::from(e).with_file(&self.dir))?;
            let Ok(name) = ent.file_name().into_string() else {
                continue;
            };
            if !name.starts_with(prefix) {
                continue;
            }
            // Regular files only (a symbolic link is not followed).
            let Ok(m) = std::fs::symlink_metadata(ent.path()) else {
                continue;
            };
            if m.is_file() {
                out.push(ObjectInfo {
                    name,
                    size: m.len(),
                    mtime: m.modified().map_or(0, secs),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn head(&self, name: &str) -> Result<Option<ObjectInfo>> {
        let p = self.path(name)?;
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some(ObjectInfo {
                name: name.to_string(),
                size: m.len(),
                mtime: m.modified().map_or(0, secs),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::from(e).with_file(&p)),
        }
    }

    fn read_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let p = self.path(name)?;
        let wrap = |e: io::Error| Error::from(e).with_file(&p);
        let f = File::open(&p).map_err(wrap)?;
        let want = usize::try_from(range.end.saturating_sub(range.start))
            .map_err(|_| Error::invalid("read too long").with_file(&p))?;
        let len = f.metadata().map_err(wrap)?.len();
        let want = want.min(usize::try_from(len.saturating_sub(range.start)).unwrap_or(want));
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            let n = f
                .read_at(&mut buf[got..], range.start + got as u64)
                .map_err(wrap)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok(buf)
    }

    fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        crate::smallfile::read_small(&self.path(name)?, max)
    }

    fn reader(&self, name: &str, len: u64) -> Result<Box<dyn Read + Send>> {
        let p = self.path(name)?;
        let f = File::open(&p).map_err(|e| Error::from(e).with_file(&p))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, f.take(len))))
    }

    fn put(&self, name: &str) -> Result<Box<dyn Upload + '_>> {
        let p = self.path(name)?;
        self.make_dir()?;
        Ok(Box::new(DirUpload {
            file: crate::output::AtomicFile::create(&p, true)?,
            written: 0,
        }))
    }

    fn create_if_absent(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.path(name)?;
        self.make_dir()?;
        let wrap = |e: io::Error| Error::from(e).with_file(&p);
        let mut f = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(wrap(e)),
        };
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(wrap)?;
        crate::archive::sync_dir(&self.dir)?;
        Ok(true)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let p = self.path(name)?;
        match std::fs::remove_file(&p) {
            Ok(()) => crate::archive::sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::from(e).with_file(&p)),
        }
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn clean_uploads(&self, prefix: &str) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for o in self.list(".")? {
            let of = crate::archive::stale_temp_of(&o.name);
            let base = of.map(|b| b.strip_prefix('.').unwrap_or(b));
            if base.is_some_and(|b| b.starts_with(prefix)) {
                self.delete(&o.name)?;
                removed.push(self.location(&o.name));
            }
        }
        Ok(removed)
    }
}

#[cfg(feature = "s3")]
pub use remote::{FailPoint, ObjStore};

#[cfg(feature = "s3")]
mod remote {
    use std::collections::VecDeque;
    use std::io::{self, Read, Write};
    use std::ops::Range;
    use std::sync::{Arc, Mutex};

    use object_store::multipart::{MultipartStore, PartId};
    use object_store::path::Path as Key;
    use object_store::{MultipartId, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
    use tokio::runtime::Runtime;
    use tokio::task::JoinHandle;

    use super::{ObjectInfo, S3Config, Store, Upload, PARTS_IN_FLIGHT, PART_SIZE};
    use super::{READS_IN_FLIGHT, READ_SIZE};
    use crate::error::{Error, Result};

    /// Name prefix of the marker object an upload leaves while it runs:
    /// `.rbddiff-upload.NAME` holds the multipart upload id, so that a later clean-up can
    /// abort an upload a killed run left.
    const MARKER: &str = ".rbddiff-upload.";

    /// A failure injected into an [`ObjStore`] (tests of the failure paths).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum FailPoint {
        /// The upload of the part with this index fails.
        Part(usize),
        /// The completion of a multipart upload fails.
        Complete,
    }

    /// An archive in an object store (see the module docs): objects `PREFIX/NAME` of one
    /// bucket, written by multipart uploads of [`PART_SIZE`] parts, [`PARTS_IN_FLIGHT`] at
    /// once; read by ranged reads, [`READS_IN_FLIGHT`] at once.
    pub struct ObjStore {
        url: String,
        prefix: String,
        store: Arc<dyn ObjectStore>,
        multipart: Arc<dyn MultipartStore>,
        rt: Runtime,
        part_size: usize,
        parts_in_flight: usize,
        fail: Arc<Mutex<Option<FailPoint>>>,
        /// Bytes fetched by ranged reads so far.
        fetched: Arc<std::sync::atomic::AtomicU64>,
        /// Ranged reads made so far.
        gets: Arc<std::sync::atomic::AtomicU64>,
    }

    fn os_err(e: object_store::Error, what: &str) -> Error {
        Error::from(io::Error::other(e.to_string())).with_file(what)
    }

    fn env(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn runtime() -> Result<Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rbddiff-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::from(e).with_file("object store runtime"))
    }

    impl ObjStore {
        /// The archive `s3://bucket/prefix`, configured by `cfg` and else by the `AWS_*`
        /// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
        /// `AWS_SESSION_TOKEN`, `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ALLOW_HTTP`, …).
        ///
        /// # Errors
        /// The configuration is refused (a bad endpoint URL, a part size under 5 MiB).
        pub fn s3(bucket: &str, prefix: &str, cfg: &S3Config) -> Result<ObjStore> {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
            // rustls is built with ring, installed here once (no other provider is built in).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            let endpoint = cfg
                .endpoint
                .clone()
                .or_else(|| env("AWS_ENDPOINT_URL_S3"))
                .or_else(|| env("AWS_ENDPOINT_URL"));
            if let Some(e) = &endpoint {
                b = b.with_endpoint(e);
            }
            let region = cfg
                .region
                .clone()
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into());
            b = b.with_region(region);
            let path_style = cfg.path_style.unwrap_or(endpoint.is_some());
            b = b.with_virtual_hosted_style_request(!path_style);
            if let Some(h) = cfg.allow_http {
                b = b.with_allow_http(h);
            } else if let Some(h) = env("AWS_ALLOW_HTTP") {
                b = b.with_config(
                    AmazonS3ConfigKey::Client(object_store::ClientConfigKey::AllowHttp),
                    h,
                );
            }
            let s3 = Arc::new(b.build().map_err(|e| os_err(e, "s3 configuration"))?);
            let url = super::Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            }
            .to_string();
            Self::with(url, prefix, s3.clone(), s3, cfg)
        }

        /// An archive in memory (tests).
        ///
        /// # Errors
        /// The runtime cannot be started.
        pub fn memory(cfg: &S3Config) -> Result<ObjStore> {
            let m = Arc::new(object_store::memory::InMemory::new());
            Self::with("memory://archive".into(), "archive", m.clone(), m, cfg)
        }

        fn with(
            url: String,
            prefix: &str,
            store: Arc<dyn ObjectStore>,
            multipart: Arc<dyn MultipartStore>,
            cfg: &S3Config,
        ) -> Result<ObjStore> {
            let part_size = cfg.part_size.unwrap_or(PART_SIZE);
            if part_size < 5 << 20 {
                return Err(Error::invalid(format!(
                    "upload part size {part_size} is below the 5 MiB S3 needs"
                )));
            }
            Ok(ObjStore {
                url,
                prefix: prefix.trim_matches('/').to_string(),
                store,
                multipart,
                rt: runtime()?,
                part_size,
                parts_in_flight: cfg.parts_in_flight.unwrap_or(PARTS_IN_FLIGHT).max(1),
                fail: Arc::new(Mutex::new(None)),
                fetched: Default::default(),
                gets: Default::default(),
            })
        }

        /// Bytes fetched by ranged reads so far (what a restore or merge transferred).
        pub fn bytes_fetched(&self) -> u64 {
            self.fetched.load(std::sync::atomic::Ordering::Relaxed)
        }

        /// Ranged reads made so far by [`Store::read_range`] and [`Store::read_within`]
        /// (a streamed [`Store::reader`] is counted in bytes only).
        pub fn ranged_reads(&self) -> u64 {
            self.gets.load(std::sync::atomic::Ordering::Relaxed)
        }

        /// Makes the next matching operation fail (tests of the failure paths).
        #[doc(hidden)]
        pub fn fail_at(&self, f: Option<FailPoint>) {
            if let Ok(mut g) = self.fail.lock() {
                *g = f;
            }
        }

        /// Upload part size and parts in flight: an upload holds at most their product in
        /// memory (plus the part being filled).
        pub fn upload_memory(&self) -> (usize, usize) {
            (self.part_size, self.parts_in_flight)
        }

        fn failing(&self, f: FailPoint) -> bool {
            self.fail.lock().is_ok_and(|g| *g == Some(f))
        }

        fn key(&self, name: &str) -> Result<Key> {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(Error::invalid(format!("not an object name: {name:?}")));
            }
            let full = if self.prefix.is_empty() {
                name.to_string()
            } else {
                format!("{}/{name}", self.prefix)
            };
            Key::parse(&full).map_err(|e| Error::invalid(format!("{e}")).with_file(&full))
        }

        fn name_of(&self, key: &Key) -> Option<String> {
            let s = key.as_ref();
            let rest = if self.prefix.is_empty() {
                s
            } else {
                s.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?
            };
            (!rest.contains('/')).then(|| rest.to_string())
        }

        fn list_all(&self) -> Result<Vec<ObjectInfo>> {
            use futures_util::TryStreamExt;
            let prefix = (!self.prefix.is_empty()).then(|| Key::from(self.prefix.as_str()));
            let store = self.store.clone();
            let metas: Vec<object_store::ObjectMeta> = self
                .rt
                .block_on(async move { store.list(prefix.as_ref()).try_collect().await })
                .map_err(|e| os_err(e, &self.url))?;
            let mut out: Vec<ObjectInfo> = metas
                .into_iter()
                .filter_map(|m| {
                    Some(ObjectInfo {
                        name: self.name_of(&m.location)?,
                        size: m.size,
                        mtime: u64::try_from(m.last_modified.timestamp()).unwrap_or(0),
                    })
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        }

        fn get_range(&self, key: &Key, range: Range<u64>) -> Result<Vec<u8>> {
            let store = self.store.clone();
            let k = key.clone();
            let b = self
                .rt
                .block_on(async move { store.get_range(&k, range).await })
                .map_err(|e| os_err(e, key.as_ref()))?;
            self.fetched
                .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(b.to_vec())
        }
    }

    fn not_found(e: &object_store::Error) -> bool {
        matches!(e, object_store::Error::NotFound { .. })
    }

    impl Store for ObjStore {
        fn url(&self) -> String {
            self.url.clone()
        }

        fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
            let mut all = self.list_all()?;
            all.retain(|o| o.name.starts_with(prefix));
            Ok(all)
        }

        fn head(&self, name: &str) -> Result<Option<ObjectInfo>> {
            let key = self.key(name)?;
            let store = self.store.clone();
            let k = key.clone();
            match self.rt.block_on(async move { store.head(&k).await }) {
                Ok(m) => Ok(Some(ObjectInfo {
                    name: name.to_string(),
                    size: m.size,
                    mtime: u64::try_from(m.last_modified.timestamp()).unwrap_or(0),
                })),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(os_err(e, &self.location(name))),
            }
        }

        fn read_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>> {
            if range.is_empty() {
                return Ok(Vec::new());
            }
            let key = self.key(name)?;
            // A range past the end is cut to the object's length.
            let len = self
                .head(name)?
                .ok_or_else(|| Error::invalid("no such object").with_file(self.location(name)))?
                .size;
            let end = range.end.min(len);
            if range.start >= end {
                return Ok(Vec::new());
            }
            self.get_range(&key, range.start..end)
        }

        fn read_within(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>> {
            if range.is_empty() {
                return Ok(Vec::new());
            }
            self.get_range(&self.key(name)?, range)
        }

        fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
            let Some(info) = self.head(name)? else {
                return Ok(None);
            };
            if info.size > max {
                return Err(Error::invalid(format!(
                    "{} bytes, more than the {max} read of such a file",
                    info.size
                ))
                .with_file(self.location(name)));
            }
            let key = self.key(name)?;
            let store = self.store.clone();
            let k = key.clone();
            match self.rt.block_on(async move {
                let r = store.get(&k).await?;
                r.bytes().await
            }) {
                Ok(b) if b.len() as u64 > max => Err(Error::invalid(format!(
                    "more than the {max} bytes read of such a file"
                ))
                .with_file(self.location(name))),
                Ok(b) => Ok(Some(b.to_vec())),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(os_err(e, &self.location(name))),
            }
        }

        fn reader(&self, name: &str, len: u64) -> Result<Box<dyn Read + Send>> {
            Ok(Box::new(Prefetch {
                store: self.store.clone(),
                rt: self.rt.handle().clone(),
                key: self.key(name)?,
                len,
                next: 0,
                pending: VecDeque::new(),
                buf: Vec::new(),
                at: 0,
                fetched: self.fetched.clone(),
            }))
        }

        fn put(&self, name: &str) -> Result<Box<dyn Upload + '_>> {
            let key = self.key(name)?;
            let mp = self.multipart.clone();
            let k = key.clone();
            let id = self
                .rt
                .block_on(async move { mp.create_multipart(&k).await })
                .map_err(|e| os_err(e, &self.location(name)))?;
            let marker = format!("{MARKER}{name}");
            // The marker lets a later clean-up abort this upload if this run is killed.
            if let Err(e) = self.put_whole(&marker, id.as_bytes(), PutMode::Overwrite) {
                let _ = self.abort_id(&key, &id);
                return Err(e);
            }
            Ok(Box::new(S3Upload {
                store: self,
                name: name.to_string(),
                key,
                id,
                marker,
                buf: Vec::with_capacity(self.part_size),
                parts: Vec::new(),
                in_flight: VecDeque::new(),
                written: 0,
                done: false,
            }))
        }

        fn put_small(&self, name: &str, bytes: &[u8]) -> Result<()> {
            self.put_whole(name, bytes, PutMode::Overwrite).map(|_| ())
        }

        fn create_if_absent(&self, name: &str, bytes: &[u8]) -> Result<bool> {
            self.put_whole(name, bytes, PutMode::Create)
        }

        fn delete(&self, name: &str) -> Result<()> {
            let key = self.key(name)?;
            let store = self.store.clone();
            match self.rt.block_on(async move { store.delete(&key).await }) {
                Ok(()) => Ok(()),
                Err(e) if not_found(&e) => Ok(()),
                Err(e) => Err(os_err(e, &self.location(name))),
            }
        }

        fn clean_uploads(&self, prefix: &str) -> Result<Vec<String>> {
            let mut removed = Vec::new();
            for m in self.list(&format!("{MARKER}{prefix}"))? {
                let name = &m.name[MARKER.len()..];
                if let Some(id) = self.read_small(&m.name, 4096)? {
                    let id = String::from_utf8_lossy(&id).into_owned();
                    let key = self.key(name)?;
                    // An upload that is gone already (completed or aborted) is no error.
                    let _ = self.abort_id(&key, &id);
                    removed.push(format!("{} (unfinished upload {id})", self.location(name)));
                }
                self.delete(&m.name)?;
            }
            Ok(removed)
        }
    }

    impl ObjStore {
        /// Writes `name` in one request: `Ok(false)` when `mode` is create and it exists.
        fn put_whole(&self, name: &str, bytes: &[u8], mode: PutMode) -> Result<bool> {
            let key = self.key(name)?;
            let store = self.store.clone();
            let payload = PutPayload::from(bytes.to_vec());
            let opts = PutOptions {
                mode,
                ..PutOptions::default()
            };
            match self
                .rt
                .block_on(async move { store.put_opts(&key, payload, opts).await })
            {
                Ok(_) => Ok(true),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => Ok(false),
                Err(e) => Err(os_err(e, &self.location(name))),
            }
        }

        fn abort_id(&self, key: &Key, id: &MultipartId) -> Result<()> {
            let mp = self.multipart.clone();
            let (k, i) = (key.clone(), id.clone());
            self.rt
                .block_on(async move { mp.abort_multipart(&k, &i).await })
                .map_err(|e| os_err(e, key.as_ref()))
        }
    }

    /// A reader keeping up to [`READS_IN_FLIGHT`] ranged reads of [`READ_SIZE`] in flight.
    struct Prefetch {
        store: Arc<dyn ObjectStore>,
        rt: tokio::runtime::Handle,
        key: Key,
        len: u64,
        next: u64,
        pending: VecDeque<JoinHandle<object_store::Result<bytes::Bytes>>>,
        buf: Vec<u8>,
        at: usize,
        fetched: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Prefetch {
        fn fill(&mut self) {
            while self.pending.len() < READS_IN_FLIGHT && self.next < self.len {
                let end = self.len.min(self.next + READ_SIZE);
                let (store, key, r) = (self.store.clone(), self.key.clone(), self.next..end);
                self.pending
                    .push_back(self.rt.spawn(async move { store.get_range(&key, r).await }));
                self.next = end;
            }
        }
    }

    impl Read for Prefetch {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.at == self.buf.len() {
                self.fill();
                let Some(h) = self.pending.pop_front() else {
                    return Ok(0);
                };
                let b = self
                    .rt
                    .block_on(h)
                    .map_err(io::Error::other)?
                    .map_err(|e| io::Error::other(format!("{}: {e}", self.key)))?;
                if b.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} is shorter than {} bytes", self.key, self.len),
                    ));
                }
                self.fetched
                    .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
                self.buf = b.to_vec();
                self.at = 0;
                self.fill();
            }
            let n = out.len().min(self.buf.len() - self.at);
            out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    impl Drop for Prefetch {
        fn drop(&mut self) {
            for h in self.pending.drain(..) {
                h.abort();
            }
        }
    }

    /// A multipart upload (see [`ObjStore`]).
    struct S3Upload<'s> {
        store: &'s ObjStore,
        name: String,
        key: Key,
        id: MultipartId,
        marker: String,
        buf: Vec<u8>,
        parts: Vec<PartId>,
        in_flight: VecDeque<JoinHandle<object_store::Result<PartId>>>,
        written: u64,
        done: bool,
    }

    impl S3Upload<'_> {
        /// Waits for the oldest part in flight.
        fn wait_one(&mut self) -> Result<()> {
            if let Some(h) = self.in_flight.pop_front() {
                let p = self
                    .store
                    .rt
                    .block_on(h)
                    .map_err(|e| Error::from(io::Error::other(e)))
                    .and_then(|r| r.map_err(|e| os_err(e, &self.store.location(&self.name))))?;
                self.parts.push(p);
            }
            Ok(())
        }

        /// Sends the part being filled.
        fn send(&mut self) -> Result<()> {
            while self.in_flight.len() >= self.store.parts_in_flight {
                self.wait_one()?;
            }
            let idx = self.parts.len() + self.in_flight.len();
            let data = PutPayload::from(std::mem::replace(
                &mut self.buf,
                Vec::with_capacity(self.store.part_size),
            ));
            let fail = self.store.failing(super::FailPoint::Part(idx));
            let (mp, key, id) = (
                self.store.multipart.clone(),
                self.key.clone(),
                self.id.clone(),
            );
            self.in_flight.push_back(self.store.rt.spawn(async move {
                if fail {
                    return Err(object_store::Error::Generic {
                        store: "test",
                        source: format!("part {idx} failed (injected)").into(),
                    });
                }
                mp.put_part(&key, &id, idx, data).await
            }));
            Ok(())
        }

        fn finish(&mut self) -> Result<u64> {
            if !self.buf.is_empty() || self.parts.is_empty() && self.in_flight.is_empty() {
                self.send()?;
            }
            while !self.in_flight.is_empty() {
                self.wait_one()?;
            }
            if self.store.failing(super::FailPoint::Complete) {
                return Err(Error::from(io::Error::other(
                    "completion of the upload failed (injected)",
                ))
                .with_file(self.store.location(&self.name)));
            }
            let (mp, key, id) = (
                self.store.multipart.clone(),
                self.key.clone(),
                self.id.clone(),
            );
            let parts = std::mem::take(&mut self.parts);
            self.store
                .rt
                .block_on(async move { mp.complete_multipart(&key, &id, parts).await })
                .map_err(|e| os_err(e, &self.store.location(&self.name)))?;
            Ok(self.written)
        }

        fn abort_now(&mut self) -> Result<()> {
            self.done = true;
            for h in self.in_flight.drain(..) {
                let _ = self.store.rt.block_on(h);
            }
            let r = self.store.abort_id(&self.key, &self.id);
            // The marker stays if the abort failed: a later clean-up retries it.
            if r.is_ok() {
                let _ = self.store.delete(&self.marker);
            }
            r
        }
    }

    impl Write for S3Upload<'_> {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let room = self.store.part_size - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            self.written += n as u64;
            if self.buf.len() == self.store.part_size {
                self.send().map_err(io::Error::other)?;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Upload for S3Upload<'_> {
        fn commit(mut self: Box<Self>) -> Result<u64> {
            match self.finish() {
                Ok(n) => {
                    self.done = true;
                    let _ = self.store.delete(&self.marker);
                    Ok(n)
                }
                Err(e) => {
                    let _ = self.abort_now();
                    Err(e)
                }
            }
        }
        fn abort(mut self: Box<Self>) -> Result<()> {
            self.abort_now()
        }
    }

    impl Drop for S3Upload<'_> {
        fn drop(&mut self) {
            if !self.done {
                let _ = self.abort_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(s: &dyn Store) {
        assert!(s.list("").unwrap().is_empty());
        assert_eq!(s.head("a").unwrap(), None);
        assert_eq!(s.read_small("a", 10).unwrap(), None);
        let mut u = s.put("a").unwrap();
        u.write_all(b"hello world").unwrap();
        // Not visible before the commit.
        assert_eq!(s.head("a").unwrap(), None);
        assert_eq!(u.commit().unwrap(), 11);
        assert_eq!(s.head("a").unwrap().unwrap().size, 11);
        assert_eq!(s.read_range("a", 6..100).unwrap(), b"world");
        assert_eq!(s.read_range("a", 20..30).unwrap(), b"");
        assert!(s.read_small("a", 5).is_err());
        let mut r = String::new();
        s.reader("a", 11).unwrap().read_to_string(&mut r).unwrap();
        assert_eq!(r, "hello world");
        // An aborted or dropped upload leaves nothing.
        let mut u = s.put("b").unwrap();
        u.write_all(b"x").unwrap();
        u.abort().unwrap();
        drop(s.put("c").unwrap());
        let names: Vec<String> = s.list("").unwrap().into_iter().map(|o| o.name).collect();
        assert_eq!(names, ["a"]);
        assert!(s.create_if_absent("lock", b"1").unwrap());
        assert!(!s.create_if_absent("lock", b"2").unwrap());
        assert_eq!(s.read_small("lock", 10).unwrap().unwrap(), b"1");
        s.put_small("lock", b"3").unwrap();
        assert_eq!(s.read_small("lock", 10).unwrap().unwrap(), b"3");
        s.delete("lock").unwrap();
        s.delete("lock").unwrap();
        assert_eq!(s.list("lo").unwrap(), vec![]);
        assert!(s.put("x/y").is_err());
        assert!(s.head("..").is_err());
    }

    #[test]
    fn a_directory_store_behaves() {
        let t = tempfile::tempdir().unwrap();
        let s = DirStore::new(t.path().join("arch"));
        exercise(&s);
        // Objects are plain files of the directory.
        assert_eq!(
            std::fs::read(t.path().join("arch/a")).unwrap(),
            b"hello world"
        );
    }

    #[cfg(feature = "s3")]
    #[test]
    fn an_object_store_behaves() {
        let s = ObjStore::memory(&S3Config::default()).unwrap();
        exercise(&s);
        // An upload of several parts, read back through the prefetching reader.
        let cfg = S3Config {
            part_size: Some(5 << 20),
            parts_in_flight: Some(2),
            ..S3Config::default()
        };
        let s = ObjStore::memory(&cfg).unwrap();
        let data: Vec<u8> = (0..(23u32 << 20) / 4)
            .flat_map(|i| i.to_le_bytes())
            .collect();
        let mut u = s.put("big").unwrap();
        for c in data.chunks(100_000) {
            u.write_all(c).unwrap();
        }
        u.commit().unwrap();
        let mut back = Vec::new();
        s.reader("big", data.len() as u64)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
        assert_eq!(s.read_range("big", 4..8).unwrap(), 1u32.to_le_bytes());
        // No marker is left by a committed upload.
        assert_eq!(s.list(".").unwrap(), vec![]);
    }

    #[cfg(feature = "s3")]
    #[test]
    fn failed_parts_and_completions_leave_nothing() {
        let cfg = S3Config {
            part_size: Some(5 << 20),
            ..S3Config::default()
        };
        let s = ObjStore::memory(&cfg).unwrap();
        let data = vec![7u8; 11 << 20];
        for f in [FailPoint::Part(1), FailPoint::Complete] {
            s.fail_at(Some(f));
            let mut u = s.put("f").unwrap();
            let w = u.write_all(&data);
            let r = w.map_err(Error::from).and_then(|()| u.commit().map(|_| ()));
            assert!(r.is_err(), "{f:?}");
            assert_eq!(s.list("").unwrap(), vec![], "{f:?}");
        }
        s.fail_at(None);
        // A killed run leaves its marker: the clean-up aborts the upload.
        let mut u = s.put("k").unwrap();
        u.write_all(b"partial").unwrap();
        std::mem::forget(u);
        assert_eq!(s.list("").unwrap().len(), 1);
        let cleaned = s.clean_uploads("k").unwrap();
        assert_eq!(cleaned.len(), 1, "{cleaned:?}");
        assert_eq!(s.list("").unwrap(), vec![]);
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("s3://bkt/a/b/").unwrap(),
            Location::S3 {
                bucket: "bkt".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(Location::parse("s3://bkt").unwrap().to_string(), "s3://bkt");
        assert_eq!(
            Location::parse("/x/y").unwrap(),
            Location::Dir("/x/y".into())
        );
        for bad in [
            "s3://",
            "s3://B/x",
            "s3://bkt/a//b",
            "s3://bkt/../x",
            "s3://ab",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }
}
