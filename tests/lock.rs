//! Archive locks: the holder's record and the refusal message, `--wait`, shared and exclusive
//! holders, and overlapping `backup` and `prune` runs (a fake `rbd`) that must never lose or
//! damage a file.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fakerbd::{restorable, restored, FakeCluster};
use common::gen::{noise, path_str as s, write_sparse, Rng};
use rbddiff::create::{create_diff, CreateOptions};
use rbddiff::dirlock::{holders, lock, Command as Cmd, Holder, LOCK_NAME};
use rbddiff::ErrorKind;

fn rbddiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(args)
        .output()
        .unwrap()
}

/// An archive `t/backups` holding one full diff of `vm` to `s0` (with its sidecar).
fn archive() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("backups");
    fs::create_dir(&dir).unwrap();
    let raw = t.path().join("img.raw");
    write_sparse(&raw, &noise(7, 1 << 16));
    let path = dir.join(rbddiff::workflow::file_name("vm", None, "s0", false));
    let opts = CreateOptions {
        to_snap: Some("s0".into()),
        ..CreateOptions::default()
    };
    create_diff(&raw, &s(&path), &opts).unwrap();
    rbddiff::sums::write_sums_for(&path).unwrap();
    (t, dir)
}

fn records(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join(LOCK_NAME))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The pid of a process that has exited.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// `f()` once no child that another test thread forked still holds an inherited descriptor
/// of a lock this process released (until its `exec`, which closes it).
fn until_free<T>(mut f: impl FnMut() -> rbddiff::Result<T>) -> T {
    for _ in 0..100 {
        match f() {
            Err(e) if matches!(e.kind(), ErrorKind::Locked(_)) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            r => return r.unwrap(),
        }
    }
    panic!("the archive stays locked")
}

