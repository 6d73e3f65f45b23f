//! `rbddiff serve` against real NBD clients, all in userspace: qemu-img (compare, info),
//! nbdinfo (--list, --map), nbdcopy, nbdfuse, and `nbdkit file` serving the applied raw image
//! as the reference. Without those tools the tests print a note and do nothing, unless
//! `RBDDIFF_REQUIRE_NBD=1` (CI sets it), which makes a missing tool a failure.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ceph::which;
use common::gen::path_str as s;
use common::manifest::{self, sha256_file, truth};

const TOOLS: [&str; 5] = ["qemu-img", "nbdinfo", "nbdcopy", "nbdkit", "nbdfuse"];

/// True when the NBD client tools are installed; else a note (or a failure when required).
fn tools() -> bool {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "NBD tests skipped: {} not installed (Debian: qemu-utils libnbd-bin nbdkit fuse3)",
        missing.join(", ")
    );
    assert!(
        std::env::var("RBDDIFF_REQUIRE_NBD").as_deref() != Ok("1"),
        "{msg}"
    );
    eprintln!("{msg}");
    false
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rbddiff")
}

/// A running `rbddiff serve`, stopped with SIGTERM when dropped.
struct Server {
    child: Child,
    uri: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(bin())
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run rbddiff serve");
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let uri = line
            .split_whitespace()
            .find(|w| w.starts_with("nbd://"))
            .unwrap_or_else(|| panic!("serve did not start: {line}"))
            .to_string();
        Server { child, uri }
    }

    fn addr(&self) -> &str {
        self.uri.trim_start_matches("nbd://")
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        signal(pid, "TERM");
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "serve ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: i32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rbddiff(args: &[&str]) -> String {
    run(Command::new(bin()).args(args))
}

/// `nbdinfo --map` as (offset, length, type) runs, merged where the type repeats.
fn map(uri: &str) -> Vec<(u64, u64, u32)> {
    let text = run(Command::new("nbdinfo").args(["--map", uri]));
    let mut runs: Vec<(u64, u64, u32)> = Vec::new();
    for l in text.lines() {
        let c: Vec<&str> = l.split_whitespace().collect();
        let (o, n, t) = (
            c[0].parse().unwrap(),
            c[1].parse().unwrap(),
            c[2].parse().unwrap(),
        );
        match runs.last_mut() {
            Some(r) if r.2 == t && r.0 + r.1 == o => r.1 += n,
            _ => runs.push((o, n, t)),
        }
    }
    runs
}

/// Which of `[off, off+len)` the map calls data, per 4 KiB block.
fn data_blocks(runs: &[(u64, u64, u32)]) -> Vec<bool> {
    let mut v = Vec::new();
    for &(o, n, t) in runs {
        assert_eq!(o % 512, 0);
        let blocks = n.div_ceil(4096);
        v.extend(std::iter::repeat_n(t & 1 == 0, blocks as usize));
    }
    v
}

