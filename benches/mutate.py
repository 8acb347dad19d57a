#!/usr/bin/env python3
"""A box-aware MP4 mutator: damaged variants of valid MP4/M4A/MOV files, seeded and
deterministic (the same seed and seeds give the same corpus, byte for byte).

Usage: benches/mutate.py OUT_DIR [--count N] [--seed S] [--short]

With --short the seeds are 0.25 s long (target/damaged/seeds-short/): a fuzzing corpus,
where each execution converts a whole input and short inputs mean more executions.

Seed files are made with ffmpeg under target/damaged/seeds/ (AAC with the moov at the end
and at the start, with video, fragmented, ALAC, PCM in MOV, MP3 in MP4, mono 22 kHz). Each
variant applies one to three mutations, chosen by kind:
  flip      bit flips anywhere, or inside one box (moov, trak, stbl, elst, esds, ...)
  field     a known field set to an extreme (timescales, edit list times, sample rates,
            sample-entry version, table counts, chunk offsets, fragment base offsets)
  drop      a box renamed to `free` (tkhd, edts, mvhd, stss, ...) so readers skip it
  size      a box's size field made too small, too big, zero, or 64-bit huge
  cut       truncation: anywhere, at a box boundary, the last byte, inside mdat
  packets   damaged audio: byte ranges inside mdat overwritten with noise or zeros
  dup       a box duplicated (a second trak, a second moov) or two siblings swapped
  extreme   3,000 traks, or megabytes of zeros before or after the file
  meta      bit flips inside the metadata (udta, meta, ilst, chpl, covr, their headers too)
  table     bit flips among a sample table's entries (stco, stsz, stts, stsc, ctts, stss)
  esds      bit flips inside the decoder description (esds descriptors, the AudioSpecificConfig)
  run       a run of equal or random bytes over a box's body or anywhere
  nudge     a box's size off by a few bytes (±1..16), or its type's letters changed
  cookie    the ALAC magic cookie's fields (frame length, bit depth, channels, rice
            parameters, rates) set to extremes
Each file is named NNNNN-<seed>-<kinds>.mp4; a manifest (corpus.json) lists what was done.
"""

import argparse
import json
import os
import random
import re
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_DIR = os.path.join(ROOT, "target", "damaged", "seeds")

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta", b"moof",
              b"traf", b"mvex", b"mfra", b"ilst", b"sinf", b"schi", b"tref", b"wave"}
METADATA = {b"udta", b"meta", b"ilst", b"chpl", b"covr", b"\xa9nam", b"\xa9ART", b"\xa9alb", b"\xa9cmt",
            b"\xa9too", b"\xa9day", b"\xa9gen", b"trkn", b"data", b"keys", b"tref", b"chap", b"hdlr",
            b"\0\0\0\x01", b"\0\0\0\x02", b"\0\0\0\x03", b"\0\0\0\x04"}
SAMPLE_ENTRIES = {b"mp4a", b"alac", b"lpcm", b"sowt", b"twos", b"in24", b"fl32", b".mp3", b"fLaC",
                  b"ipcm", b"Opus", b"ac-3"}
INTERESTING = [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd", b"elst", b"esds", b"mdhd",
               b"mvhd", b"tkhd", b"stts", b"stsc", b"stsz", b"stco", b"co64", b"alac", b"mp4a",
               b"moof", b"traf", b"tfhd", b"trun", b"tfdt", b"hdlr", b"dfLa"]

