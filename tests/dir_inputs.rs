//! Directory arguments (src/dirlist.rs): inspect, merge, apply, compress, decompress and
//! verify take a
//! directory for its diff files, by one rule; rbddiff's own files and unrelated files are
//! passed over, never reported as corrupt diffs; merge and apply order them by their headers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn rbddiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(args)
        .output()
        .expect("run rbddiff")
}

fn ok(args: &[&str]) -> Output {
    let o = rbddiff(args);
    assert!(o.status.success(), "{args:?}: {o:?}");
    o
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {o:?}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The img64k chain of the corpus, oldest first.
const CHAIN: [&str; 6] = [
    "full_v1.diff",
    "v1_v2.diff",
    "v2_v3.diff",
    "v3_v4.diff",
    "v4_v5.diff",
    "v5_head.diff",
];

/// A directory holding the chain under names whose order is not the chain's (as `s10`
/// sorts before `s2`), with sidecars, a state file, an unrelated file and hidden files.
/// Returns the directory and the chain's files in it, oldest first.
fn chain_dir(root: &Path) -> (PathBuf, Vec<PathBuf>) {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/real/img64k");
    let dir = root.join("backups");
    fs::create_dir(&dir).unwrap();
    let names = ["s9", "s8", "s10", "s11", "s12", "s7"];
    let mut files = Vec::new();
    for (src, n) in CHAIN.iter().zip(names) {
        // Every other one without the .diff name: found by its banner.
        let name = if files.len() % 2 == 0 {
            format!("{n}.diff")
        } else {
            format!("{n}.bin")
        };
        let p = dir.join(name);
        fs::copy(real.join(src), &p).unwrap();
        files.push(p);
    }
    ok(&["verify", "--write-sums", s(&dir)]);
    fs::write(dir.join("notes.txt"), b"not a diff\n").unwrap();
    fs::write(dir.join("disk.raw.rbddiff-state"), b"{}").unwrap();
    fs::write(dir.join(".rbddiff-catalog.json"), b"{").unwrap();
    fs::write(dir.join(".hidden.diff"), b"garbage").unwrap();
    (dir, files)
}

fn names(v: &Value, key: &str, field: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x[field].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn merge_and_apply_of_a_directory_follow_the_headers() {
    let t = tempfile::tempdir().unwrap();
    let (dir, files) = chain_dir(t.path());
    let f: Vec<&str> = files.iter().map(|p| s(p)).collect();
    let (want, got) = (t.path().join("want.diff"), t.path().join("got.diff"));
    ok(&[&["merge"], &f[..], &["-o", s(&want)]].concat());
    let o = ok(&["merge", s(&dir), "-o", s(&got), "--json"]);
    assert_eq!(fs::read(&want).unwrap(), fs::read(&got).unwrap());
    let v = json(&o);
    assert_eq!(v["inputs"], CHAIN.len());
    assert_eq!(names(&v, "skipped", "file"), [s(&dir.join("notes.txt"))]);
    // Without --json, the passed-over file is a note on stderr.
    let o = ok(&["merge", s(&dir), "-o", s(&got), "--force"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("note: skipped") && err.contains("notes.txt"),
        "{err}"
    );

    let (a, b) = (t.path().join("a.raw"), t.path().join("b.raw"));
    ok(&[&["apply", "--create", "--to", s(&a)], &f[..]].concat());
    let o = ok(&["apply", "--create", "--to", s(&b), s(&dir), "--json"]);
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    let applied: Vec<String> = names(&json(&o), "diffs", "file");
    assert_eq!(applied, f);
}

#[test]
fn inspect_verify_and_compress_take_a_directory() {
    let t = tempfile::tempdir().unwrap();
    let (dir, files) = chain_dir(t.path());
    let mut by_name: Vec<&str> = files.iter().map(|p| s(p)).collect();
    by_name.sort();

    let v = json(&ok(&["inspect", s(&dir), "--json"]));
    assert_eq!(names(&v, "files", "file"), by_name);
    assert_eq!(names(&v, "skipped", "file"), [s(&dir.join("notes.txt"))]);

    // verify DIR with its sidecars, state file and catalog: all good.
    let v = json(&ok(&["verify", "--require-sums", s(&dir), "--json"]));
    assert_eq!(v["files"].as_array().unwrap().len(), CHAIN.len(), "{v}");
    // `verify backups/*` (with names that sort in chain order, as rbddiff's do): the
    // sidecars and the state file are passed over, not reported as corrupt.
    let mut star = vec![s(&dir.join("disk.raw.rbddiff-state")).to_string()];
    for f in &files {
        star.push(s(f).to_string());
        star.push(format!("{}.sums", s(f)));
    }
    let args: Vec<&str> = star.iter().map(String::as_str).collect();
    let o = ok(&[&["verify", "--json"], &args[..]].concat());
    let v = json(&o);
    let skipped = names(&v, "skipped", "file");
    assert_eq!(skipped.len(), CHAIN.len() + 1, "{v}");
    assert!(skipped
        .iter()
        .all(|f| f.ends_with(".sums") || f.ends_with(".rbddiff-state")));
    let o = ok(&[&["verify"], &args[..]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("note: skipped").count(),
        CHAIN.len() + 1,
        "{err}"
    );
    // A corrupt file named as a diff is still found.
    fs::write(dir.join("broken.diff"), b"rbd diff v1\nxx").unwrap();
    assert_eq!(rbddiff(&["verify", s(&dir)]).status.code(), Some(1));
    fs::remove_file(dir.join("broken.diff")).unwrap();

    // compress DIR -o OUT: each diff file into OUT/NAME.zst, which decompresses to it.
    let out = t.path().join("z");
    fs::create_dir(&out).unwrap();
    let v = json(&ok(&["compress", s(&dir), "-o", s(&out), "--json"]));
    assert_eq!(v["files"].as_array().unwrap().len(), CHAIN.len());
    for f in &files {
        let z = out.join(format!("{}.zst", f.file_name().unwrap().to_string_lossy()));
        let back = t.path().join("back");
        ok(&["decompress", s(&z), "-o", s(&back), "--force"]);
        assert_eq!(fs::read(&back).unwrap(), fs::read(f).unwrap());
    }
    // Several inputs need a directory to write into.
    let o = rbddiff(&["compress", s(&dir), "-o", s(&t.path().join("x.zst"))]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("directory"),
        "{o:?}"
    );
    // The archives are passed over when compressing again (already compressed).
    let v = json(&ok(&["compress", s(&out), "-o", s(&out), "--json"]));
    assert!(v["files"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["skipped"].as_array().unwrap().len(), CHAIN.len(), "{v}");
}

/// decompress DIR -o OUT (and several files): each NAME.zst into OUT/NAME, its bytes those
/// compressed; sidecars and files with no .zst name passed over.
#[test]
fn decompress_takes_a_directory_and_several_files() {
    let t = tempfile::tempdir().unwrap();
    let (dir, files) = chain_dir(t.path());
    let z = t.path().join("z");
    fs::create_dir(&z).unwrap();
    ok(&["compress", "--sums", s(&dir), "-o", s(&z)]);
    fs::copy(&files[0], z.join("plain.diff")).unwrap();
    let back = t.path().join("back");
    fs::create_dir(&back).unwrap();
    let v = json(&ok(&["decompress", s(&z), "-o", s(&back), "--json"]));
    assert_eq!(v["command"], "decompress", "{v}");
    assert_eq!(v["files"].as_array().unwrap().len(), CHAIN.len(), "{v}");
    assert_eq!(
        names(&v, "skipped", "file"),
        [s(&z.join("plain.diff"))],
        "{v}"
    );
    let mut total = 0;
    for f in &files {
        let name = f.file_name().unwrap();
        let got = fs::read(back.join(name)).unwrap();
        assert_eq!(got, fs::read(f).unwrap(), "{name:?}");
        total += got.len() as u64;
    }
    assert_eq!(v["diff_bytes"], total, "{v}");
    let outputs = names(&v, "files", "output");
    assert!(outputs.iter().all(|o| !o.ends_with(".zst")), "{v}");
    // Again: the outputs exist, so nothing is replaced without --force.
    let o = rbddiff(&["decompress", s(&z), "-o", s(&back)]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    ok(&["decompress", s(&z), "-o", s(&back), "--force"]);

    // Several files, into a directory.
    let two: Vec<String> = files[..2]
        .iter()
        .map(|f| format!("{}/{}.zst", s(&z), f.file_name().unwrap().to_string_lossy()))
        .collect();
    let back2 = t.path().join("back2");
    fs::create_dir(&back2).unwrap();
    let v = json(&ok(&[
        "decompress",
        &two[0],
        &two[1],
        "-o",
        s(&back2),
        "--json",
    ]));
    assert_eq!(v["files"].as_array().unwrap().len(), 2, "{v}");
    for f in &files[..2] {
        let got = fs::read(back2.join(f.file_name().unwrap())).unwrap();
        assert_eq!(got, fs::read(f).unwrap());
    }
    // Several inputs need a directory to write into; stdin cannot be one of several.
    let o = rbddiff(&["decompress", &two[0], &two[1], "-o", s(&t.path().join("x"))]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("directory"),
        "{o:?}"
    );
    assert!(!t.path().join("x").exists());
    let o = rbddiff(&["decompress", &two[0], "-", "-o", s(&back2), "--force"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("stdin"),
        "{o:?}"
    );
}

#[test]
fn a_directory_that_is_no_single_chain_is_refused_with_its_files() {
    let t = tempfile::tempdir().unwrap();
    let (dir, files) = chain_dir(t.path());
    // A gap: the second diff of the chain removed.
    fs::remove_file(&files[1]).unwrap();
    let o = rbddiff(&["merge", s(&dir), "-o", s(&t.path().join("m.diff"))]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no single chain"), "{err}");
    assert!(
        err.contains(s(&files[0])) && err.contains("(full)"),
        "{err}"
    );
    assert!(!err.contains("--force-chain"), "{err}");
    let o = rbddiff(&["apply", "--create", "--to", s(&t.path().join("r")), s(&dir)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!t.path().join("r").exists());
    // An empty directory.
    let empty = t.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let o = rbddiff(&["inspect", s(&empty)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no diff files"),
        "{o:?}"
    );
}