/// Compares our map with that of `nbdkit file` on the applied image: every block the file
/// holds as a hole is a hole in ours, and every block we call a hole while the file holds
/// data reads as zeros there (a block a `z` record zeroed only in part stays allocated in
/// the file, while its content is all zeros).
fn check_map(ours: &str, raw: &Path) {
    let port = free_port();
    let mut kit = Command::new("nbdkit")
        .args([
            "-r",
            "-f",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "file",
        ])
        .arg(format!("file={}", raw.display()))
        .spawn()
        .expect("nbdkit");
    let uri = format!("nbd://127.0.0.1:{port}");
    wait_port(port);
    let (a, b) = (data_blocks(&map(ours)), data_blocks(&map(&uri)));
    let _ = kit.kill();
    let _ = kit.wait();
    assert_eq!(a.len(), b.len(), "maps of different sizes");
    let bytes = std::fs::read(raw).unwrap();
    let mut extra = 0;
    for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
        let blk = &bytes[i * 4096..((i + 1) * 4096).min(bytes.len())];
        if x && !y {
            panic!(
                "block {i} (byte {}) is data in the export, a hole in the file",
                i * 4096
            );
        }
        if !x && y {
            assert!(
                blk.iter().all(|&c| c == 0),
                "block {i} called a hole holds data"
            );
            extra += 1;
        }
    }
    assert!(
        extra * 100 <= a.len().max(100),
        "{extra} of {} blocks differ",
        a.len()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// Every snapshot of the real chains that start with a full diff, plain and compressed:
/// `qemu-img compare` with the applied raw image (whose sha256 is Ceph's), `nbdinfo --map`
/// against `nbdkit file` on it, and `nbdcopy` equal and sparse.
#[test]
fn real_chains_served_equal_their_applied_images() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut served = 0;
    for c in manifest::chains() {
        let chain = &c.v1;
        if chain.first().is_none_or(|d| d.from.is_some()) {
            continue;
        }
        let zdir = t.path().join(format!("{}-zst", c.image));
        std::fs::create_dir(&zdir).unwrap();
        let zst: Vec<String> = chain
            .iter()
            .map(|d| {
                let out = zdir.join(format!("{}.zst", d.stem()));
                rbddiff(&["compress", "-q", &s(&d.path), "-o", &s(&out)]);
                s(&out)
            })
            .collect();
        for k in 1..=chain.len() {
            let files: Vec<String> = chain[..k].iter().map(|d| s(&d.path)).collect();
            let last = &chain[k - 1];
            let raw = t.path().join(format!("{}-{k}.raw", c.image));
            let mut args = vec!["apply", "-q", "--create", "--to", raw.to_str().unwrap()];
            args.extend(files.iter().map(String::as_str));
            rbddiff(&args);
            let want = truth(&c.image, &last.result);
            assert_eq!(sha256_file(&raw), want.sha256, "{} applied", last.rel);
            let name = last.to.clone().unwrap_or_else(|| "HEAD".into());
            for set in [&files, &zst[..k].to_vec()] {
                let args: Vec<&str> = set.iter().map(String::as_str).collect();
                let srv = Server::start(&args);
                let uri = format!("{}/{name}", srv.uri);
                run(Command::new("qemu-img").args(["compare", "-f", "raw", &s(&raw), &uri]));
                check_map(&uri, &raw);
                let copy = t.path().join("copy.raw");
                let _ = std::fs::remove_file(&copy);
                run(Command::new("nbdcopy").args([&uri, &s(&copy)]));
                assert_eq!(sha256_file(&copy), want.sha256, "nbdcopy of {uri}");
                assert!(
                    allocated(&copy) <= allocated(&raw) + 64 * 1024,
                    "nbdcopy output not sparse: {} vs {}",
                    allocated(&copy),
                    allocated(&raw)
                );
                assert!(srv.stop().success());
                served += 1;
            }
        }
    }
    assert!(served >= 10, "only {served} chains served");
}

/// An archive directory: `nbdinfo --list` lists every restorable snapshot; each export reads
/// as Ceph's image; the default export is the newest; a deleted middle incremental is gone
/// round through a periodic full.
#[test]
fn an_archive_serves_every_restorable_snapshot() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("backups");
    std::fs::create_dir(&dir).unwrap();
    let c = manifest::chains()
        .into_iter()
        .find(|c| c.image == "img64k")
        .unwrap();
    let mut snaps = Vec::new();
    for d in c.v1.iter().filter(|d| d.to.is_some()) {
        let to = d.to.clone().unwrap();
        let name = rbddiff::archive::names::file_name("vm", d.from.as_deref(), &to, false);
        std::fs::copy(&d.path, dir.join(&name)).unwrap();
        snaps.push((to, d.result.clone()));
    }
    let srv = Server::start(&[&s(&dir)]);
    let list = run(Command::new("nbdinfo").args(["--list", &srv.uri]));
    for (snap, _) in &snaps {
        assert!(
            list.contains(&format!("export=\"{snap}\"")),
            "{snap} not listed: {list}"
        );
    }
    // Every snapshot copied at once, one client each.
    let copies: Vec<(PathBuf, Child, &String)> = snaps
        .iter()
        .enumerate()
        .map(|(i, (snap, state))| {
            let out = t.path().join(format!("copy{i}.raw"));
            let child = Command::new("nbdcopy")
                .args([&format!("{}/{snap}", srv.uri), &s(&out)])
                .spawn()
                .unwrap();
            (out, child, state)
        })
        .collect();
    for (out, mut child, state) in copies {
        assert!(child.wait().unwrap().success());
        assert_eq!(sha256_file(&out), truth("img64k", state).sha256);
    }
    let copy = t.path().join("copy.raw");
    let info = run(Command::new("qemu-img").args(["info", "--output=json", &srv.uri]));
    let (newest, state) = snaps.last().unwrap();
    let size = truth("img64k", state).size;
    assert!(
        info.contains(&format!("\"virtual-size\": {size}")),
        "default export {info}"
    );
    assert!(srv.stop().success());
    // A periodic full at the third snapshot, then its incremental deleted.
    let (s3, st3) = &snaps[2];
    let full = dir.join(rbddiff::archive::names::file_name("vm", None, s3, false));
    let tmp = t.path().join("merged");
    let mut args = vec!["merge".to_string(), "-q".into(), "-o".into(), s(&tmp)];
    args.extend(c.v1[..3].iter().map(|d| s(&d.path)));
    rbddiff(&args.iter().map(String::as_str).collect::<Vec<_>>());
    std::fs::rename(&tmp, &full).unwrap();
    let (s2, _) = &snaps[1];
    std::fs::remove_file(dir.join(rbddiff::archive::names::file_name(
        "vm",
        Some(s2),
        s3,
        false,
    )))
    .unwrap();
    let srv = Server::start(&[&s(&dir), "--snap", s3]);
    let _ = std::fs::remove_file(&copy);
    run(Command::new("nbdcopy").args([&srv.uri, &s(&copy)]));
    assert_eq!(sha256_file(&copy), truth("img64k", st3).sha256);
    let _ = std::fs::remove_file(&copy);
    run(Command::new("nbdcopy").args([&format!("{}/{newest}", srv.uri), &s(&copy)]));
    assert_eq!(sha256_file(&copy), truth("img64k", state).sha256);
}

