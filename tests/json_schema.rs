//! Every command's `--json` output against docs/json.md: the tables there are parsed, and each
//! documented field must be present with its documented type; a report field that the
//! document does not list is an error (except where a section says further fields may
//! appear). Errors under `--json` are checked against the `error` section.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::schema::check;

fn rbddiff(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run rbddiff")
}

/// Runs a command with `--json` (added last) and returns its document from `stream`.
fn json(dir: &Path, args: &[&str], code: i32, stderr: bool) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let o = rbddiff(dir, &a);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {o:?}");
    let bytes = if stderr { &o.stderr } else { &o.stdout };
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {o:?}"))
}

fn real(name: &str) -> String {
    format!("{}/testdata/real/img64k/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A work directory with a two-file chain, a raw image of its end and an archive.
fn setup() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::copy(real("full_v1.diff"), d.join("a.diff")).unwrap();
    std::fs::copy(real("v1_v2.diff"), d.join("b.diff")).unwrap();
    let arch = d.join("arch");
    std::fs::create_dir(&arch).unwrap();
    std::fs::copy(real("full_v1.diff"), arch.join("img@v1.full.diff")).unwrap();
    std::fs::copy(real("v1_v2.diff"), arch.join("img@v1..v2.diff")).unwrap();
    t
}

#[test]
fn offline_commands_match_the_documented_shapes() {
    let t = setup();
    let d = t.path();
    let ok = |args: &[&str]| json(d, args, 0, false);
    check(&ok(&["inspect", "a.diff", "b.diff"]), "inspect", "inspect");
    check(
        &ok(&["inspect", "--records", "a.diff"]),
        "inspect",
        "inspect",
    );
    let image = real("export-format-2.rbdimg");
    check(&ok(&["inspect", &image]), "inspect", "inspect");
    check(
        &ok(&["merge", "a.diff", "b.diff", "-o", "m.diff"]),
        "merge",
        "merge",
    );
    // With the data on stdout, the document goes to stderr.
    check(
        &json(d, &["merge", "a.diff", "b.diff", "-o", "-"], 0, true),
        "merge",
        "merge",
    );
    check(
        &ok(&["apply", "a.diff", "b.diff", "--to", "raw", "--create"]),
        "apply",
        "apply",
    );
    check(
        &ok(&["verify", "--write-sums", "m.diff"]),
        "verify",
        "verify",
    );
    // A sidecar named as an argument is passed over, and listed.
    let v = ok(&["verify", "m.diff", "m.diff.sums"]);
    check(&v, "verify", "verify");
    assert_eq!(v["skipped"][0]["file"], "m.diff.sums", "{v}");
    check(
        &ok(&["verify", "a.diff", "b.diff", "--against", "raw"]),
        "verify",
        "verify",
    );
    check(
        &ok(&["compress", "m.diff", "-o", "m.diff.zst"]),
        "compress",
        "compress",
    );
    check(
        &ok(&["decompress", "m.diff.zst", "-o", "m2.diff"]),
        "decompress",
        "decompress",
    );
    // A directory: each NAME.zst, and the files passed over.
    std::fs::create_dir(d.join("unz")).unwrap();
    let v = ok(&["decompress", ".", "-o", "unz"]);
    check(&v, "decompress", "decompress");
    assert_eq!(v["files"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(
        v["skipped"].as_array().is_some_and(|s| !s.is_empty()),
        "{v}"
    );
    check(
        &ok(&["explode", &image, "-o", "exploded"]),
        "explode",
        "explode",
    );
    check(
        &ok(&["create", "--from", "raw", "--to-snap", "x", "-o", "c.diff"]),
        "create",
        "create",
    );
    check(&ok(&["list", "arch"]), "list", "list");
    check(
        &ok(&["status", "arch", "--max-age", "1d"]),
        "status",
        "status",
    );
    let p = ok(&[
        "prune",
        "arch",
        "--image",
        "img",
        "--keep",
        "1",
        "--dry-run",
    ]);
    check(&p, "prune", "prune");
    // The plan merges both files into a full to v2 (so `merges[]` is checked too).
    assert_eq!(p["merges"].as_array().map(Vec::len), Some(1), "{p}");
    assert_eq!(p["kept_by"][0]["rules"][0], "last", "{p}");
    // Without --image (one image in the archive) and by another rule.
    let p = ok(&["prune", "arch", "--keep-within", "1h", "--dry-run"]);
    check(&p, "prune", "prune");
    check(
        &ok(&["restore", "arch", "--to-file", "restored.raw"]),
        "restore",
        "restore",
    );
}

#[test]
fn verify_problems_keep_the_report_shape() {
    let t = setup();
    let d = t.path();
    // b.diff alone does not start with a full diff: a problem, exit 1, the usual report.
    let v = json(d, &["verify", "--full", "b.diff"], 1, false);
    check(&v, "verify", "verify");
    assert_eq!(v["findings"][0]["severity"], "problem", "{v}");
}

#[test]
fn errors_are_json_documents_too() {
    let t = setup();
    let d = t.path();
    let cases: &[(&str, &[&str])] = &[
        ("inspect", &["inspect", "nosuch.diff"]),
        ("merge", &["merge", "b.diff", "a.diff", "-o", "m.diff"]),
        ("apply", &["apply", "a.diff", "--to", "nosuch.raw"]),
        ("verify", &["verify", "nosuch.diff"]),
        ("compress", &["compress", "nosuch.diff", "-o", "x.zst"]),
        ("decompress", &["decompress", "a.diff", "-o", "x"]),
        (
            "create",
            &["create", "--from", "nosuch.raw", "-o", "x.diff"],
        ),
        ("list", &["list", "a.diff"]),
        ("status", &["status", "a.diff", "--max-age", "1d"]),
        (
            "prune",
            &["prune", "a.diff", "--image", "img", "--keep", "1"],
        ),
        // No retention rule: refused.
        ("prune", &["prune", "arch"]),
        ("restore", &["restore", "arch", "--to-file", "a.diff"]),
        ("replay", &["replay", "nosuch-dir", "rbd/img"]),
        ("sync", &["sync", "rbd/img@snap", "rbd/img"]),
    ];
    for (command, args) in cases {
        let v = json(d, args, 2, false);
        check(&v, command, "error");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    // A chain break is named as such, and the out-of-order files are in the message.
    let v = json(d, &["merge", "b.diff", "a.diff", "-o", "m.diff"], 2, false);
    assert_eq!(v["error"]["kind"], "chain_break", "{v}");
    // A structural error carries file, byte offset and record.
    let bad = format!("{}/testdata/err/overlap.diff", env!("CARGO_MANIFEST_DIR"));
    let v = json(d, &["compress", &bad, "-o", "bad.zst"], 2, false);
    check(&v, "compress", "error");
    assert_eq!(v["error"]["kind"], "out_of_order", "{v}");
    assert!(
        v["error"]["offset"].is_u64() && v["error"]["record"].is_u64(),
        "{v}"
    );
    assert_eq!(v["error"]["file"], bad.as_str(), "{v}");
    // Under --json nothing but the document is printed.
    let o = rbddiff(d, &["merge", "b.diff", "a.diff", "-o", "m.diff", "--json"]);
    assert!(o.stderr.is_empty(), "{o:?}");
    // With the data on stdout, the error document goes to stderr.
    let v = json(d, &["decompress", "a.diff", "-o", "-"], 2, true);
    check(&v, "decompress", "error");
}

/// The checker itself: a missing field, a wrong type and an undocumented field are caught.
#[test]
fn the_checker_rejects_wrong_shapes() {
    let good = serde_json::json!({
        "schema": "rbddiff/1", "command": "decompress",
        "diff_bytes": 1, "compressed_bytes": 1, "frames": 1, "records": 0,
        "files": [{"input": "a.zst", "output": "a", "diff_bytes": 1, "compressed_bytes": 1,
                   "frames": 1, "records": 0}],
        "skipped": []
    });
    check(&good, "decompress", "decompress");
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("frames");
    let mut wrong = good.clone();
    wrong["frames"] = Value::String("1".into());
    let mut extra = good.clone();
    extra["bogus"] = Value::Bool(true);
    let mut schema = good.clone();
    schema["schema"] = Value::String("rbddiff/0".into());
    for bad in [missing, wrong, extra, schema] {
        let r = std::panic::catch_unwind(|| check(&bad, "decompress", "decompress"));
        assert!(r.is_err(), "accepted {bad}");
    }
}