#[test]
fn the_lock_file_records_its_holders_and_a_refusal_names_them() {
    let (_t, dir) = archive();
    let me = std::process::id();
    let ds = s(&dir);
    {
        let held = until_free(|| lock(&dir, true, Cmd::Backup, None));
        let recs = records(&dir);
        assert_eq!(recs.len(), 1, "{recs:?}");
        let h = Holder::parse(&recs[0]).unwrap_or_else(|| panic!("{recs:?}"));
        assert_eq!((h.pid, h.exclusive, h.command), (me, true, Cmd::Backup));
        assert_eq!(holders(&dir), std::slice::from_ref(&h));
        let want = format!(
            "archive {ds} locked by PID {me} (backup, since {})",
            h.since
        );
        for exclusive in [false, true] {
            let e = lock(&dir, exclusive, Cmd::Prune, None).unwrap_err();
            assert!(matches!(e.kind(), ErrorKind::Locked(_)), "{e}");
            assert_eq!(e.to_string(), want);
        }
        // The CLI says the same and exits 2; under --json the error kind is `locked`.
        for args in [
            vec!["list", &*ds],
            vec!["status", &*ds, "--max-age", "1d"],
            vec!["prune", &*ds, "--image", "vm", "--keep", "1"],
            vec!["verify", &*ds],
            vec!["restore", &*ds, "--to-file", "/nonexistent/x.raw"],
        ] {
            let o = rbddiff(&args);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
            assert_eq!(stderr(&o).trim(), format!("rbddiff: {want}"), "{args:?}");
        }
        let o = rbddiff(&["list", &ds, "--json"]);
        assert_eq!(o.status.code(), Some(2));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "locked", "{v}");
        assert_eq!(v["error"]["message"].as_str(), Some(want.as_str()), "{v}");
        // The holder leaves: the record goes with it.
        drop(held);
        assert!(records(&dir).is_empty(), "{:?}", records(&dir));
    }
    {
        // Readers share the archive; each has its line, none clobbers another's.
        let r1 = until_free(|| lock(&dir, false, Cmd::List, None));
        let r2 = lock(&dir, false, Cmd::Restore, None).unwrap();
        let recs: Vec<Holder> = records(&dir)
            .iter()
            .map(|l| Holder::parse(l).unwrap())
            .collect();
        let cmds: Vec<(Cmd, bool)> = recs.iter().map(|h| (h.command, h.exclusive)).collect();
        assert_eq!(cmds, [(Cmd::List, false), (Cmd::Restore, false)]);
        // A reader's record that outlived a killed reader is not named.
        let gone = dead_pid();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(dir.join(LOCK_NAME))
            .unwrap();
        use std::io::Write;
        writeln!(f, "{gone} shared list 2026-01-01T00:00:00Z").unwrap();
        writeln!(f, "{me} shared list 2026-01-01T00:00:00Z\u{1b}[2J").unwrap();
        writeln!(f, "garbage").unwrap();
        let e = lock(&dir, true, Cmd::Backup, None).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("archive {ds} locked by PID {me} (list, since "))
                && msg.contains(&format!(", PID {me} (restore, since "))
                && !msg.contains(&gone.to_string())
                && !msg.contains('\u{1b}')
                && !msg.contains("garbage"),
            "{msg}"
        );
        let o = rbddiff(&["prune", &ds, "--image", "vm", "--keep", "1"]);
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        assert!(stderr(&o).contains(&format!("locked by PID {me} (list, since ")));
        // A dry run only reads: it runs beside the readers.
        let o = rbddiff(&["prune", &ds, "--image", "vm", "--keep", "1", "--dry-run"]);
        assert!(o.status.success(), "{o:?}");
        drop(r1);
        // One reader left: its record stays.
        assert!(records(&dir).iter().any(|l| l.contains(" restore ")));
        drop(r2);
        assert!(records(&dir).is_empty(), "{:?}", records(&dir));
    }
    {
        // A holder that has not recorded itself (or whose record is gone): said so.
        let held = until_free(|| lock(&dir, true, Cmd::Prune, None));
        fs::write(dir.join(LOCK_NAME), "").unwrap();
        let e = lock(&dir, false, Cmd::List, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "archive {ds} locked by another run (it has not recorded itself in {LOCK_NAME})"
            )
        );
        drop(held);
    }
    // A first reader clears records that outlived their holders.
    fs::write(
        dir.join(LOCK_NAME),
        format!("{} exclusive backup 2026-01-01T00:00:00Z\n", dead_pid()),
    )
    .unwrap();
    let r = until_free(|| lock(&dir, false, Cmd::Status, None));
    let recs = records(&dir);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert!(
        recs[0].starts_with(&format!("{me} shared status ")),
        "{recs:?}"
    );
    drop(r);
}

/// A running `rbddiff serve DIR` (over a Unix socket), stopped when dropped.
struct Serve(Child);

