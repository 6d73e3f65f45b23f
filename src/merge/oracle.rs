//! The merge planner this crate used before the sweep, kept as a test oracle: it builds the
//! whole merged [`ExtentMap`] (about 50 bytes per extent) and then writes it. The sweep in
//! [`super`] must produce byte-identical output; the property tests compare the two.

use std::io::Write;

use super::{check_links, lossy, parse_input, InputWarning, MergeInput, MergeOptions, MergeStats};
use super::{Parsed, Source, COALESCE_MAX, COPY_BUF};
use crate::error::{Error, ErrorKind, Result};
use crate::extent::{ExtentMap, Piece, MAX_INPUT};
use crate::format::{tag, Metadata, Record, Version};
use crate::progress::Ticker;
use crate::write::DiffWriter;
use crate::zst::{IndexRecord, IndexedDiff};
use crate::RecordSource;

/// The merged extent map of a chain, ready to be written.
#[derive(Debug)]
pub struct Plan {
    inputs: usize,
    meta: Metadata,
    map: ExtentMap,
    data_bytes: u64,
    input_bytes: u64,
    warnings: Vec<InputWarning>,
    renames: Vec<super::Rename>,
}

/// Adds the records of an archive's index to `map`, checking them as the record walk of a
/// plain diff would (the index is checksummed, but may have been crafted): ascending,
/// non-empty, inside the image size, payloads inside the stream, `e` present.
fn insert_indexed(
    map: &mut ExtentMap,
    input: u32,
    d: &IndexedDiff,
    records: &[IndexRecord],
    total: u64,
) -> Result<()> {
    let size = d
        .metadata
        .image_size
        .ok_or_else(|| Error::at(ErrorKind::MissingSize, d.start, Some(d.first_indexed())))?;
    let base = d.first_indexed();
    let (mut prev_end, mut prev_pos, mut ended) = (0u64, d.start, false);
    for (k, r) in records.iter().enumerate() {
        let at = |kind: ErrorKind| Error::at(kind, r.pos, Some(base + k as u64));
        if ended || r.pos < prev_pos || (k > 0 && r.pos == prev_pos) {
            return Err(at(ErrorKind::Invalid(
                "record index: records out of stream order".into(),
            )));
        }
        prev_pos = r.pos;
        match r.tag {
            tag::WRITE | tag::ZERO => {
                if r.len == 0 {
                    return Err(at(ErrorKind::ZeroLength {
                        tag: r.tag,
                        offset: r.offset,
                    }));
                }
                if r.offset < prev_end {
                    return Err(at(ErrorKind::OutOfOrder {
                        tag: r.tag,
                        offset: r.offset,
                        prev_end,
                    }));
                }
                let end = r.offset.checked_add(r.len).filter(|&e| e <= size);
                let end = end.ok_or_else(|| {
                    at(ErrorKind::ExtentPastSize {
                        tag: r.tag,
                        offset: r.offset,
                        len: r.len,
                        size,
                    })
                })?;
                prev_end = end;
                if r.tag == tag::ZERO {
                    map.insert(r.offset, end, Piece::Zero);
                    continue;
                }
                let src = d.payload_pos(r);
                let limit = records.get(k + 1).map_or(d.end, |n| n.pos).min(total);
                if src.checked_add(r.len).filter(|&e| e <= limit).is_none() {
                    return Err(at(ErrorKind::Invalid(
                        "record index: payload runs past the next record".into(),
                    )));
                }
                let piece = Piece::Data {
                    input,
                    src_offset: src,
                };
                map.insert(r.offset, end, piece);
            }
            tag::END => ended = true,
            _ => {}
        }
    }
    if !ended {
        return Err(Error::at(ErrorKind::MissingEnd, d.end, None));
    }
    Ok(())
}

