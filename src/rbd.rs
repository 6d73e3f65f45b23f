//! The boundary to the `rbd` CLI: the only module that runs `rbd`.
//!
//! Every call passes the connection options as single `--option=VALUE` tokens; names that
//! reach `rbd` (image specs, snapshot names from `--snap` or from diff headers) are checked
//! first, so that `rbd` can never read one as an option.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::error::{Error, ErrorKind, Result};

/// How to run the `rbd` CLI: the executable and the connection options passed to every call.
/// `CEPH_CONF` / `CEPH_ARGS` in the environment are passed on as they are.
#[derive(Clone, Debug)]
pub struct Rbd {
    /// The executable (default `rbd`, found on `PATH`).
    pub program: PathBuf,
    /// `-c CONF`.
    pub conf: Option<PathBuf>,
    /// `--id USER`.
    pub id: Option<String>,
}

impl Default for Rbd {
    fn default() -> Self {
        Rbd {
            program: PathBuf::from("rbd"),
            conf: None,
            id: None,
        }
    }
}

impl Rbd {
    /// The `rbd` on `PATH`, connecting with `-c CONF` and `--id USER` when given.
    pub fn connect(conf: Option<PathBuf>, id: Option<String>) -> Rbd {
        Rbd {
            conf,
            id,
            ..Rbd::default()
        }
    }
}

/// What an `rbd` call printed and how it ended.
pub(crate) struct Ran {
    pub(crate) ok: bool,
    pub(crate) code: Option<i32>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: String,
}

impl Rbd {
    /// The command with the connection options, each one `--option=VALUE` token (a value
    /// is never a separate argument that could be read as an option).
    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        if let Some(conf) = &self.conf {
            let mut a = std::ffi::OsString::from("--conf=");
            a.push(conf);
            c.arg(a);
        }
        if let Some(id) = &self.id {
            c.arg(format!("--id={id}"));
        }
        c
    }

    pub(crate) fn spawn_error(&self, e: io::Error) -> Error {
        Error::from(io::Error::new(
            e.kind(),
            format!("cannot run {}: {e}", self.program.display()),
        ))
    }

    pub(crate) fn run(&self, args: &[&str]) -> Result<Ran> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(e))?;
        Ok(Ran {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    pub(crate) fn run_ok(&self, args: &[&str]) -> Result<Vec<u8>> {
        let r = self.run(args)?;
        if r.ok {
            Ok(r.stdout)
        } else {
            Err(rbd_failed(&format!("rbd {}", args.join(" ")), &r.stderr))
        }
    }

    /// The id of the image `spec` (`rbd info --format json`), none when rbd does not give
    /// one (a failing call included: the snapshot calls that follow report the problem).
    pub(crate) fn image_id(&self, spec: &str) -> Result<Option<String>> {
        let r = self.run(&["info", "--format", "json", spec])?;
        if !r.ok {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap_or_default();
        Ok(v["id"]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .map(String::from))
    }

    /// The first line of `rbd --version` (none when rbd fails or prints nothing usable).
    pub(crate) fn version(&self) -> Result<Option<String>> {
        let r = self.run(&["--version"])?;
        let out = String::from_utf8_lossy(&r.stdout);
        let line = out.lines().next().unwrap_or_default().trim();
        Ok((r.ok && !line.is_empty() && line.len() <= 256).then(|| line.to_string()))
    }

    /// The cluster fsid as rbd's configuration sets it (`rbd --show-config-value fsid`:
    /// the conf file, `CEPH_ARGS`); none when it is not set (rbd prints the nil UUID) or
    /// rbd fails. A client learns the fsid from the monitors only once connected, and
    /// rbd has no command that prints it.
    pub(crate) fn fsid(&self) -> Result<Option<String>> {
        let r = self.run(&["--show-config-value", "fsid"])?;
        let out = String::from_utf8_lossy(&r.stdout);
        let v = out.trim();
        let uuid = v.len() == 36
            && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
            && v.bytes().any(|b| b.is_ascii_hexdigit() && b != b'0');
        Ok((r.ok && uuid).then(|| v.to_ascii_lowercase()))
    }

    /// Snapshots of `spec` as `(id, name)`, oldest first.
    pub(crate) fn snapshots(&self, spec: &str) -> Result<Vec<(u64, String)>> {
        let out = self.run_ok(&["snap", "ls", "--format", "json", spec])?;
        let v: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|e| Error::invalid(format!("rbd snap ls {spec}: unexpected output: {e}")))?;
        let arr = v.as_array().ok_or_else(|| {
            Error::invalid(format!(
                "rbd snap ls {spec}: unexpected output (not a list)"
            ))
        })?;
        let mut snaps: Vec<(u64, String)> = arr
            .iter()
            .filter_map(|s| Some((s["id"].as_u64()?, s["name"].as_str()?.to_string())))
            .collect();
        snaps.sort();
        Ok(snaps)
    }
}

pub(crate) fn rbd_failed(what: &str, stderr: &str) -> Error {
    let msg = if stderr.is_empty() {
        format!("{what} failed")
    } else {
        format!("{what} failed: {stderr}")
    };
    Error::from(io::Error::other(msg))
}

/// Collects a child's stderr on a thread (so that neither side blocks on a full pipe).
pub(crate) fn collect_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    let err = child.stderr.take();
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = err {
            let _ = e.read_to_string(&mut s);
        }
        s.trim().to_string()
    })
}

