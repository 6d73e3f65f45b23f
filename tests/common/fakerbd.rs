//! A fake cluster for offline tests: an `rbd` shell script that keeps images and their
//! snapshots in files. `rbd/vm` lives in `BIN` (`BIN/image.raw`), any other `rbd/NAME` in
//! `BIN/img/rbd_NAME`. `snap create` copies the image to `snaps/SNAP.raw` (kept after
//! `snap rm`, to check restores against) and gives it the next id; `snap ls` lists the
//! snapshots not removed; `export-diff` writes a real diff of a snapshot (from
//! `--from-snap=`'s when given) with `rbddiff create`; `import-diff` checks the start and end
//! snapshots as rbd does, applies the diff with `rbddiff apply` and makes the end snapshot;
//! `info`, `create`, `resize`, `rm`, `rename`, `diff` (changed or not), `export`, `snap
//! rollback|purge`, `ls`, `--version` and `--show-config-value fsid` answer as rbd would.
//! Every call is appended to `BIN/rbd.log`.

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
B='{bin}'; X='{exe}'
printf '%s ' "$@" >> "$B/rbd.log"; echo >> "$B/rbd.log"
last=; for a in "$@"; do last="$a"; done
# The directory of image POOL/NAME[@SNAP]: rbd/vm lives in $B itself, others in $B/img.
dir() {{ s="${{1%%@*}}"; case "$s" in rbd/vm) echo "$B" ;; */*) echo "$B/img/$(echo "$s" | tr / _)" ;; *) echo "$B/img/rbd_$s" ;; esac; }}
snapof() {{ case "$1" in *@*) echo "${{1#*@}}" ;; esac; }}
need() {{ [ -e "$1/image.raw" ] || {{ echo "rbd: error opening image: (2) No such file or directory" >&2; exit 2; }}; }}
nosnap() {{ echo "rbd: failed to open snapshot $1: (2) No such file or directory" >&2; exit 2; }}
bytes() {{ echo "${{1%B}}"; }}
size=; from=
for a in "$@"; do case "$a" in --from-snap=*) from="${{a#--from-snap=}}" ;; esac; done
prev=; for a in "$@"; do [ "$prev" = --size ] && size=$(bytes "$a"); prev="$a"; done
d=$(dir "$last"); snap=$(snapof "$last")
case "$1" in
  --version) echo 'ceph version 99.0.1 (fake) test (stable)'; exit 0 ;;
  --show-config-value) echo 5c9c5fc2-d960-477c-ab60-c9d8b2c68f59; exit 0 ;;
  info) need "$d"; f="$d/image.raw"
    if [ -n "$snap" ]; then [ -e "$d/snaps/$snap.id" ] || nosnap "$snap"; f="$d/snaps/$snap.raw"; fi
    id=fakeid01; [ "$d" = "$B" ] || id="fake-$(basename "$d")"
    echo "{{\"id\": \"$id\", \"name\": \"${{last##*/}}\", \"size\": $(stat -c %s "$f")}}"; exit 0 ;;
  ls) printf '['; sep=
    [ -e "$B/image.raw" ] && {{ printf '"vm"'; sep=', '; }}
    for f in "$B"/img/rbd_*/image.raw; do [ -e "$f" ] || continue
      n=$(basename "$(dirname "$f")"); printf '%s"%s"' "$sep" "${{n#rbd_}}"; sep=', '; done
    echo ']'; exit 0 ;;
  create) [ -e "$d/image.raw" ] && {{ echo "rbd: create error: (17) File exists" >&2; exit 17; }}
    mkdir -p "$d/snaps" && truncate -s "$size" "$d/image.raw"; exit 0 ;;
  resize) need "$d"; truncate -s "$size" "$d/image.raw"; exit 0 ;;
  rm) need "$d"; [ "$d" = "$B" ] && {{ echo "fake rbd: rbd/vm stays" >&2; exit 1; }}
    for f in "$d"/snaps/*.id; do [ -e "$f" ] && {{ echo "rbd: image has snapshots" >&2; exit 39; }}; done
    rm -rf "$d"; exit 0 ;;
  rename) to=$(dir "$last"); fr=; for a in "$@"; do case "$a" in rename|--*) ;; *) [ -z "$fr" ] && fr="$a" ;; esac; done
    fd=$(dir "$fr"); need "$fd"
    [ -e "$to/image.raw" ] && {{ echo "rbd: rename error: (17) File exists" >&2; exit 17; }}
    [ "$fd" = "$B" ] || [ "$to" = "$B" ] && {{ echo "fake rbd: rbd/vm keeps its name" >&2; exit 1; }}
    mv "$fd" "$to"; exit 0 ;;
  diff) need "$d"
    if [ -n "$from" ]; then [ -e "$d/snaps/$from.id" ] || nosnap "$from"
      cmp -s "$d/image.raw" "$d/snaps/$from.raw" && {{ echo '[]'; exit 0; }}
    else
      cmp -s -n "$(stat -c %s "$d/image.raw")" "$d/image.raw" /dev/zero && {{ echo '[]'; exit 0; }}
    fi
    echo '[{{"offset": 0, "length": 1, "exists": "true"}}]'; exit 0 ;;
  snap)
    need "$d"
    case "$2" in
      ls) printf '['; sep=
          for f in "$d"/snaps/*.id; do
            [ -e "$f" ] || continue
            printf '%s{{"id": %s, "name": "%s"}}' "$sep" "$(cat "$f")" "$(basename "$f" .id)"
            sep=', '
          done
          echo ']'; exit 0 ;;
      create) [ -e "$d/snaps/$snap.id" ] && {{ echo "rbd: snapshot exists" >&2; exit 17; }}
          id=$(cat "$B/next"); echo $((id + 1)) > "$B/next"
          cp "$d/image.raw" "$d/snaps/$snap.raw.tmp" && mv "$d/snaps/$snap.raw.tmp" "$d/snaps/$snap.raw"
          echo "$id" > "$d/snaps/$snap.id"; exit 0 ;;
      rm) [ -e "$d/snaps/$snap.id" ] || nosnap "$snap"; rm -f "$d/snaps/$snap.id"; exit 0 ;;
      purge) rm -f "$d"/snaps/*.id; exit 0 ;;
      rollback) [ -e "$d/snaps/$snap.id" ] || nosnap "$snap"
          cp "$d/snaps/$snap.raw" "$d/image.raw"; exit 0 ;;
    esac ;;
  export) for a in "$@"; do case "$a" in *@*) d=$(dir "$a"); snap=$(snapof "$a") ;; esac; done
    need "$d"; [ -e "$d/snaps/$snap.id" ] || nosnap "$snap"
    exec cat "$d/snaps/$snap.raw" ;;
  export-diff)
    spec=
    for a in "$@"; do case "$a" in *@*) spec="$a" ;; esac; done
    d=$(dir "$spec"); snap=$(snapof "$spec")
    [ -e "$d/snaps/$snap.id" ] || {{ echo "rbd: no snapshot $snap" >&2; exit 2; }}
    if [ -n "$from" ]; then
      exec "$X" create --from "$d/snaps/$snap.raw" --to-snap "$snap" --base "$d/snaps/$from.raw" --from-snap "$from" -o -
    fi
    exec "$X" create --from "$d/snaps/$snap.raw" --to-snap "$snap" -o - ;;
  import-diff) need "$d"
    # As rbd: the start snapshot must exist, the end snapshot must not; then the data, then
    # the end snapshot.
    t="$d/import.tmp"; cat > "$t" || exit 1
    meta=$("$X" inspect --json "$t") || {{ echo "rbd: import-diff failed: (74) Bad message" >&2; rm -f "$t"; exit 74; }}
    f=$(echo "$meta" | sed -n 's/.*"from_snap": "\(.*\)",/\1/p' | head -1)
    e=$(echo "$meta" | sed -n 's/.*"to_snap": "\(.*\)",/\1/p' | head -1)
    [ -z "$f" ] || [ -e "$d/snaps/$f.id" ] || {{ echo "rbd: start snapshot '$f' does not exist in the image, aborting" >&2; rm -f "$t"; exit 22; }}
    [ -z "$e" ] || [ ! -e "$d/snaps/$e.id" ] || {{ echo "rbd: end snapshot '$e' already exists, aborting" >&2; rm -f "$t"; exit 17; }}
    "$X" apply --force --quiet --state-file "$d/import.state" -o "$d/image.raw" "$t" >/dev/null || {{ rm -f "$t" "$d/import.state"; exit 74; }}
    rm -f "$t" "$d/import.state"
    [ -z "$e" ] && exit 0
    id=$(cat "$B/next"); echo $((id + 1)) > "$B/next"
    cp "$d/image.raw" "$d/snaps/$e.raw" && echo "$id" > "$d/snaps/$e.id"; exit 0 ;;
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

    /// The snapshots of `rbd/vm` (not removed), as `(id, name)`, oldest first.
    pub fn snapshots(&self) -> Vec<(u64, String)> {
        self.snap_ids("vm")
    }

    /// The sha256 of the image as snapshot `name` holds it.
    pub fn snap_sha256(&self, name: &str) -> String {
        sha256_file(&self.bin.join("snaps").join(format!("{name}.raw")))
    }

    /// The directory of image `rbd/NAME` (`rbd/vm`: [`FakeCluster::bin`]).
    pub fn image_dir(&self, name: &str) -> PathBuf {
        match name {
            "vm" => self.bin.clone(),
            n => self.bin.join("img").join(format!("rbd_{n}")),
        }
    }

    /// Whether image `rbd/NAME` exists.
    pub fn has_image(&self, name: &str) -> bool {
        self.image_dir(name).join("image.raw").exists()
    }

    /// The sha256 of image `rbd/NAME` (its HEAD).
    pub fn image_sha256(&self, name: &str) -> String {
        sha256_file(&self.image_dir(name).join("image.raw"))
    }

    /// The snapshot names of image `rbd/NAME` (not removed), oldest first.
    pub fn snaps_of(&self, name: &str) -> Vec<String> {
        self.snap_ids(name).into_iter().map(|(_, n)| n).collect()
    }

    /// The snapshots of image `rbd/NAME` (not removed), as `(id, name)`, oldest first.
    fn snap_ids(&self, name: &str) -> Vec<(u64, String)> {
        let dir = self.image_dir(name).join("snaps");
        let mut v: Vec<(u64, String)> = fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| {
                    let n = e.ok()?.file_name().to_string_lossy().into_owned();
                    let snap = n.strip_suffix(".id")?.to_string();
                    let id = fs::read_to_string(dir.join(&n)).ok()?;
                    Some((id.trim().parse().ok()?, snap))
                })
                .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
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
