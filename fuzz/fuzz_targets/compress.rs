//! The compressor's frame cutter on arbitrary bytes, streamed (as `backup` and `merge`
//! compress) and mapped (as `compress FILE`): whatever it accepts becomes an archive whose
//! record index matches its content (`check_index`), whose frames are never larger than
//! twice the target, which decompresses to exactly the input, and whose sums (computed from
//! the archive) equal the sums of the plain bytes.
#![no_main]

use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rbddiff::compress::{compress, compress_stream, CompressOptions};
use rbddiff::input::Input;
use rbddiff::zst::{ZstArchive, ZstdReader};

fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        std::env::temp_dir().join(format!("rbddiff-fuzz-compress-{}.diff", std::process::id()))
    })
}

fn check(z: &[u8], plain: &[u8], target: u64) {
    let a = ZstArchive::open(z)
        .expect("the archive opens")
        .expect("the archive has an index");
    a.check_index().expect("the index matches the content");
    for f in a.frames() {
        assert!(u64::from(f.d_len) <= 2 * target, "frame of {} bytes", f.d_len);
    }
    let mut back = Vec::new();
    ZstdReader::new(z)
        .unwrap()
        .read_to_end(&mut back)
        .expect("the archive decompresses");
    assert!(back == plain, "content differs");
    if a.index().kind != rbddiff::input::Kind::Image {
        let archived = rbddiff::sums::compute_archive(z, &a).expect("archive sums");
        let mut plain_sums = rbddiff::sums::compute(plain).expect("plain sums");
        plain_sums.compressed = archived.compressed.clone();
        assert_eq!(archived.records, plain_sums.records);
        assert_eq!(archived.sha256, plain_sums.sha256);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&t, plain)) = data.split_first() else {
        return;
    };
    // Small frames, so that inputs of a few KiB are cut many times.
    let target = 1024 + u64::from(t) * 16;
    let opts = CompressOptions {
        level: 1,
        threads: 1,
        frame_target: target,
    };
    let mut z = Vec::new();
    let streamed = compress_stream(&mut z, &opts, |w| {
        w.write_all(plain)?;
        Ok(())
    });
    if streamed.is_ok() {
        check(&z, plain, target);
    }
    let path = scratch();
    std::fs::write(path, plain).unwrap();
    let mut z2 = Vec::new();
    let mapped = Input::open(&path.to_string_lossy()).and_then(|i| compress(i, &mut z2, &opts));
    assert_eq!(mapped.is_ok(), streamed.is_ok(), "mapped and streamed agree");
    if mapped.is_ok() {
        check(&z2, plain, target);
    }
});