SEEDS = {
    # name: ffmpeg arguments after the inputs
    "aac_end.m4a": ["-f", "lavfi", "-i", "sine=f=440:r=44100:d=4", "-ac", "2", "-c:a", "aac", "-b:a", "96k"],
    "aac_fast.m4a": ["-f", "lavfi", "-i", "sine=f=660:r=48000:d=3", "-ac", "2", "-c:a", "aac",
                     "-movflags", "+faststart"],
    "video.mp4": ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:d=3", "-f", "lavfi", "-i",
                  "sine=f=550:r=44100:d=3", "-c:v", "mpeg4", "-c:a", "aac", "-b:a", "64k",
                  "-movflags", "+faststart"],
    "frag.mp4": ["-f", "lavfi", "-i", "sine=f=330:r=44100:d=4", "-c:a", "aac", "-b:a", "64k",
                 "-movflags", "frag_keyframe+empty_moov+default_base_moof", "-frag_duration", "500000"],
    "alac.m4a": ["-f", "lavfi", "-i", "sine=f=440:r=44100:d=2", "-ac", "2", "-c:a", "alac"],
    "pcm.mov": ["-f", "lavfi", "-i", "sine=f=880:r=22050:d=2", "-c:a", "pcm_s16le"],
    "mp3.mp4": ["-f", "lavfi", "-i", "sine=f=440:r=44100:d=3", "-c:a", "libmp3lame", "-b:a", "96k"],
    "mono22.m4a": ["-f", "lavfi", "-i", "sine=f=300:r=22050:d=5", "-c:a", "aac", "-b:a", "48k"],
    # Rich metadata: iTunes tags, a comment, chapters (a chpl box and a text track).
    "tagged.m4a": ["-f", "lavfi", "-i", "sine=f=500:r=44100:d=4", "-f", "ffmetadata", "-i", "{chapters}",
                   "-map", "0:a", "-map_metadata", "1", "-map_chapters", "1", "-c:a", "aac", "-b:a", "64k",
                   "-metadata", "title=Seed title", "-metadata", "artist=Seed artist",
                   "-metadata", "album=Seed album", "-metadata", "comment=" + "c" * 300,
                   "-metadata", "genre=Test", "-metadata", "date=2026", "-metadata", "track=3/9",
                   "-movflags", "+faststart"],
    "surround48.mp4": ["-f", "lavfi", "-i", "sine=f=220:r=48000:d=3", "-af", "pan=5.1|c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0",
                       "-c:a", "aac", "-b:a", "192k"],
    "alac24.m4a": ["-f", "lavfi", "-i", "sine=f=700:r=96000:d=2", "-ac", "1", "-c:a", "alac",
                   "-sample_fmt", "s32p", "-movflags", "+faststart"],
    "frag_video.mp4": ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:d=4", "-f", "lavfi", "-i",
                       "sine=f=770:r=32000:d=4", "-c:v", "mpeg4", "-c:a", "aac", "-b:a", "48k",
                       "-movflags", "frag_keyframe+empty_moov", "-frag_duration", "700000"],
    # QuickTime metadata (mdta keys), a version-1 sound description with a wave box.
    "qt_meta.mov": ["-f", "lavfi", "-i", "sine=f=500:r=44100:d=3", "-c:a", "aac", "-b:a", "64k",
                    "-movflags", "+use_metadata_tags", "-metadata", "title=Seed title",
                    "-metadata", "com.apple.quicktime.location.ISO6709=+48.8-002.3/", "-metadata", "artist=X"],
    # Cover art: a PNG as an attached picture (a covr box in ilst).
    "cover.m4a": ["-f", "lavfi", "-i", "sine=f=600:r=44100:d=3", "-f", "lavfi", "-i", "testsrc=size=32x32:d=0.1",
                  "-map", "0", "-map", "1", "-c:a", "aac", "-b:a", "64k", "-c:v", "png",
                  "-disposition:v", "attached_pic", "-metadata", "title=Cover"],
    "pcm24.mov": ["-f", "lavfi", "-i", "sine=f=350:r=48000:d=2", "-ac", "2", "-c:a", "pcm_s24le"],
}

CHAPTERS = """;FFMETADATA1
title=Seed title
[CHAPTER]
TIMEBASE=1/1000
START=0
END=2000
title=One
[CHAPTER]
TIMEBASE=1/1000
START=2000
END=4000
title=Two
"""


