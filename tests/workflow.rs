//! Offline parts of the backup workflow: chain discovery in a directory and `prune`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::gen::{noise, path_str as s, relabel, write_sparse, Rng};
use common::manifest::sha256_file;
use common::prune_last as prune;
use rbddiff::apply::{apply_chain, ApplyOptions};
use rbddiff::create::{create_diff, CreateOptions};
use rbddiff::workflow::discover_chain;

/// Four image states of 2 MiB (the third grows to 3 MiB), with writes and zeroed regions.
fn states() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(5);
    let mut cur = vec![0u8; 2 << 20];
    let mut out = Vec::new();
    for k in 0..4 {
        if k == 2 {
            cur.resize(3 << 20, 0);
        }
        for _ in 0..12 {
            let at = rng.below(cur.len() as u64 - 70_000) as usize;
            let n = 1 + rng.below(65_536) as usize;
            if rng.below(4) == 0 {
                cur[at..at + n].fill(0);
            } else {
                cur[at..at + n].copy_from_slice(&noise(rng.next(), n));
            }
        }
        out.push(cur.clone());
    }
    out
}

/// Writes the chain of `states()` into `dir` for image `vm` under the given file names
/// (full diff first), with sidecars; files whose name ends in `.zst` are compressed. Also
/// writes the raw states as `raw{k}` in `work`.
fn write_chain(dir: &Path, work: &Path, names: &[&str]) -> Vec<PathBuf> {
    write_chain_of(dir, work, names, &states())
}

/// [`write_chain`] of the given image states.
fn write_chain_of(dir: &Path, work: &Path, names: &[&str], states: &[Vec<u8>]) -> Vec<PathBuf> {
    let mut prev: Option<PathBuf> = None;
    let mut out = Vec::new();
    for (k, data) in states.iter().enumerate().take(names.len()) {
        let raw = work.join(format!("raw{k}"));
        write_sparse(&raw, data);
        let path = dir.join(names[k]);
        let plain = work.join(format!("d{k}.diff"));
        let opts = CreateOptions {
            to_snap: Some(format!("s{k}")),
            base: prev.clone(),
            from_snap: prev.as_ref().map(|_| format!("s{}", k - 1)),
            force: true,
            ..CreateOptions::default()
        };
        create_diff(&raw, &s(&plain), &opts).unwrap();
        if names[k].ends_with(".zst") {
            let out = rbddiff_cli(&["compress", &s(&plain), "-o", &s(&path)]);
            assert!(out.status.success(), "{out:?}");
        } else {
            fs::copy(&plain, &path).unwrap();
        }
        rbddiff::sums::write_sums_for(&path).unwrap();
        prev = Some(raw);
        out.push(path);
    }
    out
}

fn rbddiff_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(args)
        .output()
        .expect("run rbddiff")
}

/// Every file in `dir` with its sha256 (but the directory's lock file and catalog).
fn contents(dir: &Path) -> BTreeMap<String, String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && !p.ends_with(rbddiff::dirlock::LOCK_NAME)
                && !p.ends_with(rbddiff::archive::catalog::NAME)
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                sha256_file(&p),
            )
        })
        .collect()
}

/// sha256 of the raw image the chain of `files` gives, applied with `rbddiff apply`.
fn applied(files: &[PathBuf], work: &Path, name: &str) -> String {
    let target = work.join(name);
    let files: Vec<String> = files.iter().map(|p| s(p)).collect();
    let opts = ApplyOptions {
        create: true,
        ..ApplyOptions::default()
    };
    apply_chain(&files, &target, &opts).unwrap();
    sha256_file(&target)
}

fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("backups");
    let work = t.path().join("work");
    fs::create_dir(&dir).unwrap();
    fs::create_dir(&work).unwrap();
    (t, dir, work)
}

fn snaps(chain: &[rbddiff::workflow::ChainFile]) -> Vec<(Option<String>, Option<String>)> {
    chain
        .iter()
        .map(|f| (f.from.clone(), f.to.clone()))
        .collect()
}

fn some(x: &str) -> Option<String> {
    Some(x.to_string())
}

#[test]
fn discovery_orders_by_headers_and_ignores_other_files() {
    let (_t, dir, work) = dirs();
    // Names sort in the opposite order of the chain: only the headers count.
    let files = write_chain(&dir, &work, &["vm@z.diff", "vm@y.diff.zst", "vm@x.diff"]);
    // Other images' files, unrelated files, sidecars, hidden and non-diff names.
    fs::copy(&files[0], dir.join("vm2@s0.full.diff")).unwrap();
    fs::copy(&files[1], dir.join("other.diff")).unwrap();
    fs::write(dir.join("vm@notes.txt"), "not a diff").unwrap();
    fs::write(dir.join(".vm@s9.full.diff.123.tmp"), "partial").unwrap();
    fs::create_dir(dir.join("vm@sub.diff")).unwrap();
    let chain = discover_chain(&dir, "vm").unwrap();
    assert_eq!(
        snaps(&chain),
        [
            (None, some("s0")),
            (some("s0"), some("s1")),
            (some("s1"), some("s2"))
        ]
    );
    assert_eq!(
        chain.iter().map(|f| f.path.clone()).collect::<Vec<_>>(),
        files
    );
    assert_eq!(
        chain.iter().map(|f| f.compressed).collect::<Vec<_>>(),
        [false, true, false]
    );
    assert_eq!(chain[2].size, 3 << 20);
    // The other image's chain is found on its own.
    assert_eq!(discover_chain(&dir, "vm2").unwrap().len(), 1);
    assert!(discover_chain(&dir, "none").unwrap().is_empty());
    assert!(discover_chain(&dir.join("missing"), "vm")
        .unwrap()
        .is_empty());
}

#[test]
fn discovery_reports_gaps_forks_and_bad_files() {
    let (_t, dir, work) = dirs();
    let files = write_chain(
        &dir,
        &work,
        &["vm@a.diff", "vm@b.diff", "vm@c.diff", "vm@d.diff"],
    );
    // A gap: the file from s1 to s2 is missing.
    let aside = work.join("aside.diff");
    fs::rename(&files[2], &aside).unwrap();
    let e = discover_chain(&dir, "vm").unwrap_err().to_string();
    assert!(
        e.contains("gap") && e.contains("vm@d.diff") && e.contains("'s2'"),
        "{e}"
    );
    fs::rename(&aside, &files[2]).unwrap();
    assert_eq!(discover_chain(&dir, "vm").unwrap().len(), 4);

    // A fork: a second file starting at s1.
    fs::copy(&files[2], dir.join("vm@fork.diff")).unwrap();
    let e = discover_chain(&dir, "vm").unwrap_err().to_string();
    assert!(
        e.contains("fork") && e.contains("vm@c.diff") && e.contains("vm@fork.diff"),
        "{e}"
    );
    assert!(e.contains("'s1'"), "{e}");
    fs::remove_file(dir.join("vm@fork.diff")).unwrap();

    // Two full diffs.
    fs::copy(&files[0], dir.join("vm@again.diff")).unwrap();
    let e = discover_chain(&dir, "vm").unwrap_err().to_string();
    assert!(
        e.contains("full diffs") && e.contains("vm@again.diff"),
        "{e}"
    );
    fs::remove_file(dir.join("vm@again.diff")).unwrap();

    // A file that is not a valid diff is named.
    fs::write(dir.join("vm@bad.diff"), b"rbd diff v1\nt").unwrap();
    let e = discover_chain(&dir, "vm").unwrap_err().to_string();
    assert!(e.contains("vm@bad.diff"), "{e}");
    fs::remove_file(dir.join("vm@bad.diff")).unwrap();

    // A chain may start with an incremental (restored onto an image holding its start).
    fs::remove_file(&files[0]).unwrap();
    let chain = discover_chain(&dir, "vm").unwrap();
    assert_eq!(chain[0].from, some("s0"));
    assert_eq!(chain.len(), 3);
}