/// Refuses a name that reaches `rbd` (or selects its files) when `rbd` could read it as an
/// option: Ceph's argument parser takes `--conf=…`, `--log_file=…` and any `--option=value`
/// anywhere on the command line. A name that starts with `-`, is empty, or holds a NUL or
/// another control character is refused; `what` says what the name is.
pub(crate) fn safe_arg<'a>(what: &str, s: &'a str) -> Result<&'a str> {
    if s.is_empty() || s.starts_with('-') || s.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{what} {s:?} is refused: it is empty, starts with '-' or holds a control \
             character (rbd could take it for an option)"
        )));
    }
    Ok(s)
}

/// `POOL/IMAGE` (or `POOL/NS/IMAGE`, or `IMAGE`) → the image name. The spec must be safe
/// to pass to `rbd` ([`safe_arg`]).
pub(crate) fn image_name(spec: &str) -> Result<&str> {
    safe_arg("image spec", spec)?;
    let name = spec.rsplit('/').next().unwrap_or(spec);
    if name.is_empty() || spec.contains('@') {
        return Err(Error::invalid(format!(
            "'{spec}' is not an image (POOL/IMAGE, without a snapshot)"
        )));
    }
    Ok(name)
}

/// True for the error of writing to a pipe whose reader has gone (rbd exited early).
pub(crate) fn is_broken_pipe(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Io(io) if io.kind() == io::ErrorKind::BrokenPipe)
}

/// Whether `rbd info` says the image does not exist (status 2, ENOENT).
fn is_missing(r: &Ran) -> bool {
    r.code == Some(2) || r.stderr.contains("No such file")
}

impl Rbd {
    /// Whether the image `spec` exists (`rbd info`); any failure other than "no such image"
    /// is an error.
    pub(crate) fn exists(&self, spec: &str) -> Result<bool> {
        let r = self.run(&["info", "--format", "json", spec])?;
        if r.ok {
            return Ok(true);
        }
        if is_missing(&r) {
            return Ok(false);
        }
        Err(rbd_failed(&format!("rbd info {spec}"), &r.stderr))
    }

    /// The size in bytes of the image (or snapshot) `spec`.
    pub(crate) fn size(&self, spec: &str) -> Result<u64> {
        let out = self.run_ok(&["info", "--format", "json", spec])?;
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        v["size"]
            .as_u64()
            .ok_or_else(|| Error::invalid(format!("rbd info {spec}: no size in its output")))
    }

    /// `rbd create --size SIZE spec`.
    pub(crate) fn create(&self, spec: &str, size: u64) -> Result<()> {
        self.run_ok(&["create", "--size", &format!("{size}B"), spec])
            .map(drop)
    }

    /// `rbd resize --allow-shrink --size SIZE spec`.
    pub(crate) fn resize(&self, spec: &str, size: u64) -> Result<()> {
        let size = format!("{size}B");
        self.run_ok(&[
            "resize",
            "--no-progress",
            "--allow-shrink",
            "--size",
            &size,
            spec,
        ])
        .map(drop)
    }

    /// `rbd snap create spec@snap`.
    pub(crate) fn snap_create(&self, spec: &str, snap: &str) -> Result<()> {
        let s = format!("{spec}@{}", safe_arg("snapshot name", snap)?);
        self.run_ok(&["snap", "create", "--no-progress", &s])
            .map(drop)
    }