def make_seeds(short=False):
    seed_dir = SEED_DIR + "-short" if short else SEED_DIR
    os.makedirs(seed_dir, exist_ok=True)
    paths = []
    for name, args in sorted(SEEDS.items()):
        path = os.path.join(seed_dir, name)
        if short:
            args = [re.sub(r":d=[0-9.]+", ":d=0.25", a) for a in args]
        if "{chapters}" in args:
            chapters = os.path.join(seed_dir, "chapters.txt")
            with open(chapters, "w") as f:
                f.write(CHAPTERS)
            args = [chapters if a == "{chapters}" else a for a in args]
        if not os.path.exists(path):
            tmp = path + ".tmp" + os.path.splitext(name)[1]
            subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y"] + args + [tmp], check=True)
            os.rename(tmp, path)
        paths.append(path)
    return paths


def boxes(data, start=0, end=None, depth=0, out=None):
    """Every box as (type, offset, header length, size, depth), depth first."""
    out = [] if out is None else out
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end and depth < 12:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1 and pos + 16 <= end:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            break
        out.append((kind, pos, header, size, depth))
        body = pos + header
        if kind in CONTAINERS:
            boxes(data, body, pos + size, depth + 1, out)
        elif kind == b"meta":
            boxes(data, body + 4, pos + size, depth + 1, out)
        elif kind == b"stsd":
            boxes(data, body + 8, pos + size, depth + 1, out)
        elif kind in SAMPLE_ENTRIES:
            version = struct.unpack(">H", data[body + 8:body + 10])[0] if body + 10 <= end else 0
            skip = 28 + {1: 16, 2: 36}.get(version, 0)
            boxes(data, body + skip, pos + size, depth + 1, out)
        pos += size
    return out


def find(data, kinds):
    return [b for b in boxes(data) if b[0] in kinds]


def put32(data, at, value):
    if 0 <= at and at + 4 <= len(data):
        data[at:at + 4] = struct.pack(">I", value & 0xFFFFFFFF)
        return True
    return False


def get32(data, at):
    return struct.unpack(">I", data[at:at + 4])[0] if at + 4 <= len(data) else 0


def extreme(rng, original):
    return rng.choice([0, 1, 2, 64, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, original * 2, original // 2,
                       original + 1, max(original - 1, 0), rng.getrandbits(32), rng.getrandbits(16)])


def m_flip(rng, data):
    inside = find(data, set(INTERESTING)) if rng.random() < 0.7 else []
    if inside:
        kind, off, header, size, _ = rng.choice(inside)
        lo, hi = off + header, off + size
        where = kind.decode("latin1")
    else:
        lo, hi, where = 0, len(data), "file"
    if hi <= lo:
        return "flip-none"
    for _ in range(rng.randint(1, 12)):
        at = rng.randrange(lo, hi)
        data[at] ^= 1 << rng.randrange(8)
    return f"flip-{where}"


def field_targets(data):
    """(name, absolute offset) of 32-bit fields worth setting to extremes."""
    out = []
    for kind, off, header, size, _ in boxes(data):
        body = off + header
        v = data[body] if body < len(data) else 0
        if kind in (b"mvhd", b"mdhd"):
            out.append((kind.decode() + ".timescale", body + (20 if v == 1 else 12)))
            out.append((kind.decode() + ".duration", body + (24 if v == 1 else 16)))
        elif kind == b"elst" and get32(data, body + 4) > 0:
            out.append(("elst.media_time", body + (16 if v == 1 else 12)))
            out.append(("elst.segment_duration", body + 8))
        elif kind in (b"stco", b"stsz", b"stts", b"stsc", b"co64"):
            out.append((kind.decode() + ".count", body + (8 if kind == b"stsz" else 4)))
            if kind == b"stco" and get32(data, body + 4) > 0:
                out.append(("stco.offset", body + 8))
            if kind == b"stsz" and get32(data, body + 8) > 0:
                out.append(("stsz.size", body + 12 + 4 * random.Random(off).randrange(get32(data, body + 8))))
        elif kind == b"alac" and size == 36:
            # The ALAC magic cookie inside the sample entry: its sample rate is the last field.
            out.append(("alac.rate", off + size - 4))
        elif kind in SAMPLE_ENTRIES:
            # reserved (6), data reference (2), version (2), revision (2), vendor (4),
            # channels (2), sample size (2), compression (2), packet size (2), rate (16.16)
            out.append((kind.decode() + ".version", body + 8))
            out.append((kind.decode() + ".channels", body + 16))
            out.append((kind.decode() + ".rate", body + 24))
        elif kind == b"tfhd":
            flags = get32(data, body) & 0xFFFFFF
            if flags & 1:
                out.append(("tfhd.base_offset", body + 8))
        elif kind == b"trun":
            out.append(("trun.count", body + 4))
            if get32(data, body) & 1:
                out.append(("trun.data_offset", body + 8))
        elif kind == b"esds":
            at = data.find(b"\x05", body + 4, off + size)
            if at > 0:
                out.append(("esds.asc", at + 2))
    return out


