//! Opening inputs: files are memory-mapped (zero-copy), `-` is stdin (streamed); the kind of
//! stream is detected by its first bytes, never by its name.

use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::format::{BANNER_V1, BANNER_V2, IMAGE_BANNER};

/// zstd frame magic number, little-endian.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// What a stream holds, judged from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `rbd diff v1`.
    DiffV1,
    /// `rbd diff v2`.
    DiffV2,
    /// `rbd image v2` (export format 2).
    Image,
    /// zstd-compressed data.
    Zstd,
    /// Anything else.
    Unknown,
}

/// Classifies a stream by its first bytes (up to 13 are looked at).
pub fn sniff(prefix: &[u8]) -> Kind {
    if prefix.starts_with(BANNER_V1) {
        Kind::DiffV1
    } else if prefix.starts_with(BANNER_V2) {
        Kind::DiffV2
    } else if prefix.starts_with(IMAGE_BANNER) {
        Kind::Image
    } else if prefix.starts_with(&ZSTD_MAGIC) {
        Kind::Zstd
    } else {
        Kind::Unknown
    }
}

enum Data {
    Map(Mmap),
    Empty,
    Stream(Box<dyn Read + Send>),
}

/// An opened input: a memory-mapped file or a stream.
pub struct Input {
    name: String,
    kind: Kind,
    data: Data,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Input({}, {:?})", self.name, self.kind)
    }
}

/// Maps a whole file read-only.
///
/// The map is only valid while nobody truncates the file; rbddiff never writes to its inputs
/// and opens outputs as new files renamed into place, so its own commands keep this contract.
#[allow(unsafe_code)]
fn map(file: &File) -> io::Result<Mmap> {
    // SAFETY: the file is opened read-only and must not be truncated while mapped (see above).
    unsafe { Mmap::map(file) }
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
            });
        }
        let m = map(&file).map_err(wrap)?;
        Ok(Input {
            name: path.to_string(),
            kind: sniff(&m),
            data: Data::Map(m),
        })
    }

    /// Wraps a stream, reading just enough of it to tell its kind.
    ///
    /// # Errors
    /// Reading the first bytes fails.
    pub fn from_reader(name: &str, mut r: Box<dyn Read + Send>) -> Result<Input> {
        let mut prefix = Vec::with_capacity(13);
        (&mut r)
            .take(13)
            .read_to_end(&mut prefix)
            .map_err(|e| Error::from(e).with_file(name))?;
        let kind = sniff(&prefix);
        Ok(Input {
            name: name.to_string(),
            kind,
            data: Data::Stream(Box::new(Cursor::new(prefix).chain(r))),
        })
    }

    /// The name given to [`Input::open`] (`-` for stdin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The detected kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The whole content, when it is a mapped file.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.data {
            Data::Map(m) => Some(m),
            Data::Empty => Some(&[]),
            Data::Stream(_) => None,
        }
    }

    /// Hints that a mapped file will be read only at scattered places (record heads, as
    /// `inspect` does): the kernel then maps one page per access instead of reading ahead
    /// and mapping the pages around it, which a head-only walk never uses. No-op for streams.
    pub fn advise_heads_only(&self) {
        if let Data::Map(m) = &self.data {
            // Only a hint: a failure changes nothing but speed.
            let _ = m.advise(memmap2::Advice::Random);
        }
    }

    /// The content as a reader (a mapped file is read from memory).
    pub fn into_reader(self) -> Box<dyn Read + Send + 'static> {
        match self.data {
            Data::Map(m) => Box::new(Cursor::new(m)),
            Data::Empty => Box::new(io::empty()),
            Data::Stream(r) => r,
        }
    }
}
