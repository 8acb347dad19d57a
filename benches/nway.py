#!/usr/bin/env python3
"""N-way encoding benchmark (issue 34): one long file on one core vs on two.

Usage: benches/nway.py [--hours H] [--runs N] [--bin BIN]   (from the repository root)

Input (made once with ffmpeg under target/bench/): stereo 44.1 kHz AAC 128k of the same
tones-with-vibrato plus pink noise as benches/convert.py, H hours long (default 2).

Prints, through farm-bench (A/B paired runs, medians):
  - `--threads 2` on cores 0,1 against `--threads 1` on core 0: the speed-up (target ≥ 1.9×);
  - the cost model, from the plan's arithmetic: segments, the warm-up share, and the bytes
    of compressed input per segment (what a segment placed on another node would carry).
"""

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "bench")
BIN = os.path.join(ROOT, "target", "release", "mp4tomp3")

from convert import AUDIO  # the same signal as the conversion benchmark


def make_input(hours):
    os.makedirs(BENCH, exist_ok=True)
    path = os.path.join(BENCH, f"audio_{hours:g}h.m4a")
    if not os.path.exists(path):
        secs = int(hours * 3600)
        print(f"making {path} ...", file=sys.stderr)
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-filter_complex",
             AUDIO.format(d=secs), "-map", "[a]", "-c:a", "aac", "-b:a", "128k", path + ".tmp.m4a"],
            check=True,
        )
        os.rename(path + ".tmp.m4a", path)
    return path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bin", help="a built mp4tomp3 (default: build the release binary)")
    args = parser.parse_args()
    global BIN
    if args.bin:
        BIN = args.bin
    else:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    path = make_input(args.hours)
    out = os.path.join(BENCH, "nway-out.mp3")
    secs = args.hours * 3600
    one = f"{BIN} convert {path} -o {out} --force --threads 1"
    two = f"{BIN} convert {path} -o {out} --force --threads 2"
    print(f"# {args.hours:g} h input, 192 kbps CBR; A = 2 threads on cores 0,1, B = 1 thread on core 0")
    subprocess.run(
        ["farm-bench", "-n", str(args.runs), "--warmup", "0", "--timeout", "3600",
         "--vs", f"taskset -c 0 {one}", "--", "taskset", "-c", "0,1", *two.split()],
        check=True,
    )
    # The cost model, from the plan's arithmetic (segments.rs): segment length for 2 and for
    # 80 threads, the warm-up share and the compressed bytes a segment carries.
    size = os.path.getsize(path)
    for threads in (2, 16, 80):
        seg = min(max(secs / (3 * threads), 60.0), 120.0)
        if secs / seg < threads:
            seg = max(secs / threads, 10.0)
        count = round(secs / seg)
        warm = 32 * 1152 / 44100 + 2 * 1024 / 44100  # LAME frames + AAC packets, seconds
        print(
            f"{threads:3d} threads: {count} segments of {seg:.0f} s; warm-up {warm:.2f} s each "
            f"({100 * warm / seg:.1f} % more audio encoded); {size / count / 1e6:.2f} MB of AAC per segment"
        )


if __name__ == "__main__":
    main()
