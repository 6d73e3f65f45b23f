//! `rbddiff explode`: the diffs of an image stream as a v1 chain, checked against the model
//! (each file, applied in name order, gives the image at each snapshot of the stream).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::model::Image;
use rbddiff::{DiffSlice, ImageSlice, Version};

fn real(name: &str) -> String {
    format!("{}/testdata/real/img64k/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn rbddiff(args: &[&str], stdin: Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(args)
        .stdin(stdin)
        .output()
        .unwrap()
}

fn sorted_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The model's image after each embedded diff of `stream`, with the diff's header.
fn embedded_states(stream: &[u8]) -> Vec<(rbddiff::Metadata, Image)> {
    let img = ImageSlice::parse(stream).unwrap();
    let mut model = Image::new();
    let mut out = Vec::new();
    for d in img.diffs() {
        let d = d.unwrap();
        model.apply(&mut d.records());
        out.push((d.metadata().clone(), model.clone()));
    }
    out
}

/// Checks that the files in `dir`, in name order, are v1 diffs with the embedded headers and
/// that applying them gives the model's image at every step.
fn check_chain(dir: &Path, want: &[(rbddiff::Metadata, Image)]) {
    let files = sorted_files(dir);
    assert_eq!(files.len(), want.len(), "{files:?}");
    let mut model = Image::new();
    for (f, (meta, img)) in files.iter().zip(want) {
        let bytes = fs::read(f).unwrap();
        let d = DiffSlice::parse(&bytes).unwrap();
        assert_eq!(d.version(), Version::V1, "{}", f.display());
        assert_eq!(d.metadata().from_snap, meta.from_snap, "{}", f.display());
        assert_eq!(d.metadata().to_snap, meta.to_snap, "{}", f.display());
        assert_eq!(d.metadata().image_size, meta.image_size, "{}", f.display());
        model.apply_bytes(&bytes);
        assert!(model.data == img.data, "{}: image differs", f.display());
    }
}

#[test]
fn an_image_stream_becomes_a_v1_chain_with_the_same_images() {
    let stream = fs::read(real("export-format-2.rbdimg")).unwrap();
    let want = embedded_states(&stream);
    assert!(want.len() >= 3, "the test stream has {} diffs", want.len());
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("chain");
    let o = rbddiff(
        &[
            "explode",
            &real("export-format-2.rbdimg"),
            "-o",
            out.to_str().unwrap(),
            "--json",
        ],
        Stdio::null(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_chain(&out, &want);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["diffs"].as_array().unwrap().len(), want.len());
    assert!(v["not_carried"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x.as_str().unwrap().starts_with("order=")));
    // Names sort in chain order: the first is the full diff, the last ends at the HEAD.
    let names: Vec<String> = sorted_files(&out)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names[0].starts_with("001-") && names[0].ends_with(".full.diff"),
        "{names:?}"
    );
    // rbddiff's own apply of the directory and of the stream agree.
    let (a, b) = (t.path().join("a.raw"), t.path().join("b.raw"));
    for (src, target) in [
        (out.to_str().unwrap().to_string(), &a),
        (real("export-format-2.rbdimg"), &b),
    ] {
        let o = rbddiff(
            &[
                "apply",
                &src,
                "--to",
                target.to_str().unwrap(),
                "--create",
                "-q",
            ],
            Stdio::null(),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap());
    // Again into the same directory: refused without --force, replaced with it.
    let o = rbddiff(
        &[
            "explode",
            &real("export-format-2.rbdimg"),
            "-o",
            out.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    let o = rbddiff(
        &[
            "explode",
            &real("export-format-2.rbdimg"),
            "-o",
            out.to_str().unwrap(),
            "-f",
        ],
        Stdio::null(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_chain(&out, &want);
}

#[test]
fn a_compressed_stream_on_stdin_is_exploded_in_one_pass() {
    let stream = fs::read(real("export-format-2.rbdimg")).unwrap();
    let want = embedded_states(&stream);
    let t = tempfile::tempdir().unwrap();
    let z = t.path().join("img.zst");
    let o = rbddiff(
        &[
            "compress",
            &real("export-format-2.rbdimg"),
            "-o",
            z.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    assert!(o.status.success());
    let out = t.path().join("chain");
    let o = rbddiff(
        &["explode", "-", "-o", out.to_str().unwrap()],
        Stdio::from(fs::File::open(&z).unwrap()),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_chain(&out, &want);
    assert!(sorted_files(&out)[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("001-image@"));
}

#[test]
fn a_diff_or_a_damaged_stream_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("chain");
    let o = rbddiff(
        &[
            "explode",
            &real("full_v1.diff"),
            "-o",
            out.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("this is a diff") && e.contains("full_v1.diff"),
        "{e}"
    );
    // Cut in its second diff: the first is written whole, the error names the offset.
    let stream = fs::read(real("export-format-2.rbdimg")).unwrap();
    let img = ImageSlice::parse(&stream).unwrap();
    let first = img.diffs().next().unwrap().unwrap();
    let cut = first.end_offset().unwrap() as usize + 40;
    let damaged = t.path().join("cut.rbdimg");
    fs::write(&damaged, &stream[..cut]).unwrap();
    let o = rbddiff(
        &[
            "explode",
            damaged.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("cut.rbdimg") && e.contains("byte "), "{e}");
    let files = sorted_files(&out);
    assert_eq!(files.len(), 1, "{files:?}");
    // No temporary file is left.
    assert!(!files[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with('.'));
}
