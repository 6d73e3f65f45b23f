//! Chain discovery and ordering in a backup directory, through the public API, against a
//! brute-force model: up to six diff files with arbitrary start and end snapshots (from a
//! small alphabet, so that links, forks, gaps and cycles are common). `discover_chain`
//! succeeds exactly when the start snapshots are distinct, the end snapshots are distinct
//! and some order of all the files links each end to the next start, beginning with a full
//! diff or a start snapshot no file ends at; it then returns that order.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rbddiff::workflow::discover_chain;
use rbddiff::{DiffWriter, Metadata, Version};

fn scratch() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| std::env::temp_dir().join(format!("rbddiff-fuzz-chain-{}", std::process::id())))
}

/// Snapshot names: `None` is "empty" (a full diff) as a start, "the image HEAD" as an end.
fn snap(b: u8) -> Option<String> {
    match b % 6 {
        0 => None,
        k => Some(format!("s{k}")),
    }
}

type Link = (Option<String>, Option<String>);

/// Whether some order of `files` links every end to the next start (a HEAD end cannot be
/// followed); the order found.
fn model(files: &[Link]) -> Option<Vec<usize>> {
    fn go(files: &[Link], used: &mut Vec<usize>) -> bool {
        if used.len() == files.len() {
            return true;
        }
        for i in 0..files.len() {
            if used.contains(&i) {
                continue;
            }
            let fits = match used.last() {
                // The first file starts at "empty" or at a snapshot no file ends at (else
                // the names repeat: a cycle).
                None => files[i].0.is_none() || !files.iter().any(|f| f.1 == files[i].0),
                Some(&p) => files[p].1.is_some() && files[p].1 == files[i].0,
            };
            if fits {
                used.push(i);
                if go(files, used) {
                    return true;
                }
                used.pop();
            }
        }
        false
    }
    let distinct = |f: fn(&Link) -> &Option<String>| {
        let mut v: Vec<_> = files.iter().map(f).collect();
        v.sort();
        v.windows(2).all(|w| w[0] != w[1])
    };
    if !distinct(|l| &l.0) || !distinct(|l| &l.1) {
        return None;
    }
    let mut used = Vec::new();
    go(files, &mut used).then_some(used)
}

fuzz_target!(|data: &[u8]| {
    let files: Vec<Link> = data
        .chunks_exact(2)
        .take(6)
        .map(|c| (snap(c[0]), snap(c[1])))
        .collect();
    let dir = scratch();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (k, (from, to)) in files.iter().enumerate() {
        let meta = Metadata {
            from_snap: from.as_ref().map(|s| s.as_bytes().to_vec()),
            to_snap: to.as_ref().map(|s| s.as_bytes().to_vec()),
            protected: None,
            image_size: Some(1 << 20),
        };
        let w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
        // The names say nothing true: the order comes from the headers.
        std::fs::write(dir.join(format!("vm@f{}.diff", 9 - k)), w.finish().unwrap()).unwrap();
    }
    let found = discover_chain(dir, "vm");
    match (found, model(&files)) {
        (Ok(chain), Some(order)) => {
            let got: Vec<Link> = chain.iter().map(|f| (f.from.clone(), f.to.clone())).collect();
            let want: Vec<Link> = order.iter().map(|&i| files[i].clone()).collect();
            assert_eq!(got, want);
        }
        (Err(_), None) => {}
        (Ok(chain), None) => panic!("discovered {chain:?} for {files:?}, which has no chain"),
        (Err(e), Some(order)) => panic!("refused {files:?} ({e}) but {order:?} is a chain"),
    }
});