def m_field(rng, data):
    targets = field_targets(data)
    if not targets:
        return "field-none"
    name, at = rng.choice(targets)
    if name == "esds.asc":
        # AudioSpecificConfig: object type (5 bits), rate index (4), channels (4); or an
        # explicit rate (index 15, 24 bits) of an odd value.
        if rng.random() < 0.5 and at + 5 <= len(data):
            rate = rng.choice([1, 7, 96000, 0xFFFFFF, 0])
            bits = (2 << 35) | (15 << 31) | (rate << 7) | (2 << 3)
            data[at:at + 5] = bits.to_bytes(5, "big")
        elif at + 2 <= len(data):
            data[at] = rng.getrandbits(8)
            data[at + 1] = rng.getrandbits(8)
        return "field-esds.asc"
    if name.endswith("base_offset"):
        if at + 8 <= len(data):
            data[at:at + 8] = struct.pack(">Q", rng.choice([0x8000000000000400, 2**63 - 1, 0, len(data) * 4]))
        return "field-" + name
    if name.endswith(".version"):
        data[at:at + 2] = struct.pack(">H", rng.choice([1, 2, 3, 0xFFFF]))
        return "field-" + name
    if name.endswith(".channels"):
        data[at:at + 2] = struct.pack(">H", rng.choice([0, 1, 3, 8, 0xFFFF]))
        return "field-" + name
    put32(data, at, extreme(rng, get32(data, at)))
    return "field-" + name


def m_drop(rng, data):
    cands = find(data, {b"tkhd", b"edts", b"mvhd", b"stss", b"sgpd", b"sbgp", b"udta", b"hdlr",
                        b"dinf", b"smhd", b"mdhd", b"esds", b"stts", b"stco", b"tfdt", b"mvex", b"btrt"})
    if not cands:
        return "drop-none"
    kind, off, _, _, _ = rng.choice(cands)
    data[off + 4:off + 8] = b"free"
    return "drop-" + kind.decode("latin1")