impl Serve {
    fn start(dir: &Path, sock: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rbddiff"))
            .args(["serve", &s(dir), "--socket", &s(sock)])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("serving"), "{line}");
        Serve(child)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_holds_a_shared_lock_for_its_lifetime() {
    let (t, dir) = archive();
    let ds = s(&dir);
    let srv = Serve::start(&dir, &t.path().join("nbd.sock"));
    let pid = srv.0.id();
    let h = holders(&dir);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(
        (h[0].pid, h[0].exclusive, h[0].command),
        (pid, false, Cmd::Serve)
    );
    // Readers run beside it; a prune is refused, naming the server.
    assert!(rbddiff(&["list", &ds]).status.success());
    let o = rbddiff(&["prune", &ds, "--image", "vm", "--keep", "1"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        stderr(&o).contains(&format!(
            "archive {ds} locked by PID {pid} (serve, since {})",
            h[0].since
        )),
        "{o:?}"
    );
    drop(srv);
    let o = rbddiff(&["prune", &ds, "--image", "vm", "--keep", "1"]);
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn wait_takes_the_lock_when_the_holder_leaves_in_time_and_gives_up_after_it() {
    let (t, dir) = archive();
    let ds = s(&dir);
    // Library: a holder leaving after 600 ms.
    let held = until_free(|| lock(&dir, true, Cmd::Backup, None));
    let t0 = Instant::now();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        drop(held);
    });
    let l = lock(&dir, true, Cmd::Prune, Some(Duration::from_secs(20))).unwrap();
    let waited = t0.elapsed();
    releaser.join().unwrap();
    assert!(waited >= Duration::from_millis(550), "{waited:?}");
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    // A holder that stays: refused once the wait is over, not before.
    let t0 = Instant::now();
    let e = lock(&dir, false, Cmd::List, Some(Duration::from_millis(700))).unwrap_err();
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(
        e.to_string().contains("(prune, since ")
            && e.to_string().ends_with("; gave up after waiting 700ms"),
        "{e}"
    );
    drop(l);
    // CLI: every command that locks an archive takes --wait; a holder that stays past it
    // makes each fail with exit 2 after the wait.
    let sock = t.path().join("nbd.sock");
    let (bin, sock) = (t.path().join("bin"), s(&sock));
    let cluster = FakeCluster::new(&bin, 1 << 16);
    let held = until_free(|| lock(&dir, true, Cmd::Backup, None));
    let commands: Vec<Vec<&str>> = vec![
        vec!["backup", "rbd/vm", &ds],
        vec!["prune", &ds, "--image", "vm", "--keep", "1"],
        vec!["restore", &ds, "rbd/vm"],
        vec!["list", &ds],
        vec!["status", &ds, "--max-age", "1d"],
        vec!["verify", &ds],
        vec!["serve", &ds, "--socket", &sock],
    ];
    let t0 = Instant::now();
    let children: Vec<(Vec<&str>, Child)> = commands
        .into_iter()
        .map(|mut a| {
            a.extend(["--wait", "1s"]);
            let c = cluster
                .rbddiff(&a)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (a, c)
        })
        .collect();
    for (a, c) in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{a:?}: {o:?}");
        let err = stderr(&o);
        assert!(
            err.contains(&format!(
                "archive {ds} locked by PID {}",
                std::process::id()
            )) && err.contains("gave up after waiting 1s"),
            "{a:?}: {err}"
        );
    }
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert!(
        fs::read_to_string(bin.join("rbd.log"))
            .unwrap_or_default()
            .is_empty(),
        "rbd ran while the archive was locked"
    );
    // The holder leaves within the wait: the command runs.
    let t0 = Instant::now();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(held);
    });
    let o = cluster
        .rbddiff(&["list", &ds, "--wait", "30s"])
        .output()
        .unwrap();
    releaser.join().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(t0.elapsed() >= Duration::from_millis(450));
    // A bad duration is refused.
    let o = rbddiff(&["list", &ds, "--wait", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bad duration 'soon'"), "{o:?}");
}

/// Several `backup` and `prune` runs (and readers) started at once on one archive, in many
/// rounds: the runs with `--wait` all complete one after another, those without are refused
/// cleanly or run; no file is lost or damaged (every restorable snapshot restores to the
/// image the cluster held at that snapshot), the newest kept snapshots stay restorable, no
/// temporary file is left and the catalog records every file.
#[test]
fn overlapping_backups_and_prunes_never_lose_or_damage_a_file() {
    let t = tempfile::tempdir().unwrap();
    let (dir, work) = (t.path().join("backups"), t.path().join("work"));
    fs::create_dir_all(&work).unwrap();
    let ds = s(&dir);
    let cluster = FakeCluster::new(&t.path().join("bin"), 1 << 20);
    let mut rng = Rng::new(41);
    let keep = 3;
    let o = cluster
        .rbddiff(&["backup", "rbd/vm", &ds])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let (mut refused, mut backups) = (0, 1);
    for round in 0..8 {
        cluster.write(&mut rng);
        let before = restorable(&dir);
        let mut runs: Vec<(String, Child)> = Vec::new();
        let mut spawn = |args: &[&str]| {
            let c = cluster
                .rbddiff(args)
                .arg("--json")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            runs.push((args.join(" "), c));
        };
        let k = keep.to_string();
        for i in 0..3 {
            spawn(&["backup", "rbd/vm", &ds, "--wait", "2m"]);
            if i < 2 {
                spawn(&["prune", &ds, "--image", "vm", "--keep", &k, "--wait", "2m"]);
            }
        }
        spawn(&["backup", "rbd/vm", &ds, "--compress"]);
        spawn(&["prune", &ds, "--image", "vm", "--keep", &k]);
        spawn(&["list", &ds, "--wait", "2m"]);
        spawn(&["status", &ds, "--max-age", "1d", "--wait", "2m"]);
        let mut made = Vec::new();
        for (args, c) in runs {
            let o = c.wait_with_output().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&o.stdout)
                .unwrap_or_else(|e| panic!("round {round}, {args}: {e}: {o:?}"));
            if o.status.code() == Some(2) && v["error"]["kind"] == "locked" {
                assert!(!args.contains("--wait"), "round {round}, {args}: {v}");
                let m = v["error"]["message"].as_str().unwrap();
                assert!(m.starts_with(&format!("archive {ds} locked by ")), "{m}");
                refused += 1;
                continue;
            }
            assert!(o.status.success(), "round {round}, {args}: {o:?}");
            if args.starts_with("backup") {
                made.push(v["to_snap"].as_str().unwrap().to_string());
                backups += 1;
            }
        }
        // The newest `keep` of the snapshots restorable before and those made stay.
        let on_cluster = cluster.snapshots();
        let id = |n: &str| on_cluster.iter().find(|(_, s)| s == n).unwrap().0;
        let mut all: Vec<&String> = before.iter().chain(&made).collect();
        all.sort_by_key(|n| id(n));
        let after = restorable(&dir);
        for s in all.iter().rev().take(keep) {
            assert!(after.contains(s), "round {round}: {s} lost: {after:?}");
        }
        // Every restorable snapshot restores to what the cluster held.
        for s in &after {
            assert_eq!(
                restored(&dir, &work, s),
                cluster.snap_sha256(s),
                "round {round}: {s}"
            );
        }
        // No temporary or stray file; every file recorded, sidecars beside each.
        let cat = rbddiff::archive::catalog::read(&dir).unwrap();
        let g = rbddiff::archive::graph::discover(&dir, "vm").unwrap();
        assert!(
            g.unreadable.is_empty() && g.damaged().is_empty(),
            "round {round}"
        );
        for e in fs::read_dir(&dir).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            if n == LOCK_NAME || n == rbddiff::archive::catalog::NAME {
                continue;
            }
            assert!(!n.starts_with('.'), "round {round}: left {n}");
            if let Some(diff) = n.strip_suffix(".sums") {
                assert!(dir.join(diff).exists(), "round {round}: {n} alone");
            } else {
                assert!(cat.files.contains_key(&n), "round {round}: {n} unrecorded");
                assert!(dir.join(format!("{n}.sums")).exists(), "round {round}: {n}");
            }
        }
    }
    eprintln!("{backups} backups, {refused} runs without --wait refused");
}

/// Readers never refuse each other, also while they empty the records (taking and leaving
/// the lock in many threads at once, and as processes).
#[test]
fn readers_never_refuse_each_other() {
    let (_t, dir) = archive();
    let dir = std::sync::Arc::new(dir);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for k in 0..300 {
                    let cmd = [Cmd::List, Cmd::Status, Cmd::Restore, Cmd::Verify][i];
                    let l = lock(&dir, false, cmd, None)
                        .unwrap_or_else(|e| panic!("thread {i}, round {k}: {e}"));
                    if k % 3 == 0 {
                        std::thread::yield_now();
                    }
                    drop(l);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let ds = s(&dir);
    for round in 0..3 {
        let runs: Vec<Child> = (0..6)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_rbddiff"))
                    .args(["list", &ds])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in runs {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "round {round}: {o:?}");
        }
    }
    assert!(records(&dir).is_empty(), "{:?}", records(&dir));
}