    /// `rbd snap rm spec@snap`.
    pub(crate) fn snap_rm(&self, spec: &str, snap: &str) -> Result<()> {
        let s = format!("{spec}@{}", safe_arg("snapshot name", snap)?);
        self.run_ok(&["snap", "rm", "--no-progress", &s]).map(drop)
    }

    /// `rbd snap rollback spec@snap`: the image HEAD becomes the snapshot again.
    pub(crate) fn snap_rollback(&self, spec: &str, snap: &str) -> Result<()> {
        let s = format!("{spec}@{}", safe_arg("snapshot name", snap)?);
        self.run_ok(&["snap", "rollback", "--no-progress", &s])
            .map(drop)
    }

    /// Whether the image HEAD of `spec` holds any data (`rbd diff` of HEAD lists an extent),
    /// or, with `since`, differs from that snapshot.
    pub(crate) fn changed(&self, spec: &str, since: Option<&str>) -> Result<bool> {
        let mut args = vec!["diff".to_string(), "--format=json".to_string()];
        if let Some(s) = since {
            args.push(format!("--from-snap={}", safe_arg("snapshot name", s)?));
        }
        args.push(spec.to_string());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run_ok(&a)?;
        let v: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|e| Error::invalid(format!("rbd diff {spec}: unexpected output: {e}")))?;
        Ok(v.as_array().is_some_and(|a| !a.is_empty()))
    }

    /// `rbd rename from to` (both `POOL/IMAGE`, same pool).
    pub(crate) fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.run_ok(&[
            "rename",
            safe_arg("image spec", from)?,
            safe_arg("image spec", to)?,
        ])
        .map(drop)
    }

    /// Removes the image `spec` with its snapshots (`rbd snap purge`, `rbd rm`).
    pub(crate) fn remove(&self, spec: &str) -> Result<()> {
        self.run_ok(&["snap", "purge", "--no-progress", spec])?;
        self.run_ok(&["rm", "--no-progress", spec]).map(drop)
    }

    /// Starts `rbd export-diff [--from-snap=FROM] SPEC@SNAP -`, its stdout piped.
    pub(crate) fn spawn_export_diff(
        &self,
        spec: &str,
        from: Option<&str>,
        snap: &str,
    ) -> Result<Child> {
        let mut cmd = self.command();
        cmd.args(["export-diff", "--no-progress"]);
        if let Some(f) = from {
            cmd.arg(format!("--from-snap={}", safe_arg("snapshot name", f)?));
        }
        cmd.arg(format!("{spec}@{}", safe_arg("snapshot name", snap)?))
            .arg("-")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().map_err(|e| self.spawn_error(e))
    }

    /// Starts `rbd import-diff - SPEC`, its stdin piped.
    pub(crate) fn spawn_import_diff(&self, spec: &str) -> Result<Child> {
        self.command()
            .args(["import-diff", "--no-progress", "-", spec])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))
    }

    /// The sha256 (lowercase hex) of `rbd export SPEC@SNAP -`: every byte of the snapshot,
    /// read once.
    pub(crate) fn export_sha256(&self, spec: &str, snap: &str) -> Result<String> {
        use sha2::{Digest, Sha256};
        let s = format!("{spec}@{}", safe_arg("snapshot name", snap)?);
        let mut child = self
            .command()
            .args(["export", "--no-progress", &s, "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        let stderr = collect_stderr(&mut child);
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let read = match child.stdout.take() {
            Some(mut out) => loop {
                match out.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => sha.update(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            },
            None => Ok(()),
        };
        let status = child.wait()?;
        let err = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(rbd_failed(&format!("rbd export {s}"), &err));
        }
        read?;
        Ok(crate::sums::hex(&sha.finalize()))
    }
}

impl Rbd {
    /// The images of `pool` (`rbd ls`), sorted.
    pub(crate) fn images(&self, pool: &str) -> Result<Vec<String>> {
        let out = self.run_ok(&["ls", "--format", "json", safe_arg("pool", pool)?])?;
        let mut v: Vec<String> = serde_json::from_slice(&out)
            .map_err(|e| Error::invalid(format!("rbd ls {pool}: unexpected output: {e}")))?;
        v.sort();
        Ok(v)
    }
}
