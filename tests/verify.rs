//! `rbddiff verify`: structure, chains, checksum sidecars (every flipped byte is caught and
//! pinned to its record), `--against` and exit codes.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::manifest::{chains, diff_files, truth};
use common::model::Image;
use rand::{Rng, SeedableRng};
use rbddiff::sums::{self, sums_path};
use rbddiff::verify::{verify, Severity, VerifyOptions};
use rbddiff::DiffSlice;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn copy_to(dir: &Path, src: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    fs::copy(src, &p).unwrap();
    p
}

fn one(p: &Path) -> rbddiff::verify::VerifyReport {
    verify(&[s(p)], &VerifyOptions::default()).unwrap()
}

/// (start, end) of every record of a valid diff, banner first, as the sidecar tiles it.
fn record_ranges(bytes: &[u8]) -> Vec<(u64, u64)> {
    let sm = sums::compute(bytes).unwrap();
    sm.records
        .iter()
        .map(|r| (r.offset, r.offset + r.len))
        .collect()
}

/// Every real Ceph file is valid, and with a sidecar every flipped byte (every byte of the
/// header records and a sample of payload bytes) is found and pinned to its record.
#[test]
fn every_corpus_file_valid_and_every_flip_caught() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut flips = 0;
    for (i, d) in diff_files().iter().enumerate() {
        let p = copy_to(dir.path(), &d.path, &format!("f{i}.diff"));
        let r = one(&p);
        assert!(r.ok(), "{}: {:?}", d.rel, r.findings);
        sums::write_sums_for(&p).unwrap();
        assert_eq!(one(&p).files[0].sums, "ok");
        let orig = fs::read(&p).unwrap();
        let ranges = record_ranges(&orig);
        let first_payload = DiffSlice::parse(&orig)
            .unwrap()
            .metadata_records()
            .last()
            .map_or(12, |&(o, _)| o as usize + 9);
        // Every header byte, then random positions.
        let mut positions: Vec<usize> = (0..first_payload.min(orig.len())).collect();
        positions.extend((0..40).map(|_| rng.gen_range(0..orig.len())));
        positions.push(orig.len() - 1);
        for pos in positions {
            let mut bad = orig.clone();
            bad[pos] ^= 1 << rng.gen_range(0..8);
            fs::write(&p, &bad).unwrap();
            let r = one(&p);
            assert!(!r.ok(), "{}: flip at {pos} not caught", d.rel);
            let rec = ranges
                .iter()
                .find(|(a, b)| (*a..*b).contains(&(pos as u64)))
                .unwrap();
            assert!(
                r.findings
                    .iter()
                    .any(|f| f.check == "sums" && f.offset == Some(rec.0)),
                "{}: flip at {pos} not pinned to the record at {}: {:?}",
                d.rel,
                rec.0,
                r.findings
            );
            flips += 1;
        }
        fs::write(&p, &orig).unwrap();
    }
    assert!(flips > 500);
}

/// Bit rot in the sidecar itself is detected: every byte of one sidecar, flipped.
#[test]
fn every_flip_in_a_sidecar_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let d = &chains()[0].v1[1];
    let p = copy_to(dir.path(), &d.path, "x.diff");
    let sp = sums::write_sums_for(&p).unwrap();
    let orig = fs::read(&sp).unwrap();
    for pos in 0..orig.len() {
        let mut bad = orig.clone();
        bad[pos] ^= 0x04;
        fs::write(&sp, &bad).unwrap();
        let r = one(&p);
        assert!(!r.ok(), "sidecar flip at {pos} not caught");
        assert_eq!(r.files[0].sums, "damaged", "sidecar flip at {pos}");
    }
}

#[test]
fn truncation_missing_end_and_trailing_bytes_are_problems() {
    let dir = tempfile::tempdir().unwrap();
    let d = &chains()[0].v1[0];
    let orig = d.read();
    let p = dir.path().join("t.diff");
    // Truncated inside a payload, exactly before `e`, and with bytes after `e`.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (orig[..orig.len() / 2].to_vec(), "truncated"),
        (orig[..orig.len() - 1].to_vec(), "missing end"),
        ([orig.clone(), b"junk".to_vec()].concat(), "trailing"),
    ];
    for (bytes, what) in cases {
        fs::write(&p, &bytes).unwrap();
        let out = bin().args(["verify", &s(&p)]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{what}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.to_lowercase().contains(what), "{what}: {text}");
        assert!(text.contains("byte "), "{text}");
    }
}