def m_size(rng, data):
    cands = [b for b in boxes(data) if b[2] == 8]
    if not cands:
        return "size-none"
    kind, off, _, size, _ = rng.choice(cands)
    choice = rng.choice(["small", "big", "zero", "huge", "seven"])
    value = {"small": max(size // 2, 8), "big": size * 2 + 16, "zero": 0, "huge": 1, "seven": 7}[choice]
    put32(data, off, value)
    return f"size-{kind.decode('latin1')}-{choice}"


def m_cut(rng, data):
    mdat = find(data, {b"mdat"})
    choice = rng.choice(["anywhere", "boundary", "last", "mdat", "half"])
    if choice == "last":
        at = len(data) - 1
    elif choice == "half":
        at = len(data) // 2
    elif choice == "boundary":
        ends = sorted({b[1] + b[3] for b in boxes(data)} | {b[1] for b in boxes(data)})
        at = rng.choice([e for e in ends if 0 < e < len(data)] or [len(data) - 1])
    elif choice == "mdat" and mdat:
        _, off, header, size, _ = rng.choice(mdat)
        at = rng.randrange(off + header, off + size)
    else:
        at = rng.randrange(1, len(data))
    del data[at:]
    return "cut-" + choice


def m_packets(rng, data):
    mdat = find(data, {b"mdat"})
    if not mdat:
        return "packets-none"
    ranges = rng.choice([1, 3, 10, 30, 100])
    zero = rng.random() < 0.3
    for _ in range(ranges):
        _, off, header, size, _ = rng.choice(mdat)
        if size <= header + 1:
            continue
        at = rng.randrange(off + header, off + size)
        n = min(rng.randint(1, 400), off + size - at)
        data[at:at + n] = bytes(n) if zero else rng.randbytes(n)
    return f"packets-{ranges}{'-zero' if zero else ''}"


def m_dup(rng, data):
    cands = find(data, {b"trak", b"moov", b"stsd", b"elst", b"mdat", b"esds", b"stco", b"moof"})
    if not cands:
        return "dup-none"
    kind, off, _, size, _ = rng.choice(cands)
    parents = [(poff, psize) for _, poff, pheader, psize, _ in boxes(data)
               if poff < off and off + size <= poff + psize and pheader == 8]
    data[off + size:off + size] = bytes(data[off:off + size])
    # The boxes around it grow by the copy.
    for poff, psize in parents:
        put32(data, poff, psize + size)
    return "dup-" + kind.decode("latin1")


def m_extreme(rng, data):
    choice = rng.choice(["traks", "zeros-after", "zeros-before"])
    if choice == "traks":
        traks = find(data, {b"trak"})
        moov = find(data, {b"moov"})
        if not traks or not moov:
            return "extreme-none"
        _, off, _, size, _ = traks[0]
        chunk = bytes(data[off:off + size])
        _, moff, mheader, msize, _ = moov[0]
        copies = 3000
        data[off:off] = chunk * copies
        if mheader == 8:
            put32(data, moff, msize + len(chunk) * copies)
        return "extreme-3000-traks"
    zeros = bytes(rng.choice([1, 8, 20]) << 20)
    if choice == "zeros-after":
        data.extend(zeros)
    else:
        data[0:0] = zeros
    return "extreme-" + choice


def m_meta(rng, data):
    cands = find(data, METADATA)
    if not cands:
        return "meta-none"
    kind, off, header, size, _ = rng.choice(cands)
    # Half the time the flips may hit the box's own header (its size or its type).
    lo = off if rng.random() < 0.5 else off + header
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(lo, off + size)
        data[at] ^= 1 << rng.randrange(8)
    return "meta-" + kind.decode("latin1")


def m_table(rng, data):
    cands = [b for b in find(data, {b"stco", b"co64", b"stsz", b"stts", b"stsc", b"ctts", b"stss"})
             if b[3] > b[2] + 8]
    if not cands:
        return "table-none"
    kind, off, header, size, _ = rng.choice(cands)
    # Entries start after version/flags and the count (stsz: and the constant size).
    lo = off + header + (12 if kind == b"stsz" else 8)
    if lo >= off + size:
        return "table-none"
    for _ in range(rng.choice([1, 1, 2, 5, 20])):
        at = rng.randrange(lo, off + size)
        data[at] ^= 1 << rng.randrange(8)
    return "table-" + kind.decode("latin1")


def m_esds(rng, data):
    cands = find(data, {b"esds", b"dfLa", b"dOps"})
    if not cands:
        return "esds-none"
    kind, off, header, size, _ = rng.choice(cands)
    lo = off + header + 4
    if lo >= off + size:
        return "esds-none"
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(lo, off + size)
        data[at] ^= 1 << rng.randrange(8)
    return "esds-" + kind.decode("latin1")


def m_run(rng, data):
    inside = [b for b in boxes(data) if b[0] != b"mdat"] if rng.random() < 0.7 else []
    if inside:
        kind, off, header, size, _ = rng.choice(inside)
        lo, hi, where = off, off + size, kind.decode("latin1")
    else:
        lo, hi, where = 0, len(data), "file"
    if hi - lo < 2:
        return "run-none"
    at = rng.randrange(lo, hi - 1)
    n = min(rng.choice([2, 4, 8, 16, 64, 256]), hi - at)
    fill = rng.choice(["00", "ff", "rand"])
    data[at:at + n] = bytes(n) if fill == "00" else b"\xff" * n if fill == "ff" else rng.randbytes(n)
    return f"run-{where}-{fill}"


def m_nudge(rng, data):
    cands = [b for b in boxes(data) if b[2] == 8]
    if not cands:
        return "nudge-none"
    kind, off, _, size, _ = rng.choice(cands)
    if rng.random() < 0.7:
        delta = rng.choice([-16, -8, -4, -2, -1, 1, 2, 4, 8, 16])
        put32(data, off, max(size + delta, 0))
        return f"nudge-{kind.decode('latin1')}{delta:+d}"
    at = off + 4 + rng.randrange(4)
    data[at] = rng.choice([0x20, 0x00, ord("x"), data[at] ^ 0x20])
    return f"nudge-{kind.decode('latin1')}-type"


def m_cookie(rng, data):
    # The ALAC cookie (inside the alac sample entry): frameLength (4), compatibleVersion (1),
    # bitDepth, pb, mb, kb, numChannels (1 each), maxRun (2), maxFrameBytes, avgBitRate,
    # sampleRate (4 each).
    cookies = [b for b in find(data, {b"alac"}) if b[3] == 36]
    if not cookies:
        return "cookie-none"
    _, off, header, _, _ = rng.choice(cookies)
    body = off + header + 4
    fields = {"frame_length": (0, 4), "version": (4, 1), "bit_depth": (5, 1), "pb": (6, 1), "mb": (7, 1),
              "kb": (8, 1), "channels": (9, 1), "max_run": (10, 2), "max_frame_bytes": (12, 4),
              "avg_bit_rate": (16, 4), "rate": (20, 4)}
    name = rng.choice(sorted(fields))
    at, width = fields[name]
    value = rng.choice([0, 1, 2, 7, 255, 2**(8 * width) - 1, rng.getrandbits(8 * width),
                        int.from_bytes(data[body + at:body + at + width], "big") * 2])
    data[body + at:body + at + width] = (value % 2**(8 * width)).to_bytes(width, "big")
    return "cookie-" + name


KINDS = [("flip", m_flip, 3), ("field", m_field, 4), ("drop", m_drop, 2), ("size", m_size, 2),
         ("cut", m_cut, 2), ("packets", m_packets, 3), ("dup", m_dup, 1), ("extreme", m_extreme, 0.15),
         ("meta", m_meta, 2), ("table", m_table, 2), ("esds", m_esds, 1), ("run", m_run, 1.5),
         ("nudge", m_nudge, 1.5), ("cookie", m_cookie, 1)]


def mutate(rng, data):
    data = bytearray(data)
    done = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        _, fn, _ = rng.choices(KINDS, weights=[k[2] for k in KINDS])[0]
        done.append(fn(rng, data))
        if done[-1].startswith("extreme"):
            break
    return bytes(data), done


def corpus(out_dir, count, seed, short=False):
    """Writes `count` variants; returns the manifest."""
    seeds = make_seeds(short)
    originals = {os.path.basename(p): open(p, "rb").read() for p in seeds}
    names = sorted(originals)
    os.makedirs(out_dir, exist_ok=True)
    manifest = []
    for i in range(count):
        rng = random.Random(f"{seed}:{i}")
        base = names[i % len(names)]
        data, done = mutate(rng, originals[base])
        kinds = re.sub(r"[^A-Za-z0-9._+-]", "_", "+".join(done))
        name = f"{i:05d}-{os.path.splitext(base)[0]}-{kinds}.mp4"[:200]
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
        manifest.append({"file": name, "seed": base, "mutations": done})
    with open(os.path.join(out_dir, "corpus.json"), "w") as f:
        json.dump({"seed": seed, "count": count, "files": manifest}, f, indent=1)
    return manifest


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--short", action="store_true", help="0.25 s seeds (for fuzzing)")
    a = p.parse_args()
    manifest = corpus(a.out_dir, a.count, a.seed, a.short)
    print(f"{len(manifest)} damaged files in {a.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
