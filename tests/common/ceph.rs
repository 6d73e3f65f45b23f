//! Ceph from the tests: `rbd merge-diff` as an offline reference (needs only
//! the `rbd` binary from ceph-common) and a throw-away live cluster started
//! by `tests/harness/ceph-cluster.sh` (needs ceph-mon and ceph-osd too).
//!
//! Set `RBDDIFF_REQUIRE_CEPH=1` (CI does) to turn "Ceph is not installed" and
//! "the cluster did not start" into test failures instead of skips.

use super::manifest::sha256_reader;
use std::env;
use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// Pool the harness creates and initialises.
pub const POOL: &str = "rbd";

/// True when `RBDDIFF_REQUIRE_CEPH=1`: missing Ceph must fail, not skip.
pub fn ceph_required() -> bool {
    env::var("RBDDIFF_REQUIRE_CEPH").is_ok_and(|v| v == "1")
}

/// Full path of an executable `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Is the `rbd` CLI on `PATH`?
pub fn rbd_available() -> bool {
    which("rbd").is_some()
}

/// `rbd -c /dev/null merge-diff --no-progress A B OUT`: fully offline, silent
/// on success. OUT must not exist yet (rbd fails with status 17 otherwise).
pub fn rbd_merge_diff(a: &Path, b: &Path, out: &Path) -> io::Result<Output> {
    Command::new("rbd")
        .args(["-c", "/dev/null", "merge-diff", "--no-progress"])
        .args([a, b, out])
        .env_remove("CEPH_ARGS")
        .stdin(Stdio::null())
        .output()
}

/// `<crate>/tests/harness/ceph-cluster.sh`.
pub fn harness_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("harness")
        .join("ceph-cluster.sh")
}

/// Panics when Ceph is required, otherwise prints a note; for "cannot run".
fn unavailable(why: &str) -> Option<Cluster> {
    if ceph_required() {
        panic!("RBDDIFF_REQUIRE_CEPH=1 but {why}");
    }
    eprintln!(
        "note: live Ceph tests skipped: {why} (set RBDDIFF_REQUIRE_CEPH=1 to make this an error)"
    );
    None
}

/// A running single-node cluster (1 mon + 1 memstore OSD on 127.0.0.1,
/// pool `rbd`) with its state in a temporary directory. Dropping it stops
/// the daemons and removes the directory.
///
/// Start one per test binary, inside one `#[test]` function, so that the
/// cluster is stopped before the binary exits. If the test process is killed
/// instead, a watchdog left by the harness stops the daemons within ~1 s.
pub struct Cluster {
    conf: PathBuf,
    /// The S3 gateway's `AWS_*` variables, once [`Cluster::start_gateway`] has run.
    s3_env: Vec<(String, String)>,
    counter: AtomicU64,
    stopped: bool,
    // Declared last: removed only after `Drop::drop` has stopped the daemons.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a cluster. Returns `None` (after printing why) when ceph-mon,
    /// ceph-osd or rbd is not installed or the start fails, unless
    /// `RBDDIFF_REQUIRE_CEPH=1`, in which case it panics.
    pub fn start() -> Option<Cluster> {
        match Self::try_start() {
            Ok(c) => Some(c),
            Err(why) => unavailable(&why),
        }
    }