#[test]
fn directory_chain_and_first_broken_link() {
    let dir = tempfile::tempdir().unwrap();
    let c = chains().into_iter().find(|c| c.image == "img64k").unwrap();
    for d in &c.v1 {
        copy_to(dir.path(), &d.path, &format!("{}.diff", d.stem()));
    }
    let opts = VerifyOptions {
        full: true,
        ..VerifyOptions::default()
    };
    let r = verify(&[s(dir.path())], &opts).unwrap();
    assert!(r.ok() && r.chain, "{:?}", r.findings);
    let order: Vec<_> = r.files.iter().map(|f| f.to_snap.clone()).collect();
    assert_eq!(order.first().unwrap().as_deref(), Some("v1"));
    // Remove v2_v3: the link v1_v2 -> v3_v4 is broken and named.
    fs::remove_file(dir.path().join("v2_v3.diff")).unwrap();
    let out = bin()
        .args(["verify", "--full", &s(dir.path())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("broken link") && text.contains("'v2'") && text.contains("'v3'"),
        "{text}"
    );
    // Explicit files out of order: the first broken link is reported.
    let files: Vec<String> = [&c.v1[0], &c.v1[2]].iter().map(|d| s(&d.path)).collect();
    let r = verify(&files, &VerifyOptions::default()).unwrap();
    assert!(r.findings.iter().any(|f| f.check == "chain"));
    // --full without a full diff first.
    let files: Vec<String> = c.v1[1..3].iter().map(|d| s(&d.path)).collect();
    let r = verify(&files, &opts).unwrap();
    assert!(r
        .findings
        .iter()
        .any(|f| f.check == "chain" && f.message.contains("full")));
}

/// `--against`: the chain's image equals the ground truth (built by the model, checked
/// against the manifest sha256); one changed byte in the raw image is located exactly.
#[test]
fn against_raw_image_reports_first_difference() {
    let dir = tempfile::tempdir().unwrap();
    let c = chains().into_iter().find(|c| c.image == "img64k").unwrap();
    let chain = &c.v1[..3];
    let bytes: Vec<Vec<u8>> = chain.iter().map(|d| d.read()).collect();
    let refs: Vec<&[u8]> = bytes.iter().map(|b| b.as_slice()).collect();
    let img: Image = common::model::apply_chain(&refs);
    assert_eq!(img.sha256(), truth("img64k", "v3").sha256);
    let raw = dir.path().join("raw");
    fs::write(&raw, &img.data).unwrap();
    let files: Vec<String> = chain.iter().map(|d| s(&d.path)).collect();
    let opts = VerifyOptions {
        against: Some(raw.clone()),
        ..VerifyOptions::default()
    };
    let r = verify(&files, &opts).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.first_difference, None);
    let mut changed = img.data.clone();
    let at = 12_345_678 % changed.len();
    changed[at] ^= 0xff;
    fs::write(&raw, &changed).unwrap();
    let r = verify(&files, &opts).unwrap();
    assert_eq!(r.first_difference, Some(at as u64));
    assert!(!r.ok());
    // A size difference is reported at the shorter end.
    fs::write(&raw, &img.data[..1000]).unwrap();
    let r = verify(&files, &opts).unwrap();
    assert_eq!(r.first_difference, Some(1000));
}

