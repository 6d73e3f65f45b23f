//! `rbddiff inspect` as a process: JSON shape, `--records`, stdin, text output, exit codes.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::manifest;
use serde_json::Value;

fn rbddiff(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        let mut s = child.stdin.take().unwrap();
        let _ = s.write_all(data);
    }
    child.wait_with_output().unwrap()
}

/// The per-file reports of `inspect --json` (its `files`), after checking the envelope.
fn json(out: &Output) -> Value {
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["schema"], "rbddiff/1", "{v}");
    assert_eq!(v["command"], "inspect", "{v}");
    v["files"].clone()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn json_has_the_documented_fields() {
    let d = manifest::diff_file("img64k/v2/v2_v3.diff");
    let out = rbddiff(&["inspect", "--json", p(&d.path)], None);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    let reports = v.as_array().unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r["file"], p(&d.path));
    assert_eq!(r["kind"], "diff");
    assert!(r["error"].is_null());
    assert!(r.get("image").is_none());
    let s = &r["diffs"][0];
    assert_eq!(s["version"], "v2");
    assert_eq!(s["from_snap"], "v2");
    assert_eq!(s["to_snap"], "v3");
    assert_eq!(s["protected"], true);
    assert_eq!(s["image_size"], d.size);
    assert_eq!(s["start"], 0);
    assert_eq!(s["end"], std::fs::metadata(&d.path).unwrap().len());
    for k in [
        "records",
        "writes",
        "write_bytes",
        "zeros",
        "zero_bytes",
        "unknown",
        "first_offset",
        "last_end",
    ] {
        assert!(s[k].is_u64(), "{k}: {}", s[k]);
    }
    assert_eq!(
        s["covered_bytes"].as_u64().unwrap(),
        s["write_bytes"].as_u64().unwrap() + s["zero_bytes"].as_u64().unwrap()
    );
    assert!(s["covered_ranges"].as_u64().unwrap() >= 1);
    // The Ceph 16.2 'p' length quirk is reported as a warning with offset and record.
    let w = &s["warnings"][0];
    assert_eq!(w["kind"]["kind"], "length_mismatch");
    assert!(w["offset"].is_u64() && w["record"].is_u64());
    assert!(
        s.get("record_list").is_none(),
        "records only with --records"
    );
    assert!(s.get("covered").is_none(), "ranges only with --records");
}

#[test]
fn records_flag_lists_every_record() {
    let d = manifest::diff_file("img64k/v1_v2.diff");
    let out = rbddiff(&["inspect", "--json", "--records", p(&d.path)], None);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    let s = &v[0]["diffs"][0];
    let list = s["record_list"].as_array().unwrap();
    assert_eq!(list.len() as u64, s["records"].as_u64().unwrap());
    let tags: String = list.iter().map(|r| r["tag"].as_str().unwrap()).collect();
    assert!(tags.starts_with("fts"), "{tags}");
    assert!(tags.ends_with('e'));
    // The covered ranges, adjacent records joined, add up to the counts.
    let covered = s["covered"].as_array().unwrap();
    assert_eq!(covered.len() as u64, s["covered_ranges"].as_u64().unwrap());
    let sum: u64 = covered.iter().map(|e| e["len"].as_u64().unwrap()).sum();
    assert_eq!(sum, s["covered_bytes"].as_u64().unwrap());
    let ends: Vec<(u64, u64)> = covered
        .iter()
        .map(|e| (e["offset"].as_u64().unwrap(), e["len"].as_u64().unwrap()))
        .collect();
    assert!(
        ends.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0),
        "{ends:?}"
    );
    // Positions ascend from just after the banner; data records carry offset and len.
    assert_eq!(list[0]["pos"], 12);
    let pos: Vec<u64> = list.iter().map(|r| r["pos"].as_u64().unwrap()).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]));
    for r in list {
        let data = matches!(r["tag"].as_str(), Some("w" | "z"));
        assert_eq!(r["offset"].is_u64(), data, "{r}");
        assert_eq!(r["len"].is_u64(), data, "{r}");
    }
    // The text form lists them too, one line each.
    let out = rbddiff(&["inspect", "--records", p(&d.path)], None);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.trim_start().starts_with('@'))
            .count(),
        list.len()
    );
}

#[test]
fn stdin_gives_the_same_report_as_the_file() {
    let mut files: Vec<_> = manifest::diff_files().into_iter().map(|d| d.path).collect();
    files.push(manifest::export_format2_stream());
    files.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/err/truncated-w-payload.diff"));
    files.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/err/trailing-bytes.diff"));
    let err = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/err");
    for e in std::fs::read_dir(err).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "rbdimg") {
            files.push(path);
        }
    }
    for f in files.iter().step_by(3).chain(files.iter().rev().take(10)) {
        let bytes = std::fs::read(f).unwrap();
        let a = rbddiff(&["inspect", "--json", "--records", p(f)], None);
        let b = rbddiff(&["inspect", "--json", "--records", "-"], Some(&bytes));
        assert_eq!(a.status.code(), b.status.code(), "{}", f.display());
        let (mut a, mut b) = (json(&a), json(&b));
        assert_eq!(b[0]["file"], "-");
        for v in [&mut a, &mut b] {
            v[0]["file"] = Value::Null;
            // Error messages name the file; compare them without it.
            if let Some(e) = v[0]["error"].as_str() {
                let e = e.split_once(": byte").map(|x| x.1).unwrap_or(e).to_string();
                v[0]["error"] = Value::String(e);
            }
        }
        assert_eq!(a, b, "{}", f.display());
    }
}