/// Checks the chain and builds the merged map from the record heads of every input (for an
/// archive: from its record index, decompressing nothing).
///
/// # Errors
/// An input that does not parse or has a bad record (named with file, byte offset and record);
/// a broken chain (naming both files and snapshots); a full diff that is not first; more inputs
/// or bigger files than the map can address.
pub fn plan(inputs: &[MergeInput<'_>], opts: &MergeOptions) -> Result<Plan> {
    if inputs.is_empty() {
        return Err(Error::invalid("nothing to merge: no inputs"));
    }
    if inputs.len() > MAX_INPUT as usize + 1 {
        return Err(Error::invalid(format!(
            "too many inputs ({}, at most {})",
            inputs.len(),
            MAX_INPUT as usize + 1
        )));
    }
    let mut parsed = inputs
        .iter()
        .map(|inp| parse_input(inp).map_err(|e| e.with_file(inp.name)))
        .collect::<Result<Vec<_>>>()?;
    // Chain checks, on the headers only, before anything else.
    let names: Vec<&str> = inputs.iter().map(|i| i.name).collect();
    let metas: Vec<Option<&Metadata>> = parsed.iter().map(|d| Some(d.metadata())).collect();
    let renames = check_links(&names, &metas, &opts.assume_renamed)?;
    let mut map = ExtentMap::new();
    let mut size: Option<u64> = None;
    let mut input_bytes = 0u64;
    let mut warnings = Vec::new();
    for (i, (inp, d)) in inputs.iter().zip(parsed.iter_mut()).enumerate() {
        input_bytes += inp.len();
        let wrap = |e: Error| e.with_file(inp.name);
        // A missing `s` is reported by the record walk below.
        let s = d.metadata().image_size.unwrap_or(0);
        match size {
            Some(prev) if s < prev => map.truncate(s),
            Some(prev) if s > prev => map.insert(prev, s, Piece::Zero),
            _ => {}
        }
        size = Some(s);
        match d {
            Parsed::Slice(d) => {
                let Source::Bytes { bytes, .. } = inp.source else {
                    return Err(Error::invalid("internal: parsed input is not in memory"));
                };
                let base = bytes.as_ptr() as usize;
                let mut recs = d.records();
                for r in recs.by_ref() {
                    let (_, rec) = r.map_err(wrap)?;
                    match rec {
                        Record::Write { offset, data } => {
                            let src = (data.as_ptr() as usize).wrapping_sub(base) as u64;
                            let piece = Piece::Data {
                                input: i as u32,
                                src_offset: src,
                            };
                            map.insert(offset, offset + data.len() as u64, piece);
                        }
                        Record::Zero(e) => map.insert(e.offset, e.offset + e.len, Piece::Zero),
                        _ => {}
                    }
                }
                warnings.extend(
                    recs.warnings()
                        .iter()
                        .map(|w| InputWarning::new(inp.name, w)),
                );
            }
            Parsed::File(rd) => {
                let head = match rd.version() {
                    crate::Version::V1 => 17,
                    crate::Version::V2 => 25,
                };
                while let Some(item) = rd.next_item().map_err(wrap)? {
                    match item.kind {
                        crate::ItemKind::Write { extent: e, .. } => {
                            let piece = Piece::Data {
                                input: i as u32,
                                src_offset: item.offset + head,
                            };
                            map.insert(e.offset, e.offset + e.len, piece);
                        }
                        crate::ItemKind::Zero(e) => {
                            map.insert(e.offset, e.offset + e.len, Piece::Zero)
                        }
                        _ => {}
                    }
                }
                warnings.extend(rd.warnings().iter().map(|w| InputWarning::new(inp.name, w)));
            }
            Parsed::Head(_) => return Err(Error::invalid("the oracle reads no streams")),
            Parsed::Index(d, total) => {
                let Source::Archive(a) = &inp.source else {
                    return Err(Error::invalid("internal: indexed input is no archive"));
                };
                let records = a.decoded_index().map_err(wrap)?.records;
                let records = records.first().map_or(&[][..], |r| &r[..]);
                insert_indexed(&mut map, i as u32, d, records, *total).map_err(wrap)?;
                warnings.extend(d.warnings.iter().map(|w| InputWarning::new(inp.name, w)));
            }
        }
    }
    let last = parsed
        .last()
        .map(|d| d.metadata().clone())
        .unwrap_or_default();
    let meta = Metadata {
        from_snap: parsed.first().and_then(|d| d.metadata().from_snap.clone()),
        to_snap: last.to_snap,
        protected: last.protected,
        image_size: size,
    };
    let data_bytes = map
        .iter()
        .filter(|(_, _, p)| matches!(p, Piece::Data { .. }))
        .map(|(s, e, _)| e - s)
        .sum();
    Ok(Plan {
        inputs: inputs.len(),
        meta,
        map,
        data_bytes,
        input_bytes,
        warnings,
        renames,
    })
}

/// A run of adjacent extents to be written as one record.
enum Run {
    None,
    Zero(u64, u64),
    Data(u64, u64),
}

/// Copies `len` payload bytes at `src` of `inp` to `out`: from the bytes in memory, with
/// `pread` from the file through `buf` (measured no slower than `copy_file_range`, which ext4
/// without reflinks runs through splice), or through the archive's frame cache.
fn copy_piece<W: Write>(
    inp: &mut MergeInput<'_>,
    src: u64,
    len: u64,
    out: &mut W,
    buf: &mut Vec<u8>,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let MergeInput { name, source } = inp;
    match source {
        Source::File { file: f, len: flen } => {
            if src.checked_add(len).filter(|&e| e <= *flen).is_none() {
                return Err(Error::invalid("internal: payload range outside its input"));
            }
            if buf.is_empty() {
                *buf = vec![0; COPY_BUF];
            }
            let (mut off, mut left) = (src, len);
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                let chunk = &mut buf[..n];
                f.read_exact_at(chunk, off)
                    .map_err(|e| Error::from(e).with_file(&**name))?;
                out.write_all(chunk)?;
                off += n as u64;
                left -= n as u64;
            }
            Ok(())
        }
        Source::Bytes { bytes } => {
            let data = usize::try_from(src)
                .ok()
                .zip(usize::try_from(src + len).ok())
                .and_then(|(a, b)| bytes.get(a..b))
                .ok_or_else(|| Error::invalid("internal: payload range outside its input"))?;
            Ok(out.write_all(data)?)
        }
        Source::Archive(a) => a
            .copy_range(src, len, out)
            .map_err(|e| e.with_file(&**name)),
        Source::Stream(_) => Err(Error::invalid("the oracle reads no streams")),
    }
}