/// A single file restored as a user would: an ext4 image in three states, diffs between them
/// made by `rbddiff create`, the chain served, exposed as a file by nbdfuse, loop-mounted
/// read-only (or, without root, read with debugfs), a file read back byte-identical.
#[test]
fn a_file_comes_back_from_an_ext4_image_through_nbdfuse() {
    if !tools() || which("mkfs.ext4").is_none() || which("debugfs").is_none() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let raw = p.join("fs.raw");
    std::fs::write(p.join("a.txt"), b"first state\n").unwrap();
    let big = common::gen::noise(7, 3 << 20);
    std::fs::write(p.join("big.bin"), &big).unwrap();
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-b", "4096", &s(&raw)]));
    let debugfs = |cmd: &str| run(Command::new("debugfs").args(["-w", "-R", cmd, &s(&raw)]));
    debugfs(&format!("write {} a.txt", s(&p.join("a.txt"))));
    let s1 = p.join("s1.raw");
    std::fs::copy(&raw, &s1).unwrap();
    debugfs(&format!("write {} big.bin", s(&p.join("big.bin"))));
    let s2 = p.join("s2.raw");
    std::fs::copy(&raw, &s2).unwrap();
    debugfs("rm a.txt");
    let s3 = p.join("s3.raw");
    std::fs::copy(&raw, &s3).unwrap();
    let d1 = p.join("full_s1.diff");
    let d2 = p.join("s1_s2.diff");
    let d3 = p.join("s2_s3.diff");
    let create = |new: &Path, base: Option<(&Path, &str)>, to: &str, out: &Path| {
        let mut args = vec!["create", "-q", "--from", new.to_str().unwrap()];
        if let Some((b, from)) = base {
            args.extend(["--base", b.to_str().unwrap(), "--from-snap", from]);
        }
        args.extend(["--to-snap", to, "-o", out.to_str().unwrap()]);
        rbddiff(&args);
    };
    create(&s1, None, "s1", &d1);
    create(&s2, Some((&s1, "s1")), "s2", &d2);
    create(&s3, Some((&s2, "s2")), "s3", &d3);
    let srv = Server::start(&[&s(&d1), &s(&d2), &s(&d3)]);
    let mnt = p.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let disk = mnt.join("disk");
    let mut fuse = Command::new("nbdfuse")
        .args(["-r", &s(&disk), &format!("{}/s3", srv.uri)])
        .spawn()
        .expect("nbdfuse");
    let t0 = Instant::now();
    while std::fs::metadata(&disk).map_or(true, |m| m.len() == 0) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "nbdfuse did not mount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sha256_file(&disk), sha256_file(&s3));
    let back = p.join("big.back");
    let root = mnt_loop(&disk, &p.join("fs"));
    match &root {
        Some(m) => {
            std::fs::copy(m.join("big.bin"), &back).unwrap();
            assert!(!m.join("a.txt").exists(), "a removed file is back");
            let st = Command::new("umount").arg(m).status().unwrap();
            assert!(st.success());
        }
        None => {
            eprintln!("not root: reading the file with debugfs instead of a loop mount");
            run(Command::new("debugfs").args([
                "-R",
                &format!("dump big.bin {}", s(&back)),
                &s(&disk),
            ]));
        }
    }
    assert_eq!(std::fs::read(&back).unwrap(), big);
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let _ = fuse.kill();
    let _ = fuse.wait();
}