    /// Starts a cluster, or says why it cannot run (Ceph not installed, the start failed).
    pub fn try_start() -> Result<Cluster, String> {
        for bin in ["ceph-mon", "ceph-osd", "rbd", "ceph"] {
            if which(bin).is_none() {
                return Err(format!(
                    "{bin} is not installed (apt-get install ceph-mon ceph-osd ceph-common)"
                ));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("rbddiff-ceph-")
            .tempdir()
            .expect("create temp dir");
        let t0 = std::time::Instant::now();
        let out = Command::new("bash")
            .arg(harness_script())
            .arg("start")
            .arg(dir.path())
            .env("CEPH_CLUSTER_OWNER", std::process::id().to_string())
            .env_remove("CEPH_CONF")
            .env_remove("CEPH_ARGS")
            .stdin(Stdio::null())
            .output()
            .expect("run tests/harness/ceph-cluster.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let conf = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export CEPH_CONF="))
            .map(PathBuf::from);
        let conf = match (out.status.success(), conf) {
            (true, Some(conf)) => conf,
            _ => {
                let msg = format!(
                    "the Ceph cluster did not start ({}):\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                // Make sure nothing stays running, whatever state it got to.
                let _ = Command::new("bash")
                    .arg(harness_script())
                    .arg("stop")
                    .arg(dir.path())
                    .output();
                return Err(msg);
            }
        };
        eprintln!(
            "ceph cluster up in {:.1} s ({})",
            t0.elapsed().as_secs_f64(),
            dir.path().display()
        );
        Ok(Cluster {
            conf,
            s3_env: Vec::new(),
            counter: AtomicU64::new(0),
            stopped: false,
            dir,
        })
    }

    /// Starts an S3 gateway (radosgw on 127.0.0.1, one user) on this cluster; afterwards
    /// [`Cluster::s3_env`] holds the variables a client needs. Says why when radosgw is not
    /// installed or does not start.
    pub fn start_gateway(&mut self) -> Result<(), String> {
        if which("radosgw").is_none() {
            return Err("radosgw is not installed (apt-get install radosgw)".to_string());
        }
        let t0 = std::time::Instant::now();
        let out = Command::new("bash")
            .arg(harness_script())
            .arg("rgw")
            .arg(self.dir.path())
            .env_remove("CEPH_ARGS")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run tests/harness/ceph-cluster.sh rgw: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "the S3 gateway did not start ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.s3_env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export AWS_"))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (format!("AWS_{k}"), v.to_string()))
            .collect();
        if self.s3_env.is_empty() {
            return Err("the S3 gateway started but printed no AWS_ variables".to_string());
        }
        eprintln!("S3 gateway up in {:.1} s", t0.elapsed().as_secs_f64());
        Ok(())
    }

    /// The gateway's `AWS_*` variables (endpoint, keys, region, `AWS_ALLOW_HTTP`); empty
    /// before [`Cluster::start_gateway`].
    pub fn s3_env(&self) -> &[(String, String)] {
        &self.s3_env
    }

    /// One of the gateway's variables, e.g. `s3_var("AWS_ENDPOINT_URL")`.
    pub fn s3_var(&self, name: &str) -> &str {
        self.s3_env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name}: no S3 gateway started"))
    }

    /// Creates a bucket named from `prefix` (made unique; returned) on the gateway, with a
    /// signed `PUT` from curl. Panics on failure.
    pub fn create_bucket(&self, prefix: &str) -> String {
        let name = self.unique_name(prefix).to_lowercase();
        self.s3_request("PUT", &name);
        name
    }

    /// A signed request (curl's SigV4) `METHOD ENDPOINT/path` to the gateway; its answer.
    /// Panics unless it succeeds.
    pub fn s3_request(&self, method: &str, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-s", "-S", "-f", "-X", method, "--aws-sigv4"])
            .arg(format!("aws:amz:{}:s3", self.s3_var("AWS_REGION")))
            .arg("--user")
            .arg(format!(
                "{}:{}",
                self.s3_var("AWS_ACCESS_KEY_ID"),
                self.s3_var("AWS_SECRET_ACCESS_KEY")
            ))
            // curl 7.88 signs wrongly without it, and the gateway answers SignatureDoesNotMatch.
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .arg(format!("{}/{path}", self.s3_var("AWS_ENDPOINT_URL")))
            .stdin(Stdio::null())
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "{method} {path} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes and zeroes random extents all over the image HEAD (through `rbd import-diff` of a
    /// diff to HEAD, which creates no snapshot); every call writes different data.
    pub fn write_noise(&self, image: &str) {
        use std::io::Write;
        static SEED: AtomicU64 = AtomicU64::new(1);
        let spec = format!("rbd/{image}");
        let info = self.rbd_ok(["info", "--format", "json", &spec]);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        let size = info["size"].as_u64().unwrap();
        let mut rng = super::gen::Rng::new(SEED.fetch_add(1, Ordering::Relaxed));
        let meta = rbddiff::Metadata {
            image_size: Some(size),
            ..rbddiff::Metadata::default()
        };
        let mut w = rbddiff::DiffWriter::new(Vec::new(), rbddiff::Version::V1, &meta).unwrap();
        let blocks = size / 4096;
        let mut at = rng.below(16);
        while at < blocks {
            let n = (1 + rng.below(16)).min(blocks - at);
            if rng.below(5) == 0 {
                w.zero(rbddiff::Extent::new(at * 4096, n * 4096)).unwrap();
            } else {
                let data = super::gen::noise(rng.next(), (n * 4096) as usize);
                w.write_data(at * 4096, &data).unwrap();
            }
            at += n + rng.below(64);
        }
        let diff = w.finish().unwrap();
        let mut child = self
            .rbd_command()
            .args(["import-diff", "--no-progress", "-", &spec])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&diff).unwrap();
        assert!(child.wait().unwrap().success(), "import-diff into {spec}");
    }

    /// The cluster's ceph.conf (what `CEPH_CONF` must point at).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The state directory (holds `log/` with the daemon logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An `rbd` command aimed at this cluster; add arguments and run it.
    pub fn rbd_command(&self) -> Command {
        let mut c = Command::new("rbd");
        c.env("CEPH_CONF", &self.conf)
            .env_remove("CEPH_ARGS")
            .stdin(Stdio::null());
        c
    }

    /// Runs `rbd ARGS...` against this cluster; does not check the status.
    pub fn rbd<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.rbd_command().args(args).output().expect("run rbd")
    }

    /// Runs `rbd ARGS...` and panics with its stderr unless it succeeds.
    pub fn rbd_ok<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.rbd(&args);
        if !out.status.success() {
            let shown: Vec<_> = args
                .iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect();
            panic!(
                "rbd {} failed ({}): {}",
                shown.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// A fresh image name, unique in this cluster: `PREFIX-PID-N`.
    pub fn unique_name(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{}-{n}", std::process::id())
    }

    /// Creates an image of `size_bytes` named from `name` (made unique; the
    /// real name is returned). Panics on failure.
    pub fn create_image(&self, name: &str, size_bytes: u64) -> String {
        self.create_image_with(name, size_bytes, &[])
    }

    /// Like [`Cluster::create_image`] with extra `rbd create` options, e.g.
    /// `&["--object-size", "64K"]`.
    pub fn create_image_with(&self, name: &str, size_bytes: u64, extra: &[&str]) -> String {
        let name = self.unique_name(name);
        let size = format!("{size_bytes}B");
        let spec = spec(&name);
        let mut args = vec!["create", "--size", &size];
        args.extend_from_slice(extra);
        args.push(&spec);
        self.rbd_ok(args);
        name
    }

    /// `rbd import-diff --no-progress PATH rbd/IMAGE`; the caller checks the status.
    pub fn import_diff(&self, path: &Path, image: &str) -> Output {
        self.rbd_command()
            .args(["import-diff", "--no-progress"])
            .arg(path)
            .arg(spec(image))
            .output()
            .expect("run rbd import-diff")
    }

    /// `rbd import --export-format 2 --no-progress PATH rbd/NAME` into a new
    /// image named from `name` (made unique; returned with the output).
    pub fn import_export_format2(&self, path: &Path, name: &str) -> (String, Output) {
        let name = self.unique_name(name);
        let out = self
            .rbd_command()
            .args(["import", "--export-format", "2", "--no-progress"])
            .arg(path)
            .arg(spec(&name))
            .output()
            .expect("run rbd import");
        (name, out)
    }

    /// sha256 of the raw image `rbd export SPEC -` writes, where SPEC is
    /// `image` or `image@snap` (pool `rbd` unless given). Panics on failure.
    pub fn export_sha256(&self, image_or_snap: &str) -> String {
        let spec = spec(image_or_snap);
        let mut child = self
            .rbd_command()
            .args(["export", "--no-progress", &spec, "-"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run rbd export");
        let sha = sha256_reader(child.stdout.take().unwrap()).expect("read rbd export output");
        let out = child.wait_with_output().expect("wait for rbd export");
        assert!(
            out.status.success(),
            "rbd export {spec} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        sha
    }

    /// Snapshot names of `image`, oldest first.
    pub fn snapshots(&self, image: &str) -> Vec<String> {
        self.snapshot_list(image)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    fn snapshot_list(&self, image: &str) -> Vec<(String, bool)> {
        let out = self.rbd_ok(["snap", "ls", "--format", "json", &spec(image)]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("rbd snap ls json");
        v.as_array()
            .expect("rbd snap ls: array")
            .iter()
            .map(|s| {
                let name = s["name"].as_str().expect("snap name").to_string();
                let protected = match &s["protected"] {
                    serde_json::Value::Bool(b) => *b,
                    serde_json::Value::String(t) => t == "true",
                    _ => false,
                };
                (name, protected)
            })
            .collect()
    }

    /// Removes an image with all its snapshots (unprotecting them first).
    /// Panics on failure.
    pub fn remove_image(&self, image: &str) {
        for (snap, protected) in self.snapshot_list(image) {
            if protected {
                self.rbd_ok(["snap", "unprotect", &format!("{}@{snap}", spec(image))]);
            }
        }
        self.rbd_ok(["snap", "purge", "--no-progress", &spec(image)]);
        self.rbd_ok(["rm", "--no-progress", &spec(image)]);
    }

    /// Stops the daemons now (also done on drop). Returns the harness output.
    pub fn stop(&mut self) -> io::Result<Output> {
        self.stopped = true;
        Command::new("bash")
            .arg(harness_script())
            .arg("stop")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .output()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped {
            match self.stop() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "ceph cluster stop failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("ceph cluster stop failed: {e}"),
            }
        }
    }
}

/// `image[@snap]` -> `rbd/image[@snap]`; a spec with a pool stays as is.
fn spec(image_or_snap: &str) -> String {
    if image_or_snap.contains('/') {
        image_or_snap.to_string()
    } else {
        format!("{POOL}/{image_or_snap}")
    }
}