impl Plan {
    /// Writes the merged diff to `out`, reading the surviving payloads from `inputs` (the
    /// inputs the plan was made from, in the same order). Adjacent `z` extents, and adjacent
    /// data extents up to [`COALESCE_MAX`], become one record. `progress` is called with the
    /// payload bytes written so far and [`Plan::data_bytes`] (see [`crate::progress`]).
    ///
    /// # Errors
    /// I/O errors from `out` or the inputs; a corrupt archive frame holding a surviving
    /// payload (named with the input, the frame and its offsets).
    pub fn write<W: Write>(
        &self,
        inputs: &mut [MergeInput<'_>],
        out: W,
        version: Version,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(W, MergeStats)> {
        if inputs.len() != self.inputs {
            return Err(Error::invalid("internal: plan written with other inputs"));
        }
        let before: u64 = inputs.iter().map(MergeInput::frames_decompressed).sum();
        let mut w = DiffWriter::new(out, version, &self.meta)?;
        let mut stats = MergeStats {
            inputs: self.inputs,
            input_bytes: self.input_bytes,
            extents: self.map.len() as u64,
            from_snap: self.meta.from_snap.as_deref().map(lossy),
            to_snap: self.meta.to_snap.as_deref().map(lossy),
            image_size: self.meta.image_size.unwrap_or(0),
            warnings: self.warnings.clone(),
            renames: self.renames.clone(),
            ..MergeStats::default()
        };
        let mut tick = Ticker::new(progress, self.data_bytes);
        let mut buf = Vec::new();
        let mut run = Run::None;
        let mut pieces: Vec<(u64, u64, Piece)> = Vec::new();
        let mut flush = |run: &mut Run,
                         pieces: &mut Vec<(u64, u64, Piece)>,
                         w: &mut DiffWriter<W>,
                         stats: &mut MergeStats|
         -> Result<()> {
            match std::mem::replace(run, Run::None) {
                Run::None => {}
                Run::Zero(s, e) => {
                    w.zero(crate::Extent::new(s, e - s))?;
                    stats.zero_records += 1;
                    stats.zero_bytes += e - s;
                }
                Run::Data(s, e) => {
                    w.begin_data(crate::Extent::new(s, e - s))?;
                    for &(ps, pe, p) in pieces.iter() {
                        if let Piece::Data { input, src_offset } = p {
                            let inp = inputs.get_mut(input as usize).ok_or_else(|| {
                                Error::invalid("internal: piece of an unknown input")
                            })?;
                            copy_piece(inp, src_offset, pe - ps, w.get_mut(), &mut buf)?;
                            w.add_written(pe - ps);
                        }
                    }
                    stats.write_records += 1;
                    stats.data_bytes += e - s;
                    tick.set(stats.data_bytes);
                }
            }
            pieces.clear();
            Ok(())
        };
        for (s, e, p) in self.map.iter() {
            let joins = match (&run, p) {
                (Run::Zero(_, re), Piece::Zero) => *re == s,
                (Run::Data(rs, re), Piece::Data { .. }) => {
                    *re == s && e - rs <= COALESCE_MAX && pieces.len() < 1024
                }
                _ => false,
            };
            if joins {
                match &mut run {
                    Run::Zero(_, re) | Run::Data(_, re) => *re = e,
                    Run::None => {}
                }
            } else {
                flush(&mut run, &mut pieces, &mut w, &mut stats)?;
                run = match p {
                    Piece::Zero => Run::Zero(s, e),
                    Piece::Data { .. } => Run::Data(s, e),
                };
            }
            if matches!(p, Piece::Data { .. }) {
                pieces.push((s, e, p));
            }
        }
        flush(&mut run, &mut pieces, &mut w, &mut stats)?;
        tick.finish();
        stats.records = stats.write_records + stats.zero_records;
        stats.bytes_written = w.bytes_written() + 1;
        let out = w.finish()?;
        stats.bytes_saved = stats.input_bytes as i64 - stats.bytes_written as i64;
        let after: u64 = inputs.iter().map(MergeInput::frames_decompressed).sum();
        stats.frames_decompressed = after - before;
        Ok((out, stats))
    }
}

/// Merges `inputs` (in chain order) into `out` the way this crate did before the sweep: the
/// whole extent map is built, then written. A test oracle; streams are refused.
///
/// # Errors
/// As [`super::merge`]; nothing is written when the inputs are invalid.
pub fn merge<W: Write>(
    inputs: &mut [MergeInput<'_>],
    out: W,
    opts: &MergeOptions,
) -> Result<MergeStats> {
    let p = plan(inputs, opts)?;
    let (_, stats) = p.write(inputs, out, opts.version, &mut |_, _| {})?;
    Ok(stats)
}