/// Loop-mounts `disk` read-only at `at` when running as root; `None` otherwise.
fn mnt_loop(disk: &Path, at: &Path) -> Option<PathBuf> {
    let root = Command::new("id").arg("-u").output().ok()?.stdout == b"0\n";
    if !root {
        return None;
    }
    std::fs::create_dir_all(at).unwrap();
    run(Command::new("mount").args(["-o", "ro,loop,noload", &s(disk), &s(at)]));
    Some(at.to_path_buf())
}

// ---------------------------------------------------------------------------------------------
// Robustness: raw protocol from a hand-written client.

fn handshake(addr: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = [0u8; 18];
    c.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    assert_eq!(&hello[8..16], b"IHAVEOPT");
    c.write_all(&3u32.to_be_bytes()).unwrap();
    c
}

fn option(c: &mut TcpStream, opt: u32, data: &[u8]) {
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    c.write_all(&m).unwrap();
}

/// Reads option replies up to the final one; returns their types.
fn replies(c: &mut TcpStream) -> Vec<u32> {
    let mut kinds = Vec::new();
    loop {
        let mut h = [0u8; 20];
        c.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut d = vec![0; len as usize];
        c.read_exact(&mut d).unwrap();
        kinds.push(kind);
        if kind == 1 || kind & 0x8000_0000 != 0 {
            return kinds;
        }
    }
}

fn go(c: &mut TcpStream, name: &str) {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    option(c, 7, &d);
    assert_eq!(replies(c), [3, 1], "GO {name}");
}

fn request(c: &mut TcpStream, kind: u16, cookie: u64, off: u64, len: u32) {
    let mut m = 0x2560_9513u32.to_be_bytes().to_vec();
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(&off.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    c.write_all(&m).unwrap();
}

/// Reads a simple reply: (error, cookie).
fn simple(c: &mut TcpStream) -> (u32, u64) {
    let mut h = [0u8; 16];
    c.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
    (
        u32::from_be_bytes(h[4..8].try_into().unwrap()),
        u64::from_be_bytes(h[8..16].try_into().unwrap()),
    )
}

fn closed(c: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(c.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn hostile_clients_get_errors_and_the_server_keeps_serving() {
    let c = manifest::chains()
        .into_iter()
        .find(|c| c.image == "imgstriped")
        .unwrap();
    let first = &c.v1[0];
    let size = truth(&c.image, &first.result).size;
    let srv = Server::start(&[&s(&first.path)]);
    let addr = srv.addr().to_string();
    // Garbage instead of the client flags and options: the connection is closed.
    let mut g = handshake(&addr);
    g.write_all(&[0xff; 64]).unwrap();
    assert!(closed(&mut g));
    let mut g = TcpStream::connect(&addr).unwrap();
    g.write_all(&[0u8, 0, 0, 0xf0]).unwrap();
    let mut hello = [0u8; 18];
    g.read_exact(&mut hello).unwrap();
    assert!(closed(&mut g), "unknown client flags must close");
    // An option of 1 GiB announced: closed before anything is allocated.
    let mut g = handshake(&addr);
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&(1u32 << 30).to_be_bytes());
    g.write_all(&m).unwrap();
    assert!(closed(&mut g));
    // Unknown option, unknown export, malformed GO: errors, the session goes on.
    let mut k = handshake(&addr);
    option(&mut k, 99, b"x");
    assert_eq!(replies(&mut k), [0x8000_0001]);
    let mut d = 7u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"nothing\0\0");
    option(&mut k, 7, &d);
    assert_eq!(replies(&mut k), [0x8000_0006]);
    option(&mut k, 7, &[0, 0, 0, 200]);
    assert_eq!(replies(&mut k), [0x8000_0003]);
    // Transmission: past the end, oversize, write, unknown command: errors, no payload.
    go(&mut k, "");
    request(&mut k, 0, 1, size - 512, 1024);
    assert_eq!(simple(&mut k), (22, 1));
    request(&mut k, 0, 2, 0, 64 << 20);
    assert_eq!(simple(&mut k), (22, 2));
    request(&mut k, 1, 3, 0, 4096);
    k.write_all(&[0xaa; 4096]).unwrap();
    assert_eq!(simple(&mut k), (1, 3));
    request(&mut k, 4, 4, 0, 4096);
    assert_eq!(simple(&mut k), (1, 4));
    request(&mut k, 42, 5, 0, 1);
    assert_eq!(simple(&mut k), (22, 5));
    request(&mut k, 7, 6, 0, 4096);
    assert_eq!(simple(&mut k), (22, 6), "BLOCK_STATUS without a context");
    request(&mut k, 3, 7, 0, 0);
    assert_eq!(simple(&mut k), (0, 7));
    request(&mut k, 0, 8, 0, 4096);
    assert_eq!(simple(&mut k), (0, 8));
    let mut data = vec![0u8; 4096];
    k.read_exact(&mut data).unwrap();
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("v1.raw");
    rbddiff(&["apply", "-q", "--create", "--to", &s(&raw), &s(&first.path)]);
    assert_eq!(data, std::fs::read(&raw).unwrap()[..4096]);
    // A client that asks for 32 MiB and hangs up before reading the reply.
    for _ in 0..3 {
        let mut h = handshake(&addr);
        go(&mut h, "");
        request(&mut h, 0, 9, 0, 32 << 20);
        drop(h);
    }
    // A client that sends a bad request magic mid-session is dropped.
    let mut b = handshake(&addr);
    go(&mut b, "");
    b.write_all(&[0u8; 28]).unwrap();
    assert!(closed(&mut b));
    // The server still serves: qemu-img sees the export.
    let info = run(Command::new("qemu-img").args(["info", "--output=json", &srv.uri]));
    assert!(
        info.contains(&format!("\"virtual-size\": {size}")),
        "{info}"
    );
    request(&mut k, 2, 10, 0, 0);
    assert!(closed(&mut k), "DISC ends the session");
    assert!(srv.stop().success(), "SIGTERM stops the server cleanly");
}

#[test]
fn a_unix_socket_is_served_and_removed_on_exit_and_remote_addresses_need_a_flag() {
    let c = manifest::chains()
        .into_iter()
        .find(|c| c.image == "img64k")
        .unwrap();
    let first = s(&c.v1[0].path);
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("nbd.sock");
    let mut child = Command::new(bin())
        .args(["serve", &first, "--socket", &s(&sock)])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("nbd+unix:///?socket="), "{line}");
    let mut u = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut hello = [0u8; 18];
    u.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    drop(u);
    signal(child.id() as i32, "INT");
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists(), "socket left behind");
    let out = Command::new(bin())
        .args(["serve", &first, "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--allow-remote") && err.contains("authentication"),
        "{err}"
    );
}