#[test]
fn image_stream_shows_header_and_every_diff() {
    let f = manifest::export_format2_stream();
    let out = rbddiff(&["inspect", "--json", p(&f)], None);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    let r = &v[0];
    assert_eq!(r["kind"], "image");
    assert_eq!(r["image"]["order"], 16);
    assert_eq!(r["image"]["diff_count"], 6);
    assert_eq!(r["diffs"].as_array().unwrap().len(), 6);
    assert!(r["diffs"][5]["to_snap"].is_null());
    let out = rbddiff(&["inspect", p(&f)], None);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("rbd image v2"), "{text}");
    assert_eq!(text.matches("  diff ").count(), 6, "{text}");
    assert!(text.contains("meta corpus = rbd-diff-toolkit"), "{text}");
}

#[test]
fn text_output_names_snapshots_and_size() {
    let d = manifest::diff_file("img64k/full_v1.diff");
    let out = rbddiff(&["inspect", p(&d.path)], None);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("format v1"), "{text}");
    assert!(text.contains("from (full)"), "{text}");
    assert!(text.contains("to v1"), "{text}");
    // Sizes as rbd prints them; exact bytes are in the JSON.
    assert_eq!(d.size, 12648448);
    assert!(text.contains("size 12 MiB"), "{text}");
    assert!(text.contains("w 9 (516 KiB)"), "{text}");
    let d = manifest::diff_file("img64k/v5_head.diff");
    let text = String::from_utf8(rbddiff(&["inspect", p(&d.path)], None).stdout).unwrap();
    assert!(
        text.contains("from v5") && text.contains("to (HEAD)"),
        "{text}"
    );
}

#[test]
fn exit_codes() {
    let good = manifest::diff_file("img64k/v1_v2.diff").path;
    let bad = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/err/overlap.diff");
    // One bad file among good ones: every report is printed, exit 2.
    let out = rbddiff(&["inspect", "--json", p(&good), p(&bad), p(&good)], None);
    assert_eq!(out.status.code(), Some(2));
    let v = json(&out);
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert!(v[0]["error"].is_null());
    assert!(v[1]["error"]
        .as_str()
        .unwrap()
        .contains("overlap.diff: byte "));
    // Under --json the error is in the document only; without, on stderr too.
    assert!(out.stderr.is_empty(), "{out:?}");
    let out = rbddiff(&["inspect", p(&good), p(&bad)], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("rbddiff: "), "{stderr}");
    // A missing file.
    let out = rbddiff(&["inspect", "/nonexistent/x.diff"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.diff"));
    // Empty stdin.
    let out = rbddiff(&["inspect", "-"], Some(b""));
    assert_eq!(out.status.code(), Some(2));
    // Usage errors.
    assert_eq!(rbddiff(&["inspect"], None).status.code(), Some(2));
    assert_eq!(
        rbddiff(&["inspect", "--bogus", p(&good)], None)
            .status
            .code(),
        Some(2)
    );
    // Fine.
    assert_eq!(rbddiff(&["inspect", p(&good)], None).status.code(), Some(0));
}

/// Sets the access time of `path` ten days before its modification time (which `relatime`
/// would update on the next read) and returns it.
fn age_atime(path: &Path) -> i64 {
    use rustix::fs::{Timespec, Timestamps};
    let mtime = std::fs::metadata(path).unwrap();
    let old = std::os::unix::fs::MetadataExt::mtime(&mtime) - 10 * 86400;
    let ts = |s: i64| Timespec {
        tv_sec: s,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: ts(old),
        last_modification: ts(std::os::unix::fs::MetadataExt::mtime(&mtime)),
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::empty()).unwrap();
    old
}

fn atime(path: &Path) -> i64 {
    std::os::unix::fs::MetadataExt::atime(&std::fs::metadata(path).unwrap())
}

#[test]
fn inspect_leaves_the_access_time_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.diff");
    std::fs::copy(manifest::real_dir().join("img64k/full_v1.diff"), &file).unwrap();

    let old = age_atime(&file);
    let out = rbddiff(&["inspect", p(&file)], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(atime(&file), old, "inspect changed the access time");

    // The check can fail: reading the whole file does update it (unless the file system
    // never records access times).
    std::fs::read(&file).unwrap();
    if atime(&file) == old {
        eprintln!("access times are not recorded here; nothing to compare");
    }
}

/// The release binary ships without debug info (`[profile.release]`): about 14 MB with the
/// object storage client (feature `s3`: object_store, reqwest, rustls), not 35 and more.
#[test]
#[cfg_attr(debug_assertions, ignore = "measures the release binary")]
fn the_release_binary_is_small() {
    let len = std::fs::metadata(env!("CARGO_BIN_EXE_rbddiff"))
        .unwrap()
        .len();
    assert!(len < 20 << 20, "rbddiff is {} MiB", len >> 20);
}
