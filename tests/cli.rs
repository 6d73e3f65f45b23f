//! The command line's safety and conveniences, run as a process: an output that is an
//! input is refused, binary output to a terminal is refused.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rbddiff::{DiffWriter, Metadata, Version};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn run(args: &[&str]) -> Output {
    bin().args(args).stdin(Stdio::null()).output().unwrap()
}

fn run_stdin(args: &[&str], stdin: &Path) -> Output {
    bin()
        .args(args)
        .stdin(fs::File::open(stdin).unwrap())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
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

/// A directory with a two-diff chain `a`, `b`, an archive `a.zst` of `a` and a raw image.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a"), diff(None, "a", 1)).unwrap();
    fs::write(dir.path().join("b"), diff(Some("a"), "b", 2)).unwrap();
    let p = |n: &str| s(&dir.path().join(n));
    let o = run(&["compress", &p("a"), "-o", &p("a.zst")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut raw = vec![0u8; 1 << 20];
    raw[8192..12288].fill(7);
    fs::write(dir.path().join("raw"), raw).unwrap();
    dir
}

/// Asserts that `o` is the refusal of an output that is an input, and that `file` kept
/// its content.
fn assert_refused(o: &Output, file: &Path, before: &[u8]) {
    assert_eq!(o.status.code(), Some(2), "{}", stderr(o));
    let e = stderr(o);
    assert!(e.contains("is the input"), "{e}");
    assert!(e.contains("refusing to replace it"), "{e}");
    assert_eq!(fs::read(file).unwrap(), before, "the input was changed");
}

#[test]
fn an_output_that_is_an_input_is_refused_even_with_force() {
    let dir = setup();
    let p = |n: &str| dir.path().join(n);
    let (a, b, z, raw) = (s(&p("a")), s(&p("b")), s(&p("a.zst")), s(&p("raw")));
    let a0 = fs::read(p("a")).unwrap();
    let b0 = fs::read(p("b")).unwrap();
    let z0 = fs::read(p("a.zst")).unwrap();
    let raw0 = fs::read(p("raw")).unwrap();

    // merge: the first input, the last one, with and without --force.
    assert_refused(&run(&["merge", &a, &b, "-o", &a, "--force"]), &p("a"), &a0);
    assert_refused(&run(&["merge", &a, &b, "-o", &b, "--force"]), &p("b"), &b0);
    assert_refused(&run(&["merge", &a, &b, "-o", &b]), &p("b"), &b0);
    // compress and decompress.
    assert_refused(&run(&["compress", &a, "-o", &a, "--force"]), &p("a"), &a0);
    assert_refused(
        &run(&["decompress", &z, "-o", &z, "--force"]),
        &p("a.zst"),
        &z0,
    );
    // create: the new image and the base image.
    assert_refused(
        &run(&["create", "--from", &raw, "-o", &raw, "--force"]),
        &p("raw"),
        &raw0,
    );
    fs::write(p("old"), vec![0u8; 1 << 20]).unwrap();
    let old = s(&p("old"));
    assert_refused(
        &run(&[
            "create",
            "--from",
            &raw,
            "--base",
            &old,
            "--from-snap",
            "s0",
            "-o",
            &old,
            "--force",
        ]),
        &p("old"),
        &vec![0u8; 1 << 20],
    );
}

#[test]
fn links_to_an_input_and_stdin_are_the_input_too() {
    let dir = setup();
    let p = |n: &str| dir.path().join(n);
    let a0 = fs::read(p("a")).unwrap();
    fs::hard_link(p("a"), p("hard")).unwrap();
    std::os::unix::fs::symlink(p("a"), p("soft")).unwrap();
    let (a, b) = (s(&p("a")), s(&p("b")));
    for link in ["hard", "soft"] {
        let o = run(&["merge", &a, &b, "-o", &s(&p(link)), "--force"]);
        assert_refused(&o, &p("a"), &a0);
    }
    // The input read from stdin is the file given as output.
    let o = run_stdin(&["compress", "-", "-o", &a, "--force"], &p("a"));
    assert_refused(&o, &p("a"), &a0);
    // Stdout appended to an input.
    let append = fs::OpenOptions::new().append(true).open(p("a")).unwrap();
    let o = bin()
        .args(["compress", &a, "-o", "-"])
        .stdin(Stdio::null())
        .stdout(append)
        .output()
        .unwrap();
    assert_refused(&o, &p("a"), &a0);
    assert!(stderr(&o).contains("stdout is the input"), "{}", stderr(&o));
}

#[test]
fn a_distinct_output_is_still_written() {
    let dir = setup();
    let p = |n: &str| dir.path().join(n);
    let (a, b) = (s(&p("a")), s(&p("b")));
    let o = run(&["merge", &a, &b, "-o", &s(&p("ab"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["compress", &a, "-o", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, fs::read(p("a.zst")).unwrap());
}

/// Runs `rbddiff ARGS` with stdout on a pseudo-terminal (util-linux `script`), returning its
/// exit status and what the terminal showed; `None` when `script` is missing.
fn on_terminal(args: &[String]) -> Option<(i32, String)> {
    let cmd = std::iter::once(env!("CARGO_BIN_EXE_rbddiff").to_string())
        .chain(args.iter().cloned())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[test]
fn binary_output_to_a_terminal_is_refused() {
    let dir = setup();
    let p = |n: &str| s(&dir.path().join(n));
    let cases: Vec<Vec<String>> = vec![
        vec!["merge".into(), p("a"), p("b"), "-o".into(), "-".into()],
        vec!["compress".into(), p("a"), "-o".into(), "-".into()],
        vec!["decompress".into(), p("a.zst"), "-o".into(), "-".into()],
        vec![
            "create".into(),
            "--from".into(),
            p("raw"),
            "-o".into(),
            "-".into(),
        ],
    ];
    for args in cases {
        let Some((code, shown)) = on_terminal(&args) else {
            // On the real stderr: seen even though the test passes.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"SKIPPED: no `script` to give the command a terminal\n",
            );
            return;
        };
        assert_eq!(code, 2, "{args:?}: {shown}");
        assert!(shown.contains("stdout is a terminal"), "{args:?}: {shown}");
        assert!(!shown.contains("rbd diff v1"), "{args:?} wrote: {shown}");
    }
    // To a file, the same command runs.
    let (code, shown) =
        on_terminal(&["merge".into(), p("a"), p("b"), "-o".into(), p("ab")]).unwrap();
    assert_eq!(code, 0, "{shown}");
}

/// The commands `rbddiff --help` lists (`help` excepted).
fn commands() -> Vec<String> {
    let o = run(&["--help"]);
    let text = String::from_utf8(o.stdout).unwrap();
    let list: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(list.len() >= 10, "{text}");
    assert!(list.iter().any(|c| c == "man"), "{list:?}");
    list
}

#[test]
fn completions_name_every_command() {
    let commands = commands();
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.len() > 1000, "{shell}: {text}");
        for c in &commands {
            assert!(text.contains(c.as_str()), "{shell} lacks {c}");
        }
        // Flags of a command are completed too.
        assert!(text.contains("assume-renamed"), "{shell}");
    }
    let o = run(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn man_writes_one_page_per_command() {
    let commands = commands();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let o = run(&["man", "-o", &s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = commands.iter().map(|c| format!("rbddiff-{c}.1")).collect();
    want.push("rbddiff.1".into());
    want.sort();
    assert_eq!(names, want);
    let top = fs::read_to_string(out.join("rbddiff.1")).unwrap();
    assert!(top.contains(".TH rbddiff 1"), "{top}");
    for c in &commands {
        assert!(top.contains(&format!("rbddiff\\-{c}(1)")), "{c}");
        let page = fs::read_to_string(out.join(format!("rbddiff-{c}.1"))).unwrap();
        assert!(page.contains(&format!(".TH rbddiff-{c} 1")), "{c}: {page}");
        assert!(page.contains(".SH OPTIONS"), "{c}: {page}");
        assert!(page.contains(&format!("rbddiff {c}")), "{c}: {page}");
    }
    // One page on stdout; an unknown command is an error.
    let o = run(&["man", "merge"]);
    assert!(o.status.success());
    assert_eq!(o.stdout, fs::read(out.join("rbddiff-merge.1")).unwrap());
    let o = run(&["man", "nosuch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nosuch"));
}

/// `--frame-size 64K` is `--frame-size 65536`, and not the default (more frames).
#[test]
fn size_arguments_take_binary_units() {
    let dir = setup();
    let p = |n: &str| dir.path().join(n);
    let src = env!("CARGO_MANIFEST_DIR").to_string() + "/testdata/real/img64k/full_v1.diff";
    let compress = |size: Option<&str>, out: &str| {
        let mut args = vec!["compress", &src, "-o", out];
        if let Some(s) = size {
            args.extend(["--frame-size", s]);
        }
        let o = run(&args);
        assert!(o.status.success(), "{size:?}: {}", stderr(&o));
        fs::read(out).unwrap()
    };
    let k = compress(Some("64K"), &s(&p("k.zst")));
    assert_eq!(k, compress(Some("65536"), &s(&p("b.zst"))));
    assert_eq!(k, compress(Some("64KiB"), &s(&p("kib.zst"))));
    assert_ne!(k, compress(None, &s(&p("default.zst"))));
    assert_eq!(
        compress(Some("4M"), &s(&p("m.zst"))),
        compress(None, &s(&p("default2.zst")))
    );
    let o = run(&[
        "compress",
        &src,
        "-o",
        &s(&p("x.zst")),
        "--frame-size",
        "64Q",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a size"), "{}", stderr(&o));

    // create: block size and largest record.
    let raw = s(&p("raw"));
    let create = |block: &str, max: &str, out: &str| {
        let o = run(&[
            "create",
            "--from",
            &raw,
            "--block-size",
            block,
            "--max-record",
            max,
            "-o",
            out,
        ]);
        assert!(o.status.success(), "{block} {max}: {}", stderr(&o));
        (fs::read(out).unwrap(), String::from_utf8(o.stdout).unwrap())
    };
    let (units, text) = create("64K", "1M", &s(&p("u.diff")));
    let (bytes, _) = create("65536", "1048576", &s(&p("b.diff")));
    assert_eq!(units, bytes);
    let (small, _) = create("4K", "4K", &s(&p("s.diff")));
    assert_ne!(units, small);
    // The report shows sizes as rbd does.
    assert!(text.contains("size 1 MiB"), "{text}");
    assert!(text.contains("1 data records (64 KiB)"), "{text}");
}

/// Compressed files, disk images and an empty file given as diffs: every command says what
/// the input is and what to do, not only that the banner is wrong.
#[test]
fn foreign_input_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let junk: Vec<u8> = (0..200u8).collect();
    let with = |magic: &[u8]| [magic, &junk].concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "x.gz",
            with(&[0x1f, 0x8b, 8, 0]),
            "gunzip -c FILE | rbddiff",
        ),
        ("x.xz", with(b"\xfd7zXZ\x00"), "xz -dc FILE | rbddiff"),
        ("x.bz2", with(b"BZh91AY&SY"), "bzip2 -dc FILE | rbddiff"),
        ("x.lz4", with(b"\x04\x22\x4d\x18"), "lz4 -dc FILE | rbddiff"),
        (
            "x.qcow2",
            with(b"QFI\xfb\x00\x00\x00\x03"),
            "qemu-img convert",
        ),
        ("disk.raw", vec![0u8; 65536], "looks like a raw image"),
        ("boot.raw", with(b"\xebc\x90"), "looks like a raw image"),
        ("empty", Vec::new(), "the input is empty"),
        // Files shorter than a banner that hold only a format's magic.
        ("short.gz", vec![0x1f, 0x8b, 8], "gunzip -c FILE | rbddiff"),
        (
            "short.xz",
            b"\xfd7zXZ\x00".to_vec(),
            "xz -dc FILE | rbddiff",
        ),
        ("short.bz2", b"BZh9".to_vec(), "bzip2 -dc FILE | rbddiff"),
    ];
    let good = s(&dir.path().join("good"));
    fs::write(&good, diff(None, "a", 1)).unwrap();
    for (name, data, hint) in &cases {
        fs::write(p(name), data).unwrap();
        let f = s(&p(name));
        let target = s(&p("target"));
        let runs = [
            run(&["inspect", &f]),
            run(&["merge", &f, &good, "-o", &s(&p("out"))]),
            run(&["apply", &f, "--to", &target, "--create"]),
            run(&["compress", &f, "-o", &s(&p("out.zst"))]),
            run(&["verify", &f]),
            run_stdin(&["compress", "-", "-o", &s(&p("out2.zst"))], &p(name)),
        ];
        for (i, o) in runs.iter().enumerate() {
            let said = format!("{}{}", stderr(o), String::from_utf8_lossy(&o.stdout));
            assert!(!o.status.success(), "{name} #{i}: {said}");
            assert!(said.contains(hint), "{name} #{i}: {said}");
            // Escapes are not doubled.
            assert!(!said.contains("\\\\x"), "{name} #{i}: {said}");
        }
    }
    // Text that is no known format is a bad banner, with no guess.
    fs::write(p("text"), b"hello, world: this is text\n").unwrap();
    let o = run(&["inspect", &s(&p("text"))]);
    let e = stderr(&o);
    assert!(e.contains("bad banner \"hello, world\""), "{e}");
    assert!(!e.contains("this is") && !e.contains("looks like"), "{e}");
}

/// Every command takes `-q/--quiet` and `--no-progress`, before or after its name.
#[test]
fn every_command_takes_quiet_and_no_progress() {
    for c in commands() {
        for args in [
            vec![c.as_str(), "-q", "--no-progress", "--help"],
            vec!["--quiet", c.as_str(), "--help"],
            vec!["--no-progress", c.as_str(), "--help"],
        ] {
            let o = run(&args);
            assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        }
        // What a command does not take is refused (so the above can fail).
        let o = run(&[c.as_str(), "--no-such-flag", "--help"]);
        assert_eq!(o.status.code(), Some(2), "{c}");
    }
}

/// `-q` prints nothing but errors and asked-for JSON; without it the same commands report.
#[test]
fn quiet_prints_nothing_but_errors_and_json() {
    let dir = setup();
    let p = |n: &str| s(&dir.path().join(n));
    let v2 = env!("CARGO_MANIFEST_DIR").to_string() + "/testdata/real/img64k/v2/";
    let (v2a, v2b) = (v2.clone() + "full_v1.diff", v2 + "v1_v2.diff");
    let cases: Vec<Vec<String>> = vec![
        vec!["inspect".into(), p("a")],
        vec!["verify".into(), p("a"), p("b")],
        vec!["apply".into(), p("a"), p("b"), "--to".into(), p("t1")],
        vec![
            "create".into(),
            "--from".into(),
            p("raw"),
            "-o".into(),
            p("c1"),
        ],
        // Ceph 16 v2 files: warnings on stderr.
        vec!["merge".into(), v2a, v2b, "-o".into(), p("m1")],
    ];
    for (i, args) in cases.iter().enumerate() {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        if args[0] == "apply" {
            args.push("--create");
        }
        let loud = run(&args);
        assert!(loud.status.success(), "{args:?}: {}", stderr(&loud));
        assert!(
            !loud.stdout.is_empty() || !loud.stderr.is_empty(),
            "{args:?} printed nothing"
        );
        // The same again, quietly (to new outputs).
        let fresh: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("t1", "t2")
                    .replace("c1", "c2")
                    .replace("m1", "m2")
            })
            .collect();
        let mut quiet: Vec<&str> = vec!["-q"];
        quiet.extend(fresh.iter().map(String::as_str));
        let o = run(&quiet);
        assert!(o.status.success(), "#{i} {quiet:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "#{i} {quiet:?}: {:?}", o.stdout);
        assert!(o.stderr.is_empty(), "#{i} {quiet:?}: {}", stderr(&o));
    }
    // Problems: the exit status tells, errors are still printed.
    let o = run(&["verify", "-q", &p("b"), &p("a")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let o = run(&["inspect", "-q", &p("nosuch")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nosuch"));
    // JSON asked for is printed.
    let o = run(&["inspect", "-q", "--json", &p("a")]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"][0]["diffs"][0]["to_snap"], "a");
}

#[test]
fn decompress_reports_json() {
    let dir = setup();
    let p = |n: &str| s(&dir.path().join(n));
    let len = fs::metadata(p("a")).unwrap().len();
    let zlen = fs::metadata(p("a.zst")).unwrap().len();
    let o = run(&["decompress", &p("a.zst"), "-o", &p("a2"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["diff_bytes"], len);
    assert_eq!(v["compressed_bytes"], zlen);
    assert!(v["frames"].as_u64().unwrap() >= 1);
    // With the data on stdout, the JSON goes to stderr.
    let o = run(&["decompress", &p("a.zst"), "-o", "-", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, fs::read(p("a")).unwrap());
    let v: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(v["diff_bytes"], len);
    // And so for compress.
    let o = run(&["compress", &p("a"), "-o", "-", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(v["compressed_bytes"], o.stdout.len() as u64);
}

/// Ceph 16's 8-byte `p` length field, in every v2 diff it writes: one note in human output,
/// each listed in JSON.
#[test]
fn the_ceph16_p_length_warning_is_one_note() {
    let v2 = env!("CARGO_MANIFEST_DIR").to_string() + "/testdata/real/img64k/v2/";
    let files: Vec<String> = ["full_v1.diff", "v1_v2.diff", "v2_v3.diff"]
        .iter()
        .map(|f| v2.clone() + f)
        .collect();
    let f: Vec<&str> = files.iter().map(String::as_str).collect();
    let note = "note: 3 files have Ceph 16's 8-byte 'p' length field";
    let per_file = "as written by Ceph 16";
    let check = |what: &str, text: &str| {
        assert_eq!(text.matches(note).count(), 1, "{what}: {text}");
        assert!(!text.contains(per_file), "{what}: {text}");
        assert!(!text.contains("warning"), "{what}: {text}");
    };

    let o = run(&[&["inspect"], &f[..]].concat());
    assert!(o.status.success());
    check("inspect", &String::from_utf8_lossy(&o.stdout));
    let o = run(&[&["inspect", "--json"], &f[..]].concat());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for r in v["files"].as_array().unwrap() {
        let w = &r["diffs"][0]["warnings"][0];
        assert_eq!(w["kind"]["kind"], "length_mismatch", "{r}");
    }

    let o = run(&[&["verify"], &f[..]].concat());
    assert!(o.status.success());
    check("verify", &String::from_utf8_lossy(&o.stdout));
    let o = run(&[&["verify", "--json"], &f[..]].concat());
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(text.matches(per_file).count(), 3, "{text}");

    let dir = tempfile::tempdir().unwrap();
    let out = s(&dir.path().join("m"));
    let o = run(&[&["merge"], &f[..], &["-o", &out]].concat());
    assert!(o.status.success());
    check("merge", &stderr(&o));
    let out = s(&dir.path().join("m2"));
    let o = run(&[&["merge", "--json"], &f[..], &["-o", &out]].concat());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["warnings"].as_array().unwrap().len(), 3, "{v}");
}

/// "No snapshot" has one spelling in every message: `(full)` for the start of a full diff,
/// `(HEAD)` for the end of a diff to the image HEAD.
#[test]
fn no_snapshot_is_spelled_the_same_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A full diff to the image HEAD, applied; then a diff from 's1' refused by the target.
    let meta = Metadata {
        image_size: Some(1 << 20),
        ..Metadata::default()
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    w.write_data(0, &[1; 4096]).unwrap();
    let head = d.join("head.diff");
    fs::write(&head, w.finish().unwrap()).unwrap();
    let next = d.join("next.diff");
    fs::write(&next, diff(Some("s1"), "s2", 2)).unwrap();
    let img = d.join("img");
    let o = run(&["apply", &s(&head), "--to", &s(&img), "--create"]);
    assert!(o.status.success(), "{o:?}");
    let o = run(&["apply", &s(&next), "--to", &s(&img)]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("holds (HEAD)"), "{e}");
    // inspect says the same.
    let o = run(&["inspect", &s(&head)]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("from (full)") && out.contains("to (HEAD)"),
        "{out}"
    );
    for text in [e, out.into_owned()] {
        assert!(!text.contains("none") && !text.contains(" - "), "{text}");
    }
}

/// `-f` is short for `--force` wherever `--force` replaces an existing output.
#[test]
fn dash_f_replaces_an_output() {
    let real = |n: &str| format!("{}/testdata/real/img64k/{n}", env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let (a, b) = (real("full_v1.diff"), real("v1_v2.diff"));
    let cases: Vec<Vec<String>> = vec![
        vec![
            "merge".into(),
            a.clone(),
            b.clone(),
            "-o".into(),
            d("m.diff"),
        ],
        vec!["compress".into(), a.clone(), "-o".into(), d("a.zst")],
        vec!["decompress".into(), d("a.zst"), "-o".into(), d("a.diff")],
        vec![
            "apply".into(),
            a.clone(),
            "--to".into(),
            d("raw"),
            "--create".into(),
        ],
        vec![
            "create".into(),
            "--from".into(),
            d("raw"),
            "-o".into(),
            d("c.diff"),
        ],
    ];
    for args in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        assert!(run(&a).status.success(), "{a:?}");
        if a[0] != "apply" {
            assert_eq!(run(&a).status.code(), Some(2), "{a:?} replaced its output");
        }
        let o = run(&[&a[..], &["-f"]].concat());
        assert!(o.status.success(), "{a:?} -f: {}", stderr(&o));
    }
}

/// A chain `s1` (full) .. `s{n}` in `dir`, named `vm@sK.diff` (a shell sorts `s10` before
/// `s2`); the files in shell order.
fn shell_chain(dir: &Path, n: u8) -> Vec<String> {
    for k in 1..=n {
        let from = (k > 1).then(|| format!("s{}", k - 1));
        fs::write(
            dir.join(format!("vm@s{k}.diff")),
            diff(from.as_deref(), &format!("s{k}"), k),
        )
        .unwrap();
    }
    let mut files: Vec<String> = (1..=n)
        .map(|k| s(&dir.join(format!("vm@s{k}.diff"))))
        .collect();
    files.sort();
    files
}

#[test]
fn merge_sort_orders_a_shell_glob_by_the_headers() {
    let dir = tempfile::tempdir().unwrap();
    let files = shell_chain(dir.path(), 11);
    let out = s(&dir.path().join("out.diff"));
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v = vec!["merge".to_string()];
        v.extend(files.iter().cloned());
        v.extend(["-o".to_string(), out.clone()]);
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run_v = |v: &[String]| run(&v.iter().map(String::as_str).collect::<Vec<_>>());
    // Without --sort: refused, and the message says what to do.
    let o = run_v(&args(&[]));
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("out of order") && e.contains("--sort"), "{e}");
    assert!(!e.contains("force"), "{e}");
    // With --sort: merged into s0..s11, as the ordered files give.
    let o = run_v(&args(&["--sort", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["from_snap"], serde_json::Value::Null);
    assert_eq!(v["to_snap"], "s11");
    assert_eq!(v["inputs"], 11);
    let mut ordered: Vec<String> = (1..=11)
        .map(|k| s(&dir.path().join(format!("vm@s{k}.diff"))))
        .collect();
    let want = s(&dir.path().join("want.diff"));
    ordered.splice(0..0, ["merge".to_string()]);
    ordered.extend(["-o".to_string(), want.clone()]);
    let o = run_v(&ordered);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read(&out).unwrap(), fs::read(&want).unwrap());
}

#[test]
fn a_missing_link_is_named_and_nothing_dangerous_suggested() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = shell_chain(dir.path(), 5);
    let gone = s(&dir.path().join("vm@s3.diff"));
    files.retain(|f| *f != gone);
    fs::remove_file(&gone).unwrap();
    let out = s(&dir.path().join("out.diff"));
    // In chain order, and with --sort: the link s2 -> s3 is named.
    let mut ordered = files.clone();
    ordered.sort_by_key(|f| f.len());
    for (extra, list) in [(None, &ordered), (Some("--sort"), &files)] {
        let mut args: Vec<&str> = vec!["merge"];
        args.extend(list.iter().map(String::as_str));
        args.extend(["-o", &out]);
        args.extend(extra);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
        let e = stderr(&o);
        assert!(e.contains("missing link: 's2' -> 's3'"), "{extra:?}: {e}");
        assert!(!e.contains("force") && !e.contains("assume"), "{e}");
        assert!(!Path::new(&out).exists());
    }
    // The removed flag is refused with what to do instead.
    let mut args: Vec<&str> = vec!["merge"];
    args.extend(ordered.iter().map(String::as_str));
    args.extend(["-o", &out, "--force-chain"]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--assume-renamed OLD=NEW"),
        "{}",
        stderr(&o)
    );
    assert!(!Path::new(&out).exists());
    // A rename that matches no link is refused, not ignored.
    let mut args: Vec<&str> = vec!["merge"];
    args.extend(ordered.iter().map(String::as_str));
    args.extend([
        "-o",
        &out,
        "--assume-renamed",
        "s2=s3",
        "--assume-renamed",
        "s9=s1",
    ]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("s9=s1 matches no link"),
        "{}",
        stderr(&o)
    );
    assert!(!Path::new(&out).exists());
    // A declared rename lets the one link through, with a warning and in the JSON report.
    let mut args: Vec<&str> = vec!["merge"];
    args.extend(ordered.iter().map(String::as_str));
    args.extend(["-o", &out, "--assume-renamed", "s2=s3", "--json"]);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["renames"][0]["old"], "s2");
    assert_eq!(v["renames"][0]["new"], "s3");
    assert_eq!(v["renames"].as_array().unwrap().len(), 1);
}

#[test]
fn merge_prints_a_one_line_summary_unless_quiet() {
    let dir = setup();
    let p = |n: &str| s(&dir.path().join(n));
    let o = run(&["merge", &p("a"), &p("b"), "-o", &p("ab")]);
    assert!(o.status.success());
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("merged 2 input(s), (full) -> 'b'") && e.contains(&p("ab")),
        "{e}"
    );
    assert!(o.stdout.is_empty());
    let o = run(&["merge", &p("a"), &p("b"), "-o", &p("ab2"), "-q"]);
    assert!(o.status.success());
    assert!(o.stderr.is_empty() && o.stdout.is_empty(), "{}", stderr(&o));
}

/// Several bad inputs: each one's problem is reported, not only the first one's.
#[test]
fn every_bad_input_is_reported() {
    let dir = setup();
    let p = |n: &str| s(&dir.path().join(n));
    let gz: Vec<u8> = [0x1f, 0x8b, 8, 0].into_iter().chain(0..200u8).collect();
    fs::write(dir.path().join("x.gz"), gz).unwrap();
    fs::write(dir.path().join("empty"), b"").unwrap();
    let bad = [p("missing1"), p("x.gz"), p("empty"), p("missing2")];
    let mut merge: Vec<&str> = vec!["merge", &bad[0], &bad[1]];
    let (a, b) = (p("a"), p("b"));
    merge.extend([a.as_str(), &bad[2], &b, &bad[3]]);
    let out = p("out");
    merge.extend(["-o", &out]);
    let target = p("t.raw");
    let mut apply: Vec<&str> = vec!["apply"];
    apply.extend(bad.iter().map(String::as_str));
    apply.extend(["--to", &target, "--create"]);
    for args in [merge, apply] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr(&o);
        assert!(e.contains("4 inputs have problems"), "{e}");
        for (f, why) in [
            (&bad[0], "No such file"),
            (&bad[1], "gunzip -c FILE"),
            (&bad[2], "the input is empty"),
            (&bad[3], "No such file"),
        ] {
            let line = e
                .lines()
                .find(|l| l.contains(f.as_str()))
                .unwrap_or_default();
            assert!(line.contains(why), "{f}: {e}");
        }
        assert!(!Path::new(&out).exists() && !Path::new(&target).exists());
    }
}

/// An image stream given to merge says how to get its diffs out.
#[test]
fn an_image_stream_given_to_merge_points_at_explode() {
    let image =
        env!("CARGO_MANIFEST_DIR").to_string() + "/testdata/real/img64k/export-format-2.rbdimg";
    let dir = tempfile::tempdir().unwrap();
    let out = s(&dir.path().join("out"));
    let o = run(&["merge", &image, "-o", &out]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("rbddiff explode FILE -o DIR"),
        "{}",
        stderr(&o)
    );
}

/// `-o/--output` is the output of every command (apply's older `--to` still works), and
/// `create --raw` names the new image (its older `--from` still works): "from" is the older
/// side, as in `--from-snap`.
#[test]
fn outputs_are_dash_o_and_from_is_always_the_older_side() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("disk.raw");
    let mut img = vec![0u8; 1 << 20];
    img[4096..8192].fill(7);
    fs::write(&raw, &img).unwrap();
    let (d1, d2) = (t.path().join("a.diff"), t.path().join("b.diff"));
    for (flag, out) in [("--raw", &d1), ("--from", &d2)] {
        let o = run(&["create", flag, &s(&raw), "--to-snap", "s1", "-o", &s(out)]);
        assert!(o.status.success(), "{flag}: {}", stderr(&o));
    }
    assert_eq!(fs::read(&d1).unwrap(), fs::read(&d2).unwrap());
    for flag in ["-o", "--output", "--to"] {
        let target = t.path().join(format!("out{flag}.raw"));
        let o = run(&["apply", &s(&d1), "--create", flag, &s(&target)]);
        assert!(o.status.success(), "{flag}: {}", stderr(&o));
        assert_eq!(fs::read(&target).unwrap(), img, "{flag}");
    }
    let help = String::from_utf8(run(&["apply", "--help"]).stdout).unwrap();
    assert!(help.contains("-o, --output <RAW|DEVICE>"), "{help}");
    let help = String::from_utf8(run(&["create", "--help"]).stdout).unwrap();
    assert!(
        help.contains("--raw <RAW>") && !help.contains("--from <RAW>"),
        "{help}"
    );
}