/// A map moved to its temporary file serves the same bytes and block status as one in
/// memory, and both equal the applied image, for every real chain, plain and compressed.
/// (Library level: needs no NBD client.)
#[test]
fn a_map_on_disk_serves_what_a_map_in_memory_serves() {
    use rbddiff::nbd::view::ChainView;
    use rbddiff::nbd::Export;
    let t = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for c in manifest::chains() {
        let chain = &c.v1;
        if chain.first().is_none_or(|d| d.from.is_some()) {
            continue;
        }
        let plain: Vec<PathBuf> = chain.iter().map(|d| d.path.clone()).collect();
        let zst: Vec<PathBuf> = chain
            .iter()
            .map(|d| {
                let out = t.path().join(format!("{}-{}.zst", c.image, d.stem()));
                rbddiff(&["compress", "-q", &s(&d.path), "-o", &s(&out)]);
                out
            })
            .collect();
        let raw = t.path().join(format!("{}.raw", c.image));
        let mut args = vec!["apply", "-q", "--create", "--to", raw.to_str().unwrap()];
        let files: Vec<String> = plain.iter().map(|p| s(p)).collect();
        args.extend(files.iter().map(String::as_str));
        rbddiff(&args);
        let want = std::fs::read(&raw).unwrap();
        for paths in [&plain, &zst] {
            let mem = ChainView::open(paths).unwrap();
            let disk = ChainView::open_with(paths, 1).unwrap();
            assert!(!mem.map_on_disk());
            assert_eq!(disk.map_on_disk(), mem.extents() > 1, "{}", c.image);
            assert_eq!(mem.extents(), disk.extents());
            assert_eq!(
                (mem.size(), disk.size()),
                (want.len() as u64, want.len() as u64)
            );
            // Reads at odd offsets and lengths across the image, and the status of each.
            let mut rng = common::gen::Rng::new(11);
            for _ in 0..200 {
                let at = rng.below(want.len() as u64);
                let len = 1 + rng.below((want.len() as u64 - at).min(300_000));
                let (mut a, mut b) = (vec![1u8; len as usize], vec![2u8; len as usize]);
                mem.read(at, &mut a).unwrap();
                disk.read(at, &mut b).unwrap();
                assert!(a == b, "{} read at {at} +{len}", c.image);
                assert!(
                    a == want[at as usize..(at + len) as usize],
                    "{} read at {at}",
                    c.image
                );
                assert_eq!(mem.status(at, len).unwrap(), disk.status(at, len).unwrap());
            }
        }
        checked += 1;
    }
    assert!(checked > 0, "no real chain starts with a full diff");
}
