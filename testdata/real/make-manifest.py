#!/usr/bin/env python3
"""Copy the selected subset of the Ceph-generated corpus into this directory,
check every file against the corpus SHA256SUMS, rebuild the img64k
export-format-2 stream, and write MANIFEST.tsv.

usage: make-manifest.py [CORPUS_DIR]
CORPUS_DIR defaults to ../../../shared/corpus relative to this script
(the corpus itself is produced by a real Ceph cluster, see README.md).
Run it again to refresh; it only writes inside this directory.
"""
import hashlib
import os
import re
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.abspath(sys.argv[1] if len(sys.argv) > 1
                         else os.path.join(HERE, '..', '..', '..', 'shared', 'corpus'))
CHAIN = ['full_v1', 'v1_v2', 'v2_v3', 'v3_v4', 'v4_v5', 'v5_head']
INCR = ['v1_v2', 'v2_v3', 'v3_v4', 'v4_v5', 'v5_head']
MERGED = ['v1_v3', 'v2_v5', 'v3_v5', 'full_v5', 'full_head']
BIG = 1 << 20          # img4m: skip anything larger than this


def sha(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for b in iter(lambda: f.read(1 << 20), b''):
            h.update(b)
    return h.hexdigest()


def selection():
    """Relative paths (to the corpus root) to copy, in manifest order."""
    sel = ['ground-truth.tsv']
    for img in ('img64k', 'imgstriped'):
        sel += ['%s/%s.diff' % (img, n) for n in CHAIN + ['v1_v3']]
        sel += ['%s/v2/export-format-2.header' % img, '%s/v2/carve.txt' % img]
        sel += ['%s/v2/%s.diff' % (img, n) for n in CHAIN]
        sel += ['%s/rbd-merge/%s.diff' % (img, n) for n in MERGED]
        if img == 'img64k':
            sel += ['%s/whole-object/%s.diff' % (img, n) for n in CHAIN]
    img = 'img4m'
    for rel in (['%s/%s.diff' % (img, n) for n in INCR + ['v1_v3']]
                + ['%s/v2/export-format-2.header' % img, '%s/v2/carve.txt' % img]
                + ['%s/v2/%s.diff' % (img, n) for n in INCR]):
        if os.path.getsize(os.path.join(CORPUS, rel)) <= BIG:
            sel.append(rel)
    return sel


def parse_manifest():
    """corpus MANIFEST.txt -> {rel: {format, from, to, size, bytes, sha256, apply, result}}"""
    out, cur = {}, None
    with open(os.path.join(CORPUS, 'MANIFEST.txt')) as f:
        for line in f:
            line = line.rstrip('\n')
            if re.match(r'^img\S+\.diff$', line):
                cur = out[line] = {}
                continue
            if cur is None:
                continue
            m = re.match(r'^  format v(\d)  from=(\S+)  to=(\S+)  size\(s\)=(\d+)', line)
            if m:
                cur['format'] = 'v' + m.group(1)
                cur['from'] = '-' if m.group(2) == '(none)' else m.group(2)
                cur['to'] = '-' if m.group(3) == '(none)' else m.group(3)
                cur['size'] = int(m.group(4))
            m = re.match(r'^  bytes=(\d+)  sha256=([0-9a-f]{64})', line)
            if m:
                cur['bytes'], cur['sha256'] = int(m.group(1)), m.group(2)
            m = re.match(r'^  apply to: (empty image|raw@(\S+) )', line)
            if m:
                cur['apply'] = 'empty' if m.group(1) == 'empty image' else m.group(2)
            m = re.match(r'^  result:   raw@(\S+) ', line)
            if m:
                cur['result'] = m.group(1)
    return out


def main():
    sums = {}
    with open(os.path.join(CORPUS, 'SHA256SUMS')) as f:
        for line in f:
            h, p = line.split()
            sums[os.path.normpath(p)] = h
    man = parse_manifest()
    rows = []
    for rel in selection():
        src, dst = os.path.join(CORPUS, rel), os.path.join(HERE, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)
        got = sha(dst)
        if got != sums[os.path.normpath(rel)]:
            raise SystemExit('%s: sha256 %s does not match SHA256SUMS' % (rel, got))
        if rel.endswith('.diff'):
            m = man[rel]
            assert m['bytes'] == os.path.getsize(dst) and m['sha256'] == got, rel
            frm, to = os.path.basename(rel)[:-5].split('_')
            assert m['apply'] == ('empty' if frm == 'full' else frm), rel
            assert m['result'] == to, rel
            rows.append((rel, m['format'], m['from'], m['to'], str(m['size']),
                         m['apply'], m['result'], got))

    # img64k: reassemble the complete `rbd export --export-format 2` stream.
    img = 'img64k'
    ranges = []
    with open(os.path.join(HERE, img, 'v2', 'carve.txt')) as f:
        for line in f:
            m = re.match(r'^\d+ (\S+) bytes=\[(\d+),(\d+)\)', line)
            ranges.append((m.group(1), int(m.group(2)), int(m.group(3))))
    hdr = os.path.join(HERE, img, 'v2', 'export-format-2.header')
    assert ranges[0][1] == os.path.getsize(hdr)
    total = ranges[-1][2]
    assert total < 5 * 1024 * 1024, 'export stream too big to keep'
    stream = os.path.join(HERE, img, 'export-format-2.rbdimg')
    with open(stream, 'wb') as out:
        with open(hdr, 'rb') as f:
            out.write(f.read())
        for name, start, end in ranges:
            assert out.tell() == start, name
            with open(os.path.join(HERE, img, 'v2', name), 'rb') as f:
                data = f.read()
            assert len(data) == end - start, name
            out.write(data)
    assert os.path.getsize(stream) == total
    stream_sha = sha(stream)

    with open(os.path.join(HERE, 'MANIFEST.tsv'), 'w') as f:
        f.write('# Real Ceph 16.2.15 export-diff files (see README.md); written by make-manifest.py.\n')
        f.write('# path is relative to this directory; size = image size from the diff\'s `s` record;\n')
        f.write('# from/to = snapshot names in the f/t records (- when absent); apply_to_snap = the\n')
        f.write('# state the image must be in (empty = freshly created); result_snap = the state\n')
        f.write('# after applying (head = image after v5); expected raw-image sha256 values are in\n')
        f.write('# ground-truth.tsv; sha256_of_file = sha256 of the diff file itself.\n')
        f.write('# note: %s/export-format-2.rbdimg (%d bytes, sha256 %s) is the complete\n'
                % (img, total, stream_sha))
        f.write('# `rbd export --export-format 2` stream: v2/export-format-2.header followed by\n')
        f.write('# v2/%s (byte ranges in v2/carve.txt).\n' % ', '.join(r[0] for r in ranges))
        f.write('path\tformat\tfrom\tto\tsize\tapply_to_snap\tresult_snap\tsha256_of_file\n')
        for r in rows:
            f.write('\t'.join(r) + '\n')
    print('copied %d diff files; wrote MANIFEST.tsv and %s/export-format-2.rbdimg' % (len(rows), img))


main()
