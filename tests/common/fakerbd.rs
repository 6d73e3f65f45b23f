//! A fake cluster for offline `backup` tests: an `rbd` shell script that keeps one image
//! (`BIN/image.raw`) and its snapshots in files. `snap create` copies the image to
//! `BIN/snaps/NAME.raw` (kept after `snap rm`, to check restores against) and gives it the
//! next id; `snap ls` lists the snapshots not removed; `export-diff` writes a real diff of a
//! snapshot (from `--from-snap=`'s when given) with `rbddiff create`; `info`, `--version` and
//! `--show-config-value fsid` answer as rbd would. Every call is appended to `BIN/rbd.log`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::gen::{noise, path_str as s, Rng};
use super::manifest::sha256_file;

/// One fake cluster holding the image `rbd/vm`.
pub struct FakeCluster {
    /// Where the script and its state live.
    pub bin: PathBuf,
}

impl FakeCluster {
    /// A cluster in `bin` whose image holds `size` bytes of noise.
    pub fn new(bin: &Path, size: usize) -> FakeCluster {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(bin.join("snaps")).unwrap();
        fs::write(bin.join("image.raw"), noise(1, size)).unwrap();
        fs::write(bin.join("next"), "1\n").unwrap();
        let script = format!(
            r#"#!/bin/sh
B='{bin}'
printf '%s ' "$@" >> "$B/rbd.log"; echo >> "$B/rbd.log"
last=; for a in "$@"; do last="$a"; done
case "$1" in
  --version) echo 'ceph version 99.0.1 (fake) test (stable)'; exit 0 ;;
  --show-config-value) echo 5c9c5fc2-d960-477c-ab60-c9d8b2c68f59; exit 0 ;;
  info) echo '{{"id": "fakeid01", "name": "vm"}}'; exit 0 ;;
  snap)
    snap="${{last#*@}}"
    case "$2" in
      ls) printf '['; sep=
          for f in "$B"/snaps/*.id; do
            [ -e "$f" ] || continue
            printf '%s{{"id": %s, "name": "%s"}}' "$sep" "$(cat "$f")" "$(basename "$f" .id)"
            sep=', '
          done
          echo ']'; exit 0 ;;
      create) [ -e "$B/snaps/$snap.id" ] && {{ echo "rbd: snapshot exists" >&2; exit 17; }}
          id=$(cat "$B/next"); echo $((id + 1)) > "$B/next"
          cp "$B/image.raw" "$B/snaps/$snap.raw.tmp" && mv "$B/snaps/$snap.raw.tmp" "$B/snaps/$snap.raw"
          echo "$id" > "$B/snaps/$snap.id"; exit 0 ;;
      rm) rm -f "$B/snaps/$snap.id"; exit 0 ;;
    esac ;;
  export-diff)
    from=; spec=
    for a in "$@"; do case "$a" in --from-snap=*) from="${{a#--from-snap=}}" ;; *@*) spec="$a" ;; esac; done
    snap="${{spec#*@}}"
    [ -e "$B/snaps/$snap.id" ] || {{ echo "rbd: no snapshot $snap" >&2; exit 2; }}
    if [ -n "$from" ]; then
      exec '{exe}' create --from "$B/snaps/$snap.raw" --to-snap "$snap" --base "$B/snaps/$from.raw" --from-snap "$from" -o -
    fi
    exec '{exe}' create --from "$B/snaps/$snap.raw" --to-snap "$snap" -o - ;;
esac
echo "fake rbd: unexpected call: $*" >&2; exit 1
"#,
            bin = bin.display(),
            exe = env!("CARGO_BIN_EXE_rbddiff"),
        );
        let rbd = bin.join("rbd");
        fs::write(&rbd, script).unwrap();
        fs::set_permissions(&rbd, fs::Permissions::from_mode(0o755)).unwrap();
        FakeCluster {
            bin: bin.to_path_buf(),
        }
    }

    /// Writes a few random 4 KiB-aligned blocks of the image.
    pub fn write(&self, rng: &mut Rng) {
        let p = self.bin.join("image.raw");
        let mut img = fs::read(&p).unwrap();
        for _ in 0..4 {
            let n = 4096 * (1 + rng.below(8) as usize);
            let at = 4096 * rng.below(((img.len() - n) / 4096) as u64) as usize;
            img[at..at + n].copy_from_slice(&noise(rng.next(), n));
        }
        fs::write(&p, img).unwrap();
    }

    /// The snapshots on the cluster (not removed), as `(id, name)`, oldest first.
    pub fn snapshots(&self) -> Vec<(u64, String)> {
        let mut v: Vec<(u64, String)> = fs::read_dir(self.bin.join("snaps"))
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                let name = n.strip_suffix(".id")?.to_string();
                let id = fs::read_to_string(self.bin.join("snaps").join(&n)).ok()?;
                Some((id.trim().parse().ok()?, name))
            })
            .collect();
        v.sort();
        v
    }

    /// The sha256 of the image as snapshot `name` holds it.
    pub fn snap_sha256(&self, name: &str) -> String {
        sha256_file(&self.bin.join("snaps").join(format!("{name}.raw")))
    }

    /// `rbddiff ARGS` with this cluster's `rbd` first on `PATH`.
    pub fn rbddiff(&self, args: &[&str]) -> Command {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbddiff"));
        c.args(args).env("PATH", path);
        c
    }
}

/// The restorable snapshots of `vm` in `dir`, in the graph's snapshot order.
pub fn restorable(dir: &Path) -> Vec<String> {
    let g = rbddiff::archive::graph::discover(dir, "vm").unwrap();
    g.restorable(&Default::default())
        .into_iter()
        .map(|r| r.0)
        .collect()
}

/// The sha256 of snapshot `snap` of `vm` in `dir`, restored offline (in `work`) through the
/// path restore chooses.
pub fn restored(dir: &Path, work: &Path, snap: &str) -> String {
    let g = rbddiff::archive::graph::discover(dir, "vm").unwrap();
    let c = g
        .choose(Some(snap))
        .unwrap_or_else(|e| panic!("{snap}: {e}"));
    let files: Vec<String> = c.path.iter().map(|&i| s(&g.edges[i].file.path)).collect();
    let target = work.join("restored.raw");
    let _ = fs::remove_file(&target);
    let _ = fs::remove_file(rbddiff::apply::state_path(&target));
    let opts = rbddiff::apply::ApplyOptions {
        create: true,
        ..Default::default()
    };
    rbddiff::apply::apply_chain(&files, &target, &opts).unwrap();
    sha256_file(&target)
}