#[test]
fn prune_merges_the_oldest_files_and_keeps_the_image() {
    let (_t, dir, work) = dirs();
    let names = [
        "vm@s0.full.diff",
        "vm@s0..s1.diff",
        "vm@s1..s2.diff.zst",
        "vm@s2..s3.diff",
    ];
    let files = write_chain(&dir, &work, &names);
    let want = applied(&files, &work, "orig.img");
    assert_eq!(want, sha256_file(&work.join("raw3")));
    let want2 = sha256_file(&work.join("raw2"));
    fs::write(dir.join("unrelated.txt"), "keep me").unwrap();
    fs::copy(&files[0], dir.join("vm2@s0.full.diff")).unwrap();

    // A dry run changes nothing.
    let before = contents(&dir);
    let r = prune(&dir, "vm", 2, true, &mut |_, _| {}).unwrap();
    assert!(r.dry_run);
    assert_eq!(r.merged.len(), 3);
    assert_eq!(contents(&dir), before);
    let out = rbddiff_cli(&[
        "prune",
        &s(&dir),
        "--image",
        "vm",
        "--keep",
        "2",
        "--dry-run",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("would merge 3 file(s)"));
    assert_eq!(contents(&dir), before);

    // Keeping as many files as the chain has: nothing to do.
    let r = prune(&dir, "vm", 4, false, &mut |_, _| {}).unwrap();
    assert!(r.output.is_none());
    assert_eq!(contents(&dir), before);

    // The real thing, through the CLI: three files become one compressed full diff (the
    // newest merged file is compressed).
    let out = rbddiff_cli(&["prune", &s(&dir), "--image", "vm", "--keep", "2", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let merged = dir.join("vm@s2.full.diff.zst");
    assert_eq!(r["output"], s(&merged));
    assert_eq!(r["deleted"].as_array().unwrap().len(), 6, "{r}");
    let after = contents(&dir);
    let mut expect: Vec<&str> = vec![
        "unrelated.txt",
        "vm2@s0.full.diff",
        "vm@s2..s3.diff",
        "vm@s2..s3.diff.sums",
        "vm@s2.full.diff.zst",
        "vm@s2.full.diff.zst.sums",
    ];
    expect.sort();
    assert_eq!(after.keys().map(String::as_str).collect::<Vec<_>>(), expect);
    // Untouched files are byte for byte the same.
    for k in ["unrelated.txt", "vm2@s0.full.diff", "vm@s2..s3.diff"] {
        assert_eq!(after[k], before[k], "{k}");
    }
    let chain = discover_chain(&dir, "vm").unwrap();
    assert_eq!(
        snaps(&chain),
        [(None, some("s2")), (some("s2"), some("s3"))]
    );
    assert!(chain[0].compressed);
    // The new chain gives the same images, at both snapshots.
    let paths: Vec<PathBuf> = chain.iter().map(|f| f.path.clone()).collect();
    assert_eq!(applied(&paths, &work, "pruned.img"), want);
    assert_eq!(applied(&paths[..1], &work, "pruned2.img"), want2);
    // And verifies, sidecars included.
    let out = rbddiff_cli(&[
        "verify",
        "--full",
        "--require-sums",
        &s(&dir.join("vm@s2.full.diff.zst")),
        &s(&dir.join("vm@s2..s3.diff")),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Again down to one file: a plain full diff to s3 (the newest merged file is plain).
    let r = prune(&dir, "vm", 1, false, &mut |_, _| {}).unwrap();
    assert_eq!(
        r.output.as_deref(),
        Some(s(&dir.join("vm@s3.full.diff")).as_str())
    );
    let chain = discover_chain(&dir, "vm").unwrap();
    assert_eq!(chain.len(), 1);
    assert_eq!(applied(&[chain[0].path.clone()], &work, "one.img"), want);
    assert!(prune(&dir, "vm", 0, false, &mut |_, _| {}).is_err());
}

#[test]
fn a_failed_prune_leaves_every_original_file() {
    let (_t, dir, work) = dirs();
    let names = ["vm@s0.full.diff", "vm@s0..s1.diff", "vm@s1..s2.diff"];
    let files = write_chain(&dir, &work, &names);

    // The merged file's name is taken (by a directory, which discovery skips).
    let before = contents(&dir);
    fs::create_dir(dir.join("vm@s1.full.diff")).unwrap();
    let e = prune(&dir, "vm", 2, false, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("vm@s1.full.diff"), "{e}");
    assert_eq!(contents(&dir), before);
    fs::remove_dir(dir.join("vm@s1.full.diff")).unwrap();

    // A payload byte of a merged file flipped: its sidecar catches it, nothing is changed.
    let mut bytes = fs::read(&files[1]).unwrap();
    let n = bytes.len();
    bytes[n - 200] ^= 0x40;
    fs::write(&files[1], &bytes).unwrap();
    let before = contents(&dir);
    let out = rbddiff_cli(&["prune", &s(&dir), "--image", "vm", "--keep", "2"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vm@s0..s1.diff") && err.contains("sums"),
        "{err}"
    );
    assert_eq!(contents(&dir), before);
    assert!(!dir.join("vm@s1.full.diff").exists());
    // No temporary file is left either.
    assert!(fs::read_dir(&dir).unwrap().all(|e| {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        !n.starts_with('.') || n == rbddiff::dirlock::LOCK_NAME
    }));
}

#[test]
fn restore_refuses_a_broken_chain_before_calling_rbd() {
    use std::os::unix::fs::PermissionsExt;
    let (t, dir, work) = dirs();
    let files = write_chain(&dir, &work, &["vm@a.diff", "vm@b.diff", "vm@c.diff"]);
    fs::remove_file(&files[1]).unwrap();
    // An `rbd` that only records that it was called.
    let bin = t.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let log = t.path().join("rbd.log");
    let rbd = bin.join("rbd");
    fs::write(
        &rbd,
        format!("#!/bin/sh\necho \"$@\" >> {}\nexit 1\n", log.display()),
    )
    .unwrap();
    fs::set_permissions(&rbd, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let before = contents(&dir);
    // A restore of a snapshot beyond the gap fails before rbd runs. (A backup goes to rbd:
    // its base is the newest restorable snapshot on the cluster, else a full; see
    // `backup_chooses_its_base_in_the_graph`.)
    let args = [
        "restore",
        &*s(&dir),
        "rbd/vm-copy",
        "--create",
        "--to",
        "s2",
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(args)
        .env("PATH", &path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains("gap") && err.contains("vm@c.diff"), "{err}");
    assert!(!log.exists(), "{args:?} called rbd");
    assert_eq!(contents(&dir), before);
    // With an intact (here: empty) directory, the same backup does reach rbd, whose failure
    // is passed on and leaves nothing.
    let empty = t.path().join("empty");
    let out = Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(["backup", "rbd/vm", &s(&empty)])
        .env("PATH", &path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("rbd snap ls"), "{err}");
    assert!(log.exists());
    assert!(!empty.exists());
}

/// A fake `rbd` in `bin` that appends each call's arguments (NUL-separated, one call a line)
/// to the returned log; `snap ls` prints `snaps` (JSON), `import-diff` stores its input in
/// `bin/snaps.json.imported`, `export-diff` fails, the rest succeed.
fn fake_rbd(bin: &Path, snaps: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(bin).unwrap();
    let log = bin.join("rbd.log");
    let json = bin.join("snaps.json");
    fs::write(&json, snaps).unwrap();
    let rbd = bin.join("rbd");
    fs::write(
        &rbd,
        format!(
            "#!/bin/sh\nprintf '%s\\0' \"$@\" >> '{log}'\necho >> '{log}'\ncase \"$*\" in\n  \
             *'snap ls'*) cat '{json}' ;;\n  *import-diff*) cat > '{json}.imported' ;;\n  *export-diff*) echo 'no export here' >&2; exit 1 ;;\n\
             esac\nexit 0\n",
            log = log.display(),
            json = json.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&rbd, fs::Permissions::from_mode(0o755)).unwrap();
    (rbd, log)
}

/// The calls recorded by [`fake_rbd`], each as its list of arguments.
fn calls(log: &Path) -> Vec<Vec<String>> {
    let Ok(text) = fs::read_to_string(log) else {
        return Vec::new();
    };
    text.lines()
        .map(|l| {
            l.split('\0')
                .filter(|a| !a.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

/// A full diff of a small image ending at snapshot `snap`, written as `dir/NAME`.
fn full_diff_to(dir: &Path, work: &Path, name: &str, snap: &str) -> PathBuf {
    let raw = work.join("small.raw");
    write_sparse(&raw, &noise(9, 1 << 16));
    let path = dir.join(name);
    let opts = CreateOptions {
        to_snap: Some(snap.to_string()),
        force: true,
        ..CreateOptions::default()
    };
    create_diff(&raw, &s(&path), &opts).unwrap();
    path
}

#[test]
fn names_that_rbd_could_take_for_options_are_refused_or_passed_as_one_token() {
    use rbddiff::workflow::{backup, restore, BackupOptions, Rbd, RestoreOptions};
    let (t, dir, work) = dirs();
    let (program, log) = fake_rbd(&t.path().join("bin"), "[]");
    let rbd = Rbd {
        program,
        conf: Some(PathBuf::from("/etc/ceph/c.conf")),
        id: Some("admin".into()),
    };
    let opts = BackupOptions {
        rbd: rbd.clone(),
        ..BackupOptions::default()
    };
    // A header naming an option as its end snapshot: refused before rbd runs, naming the file.
    let evil = full_diff_to(&dir, &work, "vm@evil.full.diff", "--conf=evil.conf");
    let e = backup("rbd/vm", &dir, &opts).unwrap_err().to_string();
    assert!(
        e.contains("--conf=evil.conf") && e.contains("vm@evil.full.diff"),
        "{e}"
    );
    assert!(calls(&log).is_empty(), "rbd ran: {:?}", calls(&log));
    // The same for a control character in the name.
    fs::remove_file(&evil).unwrap();
    full_diff_to(&dir, &work, "vm@evil.full.diff", "s1\n--log_file=/tmp/x");
    let e = backup("rbd/vm", &dir, &opts).unwrap_err().to_string();
    assert!(e.contains("control"), "{e}");
    assert!(calls(&log).is_empty());
    fs::remove_file(&evil).unwrap();

    // Option-like names given by the caller: the snapshot, the image spec, restore's image.
    let empty = t.path().join("empty");
    for (spec, snap) in [
        ("rbd/vm", Some("--log_file=/tmp/x")),
        ("rbd/vm", Some("-x")),
        ("rbd/vm", Some("a\0b")),
        ("--conf=x/vm", None),
        ("-p", None),
        ("rbd/vm\u{7f}", None),
    ] {
        let o = BackupOptions {
            snap: snap.map(String::from),
            ..opts.clone()
        };
        let e = backup(spec, &empty, &o).unwrap_err().to_string();
        assert!(e.contains("refused"), "{spec} {snap:?}: {e}");
    }
    let ro = RestoreOptions {
        rbd: rbd.clone(),
        ..RestoreOptions::default()
    };
    let e = restore(&dir, "--id=x", &ro, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    let ro2 = RestoreOptions {
        image: Some("--conf=y".into()),
        ..ro.clone()
    };
    let e = restore(&dir, "rbd/vm", &ro2, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(calls(&log).is_empty(), "rbd ran: {:?}", calls(&log));

    // A legal name that holds an option: it reaches rbd only inside `--from-snap=NAME`.
    let name = "s1 --conf=evil.conf";
    full_diff_to(&dir, &work, "vm@s1.full.diff", name);
    fs::write(
        t.path().join("bin/snaps.json"),
        format!("[{{\"id\": 4, \"name\": \"{name}\"}}]"),
    )
    .unwrap();
    let o = BackupOptions {
        snap: Some("s2".into()),
        ..opts.clone()
    };
    let e = backup("rbd/vm", &dir, &o).unwrap_err().to_string();
    assert!(e.contains("no export here"), "{e}");
    let calls = calls(&log);
    let export = calls
        .iter()
        .find(|c| c.iter().any(|a| a == "export-diff"))
        .unwrap_or_else(|| panic!("{calls:?}"));
    assert_eq!(
        export,
        &[
            "--conf=/etc/ceph/c.conf",
            "--id=admin",
            "export-diff",
            "--no-progress",
            &format!("--from-snap={name}"),
            "rbd/vm@s2",
            "-"
        ]
    );
    // Every call: the connection options as one token each, no other argument is an option
    // that takes a value from the next argument.
    for c in &calls {
        assert_eq!(c[..2], ["--conf=/etc/ceph/c.conf", "--id=admin"], "{c:?}");
        assert!(!c.iter().any(|a| a == "--from-snap" || a == "-c"), "{c:?}");
    }
    // The snapshot made for the failed backup is removed again.
    assert!(calls.iter().any(|c| c.ends_with(&[
        "rm".into(),
        "--no-progress".into(),
        "rbd/vm@s2".into()
    ]) && c.contains(&"snap".to_string())));
}

/// Runs `rbddiff ARGS` with `bin` first on `PATH`.
fn rbddiff_with_path(bin: &Path, args: &[&str]) -> std::process::Output {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(args)
        .env("PATH", path)
        .output()
        .unwrap()
}

/// `f()` once the directory it locks is free. A lock released in this (multi-threaded) test
/// process can stay held for a moment by a child that another test forked meanwhile and
/// that has not yet reached `exec` (which closes the inherited descriptor).
fn until_free<T>(f: impl FnMut() -> rbddiff::Result<T>) -> T {
    until_free_or_err(f).unwrap()
}

/// [`until_free`], returning an error other than a lock conflict.
fn until_free_or_err<T>(mut f: impl FnMut() -> rbddiff::Result<T>) -> rbddiff::Result<T> {
    for _ in 0..100 {
        match f() {
            Err(e) if e.to_string().contains("locked by") => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            r => return r,
        }
    }
    panic!("the directory stays locked")
}

#[test]
fn a_locked_directory_is_refused_at_once() {
    use rbddiff::dirlock::{lock, Command::Backup, Command::List, LOCK_NAME};
    let (t, dir, work) = dirs();
    write_chain(&dir, &work, &["vm@a.diff", "vm@b.diff", "vm@c.diff"]);
    let bin = t.path().join("bin");
    let (_, log) = fake_rbd(&bin, "[]");
    let me = std::process::id().to_string();
    let ds = s(&dir);
    let before = contents(&dir);
    {
        // Another run changing the directory: everyone is refused, naming it and the pid.
        let held = lock(&dir, true, Backup, None).unwrap();
        assert!(fs::read_to_string(dir.join(LOCK_NAME))
            .unwrap()
            .contains(&me));
        for args in [
            vec!["prune", &*ds, "--image", "vm", "--keep", "1"],
            vec!["prune", &*ds, "--image", "vm", "--keep", "1", "--dry-run"],
            vec!["backup", "rbd/vm", &*ds],
            vec!["restore", &*ds, "rbd/vm2"],
            vec!["verify", &*ds],
        ] {
            let out = rbddiff_with_path(&bin, &args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                err.contains(&format!("archive {ds} locked by PID {me} (backup, since ")),
                "{args:?}: {err}"
            );
        }
        let e = prune(&dir, "vm", 1, false, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("locked by"), "{e}");
        assert!(lock(&dir, false, List, None).is_err());
        drop(held);
    }
    assert!(calls(&log).is_empty(), "rbd ran: {:?}", calls(&log));
    assert_eq!(contents(&dir), before);
    let lock_file = dir.join(LOCK_NAME);
    {
        // Readers share the directory with each other, not with a writer.
        let _r = until_free(|| lock(&dir, false, List, None));
        let _r2 = lock(&dir, false, List, None).unwrap();
        assert!(lock(&dir, true, Backup, None).is_err());
        let out = rbddiff_with_path(&bin, &["verify", &ds]);
        assert!(out.status.success(), "{out:?}");
        for args in [
            vec!["prune", &*ds, "--image", "vm", "--keep", "1"],
            vec!["backup", "rbd/vm", &*ds],
        ] {
            let out = rbddiff_with_path(&bin, &args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains("locked by"), "{args:?}: {err}");
        }
        // A restore only reads: it gets as far as rbd.
        let out = rbddiff_with_path(&bin, &["restore", &ds, "rbd/vm2"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("locked by"), "{err}");
        assert!(!calls(&log).is_empty());
    }
    // Free again: prune runs.
    let r = until_free(|| prune(&dir, "vm", 1, false, &mut |_, _| {}));
    assert_eq!(r.merged.len(), 3);
    // The lock file is not followed when it is a symbolic link.
    fs::remove_file(&lock_file).unwrap();
    std::os::unix::fs::symlink(work.join("elsewhere"), &lock_file).unwrap();
    let e = prune(&dir, "vm", 1, false, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(!work.join("elsewhere").exists());
}

/// Makes `dir` unwritable for the test process and runs `f`: by its mode, or (for root) a
/// read-only bind mount in a private mount namespace around `rbddiff ARGS`. Returns `None`
/// when neither is possible here.
fn run_in_read_only(dir: &Path, bin: &Path, args: &[&str]) -> Option<std::process::Output> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
    let probe = dir.join("probe");
    let writable = fs::write(&probe, "x").is_ok();
    if !writable {
        let out = rbddiff_with_path(bin, args);
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        return Some(out);
    }
    fs::remove_file(&probe).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let d = s(dir);
    let script = format!(
        "mount --bind -o ro '{d}' '{d}' && touch '{d}/probe' 2>/dev/null && exit 99; \
         exec \"$0\" \"$@\""
    );
    let mut cmd_args = vec!["-m", "sh", "-c", &script, env!("CARGO_BIN_EXE_rbddiff")];
    cmd_args.extend_from_slice(args);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("unshare")
        .args(&cmd_args)
        .env("PATH", path)
        .output()
        .ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("unshare:") || err.contains("mount:") || out.status.code() == Some(99) {
        return None;
    }
    Some(out)
}

#[test]
fn backup_into_an_unwritable_directory_makes_no_snapshot() {
    let (t, dir, work) = dirs();
    let files = write_chain(&dir, &work, &["vm@a.diff", "vm@b.diff"]);
    let bin = t.path().join("bin");
    let (_, log) = fake_rbd(
        &bin,
        r#"[{"id": 1, "name": "s0"}, {"id": 2, "name": "s1"}]"#,
    );
    for with_lock_file in [false, true] {
        if with_lock_file {
            // A lock file left by an earlier run (it opens for writing even in a directory
            // whose mode forbids new files).
            let backup = rbddiff::dirlock::Command::Backup;
            drop(rbddiff::dirlock::lock(&dir, true, backup, None).unwrap());
        }
        let Some(out) = run_in_read_only(&dir, &bin, &["backup", "rbd/vm", &s(&dir)]) else {
            common::skipped("no way to make a directory read-only here");
            return;
        };
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(&s(&dir)), "{err}");
        let calls = calls(&log);
        assert!(
            !calls.iter().any(|c| c.contains(&"create".to_string())),
            "a snapshot was made: {calls:?}"
        );
        assert_eq!(discover_chain(&dir, "vm").unwrap().len(), files.len());
    }
}

/// A prune whose commit finds its output name taken meanwhile (another run committed it)
/// fails and leaves that file, and every original, as they are.
#[test]
fn a_prune_whose_output_name_is_taken_meanwhile_leaves_the_other_file() {
    let (_t, dir, work) = dirs();
    let names = ["vm@s0.full.diff", "vm@s0..s1.diff", "vm@s1..s2.diff"];
    write_chain(&dir, &work, &names);
    let before = contents(&dir);
    let out = dir.join("vm@s1.full.diff");
    let other = b"another run's file";
    let mut made = false;
    let e = prune(&dir, "vm", 2, false, &mut |_, _| {
        if !made {
            fs::write(&out, other).unwrap();
            fs::write(rbddiff::sums::sums_path(&out), "its sidecar").unwrap();
            made = true;
        }
    })
    .unwrap_err();
    assert!(made);
    assert!(e.to_string().contains("vm@s1.full.diff"), "{e}");
    assert_eq!(fs::read(&out).unwrap(), other);
    assert_eq!(
        fs::read_to_string(rbddiff::sums::sums_path(&out)).unwrap(),
        "its sidecar"
    );
    let mut after = contents(&dir);
    after.remove("vm@s1.full.diff");
    after.remove("vm@s1.full.diff.sums");
    assert_eq!(after, before);
}

/// The state a prune of the first three files of a four-file chain leaves when it is killed
/// after committing its output: the output (with its sidecar), its journal and every
/// original. Returns the journal and the superseded files.
fn half_done_prune(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let chain = discover_chain(dir, "vm").unwrap();
    let merged: Vec<String> = chain[..3].iter().map(|f| s(&f.path)).collect();
    let out = dir.join("vm@s2.full.diff");
    let journal = rbddiff::journal::write(
        dir,
        &rbddiff::journal::Journal {
            output: "vm@s2.full.diff".into(),
            more_outputs: Vec::new(),
            supersedes: chain[..3]
                .iter()
                .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
                .collect(),
        },
    )
    .unwrap();
    let mopts = rbddiff::merge::MergeOptions {
        sums: true,
        ..Default::default()
    };
    rbddiff::merge::merge_files_to(&merged, &s(&out), false, &mopts, None, &mut |_, _| {}).unwrap();
    (journal, chain[..3].iter().map(|f| f.path.clone()).collect())
}

#[test]
fn a_prune_killed_after_its_commit_is_finished_by_the_next_run() {
    use rbddiff::workflow::{backup, restore, BackupOptions, Rbd, RestoreOptions};
    let names = [
        "vm@s0.full.diff",
        "vm@s0..s1.diff",
        "vm@s1..s2.diff.zst",
        "vm@s2..s3.diff",
    ];
    // The next run is a prune, then a backup.
    for next in ["prune", "backup"] {
        let (t, dir, work) = dirs();
        write_chain(&dir, &work, &names);
        let want = sha256_file(&work.join("raw3"));
        let (journal, old) = half_done_prune(&dir);
        // Temporary files of killed runs of this image, and other hidden files.
        let stale = [
            ".vm@s2.full.diff.Ab12Cd.tmp",
            ".vm@s2..s3.diff.sums.x9Y8z7.tmp",
            "..vm@s2.full.diff.prune-journal.QwErTy.tmp",
        ];
        for n in stale {
            fs::write(dir.join(n), vec![0u8; 4096]).unwrap();
        }
        let others = [".vm2@s1.full.diff.Ab12Cd.tmp", ".keep.me", ".vm@notes.tmp"];
        for n in others {
            fs::write(dir.join(n), "not ours").unwrap();
        }
        // Everyone sees one chain: the output, then the newest file.
        let chain = discover_chain(&dir, "vm").unwrap();
        assert_eq!(
            snaps(&chain),
            [(None, some("s2")), (some("s2"), some("s3"))],
            "{chain:?}"
        );
        let out = rbddiff_cli(&["verify", "--full", "--require-sums", &s(&dir)]);
        assert!(out.status.success(), "{out:?}");
        let bin = t.path().join("bin");
        let (program, log) = fake_rbd(&bin, r#"[{"id": 1, "name": "s3"}]"#);
        let rbd = Rbd {
            program,
            ..Rbd::default()
        };
        let ro = RestoreOptions {
            rbd: rbd.clone(),
            ..Default::default()
        };
        let r = restore(&dir, "rbd/vm", &ro, &mut |_, _| {}).unwrap();
        assert_eq!(r.files.len(), 2, "{r:?}");
        let imported = bin.join("snaps.json.imported");
        assert_eq!(applied(&[imported], &work, "restored.img"), want);
        // A dry run changes nothing.
        let before = contents(&dir);
        prune(&dir, "vm", 1, true, &mut |_, _| {}).unwrap();
        assert_eq!(contents(&dir), before);

        // The next run holding the lock finishes the prune and removes the stale files.
        let cleaned = if next == "prune" {
            let r = prune(&dir, "vm", 2, false, &mut |_, _| {}).unwrap();
            assert!(r.output.is_none(), "{r:?}");
            r.cleaned
        } else {
            let o = BackupOptions {
                rbd,
                snap: Some("s4".into()),
                ..Default::default()
            };
            // The fake rbd's export fails, after the clean-up.
            let e = backup("rbd/vm", &dir, &o).unwrap_err();
            assert!(e.to_string().contains("no export here"), "{e}");
            assert!(calls(&log)
                .iter()
                .any(|c| c.contains(&"export-diff".into())));
            Vec::new()
        };
        let mut expect: Vec<String> = [
            "vm@s2..s3.diff",
            "vm@s2..s3.diff.sums",
            "vm@s2.full.diff",
            "vm@s2.full.diff.sums",
        ]
        .iter()
        .chain(others.iter())
        .map(|n| n.to_string())
        .collect();
        expect.sort();
        assert_eq!(contents(&dir).into_keys().collect::<Vec<_>>(), expect);
        for f in &old {
            assert!(!f.exists());
        }
        assert!(!journal.exists());
        if next == "prune" {
            let mut gone: Vec<PathBuf> = old
                .iter()
                .flat_map(|f| [f.clone(), rbddiff::sums::sums_path(f)])
                .chain(stale.iter().map(|n| dir.join(n)))
                .chain([journal.clone()])
                .collect();
            gone.sort();
            let mut cleaned: Vec<PathBuf> = cleaned.iter().map(PathBuf::from).collect();
            cleaned.sort();
            assert_eq!(cleaned, gone);
        }
        let chain = discover_chain(&dir, "vm").unwrap();
        let paths: Vec<PathBuf> = chain.iter().map(|f| f.path.clone()).collect();
        assert_eq!(applied(&paths, &work, "after.img"), want);
    }
}

#[test]
fn a_prune_killed_before_its_commit_leaves_a_stale_journal() {
    let (_t, dir, work) = dirs();
    let files = write_chain(&dir, &work, &["vm@a.diff", "vm@b.diff", "vm@c.diff"]);
    let journal = rbddiff::journal::write(
        &dir,
        &rbddiff::journal::Journal {
            output: "vm@s1.full.diff".into(),
            more_outputs: Vec::new(),
            supersedes: vec!["vm@a.diff".into(), "vm@b.diff".into()],
        },
    )
    .unwrap();
    fs::write(dir.join(".vm@s1.full.diff.k3J9aa.tmp"), vec![0u8; 1 << 16]).unwrap();
    // No output: the journal counts for nothing.
    assert_eq!(discover_chain(&dir, "vm").unwrap().len(), 3);
    let r = prune(&dir, "vm", 2, false, &mut |_, _| {}).unwrap();
    assert_eq!(r.merged.len(), 2);
    assert!(!journal.exists());
    assert!(!dir.join(".vm@s1.full.diff.k3J9aa.tmp").exists());
    assert!(!files[0].exists() && files[2].exists());
    let keys: Vec<String> = contents(&dir).into_keys().collect();
    assert_eq!(
        keys,
        [
            "vm@c.diff",
            "vm@c.diff.sums",
            "vm@s1.full.diff",
            "vm@s1.full.diff.sums"
        ]
    );
    // A journal that names a file outside the directory is refused, naming it.
    let bad = dir.join(".vm@x.diff.prune-journal");
    fs::write(
        &bad,
        r#"{"output": "vm@x.diff", "supersedes": ["../vm@c.diff"]}"#,
    )
    .unwrap();
    let e = discover_chain(&dir, "vm").unwrap_err().to_string();
    assert!(e.contains(".vm@x.diff.prune-journal"), "{e}");
}

/// An archive whose record index lies about its (intact) content does not stop restore or
/// prune: they read its content instead, and give the image the chain holds.
#[test]
fn a_lying_archive_index_falls_back_to_the_content() {
    use rbddiff::verify::{verify, VerifyOptions};
    use rbddiff::workflow::{restore, Rbd, RestoreOptions};
    let (t, dir, work) = dirs();
    let names = [
        "vm@s0.full.diff",
        "vm@s0..s1.diff",
        "vm@s1..s2.diff.zst",
        "vm@s2..s3.diff",
    ];
    let files = write_chain(&dir, &work, &names);
    let want = sha256_file(&work.join("raw3"));
    // Two payloads swap places in the index (a merge trusting it would copy them wrongly).
    let z = fs::read(&files[2]).unwrap();
    let lying = relabel(&z, |i| {
        let r = &mut i.records[0];
        let ws: Vec<usize> = (0..r.len()).filter(|&k| r[k].tag == b'w').collect();
        let (a, b) = (ws[0], ws[1]);
        let (pa, pb) = (r[a].pos, r[b].pos);
        (r[a].pos, r[b].pos) = (pb, pa);
    });
    assert_ne!(lying, z);
    fs::write(&files[2], &lying).unwrap();
    rbddiff::sums::write_sums_for(&files[2]).unwrap();
    let r = verify(&[s(&files[2])], &VerifyOptions::default()).unwrap();
    assert!(
        r.findings.iter().any(|f| f.check == "index"),
        "{:?}",
        r.findings
    );
    // restore streams the right image.
    let bin = t.path().join("bin");
    let (program, _log) = fake_rbd(&bin, "[]");
    let ro = RestoreOptions {
        rbd: Rbd {
            program,
            ..Rbd::default()
        },
        ..Default::default()
    };
    let r = restore(&dir, "rbd/vm", &ro, &mut |_, _| {}).unwrap();
    assert_eq!(r.files.len(), 4);
    let imported = bin.join("snaps.json.imported");
    assert_eq!(applied(&[imported], &work, "restored.img"), want);
    // prune merges it (the newest merged file is plain: so is the output).
    let r = prune(&dir, "vm", 1, false, &mut |_, _| {}).unwrap();
    assert_eq!(r.merged.len(), 4);
    let chain = discover_chain(&dir, "vm").unwrap();
    assert_eq!(chain.len(), 1);
    assert_eq!(applied(&[chain[0].path.clone()], &work, "pruned.img"), want);
}

/// The output of a half-done prune that does not verify is not trusted to finish it: the
/// files it would replace stay, and the next prune says why.
#[test]
fn a_half_done_prune_whose_output_is_damaged_deletes_nothing() {
    let (_t, dir, work) = dirs();
    write_chain(
        &dir,
        &work,
        &[
            "vm@s0.full.diff",
            "vm@s0..s1.diff",
            "vm@s1..s2.diff",
            "vm@s2..s3.diff",
        ],
    );
    let (journal, old) = half_done_prune(&dir);
    let out = dir.join("vm@s2.full.diff");
    let mut bytes = fs::read(&out).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 1;
    fs::write(&out, &bytes).unwrap();
    let before = contents(&dir);
    let e = prune(&dir, "vm", 1, false, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("interrupted prune") && e.contains("vm@s2.full.diff") && e.contains("kept"),
        "{e}"
    );
    assert_eq!(contents(&dir), before);
    assert!(journal.exists() && old.iter().all(|f| f.exists()));
}

/// A backup file takes the permission bits of the chain's newest file (a `chmod 640`
/// archive stays 640); the first file of a chain is 0600, whatever the umask.
#[test]
fn backup_files_take_the_mode_of_the_chain() {
    use rbddiff::workflow::{backup, BackupOptions, Rbd};
    use std::os::unix::fs::PermissionsExt;
    let (t, dir, work) = dirs();
    let bin = t.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    // An rbd whose export-diff writes a prepared diff: the full one, or s0 -> s1.
    let full = full_diff_to(&work, &work, "full.diff", "s0");
    let raw1 = work.join("s1.raw");
    write_sparse(&raw1, &noise(10, 1 << 16));
    let inc = work.join("inc.diff");
    let o = CreateOptions {
        to_snap: Some("s1".into()),
        base: Some(work.join("small.raw")),
        from_snap: Some("s0".into()),
        ..CreateOptions::default()
    };
    create_diff(&raw1, &s(&inc), &o).unwrap();
    let snaps = bin.join("snaps.json");
    let rbd = bin.join("rbd");
    fs::write(
        &rbd,
        format!(
            "#!/bin/sh\ncase \"$*\" in\n  *'snap ls'*) cat '{j}' ;;\n  *from-snap*) cat '{inc}' ;;\n  \
             *export-diff*) cat '{full}' ;;\nesac\nexit 0\n",
            j = snaps.display(),
            inc = inc.display(),
            full = full.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&rbd, fs::Permissions::from_mode(0o755)).unwrap();
    let opts = |snap: &str| BackupOptions {
        snap: Some(snap.into()),
        rbd: Rbd {
            program: rbd.clone(),
            conf: None,
            id: None,
        },
        ..BackupOptions::default()
    };
    let mode = |p: &str| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    fs::write(&snaps, "[]").unwrap();
    let r = until_free(|| backup("rbd/vm", &dir, &opts("s0")));
    assert_eq!(mode(&r.file), 0o600, "a new chain");
    assert_eq!(mode(&r.sums), 0o600);
    fs::set_permissions(&r.file, fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(&snaps, r#"[{"id": 4, "name": "s0"}]"#).unwrap();
    let r = until_free(|| backup("rbd/vm", &dir, &opts("s1")));
    assert_eq!(r.from_snap.as_deref(), Some("s0"));
    assert_eq!(mode(&r.file), 0o640, "the chain's mode");
    assert_eq!(mode(&r.sums), 0o640);
}

/// Four states of a 1 MiB image whose data compresses well (runs of one byte value).
fn compressible_states() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(17);
    let mut cur = vec![0u8; 1 << 20];
    let mut out = Vec::new();
    for k in 0..4u8 {
        let n = if k == 0 { 40 } else { 6 };
        for j in 0..n {
            let at = rng.below(cur.len() as u64 - 70_000) as usize;
            let len = 1 + rng.below(65_536) as usize;
            cur[at..at + len].fill(1 + k * 50 + j);
        }
        out.push(cur.clone());
    }
    out
}

/// A restore through a fake rbd: the report and the sha256 of the image it imported.
fn restore_offline(
    dir: &Path,
    bin: &Path,
    work: &Path,
    to: Option<&str>,
) -> rbddiff::Result<(rbddiff::workflow::RestoreReport, String)> {
    use rbddiff::workflow::{restore, Rbd, RestoreOptions};
    let (program, _log) = fake_rbd(bin, "[]");
    let imported = bin.join("snaps.json.imported");
    let _ = fs::remove_file(&imported);
    let ro = RestoreOptions {
        to: to.map(String::from),
        rbd: Rbd {
            program,
            ..Rbd::default()
        },
        ..Default::default()
    };
    let r = restore(dir, "rbd/vm", &ro, &mut |_, _| {})?;
    let img = format!("img-{}", r.to_snap.clone().unwrap_or_default());
    let _ = fs::remove_file(work.join(&img));
    let _ = fs::remove_file(rbddiff::apply::state_path(&work.join(&img)));
    let sha = applied(&[imported], work, &img);
    Ok((r, sha))
}

fn flip_payload_byte(p: &Path) {
    let mut bytes = fs::read(p).unwrap();
    let n = bytes.len();
    bytes[n - 200] ^= 0x40;
    fs::write(p, &bytes).unwrap();
}

/// A periodic full beside a chain: restore takes the path of fewer bytes, goes round a
/// damaged file on it (through the full), and fails naming the broken files only when no
/// healthy path is left.
#[test]
fn restore_takes_the_cheapest_healthy_path_through_a_periodic_full() {
    let (t, dir, work) = dirs();
    let bin = t.path().join("bin");
    let states = compressible_states();
    // The chain is compressed (but for one small file), the periodic full (to s2) is not:
    // the chain reads fewer bytes.
    let names = [
        "vm@s0.full.diff.zst",
        "vm@s0..s1.diff",
        "vm@s1..s2.diff.zst",
        "vm@s2..s3.diff.zst",
    ];
    let chain = write_chain_of(&dir, &work, &names, &states);
    let full2 = dir.join("vm@s2.full.diff");
    let o = CreateOptions {
        to_snap: Some("s2".into()),
        ..CreateOptions::default()
    };
    create_diff(&work.join("raw2"), &s(&full2), &o).unwrap();
    rbddiff::sums::write_sums_for(&full2).unwrap();
    let size = |p: &PathBuf| fs::metadata(p).unwrap().len();
    let chain_bytes: u64 = chain[..3].iter().map(size).sum();
    assert!(chain_bytes < size(&full2), "{chain_bytes} {}", size(&full2));
    let want = |k: usize| sha256_file(&work.join(format!("raw{k}")));
    // Default: the newest snapshot (s3), through the chain; the full is passed over.
    let (r, got) = restore_offline(&dir, &bin, &work, None).unwrap();
    assert_eq!(r.to_snap.as_deref(), Some("s3"));
    assert_eq!(got, want(3));
    assert_eq!(r.files, chain.iter().map(|p| s(p)).collect::<Vec<_>>());
    assert_eq!(r.bytes_read, chain_bytes + size(&chain[3]));
    assert_eq!(r.passed_over.len(), 1, "{:?}", r.passed_over);
    assert_eq!(r.passed_over[0].file, s(&full2));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);

    // A damaged middle incremental: the restore goes through the periodic full.
    flip_payload_byte(&chain[1]);
    let (r, got) = restore_offline(&dir, &bin, &work, None).unwrap();
    assert_eq!(got, want(3));
    assert_eq!(r.files, [s(&full2), s(&chain[3])]);
    let bad: Vec<_> = r
        .passed_over
        .iter()
        .filter(|p| p.file == s(&chain[1]))
        .collect();
    assert!(
        bad.len() == 1 && bad[0].reason.contains("sums"),
        "{:?}",
        r.passed_over
    );
    // s1 is only reachable through the damaged file: the error names it.
    let e = restore_offline(&dir, &bin, &work, Some("s1"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("vm@s0..s1.diff") && e.contains("sums"), "{e}");
    // s0 still restores, through the CLI with --json too.
    let (r, got) = restore_offline(&dir, &bin, &work, Some("s0")).unwrap();
    assert_eq!((r.files.len(), got), (1, want(0)));

    // The full truncated as well: no healthy path to s3 is left; the error names both.
    let bytes = fs::read(&full2).unwrap();
    fs::write(&full2, &bytes[..bytes.len() / 2]).unwrap();
    let e = restore_offline(&dir, &bin, &work, Some("s3"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vm@s0..s1.diff") && e.contains("vm@s2.full.diff"),
        "{e}"
    );
    // Without --to: the newest restorable snapshot, with a warning about the newer ones.
    let (r, got) = restore_offline(&dir, &bin, &work, None).unwrap();
    assert_eq!((r.to_snap.as_deref(), got), (Some("s0"), want(0)));
    assert!(r.warnings[0].contains("'s3'"), "{:?}", r.warnings);
    // The CLI's report lists the files used and passed over.
    let (program, _) = fake_rbd(&bin, "[]");
    let path = format!(
        "{}:{}",
        program.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(["restore", &s(&dir), "rbd/vm", "--json"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["files"][0], s(&chain[0]));
    let over: Vec<&str> = j["passed_over"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["file"].as_str().unwrap())
        .collect();
    assert!(over.contains(&s(&full2).as_str()), "{j}");
}

/// A fake `rbd` in `bin` whose `export-diff` writes a real diff (`rbddiff create`) of the raw
/// image `raw` to the snapshot asked for (an incremental when `--from-snap=` is given); `snap
/// ls` prints `bin/snaps.json`, `info` `bin/info.json`; `--version` and `--show-config-value
/// fsid` print a version and an fsid; every call is logged as by [`fake_rbd`].
fn exporting_rbd(bin: &Path, raw: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(bin).unwrap();
    let log = bin.join("rbd.log");
    let rbd = bin.join("rbd");
    fs::write(
        &rbd,
        format!(
            "#!/bin/sh\nprintf '%s\\0' \"$@\" >> '{log}'\necho >> '{log}'\ncase \"$*\" in\n  \
             *'snap ls'*) cat '{bin}/snaps.json' ;;\n  info*) cat '{bin}/info.json' ;;\n  \
             --version) echo 'ceph version 99.0.1 (fake) test (stable)' ;;\n  \
             --show-config-value*) echo 5c9c5fc2-d960-477c-ab60-c9d8b2c68f59 ;;\n  *export-diff*)\n    from=; spec=\n    \
             for a in \"$@\"; do case \"$a\" in --from-snap=*) from=\"${{a#--from-snap=}}\" ;; \
             *@*) spec=\"$a\" ;; esac; done\n    snap=\"${{spec#*@}}\"\n    if [ -n \"$from\" ]; \
             then exec '{exe}' create --from '{raw}' --to-snap \"$snap\" --base '{raw}' \
             --from-snap \"$from\" -o - 2>/dev/null\n    else exec '{exe}' create --from '{raw}' \
             --to-snap \"$snap\" -o - 2>/dev/null; fi ;;\nesac\nexit 0\n",
            log = log.display(),
            bin = bin.display(),
            exe = env!("CARGO_BIN_EXE_rbddiff"),
            raw = raw.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&rbd, fs::Permissions::from_mode(0o755)).unwrap();
    (rbd, log)
}

/// The base of an incremental is the newest snapshot that exists on the cluster and is
/// restorable in the archive; `--full` makes a periodic full beside the chain; with no such
/// snapshot, or when `--full-every` is reached, the backup is full and says why.
#[test]
fn backup_chooses_its_base_in_the_graph() {
    use rbddiff::workflow::{backup, BackupOptions, Rbd};
    let (t, dir, work) = dirs();
    let bin = t.path().join("bin");
    let raw = work.join("img.raw");
    write_sparse(&raw, &noise(3, 1 << 16));
    let (program, _log) = exporting_rbd(&bin, &raw);
    // The cluster's snapshots (name, id) before each backup.
    let on_cluster = |names: &[(&str, u64)]| {
        let v: Vec<serde_json::Value> = names
            .iter()
            .map(|(n, id)| serde_json::json!({"id": id, "name": n}))
            .collect();
        fs::write(bin.join("snaps.json"), serde_json::to_string(&v).unwrap()).unwrap();
    };
    let run = |snap: &str, full: bool, every: Option<usize>| {
        let o = BackupOptions {
            snap: Some(snap.into()),
            full,
            full_every: every,
            rbd: Rbd {
                program: program.clone(),
                ..Rbd::default()
            },
            ..BackupOptions::default()
        };
        until_free(|| backup("rbd/vm", &dir, &o))
    };
    on_cluster(&[]);
    let r = run("s0", false, None);
    assert_eq!(r.from_snap, None);
    assert!(r.full_reason.unwrap().contains("no backup"));
    on_cluster(&[("s0", 1)]);
    let r = run("s1", false, None);
    assert_eq!((r.from_snap.as_deref(), r.full_reason), (Some("s0"), None));
    // A periodic full into an archive with a chain.
    on_cluster(&[("s0", 1), ("s1", 2)]);
    let r = run("s2", true, None);
    assert_eq!(r.from_snap, None);
    assert!(r.file.ends_with("vm@s2.full.diff"), "{}", r.file);
    on_cluster(&[("s0", 1), ("s1", 2), ("s2", 3)]);
    let r = run("s3", false, None);
    assert_eq!(r.from_snap.as_deref(), Some("s2"));
    // s3 is gone from the cluster: the base is s2, the newest restorable one left.
    on_cluster(&[("s1", 2), ("s2", 3)]);
    let r = run("s4", false, None);
    assert_eq!(r.from_snap.as_deref(), Some("s2"));
    // --full-every 3: the path to s4 (s2's full, s2..s4) holds 2 files: one more incremental.
    on_cluster(&[("s2", 3), ("s4", 5)]);
    let r = run("s5", false, Some(3));
    assert_eq!(r.from_snap.as_deref(), Some("s4"));
    on_cluster(&[("s2", 3), ("s4", 5), ("s5", 6)]);
    let r = run("s6", false, Some(3));
    assert_eq!(r.from_snap, None);
    assert!(r.full_reason.unwrap().contains("--full-every 3"));
    // No restorable snapshot of the archive on the cluster: a full, saying why.
    on_cluster(&[("other", 9)]);
    let r = run("s7", false, None);
    assert_eq!(r.from_snap, None);
    assert!(r.full_reason.unwrap().contains("exists on rbd/vm"));
    // Every snapshot restores to the image exported.
    let g = rbddiff::archive::graph::discover(&dir, "vm").unwrap();
    let restorable: Vec<String> = g
        .restorable(&Default::default())
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(restorable, ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"]);
}

/// `n` states of a 1 MiB image, each with a few random writes.
fn small_states(n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(23);
    let mut cur = vec![0u8; 1 << 20];
    (0..n)
        .map(|_| {
            for _ in 0..4 {
                let at = rng.below(cur.len() as u64 - 40_000) as usize;
                let len = 1 + rng.below(32_768) as usize;
                cur[at..at + len].copy_from_slice(&noise(rng.next(), len));
            }
            cur.clone()
        })
        .collect()
}

/// The sha256 of snapshot `snap` of `vm` in `dir` restored offline through the path restore
/// chooses, and that path's file names.
fn restore_snap(dir: &Path, work: &Path, snap: &str) -> (String, Vec<String>) {
    let g = rbddiff::archive::graph::discover(dir, "vm").unwrap();
    let c = g.choose(Some(snap)).unwrap();
    let files: Vec<PathBuf> = c
        .path
        .iter()
        .map(|&i| g.edges[i].file.path.clone())
        .collect();
    let img = format!("snap-{snap}.img");
    let _ = fs::remove_file(work.join(&img));
    let _ = fs::remove_file(rbddiff::apply::state_path(&work.join(&img)));
    let names = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    (applied(&files, work, &img), names)
}

/// Restorable snapshots of `vm` in `dir`, oldest first.
fn restorable(dir: &Path) -> Vec<String> {
    let g = rbddiff::archive::graph::discover(dir, "vm").unwrap();
    g.restorable(&Default::default())
        .into_iter()
        .map(|r| r.0)
        .collect()
}

/// prune on a graph: a chain s0..s5 with a periodic full at s3 keeps the newest N
/// restorable snapshots; the path to the oldest kept one becomes one full diff, fulls and
/// incrementals from it on stay (the periodic full still stands in for a damaged
/// incremental), everything older goes, and every kept snapshot restores to its state.
#[test]
fn prune_keeps_the_newest_snapshots_of_a_graph_with_a_periodic_full() {
    let (_t, dir, work) = dirs();
    let states = small_states(6);
    let names = [
        "vm@s0.full.diff",
        "vm@s0..s1.diff",
        "vm@s1..s2.diff.zst",
        "vm@s2..s3.diff",
        "vm@s3..s4.diff",
        "vm@s4..s5.diff",
    ];
    let chain = write_chain_of(&dir, &work, &names, &states);
    let full3 = dir.join("vm@s3.full.diff");
    let o = CreateOptions {
        to_snap: Some("s3".into()),
        ..CreateOptions::default()
    };
    create_diff(&work.join("raw3"), &s(&full3), &o).unwrap();
    rbddiff::sums::write_sums_for(&full3).unwrap();
    fs::copy(&chain[0], dir.join("vm2@s0.full.diff")).unwrap();
    rbddiff::sums::write_sums_for(&dir.join("vm2@s0.full.diff")).unwrap();
    let want = |k: usize| sha256_file(&work.join(format!("raw{k}")));
    // verify DIR checks the graph: the fork is no problem.
    let out = rbddiff_cli(&["verify", "--full", "--require-sums", &s(&dir)]);
    assert!(out.status.success(), "{out:?}");

    // Keep 4: s2..s5. The path to s2 (three files, the last compressed) becomes one
    // compressed full diff, with the time of s2's backup; the periodic full at s3 stays.
    let mtime = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    // (Keep-last is by backup time, here the files' times: s0..s5 a minute apart, s2 at
    // `old`, the periodic full at s3 as old as the incremental to s3.)
    let minute = std::time::Duration::from_secs(60);
    for (k, p) in chain.iter().chain([&full3]).enumerate() {
        let k = if k == chain.len() { 3 } else { k as u32 };
        let at = if k < 2 {
            old - minute * (2 - k)
        } else {
            old + minute * (k - 2)
        };
        let f = fs::File::options().write(true).open(p).unwrap();
        f.set_modified(at).unwrap();
    }
    let r = until_free(|| prune(&dir, "vm", 4, false, &mut |_, _| {}));
    assert_eq!(mtime(&dir.join("vm@s2.full.diff.zst")), old);
    assert_eq!(r.kept_snapshots, ["s2", "s3", "s4", "s5"], "{r:?}");
    assert_eq!(
        r.merged,
        chain[..3].iter().map(|p| s(p)).collect::<Vec<_>>()
    );
    assert_eq!(r.output, Some(s(&dir.join("vm@s2.full.diff.zst"))));
    let mut merged = r.merged.clone();
    merged.sort();
    assert_eq!(r.delete, merged);
    assert_eq!(r.deleted.len(), 6);
    let mut expect = vec![
        "vm2@s0.full.diff",
        "vm2@s0.full.diff.sums",
        "vm@s2..s3.diff",
        "vm@s2..s3.diff.sums",
        "vm@s2.full.diff.zst",
        "vm@s2.full.diff.zst.sums",
        "vm@s3..s4.diff",
        "vm@s3..s4.diff.sums",
        "vm@s3.full.diff",
        "vm@s3.full.diff.sums",
        "vm@s4..s5.diff",
        "vm@s4..s5.diff.sums",
    ];
    expect.sort();
    assert_eq!(contents(&dir).into_keys().collect::<Vec<_>>(), expect);
    assert_eq!(restorable(&dir), ["s2", "s3", "s4", "s5"]);
    for k in 2..6 {
        assert_eq!(
            restore_snap(&dir, &work, &format!("s{k}")).0,
            want(k),
            "s{k}"
        );
    }
    assert_eq!(r.bytes_after, {
        let c = contents(&dir);
        c.keys()
            .filter(|n| n.starts_with("vm@") && !n.ends_with(".sums"))
            .map(|n| fs::metadata(dir.join(n)).unwrap().len())
            .sum::<u64>()
    });
    // The periodic full still stands in for a damaged incremental before it.
    let s23 = dir.join("vm@s2..s3.diff");
    let good = fs::read(&s23).unwrap();
    flip_payload_byte(&s23);
    let (sha, used) = restore_snap(&dir, &work, "s5");
    assert_eq!(sha, want(5));
    assert_eq!(
        used,
        ["vm@s3.full.diff", "vm@s3..s4.diff", "vm@s4..s5.diff"]
    );
    // prune does not rewrite a damaged archive, and says which file is damaged.
    let before = contents(&dir);
    let e = prune(&dir, "vm", 2, false, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("vm@s2..s3.diff") && e.contains("sums"), "{e}");
    assert_eq!(contents(&dir), before);
    fs::write(&s23, good).unwrap();
    // Its backup time (the file's time) is s3's again, not the rewrite's.
    let f = fs::File::options().write(true).open(&s23).unwrap();
    f.set_modified(old + minute).unwrap();

    // A dry run of keep 2 prints the plan and changes nothing.
    let (_, path4) = restore_snap(&dir, &work, "s4");
    let merge_line = format!("would merge {} file(s) (", path4.len());
    let before = contents(&dir);
    let out = rbddiff_cli(&[
        "prune",
        &s(&dir),
        "--image",
        "vm",
        "--keep",
        "2",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for w in [
        "keeping 2 restorable snapshot(s), dropping 2",
        "keep s4 (",
        "keep s5 (",
        "drop s2",
        "drop s3",
        merge_line.as_str(),
        "into ",
        "vm@s4.full.diff:",
        "would delete: ",
        "vm@s2.full.diff.zst",
        "bytes before",
        "(estimated)",
    ] {
        assert!(text.contains(w), "{w}: {text}");
    }
    assert_eq!(contents(&dir), before);
    // Keep 2: s4 and s5. The cheapest path to s4 is merged into a full to s4; every file
    // before s4 goes, the older full and the periodic one too.
    let r = until_free(|| prune(&dir, "vm", 2, false, &mut |_, _| {}));
    assert_eq!(r.kept_snapshots, ["s4", "s5"]);
    let merged: Vec<String> = r
        .merged
        .iter()
        .map(|p| {
            Path::new(p)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(merged, path4);
    assert_eq!(r.output, Some(s(&dir.join("vm@s4.full.diff"))));
    assert_eq!(r.delete.len(), 4, "{r:?}");
    let expect = [
        "vm2@s0.full.diff",
        "vm2@s0.full.diff.sums",
        "vm@s4..s5.diff",
        "vm@s4..s5.diff.sums",
        "vm@s4.full.diff",
        "vm@s4.full.diff.sums",
    ];
    assert_eq!(contents(&dir).into_keys().collect::<Vec<_>>(), expect);
    assert_eq!(restorable(&dir), ["s4", "s5"]);
    for k in 4..6 {
        assert_eq!(
            restore_snap(&dir, &work, &format!("s{k}")).0,
            want(k),
            "s{k}"
        );
    }
    // Nothing more to do.
    let r = until_free(|| prune(&dir, "vm", 2, false, &mut |_, _| {}));
    assert!(r.output.is_none() && r.delete.is_empty(), "{r:?}");
}

/// verify DIR checks every file of each image's graph: a missing incremental makes the
/// files after it unreachable (named), though a periodic full still reaches later snapshots.
#[test]
fn verify_of_a_directory_reports_unreachable_files_of_the_graph() {
    let (_t, dir, work) = dirs();
    let states = small_states(5);
    let names = [
        "vm@s0.full.diff",
        "vm@s0..s1.diff",
        "vm@s1..s2.diff",
        "vm@s2..s3.diff",
        "vm@s3..s4.diff",
    ];
    let chain = write_chain_of(&dir, &work, &names, &states);
    let full3 = dir.join("vm@s3.full.diff");
    let o = CreateOptions {
        to_snap: Some("s3".into()),
        ..CreateOptions::default()
    };
    create_diff(&work.join("raw3"), &s(&full3), &o).unwrap();
    fs::copy(&chain[0], dir.join("vm2@s0.full.diff")).unwrap();
    let out = rbddiff_cli(&["verify", "--full", &s(&dir)]);
    assert!(out.status.success(), "{out:?}");
    fs::remove_file(&chain[1]).unwrap();
    let out = rbddiff_cli(&["verify", "--full", "--json", &s(&dir)]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad: Vec<&str> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "chain")
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    // s1..s2 starts at s1 (gone with s0..s1), s2..s3 at s2; s3..s4 is reached via the full.
    assert_eq!(bad, [s(&chain[2]), s(&chain[3])], "{j}");
}

/// `list` shows every restorable snapshot with its best path and bytes, the files no path
/// uses and the unhealthy ones; `status --max-age` exits 1 when the newest restorable
/// snapshot is older (here by the file's modification time: the names carry no time).
#[test]
fn list_and_status_of_an_archive() {
    let (_t, dir, work) = dirs();
    let states = compressible_states();
    let names = [
        "vm@s0.full.diff.zst",
        "vm@s0..s1.diff",
        "vm@s1..s2.diff.zst",
        "vm@s2..s3.diff.zst",
    ];
    let chain = write_chain_of(&dir, &work, &names, &states);
    let full2 = dir.join("vm@s2.full.diff");
    let o = CreateOptions {
        to_snap: Some("s2".into()),
        ..CreateOptions::default()
    };
    create_diff(&work.join("raw2"), &s(&full2), &o).unwrap();
    fs::write(dir.join("vm@junk.diff"), b"rbd diff v1\nt").unwrap();
    let size = |p: &PathBuf| fs::metadata(p).unwrap().len();
    let out = rbddiff_cli(&["list", &s(&dir), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let img = &j["images"][0];
    assert_eq!(img["image"], "vm");
    let snaps = img["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 4, "{j}");
    for (k, sn) in snaps.iter().enumerate() {
        assert_eq!(sn["name"], format!("s{k}"));
        let files: Vec<String> = chain[..=k].iter().map(|p| s(p)).collect();
        assert_eq!(sn["files"], serde_json::json!(files));
        assert_eq!(sn["bytes"], chain[..=k].iter().map(size).sum::<u64>());
        assert_eq!(sn["time_from"], "mtime");
    }
    assert_eq!(img["unused"], serde_json::json!([s(&full2)]));
    assert_eq!(img["unhealthy"][0]["file"], s(&dir.join("vm@junk.diff")));
    // Sidecar states: each chain file has one, the periodic full none, the junk is unread.
    let sums: BTreeMap<String, String> = img["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["file"].as_str().unwrap().into(),
                f["sums"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut want: BTreeMap<String, String> =
        chain.iter().map(|p| (s(p), "ok".to_string())).collect();
    want.insert(s(&full2), "missing".into());
    want.insert(s(&dir.join("vm@junk.diff")), "unchecked".into());
    assert_eq!(sums, want, "{j}");
    assert!(snaps.iter().all(|s| s["sums"] == "ok"), "{j}");
    let all: u64 = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".diff") || p.to_string_lossy().ends_with(".zst"))
        .map(|p| size(&p))
        .sum();
    assert_eq!(img["bytes"], all);
    let text = String::from_utf8_lossy(&rbddiff_cli(&["list", &s(&dir)]).stdout).into_owned();
    assert!(
        text.contains("vm (image id unknown): 4 restorable snapshot(s)"),
        "{text}"
    );
    assert!(
        text.contains("unused: ") && text.contains("unhealthy: "),
        "{text}"
    );

    // The newest restorable snapshot (s3) was backed up two hours ago.
    let two_h = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    let f = fs::File::options().write(true).open(&chain[3]).unwrap();
    f.set_modified(two_h).unwrap();
    let st = |age: &str| rbddiff_cli(&["status", &s(&dir), "--max-age", age, "--json"]);
    let out = st("1h");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["images"][0]["newest"]["name"], "s3");
    let age = j["images"][0]["age"].as_u64().unwrap();
    assert!((7200..7300).contains(&age), "{j}");
    assert_eq!(st("3h").status.code(), Some(0));
    assert_eq!(st("1d").status.code(), Some(0));
    // s3 damaged: the newest restorable snapshot is s2 (its files are of now).
    flip_payload_byte(&chain[3]);
    let out = st("1h");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["images"][0]["newest"]["name"], "s2");
    // Nothing restorable (an unknown image) or a bad duration.
    let out = rbddiff_cli(&["status", &s(&dir), "--max-age", "1d", "--image", "none"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = rbddiff_cli(&["status", &s(&dir), "--max-age", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A plain file that no longer matches its sidecar: stale.
    flip_payload_byte(&chain[1]);
    let j: serde_json::Value =
        serde_json::from_slice(&rbddiff_cli(&["list", &s(&dir), "--json"]).stdout).unwrap();
    let state = |f: &Path| {
        j["images"][0]["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["file"] == s(f))
            .map(|x| x["sums"].clone())
    };
    assert_eq!(state(&chain[1]), Some("stale".into()), "{j}");
    // Without its sidecar the damage goes unseen: s1 restorable, its path's sums missing.
    let aside = work.join("s1.sums");
    fs::rename(rbddiff::sums::sums_path(&chain[1]), &aside).unwrap();
    let j2: serde_json::Value =
        serde_json::from_slice(&rbddiff_cli(&["list", &s(&dir), "--json"]).stdout).unwrap();
    let s1 = j2["images"][0]["snapshots"][1].clone();
    assert_eq!(
        (s1["name"].clone(), s1["sums"].clone()),
        ("s1".into(), "missing".into())
    );
    fs::rename(&aside, rbddiff::sums::sums_path(&chain[1])).unwrap();
}

/// `restore DIR --to-file RAW` restores offline through apply, over the best healthy path
/// (here round a damaged incremental, through the periodic full); `--snap` picks the
/// snapshot; an existing file that holds no state of the chain needs `--force`.
#[test]
fn restore_to_a_file_offline() {
    let (_t, dir, work) = dirs();
    let states = compressible_states();
    let names = [
        "vm@s0.full.diff.zst",
        "vm@s0..s1.diff",
        "vm@s1..s2.diff.zst",
        "vm@s2..s3.diff.zst",
    ];
    let chain = write_chain_of(&dir, &work, &names, &states);
    let full2 = dir.join("vm@s2.full.diff");
    let o = CreateOptions {
        to_snap: Some("s2".into()),
        ..CreateOptions::default()
    };
    create_diff(&work.join("raw2"), &s(&full2), &o).unwrap();
    flip_payload_byte(&chain[1]);
    let want = |k: usize| sha256_file(&work.join(format!("raw{k}")));
    let out_file = work.join("restored.raw");
    let out = rbddiff_cli(&["restore", &s(&dir), "--to-file", &s(&out_file), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["snap"], "s3");
    assert_eq!(j["files"], serde_json::json!([s(&full2), s(&chain[3])]));
    assert_eq!(j["created"], true);
    assert_eq!(sha256_file(&out_file), want(3));
    // An older snapshot into a new file.
    let f0 = work.join("s0.raw");
    let out = rbddiff_cli(&["restore", &s(&dir), "--to-file", &s(&f0), "--snap", "s0"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sha256_file(&f0), want(0));
    // A file that holds no state: refused, then overwritten with --force.
    let other = work.join("other.raw");
    fs::write(&other, vec![7u8; 4096]).unwrap();
    let out = rbddiff_cli(&["restore", &s(&dir), "--to-file", &s(&other)]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(fs::read(&other).unwrap(), vec![7u8; 4096]);
    let out = rbddiff_cli(&["restore", &s(&dir), "--to-file", &s(&other), "--force"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sha256_file(&other), want(3));
    // s1 has no healthy path: an error naming the damaged file.
    let out = rbddiff_cli(&[
        "restore",
        &s(&dir),
        "--to-file",
        &s(&work.join("x")),
        "--snap",
        "s1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("vm@s0..s1.diff"),
        "{out:?}"
    );
    assert!(!work.join("x").exists());
}

/// An image deleted and recreated under the same name is a new lineage: its first backup is
/// a full even though a snapshot of the same name exists on it, restore and list keep the
/// lineages apart, prune works on the newest and leaves the older one alone.
#[test]
fn a_recreated_image_starts_a_new_lineage() {
    use rbddiff::workflow::{backup, BackupOptions, Rbd};
    let (t, dir, work) = dirs();
    let bin = t.path().join("bin");
    let raw = work.join("img.raw");
    write_sparse(&raw, &noise(4, 1 << 16));
    let (program, _log) = exporting_rbd(&bin, &raw);
    let cluster = |id: &str, names: &[(&str, u64)]| {
        fs::write(
            bin.join("info.json"),
            format!(r#"{{"id": "{id}", "name": "vm"}}"#),
        )
        .unwrap();
        let v: Vec<serde_json::Value> = names
            .iter()
            .map(|(n, id)| serde_json::json!({"id": id, "name": n}))
            .collect();
        fs::write(bin.join("snaps.json"), serde_json::to_string(&v).unwrap()).unwrap();
    };
    let run = |snap: &str| {
        let o = BackupOptions {
            snap: Some(snap.into()),
            rbd: Rbd {
                program: program.clone(),
                ..Rbd::default()
            },
            ..BackupOptions::default()
        };
        until_free(|| backup("rbd/vm", &dir, &o))
    };
    cluster("aaa", &[]);
    assert_eq!(run("s0").image_id.as_deref(), Some("aaa"));
    cluster("aaa", &[("s0", 1)]);
    assert_eq!(run("s1").from_snap.as_deref(), Some("s0"));
    // Recreated, with a snapshot named like the old base: still a full.
    cluster("bbb", &[("s1", 1)]);
    let r = run("s2");
    assert_eq!(r.from_snap, None, "{r:?}");
    assert!(r.full_reason.unwrap().contains("another image id"));
    cluster("bbb", &[("s1", 1), ("s2", 2)]);
    assert_eq!(run("s3").from_snap.as_deref(), Some("s2"));
    // list: two lineages.
    let out = rbddiff_cli(&["list", &s(&dir), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let l: Vec<(String, Vec<String>)> = j["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let snaps = i["snapshots"].as_array().unwrap();
            assert!(snaps.iter().all(|s| s["time_from"] == "catalog"), "{i}");
            (
                i["image_id"].as_str().unwrap().to_string(),
                snaps
                    .iter()
                    .map(|s| s["name"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        l,
        [
            ("aaa".to_string(), vec!["s0".to_string(), "s1".into()]),
            ("bbb".to_string(), vec!["s2".to_string(), "s3".into()])
        ]
    );
    // restore: the newest lineage, or the one holding the snapshot asked for.
    let f = work.join("r.raw");
    let out = rbddiff_cli(&["restore", &s(&dir), "--to-file", &s(&f), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["snap"], "s3");
    assert_eq!(j["files"].as_array().unwrap().len(), 2);
    assert!(
        j["warnings"][0].as_str().unwrap().contains("lineage"),
        "{j}"
    );
    assert_eq!(sha256_file(&f), sha256_file(&raw));
    let f1 = work.join("r1.raw");
    let out = rbddiff_cli(&[
        "restore",
        &s(&dir),
        "--to-file",
        &s(&f1),
        "--snap",
        "s1",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["files"][0], s(&dir.join("vm@s0.full.diff")), "{j}");
    // prune keeps the newest lineage's newest snapshot; the old lineage is left, listed.
    let r = until_free(|| prune(&dir, "vm", 1, false, &mut |_, _| {}));
    assert_eq!(r.output, Some(s(&dir.join("vm@s3.full.diff"))));
    let left: Vec<&str> = r.left.iter().map(|l| l.file.as_str()).collect();
    assert_eq!(
        left,
        [
            s(&dir.join("vm@s0..s1.diff")),
            s(&dir.join("vm@s0.full.diff"))
        ],
        "{r:?}"
    );
    assert!(r.left[0].reason.contains("aaa"));
    let cat = rbddiff::archive::catalog::read(&dir).unwrap();
    assert_eq!(cat.files["vm@s0..s1.diff"].image_id.as_deref(), Some("aaa"));
    assert_eq!(
        cat.files["vm@s3.full.diff"].image_id.as_deref(),
        Some("bbb")
    );
    let lin = rbddiff::archive::graph::lineages(&dir, "vm").unwrap();
    assert_eq!(lin.len(), 2);
}

/// Writes `names` (name, id) as the fake cluster's snapshots of [`exporting_rbd`].
fn snaps_on(bin: &Path, names: &[(&str, u64)]) {
    let v: Vec<serde_json::Value> = names
        .iter()
        .map(|(n, id)| serde_json::json!({"id": id, "name": n}))
        .collect();
    fs::write(bin.join("snaps.json"), serde_json::to_string(&v).unwrap()).unwrap();
}

/// The snapshots `snap rm` was called for, in order.
fn removed_snaps(log: &Path) -> Vec<String> {
    calls(log)
        .into_iter()
        .filter(|c| c.len() > 1 && c[0] == "snap" && c[1] == "rm")
        .map(|c| c.last().unwrap().clone())
        .collect()
}

/// Default snapshot names carry the archive's tag; `--keep-snaps` removes only the archive's
/// own, beyond the newest K, never the one just made: backing one image into two archives
/// never removes the other's base, nor snapshots of older rbddiff versions or others.
#[test]
fn keep_snaps_removes_only_the_snapshots_of_its_archive() {
    use rbddiff::workflow::{backup, BackupOptions, Rbd};
    let (t, dir, work) = dirs();
    let other = t.path().join("other-archive");
    let bin = t.path().join("bin");
    let raw = work.join("img.raw");
    write_sparse(&raw, &noise(8, 1 << 16));
    let (program, log) = exporting_rbd(&bin, &raw);
    let run = |dir: &Path, keep: Option<usize>| {
        let o = BackupOptions {
            keep_snaps: keep,
            rbd: Rbd {
                program: program.clone(),
                ..Rbd::default()
            },
            ..BackupOptions::default()
        };
        until_free(|| backup("rbd/vm", dir, &o))
    };
    snaps_on(&bin, &[]);
    let a1 = run(&dir, Some(1));
    let tag_a = &a1.archive_id[..8];
    assert!(
        a1.to_snap.starts_with(&format!("rbddiff-{tag_a}-20")),
        "{a1:?}"
    );
    assert_eq!(
        a1.fsid.as_deref(),
        Some("5c9c5fc2-d960-477c-ab60-c9d8b2c68f59")
    );
    assert!(a1.rbd_version.as_deref().unwrap().contains("99.0.1"));
    snaps_on(&bin, &[(&a1.to_snap, 1)]);
    let b1 = run(&other, None);
    assert_ne!(b1.archive_id, a1.archive_id);
    assert_eq!(b1.from_snap, None, "another archive: its own first full");
    let old = "rbddiff-20250101T000000Z";
    let cluster = |extra: &[(&str, u64)]| {
        let mut v = vec![(b1.to_snap.as_str(), 2), (old, 3), ("manual", 4)];
        v.extend_from_slice(extra);
        snaps_on(&bin, &v);
    };
    cluster(&[(&a1.to_snap, 1)]);
    let a2 = run(&dir, Some(1));
    assert_eq!(a2.from_snap.as_deref(), Some(a1.to_snap.as_str()));
    assert_eq!(a2.removed_snapshots, [a1.to_snap.as_str()]);
    assert_eq!(removed_snaps(&log), [format!("rbd/vm@{}", a1.to_snap)]);
    // K = 2: the one just made and one more of this archive stay.
    cluster(&[(&a2.to_snap, 5)]);
    let a3 = run(&dir, Some(2));
    assert_eq!(a3.from_snap.as_deref(), Some(a2.to_snap.as_str()));
    assert!(a3.removed_snapshots.is_empty(), "{a3:?}");
    cluster(&[(&a2.to_snap, 5), (&a3.to_snap, 6)]);
    let a4 = run(&dir, Some(1));
    assert_eq!(
        a4.removed_snapshots,
        [a2.to_snap.clone(), a3.to_snap.clone()]
    );
    // B's base, the old-style and the manual snapshot were never touched.
    let rm = removed_snaps(&log);
    assert_eq!(rm.len(), 3, "{rm:?}");
    assert!(rm.iter().all(|s| s.contains(tag_a)), "{rm:?}");
    // A backup of B's archive still has its base.
    cluster(&[(&a4.to_snap, 7)]);
    let b2 = run(&other, Some(1));
    assert_eq!(b2.from_snap.as_deref(), Some(b1.to_snap.as_str()));
    assert_eq!(b2.removed_snapshots, [b1.to_snap.as_str()]);
    // The catalog keeps the archive id, the fsid and the rbd version of each file.
    let cat = rbddiff::archive::catalog::read(&dir).unwrap();
    assert_eq!(cat.version, 2);
    assert_eq!(cat.archive_id.as_deref(), Some(a1.archive_id.as_str()));
    let rec = &cat.files[&rbddiff::workflow::file_name("vm", None, &a1.to_snap, false)];
    assert_eq!(rec.fsid, a1.fsid);
    assert_eq!(rec.rbd_version, a1.rbd_version);
    // list reads the time from the catalog, the restorable snapshots of both names.
    let out = rbddiff_cli(&["list", &s(&dir), "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        j["images"][0]["snapshots"].as_array().unwrap().len(),
        4,
        "{j}"
    );
}

/// Sets the catalog's backup time of the file `name` of `dir` (none: removes it).
fn set_catalog_time(dir: &Path, name: &str, time: Option<u64>) {
    let p = dir.join(rbddiff::archive::catalog::NAME);
    let mut c: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    c["files"][name]["time"] = serde_json::json!(time);
    fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
}

/// `--full-after`: a full when the newest full diff of the lineage is older (by its catalog
/// time, else its modification time), and the report says why; the outcome of each backup
/// (failures too) is recorded, and `status --prometheus` writes it with the archive's state.
#[test]
fn full_after_outcomes_and_prometheus_metrics() {
    use rbddiff::workflow::{backup, BackupOptions, Rbd};
    let (t, dir, work) = dirs();
    let bin = t.path().join("bin");
    let raw = work.join("img.raw");
    write_sparse(&raw, &noise(6, 1 << 16));
    let (program, _log) = exporting_rbd(&bin, &raw);
    let week = std::time::Duration::from_secs(7 * 86_400);
    let run = |snap: &str, after: Option<std::time::Duration>| {
        let o = BackupOptions {
            snap: Some(snap.into()),
            full_after: after,
            rbd: Rbd {
                program: program.clone(),
                ..Rbd::default()
            },
            ..BackupOptions::default()
        };
        until_free_or_err(|| backup("rbd/vm", &dir, &o))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    snaps_on(&bin, &[]);
    run("s0", Some(week)).unwrap();
    snaps_on(&bin, &[("s0", 1)]);
    let r = run("s1", Some(week)).unwrap();
    assert_eq!((r.from_snap.as_deref(), r.full_reason), (Some("s0"), None));
    // The full diff was backed up 8 days ago (catalog).
    set_catalog_time(&dir, "vm@s0.full.diff", Some(now - 8 * 86_400));
    snaps_on(&bin, &[("s0", 1), ("s1", 2)]);
    let r = run("s2", Some(week)).unwrap();
    assert_eq!(r.from_snap, None);
    let why = r.full_reason.unwrap();
    assert!(
        why.contains("vm@s0.full.diff") && why.contains("--full-after 7d") && why.contains("8d"),
        "{why}"
    );
    snaps_on(&bin, &[("s0", 1), ("s1", 2), ("s2", 3)]);
    assert_eq!(
        run("s3", Some(week)).unwrap().from_snap.as_deref(),
        Some("s2")
    );
    // Without a catalog time: the modification time counts.
    set_catalog_time(&dir, "vm@s0.full.diff", Some(now - 30 * 86_400));
    set_catalog_time(&dir, "vm@s2.full.diff", None);
    let f = fs::File::options()
        .write(true)
        .open(dir.join("vm@s2.full.diff"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() - week * 2)
        .unwrap();
    snaps_on(&bin, &[("s2", 3), ("s3", 4)]);
    let r = run("s4", Some(week * 3)).unwrap();
    assert_eq!(r.from_snap.as_deref(), Some("s3"), "14 days < 21 days");
    snaps_on(&bin, &[("s2", 3), ("s3", 4), ("s4", 5)]);
    let r = run("s5", Some(week)).unwrap();
    let why = r.full_reason.unwrap();
    assert!(
        why.contains("vm@s2.full.diff") && why.contains("14d"),
        "{why}"
    );

    // A failed backup (its snapshot name is taken in the archive) is recorded.
    let e = run("s1", None).unwrap_err().to_string();
    let last = &rbddiff::archive::catalog::read(&dir).unwrap().images["vm"];
    assert_eq!(last.last_ok, Some(false));
    assert_eq!(last.error.as_deref(), Some(e.as_str()));
    assert_eq!(last.file.as_deref(), Some("vm@s5.full.diff"));
    let prom = work.join("rbddiff.prom");
    let out = rbddiff_cli(&["status", &s(&dir), "--prometheus", &s(&prom), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = fs::read_to_string(&prom).unwrap();
    let value = |metric: &str| -> Option<u64> {
        let key = format!("{metric}{{archive=\"{}\",image=\"vm\"}} ", dir.display());
        let line = text.lines().find(|l| l.starts_with(&key))?;
        line[key.len()..].parse().ok()
    };
    let files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".diff"))
        .collect();
    assert_eq!(
        value("rbddiff_backup_files"),
        Some(files.len() as u64),
        "{text}"
    );
    let bytes: u64 = files.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert_eq!(value("rbddiff_backup_bytes"), Some(bytes));
    assert_eq!(value("rbddiff_backup_restorable_snapshots"), Some(6));
    assert_eq!(value("rbddiff_backup_unhealthy_files"), Some(0));
    assert_eq!(value("rbddiff_backup_ok"), Some(1));
    assert_eq!(value("rbddiff_backup_last_success"), Some(0));
    let failed = value("rbddiff_backup_last_failure_timestamp_seconds").unwrap();
    assert!(failed >= now && failed < now + 600, "{text}");
    assert!(value("rbddiff_backup_age_seconds").unwrap() < 600);
    assert_eq!(
        value("rbddiff_backup_newest_timestamp_seconds"),
        j["images"][0]["newest"]["time"].as_u64()
    );
    assert!(
        text.contains(&format!(
            "rbddiff_archive_ok{{archive=\"{}\"}} 1\n",
            dir.display()
        )),
        "{text}"
    );
    assert!(text.contains("# TYPE rbddiff_backup_age_seconds gauge\n"));
    let human =
        String::from_utf8_lossy(&rbddiff_cli(&["status", &s(&dir), "--max-age", "1d"]).stdout)
            .into_owned();
    assert!(human.contains("the last backup failed"), "{human}");
    // Success again; the newest snapshot too old for --max-age: overall 0, exit 1.
    snaps_on(&bin, &[("s5", 6)]);
    run("s6", None).unwrap();
    set_catalog_time(&dir, "vm@s5..s6.diff", Some(now - 7 * 86_400));
    let out = rbddiff_cli(&[
        "status",
        &s(&dir),
        "--max-age",
        "1d",
        "--prometheus",
        &s(&prom),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = fs::read_to_string(&prom).unwrap();
    let value = |metric: &str| -> Option<u64> {
        let key = format!("{metric}{{archive=\"{}\",image=\"vm\"}} ", dir.display());
        let line = text.lines().find(|l| l.starts_with(&key))?;
        line[key.len()..].parse().ok()
    };
    assert_eq!(value("rbddiff_backup_last_success"), Some(1), "{text}");
    assert_eq!(value("rbddiff_backup_ok"), Some(0));
    assert!(value("rbddiff_backup_age_seconds").unwrap() >= 7 * 86_400);
    assert!(
        text.contains("rbddiff_archive_ok{") && text.contains("} 0\n"),
        "{text}"
    );
    assert!(text.contains("rbddiff_archive_max_age_seconds{"), "{text}");
    // No temporary file is left beside the metrics file.
    assert_eq!(
        fs::read_dir(&work)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
            .count(),
        0
    );
    // status needs --max-age or --prometheus.
    assert_eq!(rbddiff_cli(&["status", &s(&dir)]).status.code(), Some(2));
}

/// prune by a policy through the CLI: six backups, two a day (catalog times), --keep-daily
/// 3 keeps the newest of each day; the plan (dry run) names each merge's inputs and output
/// and the rule of each kept snapshot; --compress writes the merged files compressed from
/// plain inputs; every kept snapshot restores to its state. Without a rule, and without
/// --image in an archive of two images, prune refuses and changes nothing.
#[test]
fn prune_by_a_policy_merges_runs_into_incrementals() {
    let (_t, dir, work) = dirs();
    let states = small_states(6);
    let names = [
        "vm@s0.full.diff",
        "vm@s0..s1.diff",
        "vm@s1..s2.diff",
        "vm@s2..s3.diff",
        "vm@s3..s4.diff",
        "vm@s4..s5.diff",
    ];
    write_chain_of(&dir, &work, &names, &states);
    let day0 = 1_767_571_200u64;
    for (k, n) in names.iter().enumerate() {
        let k = k as u64;
        let rec = rbddiff::archive::catalog::Record {
            time: Some(day0 + (k / 2) * 86_400 + (k % 2) * 3600),
            ..Default::default()
        };
        rbddiff::archive::catalog::record(&dir, n, rec).unwrap();
    }
    let want = |k: usize| sha256_file(&work.join(format!("raw{k}")));
    let ds = s(&dir);
    let before = contents(&dir);
    // No rule: refused.
    let out = rbddiff_cli(&["prune", &ds]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no retention rule") && err.contains("--keep-daily"),
        "{err}"
    );
    // The plan, without --image (one image).
    let out = rbddiff_cli(&["prune", &ds, "--keep-daily", "3", "--compress", "--dry-run"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for w in [
        "keeping 3 restorable snapshot(s), dropping 3",
        "keep s1 (20260105T010000Z): daily",
        "keep s3 (20260106T010000Z): daily",
        "keep s5 (20260107T010000Z): daily",
        "drop s0",
        "would merge 2 file(s) (",
        "vm@s1.full.diff.zst:",
        "vm@s1..s3.diff.zst:",
        "vm@s3..s5.diff.zst:",
        "would delete: ",
        "(estimated)",
    ] {
        assert!(text.contains(w), "{w}: {text}");
    }
    assert_eq!(contents(&dir), before);
    // Another image's file: --image is needed.
    fs::copy(dir.join(names[0]), dir.join("vm2@s0.full.diff")).unwrap();
    let out = rbddiff_cli(&["prune", &ds, "--keep-daily", "3"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("several images (vm, vm2)") && err.contains("--image"),
        "{err}"
    );
    fs::remove_file(dir.join("vm2@s0.full.diff")).unwrap();
    assert_eq!(contents(&dir), before);

    let out = rbddiff_cli(&["prune", &ds, "--keep-daily", "3", "--compress", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["kept_snapshots"],
        serde_json::json!(["s1", "s3", "s5"]),
        "{r}"
    );
    assert_eq!(
        r["dropped_snapshots"],
        serde_json::json!(["s0", "s2", "s4"]),
        "{r}"
    );
    let merges = r["merges"].as_array().unwrap();
    assert_eq!(merges.len(), 3, "{r}");
    assert!(
        merges
            .iter()
            .all(|m| m["compressed"] == true && m["bytes"].is_u64()),
        "{r}"
    );
    assert_eq!(merges[1]["from_snap"], "s1");
    assert_eq!(merges[1]["to_snap"], "s3");
    let mut expect = vec![
        "vm@s1.full.diff.zst",
        "vm@s1.full.diff.zst.sums",
        "vm@s1..s3.diff.zst",
        "vm@s1..s3.diff.zst.sums",
        "vm@s3..s5.diff.zst",
        "vm@s3..s5.diff.zst.sums",
    ];
    expect.sort();
    assert_eq!(contents(&dir).into_keys().collect::<Vec<_>>(), expect);
    assert_eq!(restorable(&dir), ["s1", "s3", "s5"]);
    for k in [1, 3, 5] {
        assert_eq!(
            restore_snap(&dir, &work, &format!("s{k}")).0,
            want(k),
            "s{k}"
        );
    }
    // The merged files keep the backup times: the same policy keeps the same snapshots.
    let r = until_free(|| {
        let opts = rbddiff::workflow::PruneOptions {
            policy: rbddiff::archive::policy::Policy {
                daily: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        rbddiff::workflow::prune(&dir, &opts, &mut |_, _| {})
    });
    assert_eq!(r.kept_snapshots, ["s1", "s3", "s5"]);
    assert!(r.merges.is_empty() && r.delete.is_empty(), "{r:?}");
}