#[test]
fn exit_codes_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let d = &chains()[0].v1[0];
    let out = bin()
        .args(["verify", &s(&d.path), "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"][0]["valid"], true);
    // Could not run: exit 2.
    let out = bin()
        .args(["verify", &s(&dir.path().join("missing"))])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Problems: exit 1, listed in JSON.
    let p = copy_to(dir.path(), &d.path, "c.diff");
    sums::write_sums_for(&p).unwrap();
    let mut b = fs::read(&p).unwrap();
    let n = b.len() - 100;
    b[n] ^= 1;
    fs::write(&p, &b).unwrap();
    let out = bin().args(["verify", &s(&p), "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["findings"][0]["check"], "sums");
    assert!(sums_path(&p).exists());
    // --require-sums: a missing sidecar is a problem.
    let q = copy_to(dir.path(), &d.path, "q.diff");
    let r = verify(
        &[s(&q)],
        &VerifyOptions {
            require_sums: true,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(r.findings.iter().any(|f| f.severity == Severity::Problem));
    // Stdin: structure only.
    let out = bin()
        .args(["verify", "-"])
        .stdin(fs::File::open(&d.path).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

/// Ceph 16's v2 files carry a `p` length-field quirk: a note, not a problem.
#[test]
fn v2_corpus_notes_are_not_problems() {
    for c in chains() {
        for d in &c.v2 {
            let r = one(&d.path);
            assert!(r.ok(), "{}: {:?}", d.rel, r.findings);
        }
    }
}

/// The digest option compares the whole-file sha256 too.
#[test]
fn digest_option_checks_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let d = &chains()[0].v1[0];
    let p = copy_to(dir.path(), &d.path, "g.diff");
    sums::write_sums_for(&p).unwrap();
    let sm = sums::decode(&fs::read(sums_path(&p)).unwrap()).unwrap();
    assert_eq!(sm.sha256, d.sha256);
    let r = verify(
        &[s(&p)],
        &VerifyOptions {
            digest: true,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(r.ok());
}

/// A sidecar whose CRCs match but whose whole-file sha256 does not: only `digest` finds it
/// (the sha256 is taken beside the CRC threads), and names it.
#[test]
fn digest_option_finds_a_wrong_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let p = copy_to(dir.path(), &chains()[0].v1[0].path, "g.diff");
    sums::write_sums_for(&p).unwrap();
    let mut sm = read_sums(&p);
    sm.sha256 = "0".repeat(64);
    fs::write(sums_path(&p), sums::encode(&sm)).unwrap();
    let run = |digest| {
        let opts = VerifyOptions {
            digest,
            ..VerifyOptions::default()
        };
        verify(&[s(&p)], &opts).unwrap()
    };
    assert!(run(false).ok());
    let r = run(true);
    assert!(!r.ok());
    assert!(
        r.findings
            .iter()
            .any(|f| f.check == "sums" && f.message.contains("sha256")),
        "{:?}",
        r.findings
    );
}

fn run_ok(args: &[&str]) {
    let o = bin().args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {o:?}");
}

fn verify_json(p: &Path) -> (Option<i32>, serde_json::Value) {
    let o = bin().args(["verify", &s(p), "--json"]).output().unwrap();
    (o.status.code(), serde_json::from_slice(&o.stdout).unwrap())
}

fn read_sums(p: &Path) -> sums::Sums {
    sums::decode(&fs::read(sums_path(p)).unwrap()).unwrap()
}

/// `merge --sums` and `compress --sums` write sidecars that `verify` accepts; for a
/// compressed output they cover the merged diff stream (same records and digest as the
/// plain output's) plus the archive's length and digest. A flipped byte is caught: in a
/// plain file by the record CRCs; in a `.zst` payload frame by zstd's frame checksum
/// (structure, naming the frame) and by the sums (naming the frame and the record being
/// read, and the compressed digest); in the archive's index by the compressed digest.
#[test]
fn merge_and_compress_sums_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let chain: Vec<String> = chains()[0].v1.iter().map(|f| s(&f.path)).collect();
    let plain = d.join("m.diff");
    let zst = d.join("m.zst");
    for out in [&plain, &zst] {
        let mut args = vec!["merge".to_string()];
        args.extend(chain.iter().cloned());
        args.extend(["-o".into(), s(out), "--sums".into()]);
        let a: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
        run_ok(&a);
        let (code, v) = verify_json(out);
        assert_eq!(code, Some(0), "{v}");
        assert_eq!(v["files"][0]["sums"], "ok", "{v}");
    }
    let c = d.join("c.zst");
    run_ok(&[
        "compress",
        &s(&plain),
        "-o",
        &s(&c),
        "--sums",
        "--frame-size",
        "4096",
    ]);
    let (code, v) = verify_json(&c);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["files"][0]["sums"], "ok", "{v}");
    // The compressed outputs' sums are those of the plain diff stream.
    let sp = read_sums(&plain);
    let want = sums::compute(&fs::read(&plain).unwrap()).unwrap();
    assert_eq!((&sp.records, &sp.sha256), (&want.records, &want.sha256));
    assert!(sp.compressed.is_none());
    for z in [&zst, &c] {
        let sz = read_sums(z);
        assert_eq!(
            (&sz.records, &sz.sha256, sz.file_len),
            (&sp.records, &sp.sha256, sp.file_len)
        );
        let cz = sz.compressed.as_ref().expect("compressed section");
        assert_eq!(cz.file_len, fs::metadata(z).unwrap().len());
    }
    // A zstd file without an index (written by `zstd`): `verify --write-sums` then `verify`.
    let pz = d.join("p.zst");
    fs::write(
        &pz,
        zstd::encode_all(&fs::read(&plain).unwrap()[..], 3).unwrap(),
    )
    .unwrap();
    run_ok(&["verify", "--write-sums", &s(&pz)]);
    let sz = read_sums(&pz);
    assert_eq!((&sz.records, &sz.sha256), (&sp.records, &sp.sha256));
    let (code, v) = verify_json(&pz);
    assert_eq!(
        (code, &v["files"][0]["sums"]),
        (Some(0), &"ok".into()),
        "{v}"
    );
    // --sums with stdout is refused before anything is written.
    let o = bin()
        .args(["compress", &s(&plain), "-o", "-", "--sums"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());

    // Plain: a flipped payload byte is pinned to its 'w' record.
    let mut b = fs::read(&plain).unwrap();
    let w = sp.records.iter().rfind(|r| r.tag == 'w').unwrap();
    b[(w.offset + w.len / 2) as usize] ^= 0x10;
    fs::write(&plain, &b).unwrap();
    let (code, v) = verify_json(&plain);
    assert_eq!(code, Some(1));
    let sums_findings: Vec<&serde_json::Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "sums")
        .collect();
    assert_eq!(sums_findings.len(), 1, "{v}");
    assert_eq!(sums_findings[0]["offset"], w.offset);
    assert!(sums_findings[0]["message"]
        .as_str()
        .unwrap()
        .contains("'w' record"));

    // Compressed: a flipped byte inside the frame holding that payload.
    let raw = fs::read(&c).unwrap();
    let arch = rbddiff::zst::ZstArchive::open(&raw).unwrap().unwrap();
    let k = arch.frame_of(w.offset + w.len / 2).unwrap();
    let f = arch.frames()[k];
    let mut bad = raw.clone();
    bad[(f.c_offset + u64::from(f.c_len) / 2) as usize] ^= 0x10;
    fs::write(&c, &bad).unwrap();
    let (code, v) = verify_json(&c);
    assert_eq!(code, Some(1), "{v}");
    let msgs: Vec<String> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{} {}", f["check"], f["message"]))
        .collect();
    let frame = format!("zstd frame {k}");
    assert!(
        msgs.iter()
            .any(|m| m.contains("structure") && m.contains(&frame)),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("sums") && m.contains(&frame) && m.contains("'w' record")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("compressed file's sha256")),
        "{msgs:?}"
    );

    // Compressed: a flipped byte in the record index (a skippable frame `zstd -d` ignores).
    let mut bad = raw.clone();
    let last = arch.frames().last().unwrap();
    bad[(last.c_offset + u64::from(last.c_len) + 12) as usize] ^= 1;
    fs::write(&c, &bad).unwrap();
    let (code, v) = verify_json(&c);
    assert_eq!(code, Some(1), "{v}");
    assert!(v.to_string().contains("compressed file's sha256"), "{v}");
}

/// The diffs embedded in an image stream must form a chain from a full diff: the real
/// stream passes; the same bytes with the first two diffs swapped are a problem (exit 1)
/// naming the embedded diffs, while every diff is still structurally valid.
#[test]
fn image_stream_embedded_diffs_must_link() {
    let img = common::manifest::export_format2_stream();
    let r = verify(&[s(&img)], &VerifyOptions::default()).unwrap();
    assert!(r.ok(), "{:?}", r.findings);

    let bytes = fs::read(&img).unwrap();
    // Byte ranges from testdata/real/img64k/v2/carve.txt: header, full_v1, v1_v2, rest.
    let (head, full, v1v2, rest) = (
        &bytes[..148],
        &bytes[148..529349],
        &bytes[529349..627898],
        &bytes[627898..],
    );
    assert_eq!(
        full,
        &fs::read(img.with_file_name("v2/full_v1.diff")).unwrap()[..]
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("swapped.rbdimg");
    fs::write(&bad, [head, v1v2, full, rest].concat()).unwrap();
    let r = verify(&[s(&bad)], &VerifyOptions::default()).unwrap();
    assert!(!r.ok());
    assert!(r.files[0].valid, "structure is fine");
    let chain: Vec<_> = r.findings.iter().filter(|f| f.check == "chain").collect();
    assert!(chain[0]
        .message
        .contains("embedded diff 1 starts at snapshot 'v1'"));
    assert_eq!(chain[0].offset, Some(148));
    assert!(chain[1]
        .message
        .contains("embedded diff 2 starts at no snapshot"));
    let out = bin().args(["verify", &s(&bad)]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// A small valid v2 diff.
fn small_diff() -> Vec<u8> {
    let meta = rbddiff::Metadata {
        to_snap: Some(b"s1".to_vec()),
        image_size: Some(1 << 20),
        ..Default::default()
    };
    let mut w = rbddiff::DiffWriter::new(Vec::new(), rbddiff::Version::V2, &meta).unwrap();
    w.write_data(4096, &[7u8; 100]).unwrap();
    w.finish().unwrap()
}

/// Runs `rbddiff verify FILE` with a deadline: (exit code, stdout + stderr).
fn verify_with_deadline(p: &Path) -> (i32, String) {
    let mut child = bin()
        .arg("verify")
        .arg(p)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("verify of {} hangs", p.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), text)
}

/// A sidecar that is a link to /dev/zero, a FIFO, a dangling link or an oversized file is
/// a clear problem naming the sidecar; verify neither blocks nor fills memory.
#[test]
fn hostile_sidecars_are_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = small_diff();
    let p = dir.path().join("a.diff");
    fs::write(&p, &bytes).unwrap();
    let sp = sums_path(&p);
    type Make<'a> = &'a dyn Fn(&Path);
    let cases: [(&str, Make, &str); 4] = [
        (
            "link to /dev/zero",
            &|sp| std::os::unix::fs::symlink("/dev/zero", sp).unwrap(),
            "symbolic link",
        ),
        (
            "dangling link",
            &|sp| std::os::unix::fs::symlink("nowhere", sp).unwrap(),
            "symbolic link",
        ),
        (
            "FIFO",
            &|sp| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    sp,
                    rustix::fs::FileType::Fifo,
                    0o600.into(),
                    0,
                )
                .unwrap()
            },
            "not a regular file",
        ),
        (
            "oversized",
            &|sp| {
                let f = fs::File::create(sp).unwrap();
                f.set_len(sums::max_sidecar_len(bytes.len() as u64) + 1)
                    .unwrap();
            },
            "more than the limit",
        ),
    ];
    for (what, make, expect) in cases {
        let _ = fs::remove_file(&sp);
        make(&sp);
        let (code, text) = verify_with_deadline(&p);
        assert_eq!(code, 1, "{what}: {text}");
        let line = format!("problem [sums] {}: ", sp.display());
        assert!(
            text.lines()
                .any(|l| l.starts_with(&line) && l.contains(expect)),
            "{what}: {text}"
        );
        let err = sums::check_sums(&p, &bytes).unwrap_err();
        assert_eq!(err.file(), Some(sp.as_path()), "{what}");
    }
    // A sidecar at the limit is read (and found damaged, not refused for its size).
    let _ = fs::remove_file(&sp);
    let f = fs::File::create(&sp).unwrap();
    f.set_len(sums::max_sidecar_len(bytes.len() as u64))
        .unwrap();
    let err = sums::check_sums(&p, &bytes).unwrap_err().to_string();
    assert!(err.contains("damaged"), "{err}");
}

/// A (self-consistent) sidecar whose first entry is not the banner: a mismatch there has no
/// record index, rather than an underflowed one.
#[test]
fn sidecar_whose_first_entry_is_not_the_banner() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = small_diff();
    let p = dir.path().join("a.diff");
    fs::write(&p, &bytes).unwrap();
    let mut sm = sums::compute(&bytes).unwrap();
    sm.records[0].tag = 'w';
    sm.records[0].crc32 ^= 1;
    sums::write_sums(&p, &sm).unwrap();
    let m = sums::check_sums(&p, &bytes).unwrap();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!((m[0].offset, m[0].record), (0, None));
    let r = one(&p);
    let f = r.findings.iter().find(|f| f.check == "sums").unwrap();
    assert_eq!(f.record, None);
}

