#!/usr/bin/env python3
"""Conversion benchmark: mp4tomp3 convert vs ffmpeg, same bitrate, same LAME quality.

Usage: benches/convert.py [--runs N]      (from the repository root; builds the release binary)

Inputs (made once with ffmpeg under target/bench/, ~2 min):
  video_10min.mp4   H.264 640x360 + stereo 44.1 kHz AAC 128k, 10 minutes
  audio_60min.m4a   stereo 44.1 kHz AAC 128k, 60 minutes
The audio is tones with vibrato plus pink noise, so LAME works about as hard as on music.

Each tool runs N times per input, alternating; the medians of wall time, CPU time
(user + sys, from wait4) and peak RSS are printed with their ratios. Both encode 192 kbps CBR
at LAME's default algorithm quality (q3), which is also ffmpeg's libmp3lame default.
Targets (issue 2): wall <= 0.9x ffmpeg, CPU <= 1.2x ffmpeg, peak RSS <= 64 MiB.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "bench")
BIN = os.path.join(ROOT, "target", "release", "mp4tomp3")

AUDIO = (
    "aevalsrc=0.3*sin(2*PI*220*t)*sin(2*PI*0.5*t)+0.2*sin(2*PI*330*t+sin(2*PI*3*t))"
    "|0.3*sin(2*PI*440*t)+0.15*sin(2*PI*554*t)*cos(2*PI*0.25*t):s=44100:d={d}[t];"
    "anoisesrc=color=pink:amplitude=0.08:r=44100:d={d},pan=stereo|c0=c0|c1=c0[n];"
    "[t][n]amix=inputs=2:normalize=0[a]"
)


def make_inputs():
    os.makedirs(BENCH, exist_ok=True)
    ff = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y"]
    video = os.path.join(BENCH, "video_10min.mp4")
    if not os.path.exists(video):
        subprocess.run(ff + ["-f", "lavfi", "-i", "testsrc=size=640x360:rate=25:d=600",
                             "-filter_complex", AUDIO.format(d=600), "-map", "0:v", "-map", "[a]",
                             "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-b:a", "128k",
                             video + ".tmp.mp4"], check=True)
        os.rename(video + ".tmp.mp4", video)
    audio = os.path.join(BENCH, "audio_60min.m4a")
    if not os.path.exists(audio):
        subprocess.run(ff + ["-filter_complex", AUDIO.format(d=3600), "-map", "[a]",
                             "-c:a", "aac", "-b:a", "128k", audio + ".tmp.m4a"], check=True)
        os.rename(audio + ".tmp.m4a", audio)
    return [video, audio]


def measure(argv):
    """Runs argv; returns (wall s, cpu s, peak RSS MiB)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if status != 0:
        sys.exit(f"{argv[0]} failed: {proc.stderr.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    out = os.path.join(BENCH, "out.mp3")
    print(f"{'input':18} {'tool':9} {'wall s':>8} {'cpu s':>8} {'rss MiB':>8}")
    for path in make_inputs():
        tools = {
            "mp4tomp3": [BIN, "convert", path, "-o", out, "--force", "--bitrate", "192"],
            "ffmpeg": ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-threads", "1", "-i", path,
                       "-vn", "-c:a", "libmp3lame", "-b:a", "192k", out],
        }
        results = {name: [] for name in tools}
        for _ in range(args.runs):
            for name, argv in tools.items():
                results[name].append(measure(argv))
        med = {name: [statistics.median(r[i] for r in runs) for i in range(3)] for name, runs in results.items()}
        for name, (wall, cpu, rss) in med.items():
            print(f"{os.path.basename(path):18} {name:9} {wall:8.2f} {cpu:8.2f} {rss:8.1f}")
        ours, theirs = med["mp4tomp3"], med["ffmpeg"]
        print(f"{os.path.basename(path):18} {'ratio':9} {ours[0] / theirs[0]:8.2f} {ours[1] / theirs[1]:8.2f} "
              f"{ours[2] / theirs[2]:8.2f}   (targets: wall <= 0.90, cpu <= 1.20, rss <= 64 MiB)")


if __name__ == "__main__":
    main()
