//! An input truncated by another process while `verify`, `compress` or `apply` read it
//! (inputs are memory-mapped): an error naming the file with exit 2, never a SIGBUS death.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const RECORD: u64 = 64 << 10;
const RECORDS: u64 = 16 << 10;

/// A v1 full diff of 1 GiB of `w` payload, sparse on disk: each payload starts with one
/// non-zero byte, the rest is a hole.
fn write_big(p: &Path) {
    let mut f = File::create(p).unwrap();
    f.write_all(b"rbd diff v1\n").unwrap();
    f.write_all(b"t\x01\x00\x00\x00s").unwrap();
    f.write_all(b"s").unwrap();
    f.write_all(&(RECORD * RECORDS).to_le_bytes()).unwrap();
    for i in 0..RECORDS {
        f.write_all(b"w").unwrap();
        f.write_all(&(i * RECORD).to_le_bytes()).unwrap();
        f.write_all(&RECORD.to_le_bytes()).unwrap();
        f.write_all(&[1]).unwrap();
        f.seek(SeekFrom::Current(RECORD as i64 - 1)).unwrap();
    }
    f.write_all(b"e").unwrap();
}

const MESSAGE: &str = "shrank while it was being read";

/// Runs `args` (with `{}` standing for the input) and truncates the input `delay` after the
/// start, until the truncation lands while the input is read. Returns how many runs hit the
/// race; panics on a SIGBUS death or a wrong error.
fn race(name: &str, args: &[&str], prepare: &dyn Fn(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.diff");
    let mut delay = Duration::from_millis(40);
    let mut hit = 0;
    for attempt in 0..16 {
        write_big(&input);
        prepare(&input);
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{}", input.to_str().unwrap()))
            .map(|a| a.replace("{dir}", dir.path().to_str().unwrap()))
            .collect();
        let child = Command::new(env!("CARGO_BIN_EXE_rbddiff"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        OpenOptions::new()
            .write(true)
            .open(&input)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(
            out.status.signal(),
            Some(7),
            "{name}: killed by SIGBUS (attempt {attempt}, {delay:?})"
        );
        assert_ne!(out.status.code(), Some(135), "{name}: {err}");
        match out.status.code() {
            Some(0) => delay /= 2, // done before the truncation: earlier
            Some(2) if err.contains(MESSAGE) => {
                assert!(err.contains("big.diff"), "{name}: {err}");
                hit += 1;
                if hit == 2 {
                    return;
                }
            }
            // Truncated before it was opened or read: later.
            Some(2) => delay = delay * 3 / 2,
            other => panic!("{name}: exit {other:?}: {err}"),
        }
        for f in fs::read_dir(dir.path()).unwrap() {
            let p = f.unwrap().path();
            if p != input && !p.to_string_lossy().ends_with(".sums") {
                let _ = fs::remove_file(p);
            }
        }
    }
    panic!("{name}: the truncation never landed while the input was read ({hit} hits)");
}

#[test]
fn verify_of_a_truncated_input_is_an_error() {
    let sums = |p: &Path| {
        if !rbddiff::sums::has_sums(p) {
            rbddiff::sums::write_sums_for(p).unwrap();
        }
    };
    race("verify", &["verify", "--digest", "{}"], &sums);
}

#[test]
fn compress_of_a_truncated_input_is_an_error() {
    race(
        "compress",
        &["compress", "{}", "--output", "{dir}/out.zst"],
        &|_| {},
    );
}

#[test]
fn apply_of_a_truncated_input_is_an_error() {
    race(
        "apply",
        &["apply", "{}", "--create", "--to", "{dir}/img"],
        &|_| {},
    );
}
