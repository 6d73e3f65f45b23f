#!/usr/bin/env bash
# Seeds fuzz/corpus/parse_both from the small files of testdata/ (real Ceph diffs up to
# 64 KiB, the hand-made broken files). Each seed is the fuzz input layout of parse_both:
# a flags byte, a count of read sizes, the read sizes, then the file.
# Usage: bash fuzz/seed-corpus.sh   (the corpus directory is not committed)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
out=corpus/parse_both
mkdir -p "$out"
n=0
while IFS= read -r -d '' f; do
  [ "$(stat -c %s "$f")" -le 65536 ] || continue
  base=$(echo "${f#../}" | tr '/' '_')
  # whole payload reads, 4096-byte reads
  { printf '\x00\x00'; cat "$f"; } > "$out/$base.a"
  # partial payload reads, reads of 1, 7 and 200 bytes
  { printf '\x01\x03\x00\x06\xc7'; cat "$f"; } > "$out/$base.b"
  n=$((n + 1))
done < <(find ../testdata/real ../testdata/err -type f \( -name '*.diff' -o -name '*.rbdimg' -o -name '*.header' \) -print0)
echo "seeded $n files into fuzz/$out"
