//! What outputs are created with: permission bits (from the file replaced, else the first
//! input, else 0600; sidecars and state files like their main file) and no stale sidecar
//! beside a replaced file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rbddiff::{DiffWriter, Metadata, Version};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn chmod(p: &Path, m: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
}

fn diff(from: Option<&str>, to: &str, byte: u8) -> Vec<u8> {
    let meta = Metadata {
        from_snap: from.map(|f| f.as_bytes().to_vec()),
        to_snap: Some(to.as_bytes().to_vec()),
        image_size: Some(1 << 20),
        ..Metadata::default()
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    w.write_data(4096 * u64::from(byte), &[byte; 4096]).unwrap();
    w.finish().unwrap()
}

fn ok(args: &[&str]) {
    let out = bin().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
}

#[test]
fn outputs_take_the_mode_of_the_replaced_file_or_the_input_or_0600() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    fs::write(p("a"), diff(None, "a", 1)).unwrap();
    fs::write(p("b"), diff(Some("a"), "b", 2)).unwrap();
    chmod(&p("a"), 0o640);
    chmod(&p("b"), 0o604);

    // New file: the first input's mode; its sidecar the same.
    ok(&[
        "merge",
        &s(&p("a")),
        &s(&p("b")),
        "-o",
        &s(&p("m")),
        "--sums",
    ]);
    assert_eq!(mode(&p("m")), 0o640);
    assert_eq!(mode(&p("m.sums")), 0o640);
    ok(&["compress", &s(&p("b")), "--output", &s(&p("b.zst"))]);
    assert_eq!(mode(&p("b.zst")), 0o604);

    // Replaced file: its own mode.
    chmod(&p("m"), 0o660);
    ok(&[
        "merge",
        &s(&p("a")),
        &s(&p("b")),
        "-o",
        &s(&p("m")),
        "--force",
        "--sums",
    ]);
    assert_eq!(mode(&p("m")), 0o660);
    assert_eq!(mode(&p("m.sums")), 0o660);

    // No input file (stdin): 0600, whatever the umask.
    let mut child = bin()
        .args(["decompress", "-", "--output", &s(&p("plain"))])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&fs::read(p("b.zst")).unwrap())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(mode(&p("plain")), 0o600);

    // apply --create: the target takes the input's mode, the state file the target's.
    ok(&["apply", &s(&p("a")), "--create", "--to", &s(&p("img"))]);
    assert_eq!(mode(&p("img")), 0o640);
    assert_eq!(mode(&p("img.rbddiff-state")), 0o640);
    chmod(&p("img"), 0o600);
    ok(&["apply", &s(&p("b")), "--to", &s(&p("img"))]);
    assert_eq!(mode(&p("img.rbddiff-state")), 0o600);
}

#[test]
fn a_forced_replacement_does_not_keep_the_old_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    fs::write(p("a"), diff(None, "a", 1)).unwrap();
    fs::write(p("b"), diff(Some("a"), "b", 2)).unwrap();
    fs::write(p("c"), diff(Some("a"), "c", 3)).unwrap();
    ok(&[
        "merge",
        &s(&p("a")),
        &s(&p("b")),
        "-o",
        &s(&p("m")),
        "--sums",
    ]);
    assert!(p("m.sums").exists());

    // Replaced without --sums: the old sidecar goes with the old file.
    ok(&[
        "merge",
        &s(&p("a")),
        &s(&p("c")),
        "-o",
        &s(&p("m")),
        "--force",
    ]);
    assert!(!p("m.sums").exists(), "stale sidecar kept");
    let out = bin().args(["verify", &s(&p("m"))]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // Replaced with --sums: a sidecar of the new content.
    ok(&[
        "merge",
        &s(&p("a")),
        &s(&p("b")),
        "-o",
        &s(&p("m")),
        "--force",
        "--sums",
    ]);
    ok(&[
        "merge",
        &s(&p("a")),
        &s(&p("c")),
        "-o",
        &s(&p("m")),
        "--force",
        "--sums",
    ]);
    let out = bin().args(["verify", &s(&p("m"))]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // compress --force onto an archive that had a sidecar.
    ok(&["compress", &s(&p("b")), "--output", &s(&p("z")), "--sums"]);
    ok(&["compress", &s(&p("c")), "--output", &s(&p("z")), "--force"]);
    assert!(!p("z.sums").exists(), "stale sidecar kept");
}
