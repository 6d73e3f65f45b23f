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

# merge: real chains of two and three files; the layout is a flags byte (bit 0: v2 output,
# bit 1: --force-chain, bit 2: three inputs), two little-endian u32 lengths, then the files.
out=corpus/merge
mkdir -p "$out"
le32() { printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)))"; }
n=0
for d in ../testdata/real/img64k ../testdata/real/img64k/v2 ../testdata/real/img4m; do
  set -- "$d/v3_v4.diff" "$d/v4_v5.diff" "$d/v5_head.diff"
  [ -f "$1" ] && [ -f "$2" ] && [ -f "$3" ] || continue
  a=$(stat -c %s "$1") b=$(stat -c %s "$2")
  { printf '\x00'; le32 "$a"; le32 0; cat "$1" "$2"; } > "$out/$(basename "$d").2"
  { printf '\x05'; le32 "$a"; le32 "$b"; cat "$1" "$2" "$3"; } > "$out/$(basename "$d").3"
  n=$((n + 2))
done
echo "seeded $n chains into fuzz/$out"

# archive: small real diffs compressed by rbddiff (mode byte 0), and their record indexes
# without the checksum (mode byte 1).
out=corpus/archive
mkdir -p "$out"
bin=../target/release/rbddiff
[ -x "$bin" ] || (cd .. && cargo build --release --quiet --bin rbddiff)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
for f in ../testdata/real/img64k/v3_v4.diff ../testdata/real/img64k/v5_head.diff \
         ../testdata/real/img64k/v2/v5_head.diff ../testdata/real/img64k/v2/export-format-2.header; do
  [ -f "$f" ] || continue
  base=$(echo "${f#../}" | tr '/' '_')
  if "$bin" compress "$f" -o "$tmp/$base.zst" --force >/dev/null 2>&1; then
    { printf '\x00'; cat "$tmp/$base.zst"; } > "$out/$base"
    n=$((n + 1))
  fi
done
echo "seeded $n archives into fuzz/$out"

# sums (mode 1: a lie about a real diff; mode 2: streamed in reads of 1, 8 and 200 bytes) and
# compress (a frame-target byte, then the diff): the small real diffs.
mkdir -p corpus/sums corpus/compress
n=0
for f in ../testdata/real/img64k/v3_v4.diff ../testdata/real/img64k/v5_head.diff \
         ../testdata/real/img64k/v2/v5_head.diff ../testdata/real/img64k/v2/v3_v4.diff; do
  [ -f "$f" ] || continue
  base=$(echo "${f#../}" | tr '/' '_')
  { printf '\x01\x00\x02\x05\x07'; cat "$f"; } > "corpus/sums/$base.lie"
  { printf '\x02\x03\x00\x07\xc7'; cat "$f"; } > "corpus/sums/$base.stream"
  { printf '\x00'; cat "$f"; } > "corpus/compress/$base"
  n=$((n + 1))
done
echo "seeded $n diffs into fuzz/corpus/sums and fuzz/corpus/compress"

# nbd: a whole client session (flags, STRUCTURED_REPLY, SET_META_CONTEXT base:allocation,
# LIST, GO, a read, a block status, a write, DISC), and its prefixes cut at each message.
out=corpus/nbd
mkdir -p "$out"
hex() { printf "$(echo "$1" | sed 's/../\\x&/g')"; }
{
  hex 00000003
  printf IHAVEOPT; hex 0000000800000000
  printf IHAVEOPT; hex 0000000a0000001b00000000000000010000000f; printf 'base:allocation'
  printf IHAVEOPT; hex 0000000300000000
  printf IHAVEOPT; hex 0000000700000006000000000000
  hex 25609513000000000000000000000001000000000000000000001000
  hex 25609513000000070000000000000002000000000000000000100000
  hex 25609513000000010000000000000003000000000000000000000004; hex aabbccdd
  hex 25609513000000020000000000000004000000000000000000000000
} > "$out/session"
echo "seeded 1 session into fuzz/$out"