/// A sidecar taken from a walk that found nothing stands for that walk: a file whose bytes
/// match it is reported valid, with the snapshots and size the walk gives, without being
/// walked again. A diff with a note (Ceph 16's v2 `p` length) gets a sidecar without that
/// mark, so it is walked and its note reported; so is a file with an older sidecar.
#[test]
fn a_sidecar_from_a_clean_walk_stands_for_the_walk() {
    let dir = tempfile::tempdir().unwrap();
    let c = &chains()[0];
    let p = copy_to(dir.path(), &c.v1[1].path, "g.diff");
    let walked = one(&p);
    assert_eq!(walked.files[0].sums, "absent");
    sums::write_sums_for(&p).unwrap();
    assert!(read_sums(&p).clean);
    let fast = one(&p);
    assert!(fast.ok(), "{:?}", fast.findings);
    let (a, b) = (&walked.files[0], &fast.files[0]);
    assert_eq!(b.sums, "ok");
    assert_eq!(
        (&a.from_snap, &a.to_snap, a.image_size, a.valid),
        (&b.from_snap, &b.to_snap, b.image_size, b.valid)
    );
    assert!(a.from_snap.is_some() && a.image_size.is_some(), "{a:?}");
    // The mark is what is trusted: set on the sidecar of a diff with a note, the note is
    // not looked for (the bytes match); without it, the diff is walked.
    let v2 = chains()
        .into_iter()
        .flat_map(|c| c.v2)
        .find(|d| d.rel.contains("imgstriped"))
        .unwrap();
    let q = copy_to(dir.path(), &v2.path, "n.diff");
    sums::write_sums_for(&q).unwrap();
    let mut sm = read_sums(&q);
    assert!(!sm.clean, "{}", v2.rel);
    let r = one(&q);
    assert_eq!(r.files[0].sums, "ok");
    assert!(r.findings.iter().any(|f| f.check == "structure"), "{r:?}");
    sm.clean = true;
    fs::write(sums_path(&q), sums::encode(&sm)).unwrap();
    let r = one(&q);
    assert_eq!(r.files[0].sums, "ok");
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    // Bytes after `e` are never clean, wherever the sums come from.
    let mut trailing = fs::read(&p).unwrap();
    trailing.extend_from_slice(b"junk");
    let t = sums::compute(&trailing).unwrap();
    assert!(!t.clean);
    let mut copy = Vec::new();
    let t = sums::copy_with_sums(&trailing[..], &mut copy).unwrap();
    assert!(!t.clean);
    // An older sidecar (no mark) of a clean diff: walked, same report.
    let mut sm = read_sums(&p);
    sm.clean = false;
    fs::write(sums_path(&p), sums::encode(&sm)).unwrap();
    assert!(!String::from_utf8(fs::read(sums_path(&p)).unwrap())
        .unwrap()
        .contains("clean"));
    let old = one(&p);
    assert!(old.ok() && old.files[0].sums == "ok", "{:?}", old.findings);
    // A flipped byte under a clean sidecar is found and pinned as before.
    sums::write_sums_for(&p).unwrap();
    let mut bytes = fs::read(&p).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 4;
    fs::write(&p, &bytes).unwrap();
    let r = one(&p);
    assert!(!r.ok());
    assert_eq!(r.files[0].sums, "mismatch");
    assert!(
        r.findings
            .iter()
            .any(|f| f.check == "sums" && f.offset.is_some()),
        "{r:?}"
    );
}
