#!/usr/bin/env bash
# Whole-process benchmark: `rbddiff inspect FILE` against `cat FILE > /dev/null` on a
# 1.5 GiB diff of 1 MiB extents, both from page cache, timed by hyperfine in the same run.
# Target: inspect takes at most 1% of the time of reading the file. Process start-up (about
# 1 ms, more than inspect's own work) is timed too (`rbddiff --version`, `cat /dev/null`) and
# reported both included and subtracted; the exit status follows the subtracted ratio, which
# is what `cargo bench --bench inspect` measures in-process.
#
# Usage: bash benches/inspect-vs-read.sh [SIZE_MIB]   (needs hyperfine; ~2x SIZE free in TMPDIR)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
size_mib=${1:-1536}
command -v hyperfine >/dev/null || { echo "hyperfine is required" >&2; exit 2; }

cargo build --release --quiet --bin rbddiff
tmp=$(mktemp -d "${TMPDIR:-/tmp}/rbddiff-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
file=$tmp/big.diff
echo "synthesizing $size_mib MiB of 1 MiB 'w' records in $file"
cargo bench --quiet --bench synth_inspect -- "$file" "$size_mib" 1024
ls -l "$file"
bin=target/release/rbddiff
"$bin" inspect "$file"

# Warm the page cache, then time both in one hyperfine run.
cat "$file" > /dev/null
hyperfine --warmup 3 --runs 20 -N --export-json "$tmp/h.json" \
  "$bin inspect $file" \
  "cat $file" \
  "$bin --version" \
  "cat /dev/null" >&2

python3 - "$tmp/h.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
inspect, cat, start, cat_start = (x["mean"] for x in r)
net = (inspect - start) / (cat - cat_start)
print(f"inspect {inspect*1e3:.2f} ms, cat {cat*1e3:.2f} ms: ratio {100*inspect/cat:.2f}%")
print(f"without process start-up ({start*1e3:.2f} ms, {cat_start*1e3:.2f} ms): "
      f"ratio {100*net:.2f}% (target <= 1%)")
sys.exit(0 if net <= 0.01 else 1)
PY
