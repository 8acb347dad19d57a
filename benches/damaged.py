#!/usr/bin/env python3
"""Damaged inputs: mp4tomp3 convert against ffmpeg on a corpus made by benches/mutate.py.

Usage: benches/damaged.py [--count 3000] [--seed 1] [--bin PATH] [--jobs 2] [--check]
                          [--no-ffmpeg] [--show N]

Without --bin, builds the release binary. For each damaged file it runs
`mp4tomp3 convert` (10 s limit, peak RSS from wait4) and, unless --no-ffmpeg,
`ffmpeg -i IN -vn -c:a libmp3lame` as the reference, and measures both MP3s with ffprobe.

Defects (the goal is none):
  exit0-empty   exit 0 but the MP3 is missing, empty, or does not decode cleanly
  exit1         an internal failure on bad input
  signal        killed by a signal (a crash)
  hang          still running after 10 s
  rss           peak RSS over 128 MiB
  stderr        exit 2 without exactly one line `mp4tomp3: <code>: ...`, or exit 0 with
                more than one `mp4tomp3: warning: ...` line
Recovery: of the inputs from which ffmpeg made at least half of the original's audio, the
share we converted to at least 90 % of ffmpeg's duration (goal: 95 %).
--check exits 1 when there is any defect (what the CI test runs, on a sample).
"""

import argparse
import collections
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mutate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT_S = 10
RSS_LIMIT_MIB = 128
LINE = re.compile(r"^mp4tomp3: ([a-z0-9_]+): ")


def probe_seconds(path):
    """The MP3's duration if it decodes without a single error, else 0."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return 0.0
    d = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "null", "-"],
                       capture_output=True, text=True)
    if d.returncode != 0 or d.stderr.strip():
        return 0.0
    return ffprobe_seconds(path)


def ffprobe_seconds(path):
    p = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
                       capture_output=True, text=True)
    try:
        return float(p.stdout.strip())
    except ValueError:
        return 0.0


def run_ours(binary, path, out):
    start = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([binary, "convert", path, "-o", out, "--force"],
                                stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "RUST_LOG": ""})
        status = None
        while time.monotonic() - start < LIMIT_S:
            pid, st, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status = st
                break
            time.sleep(0.01)
        if status is None:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            hung = True
        else:
            hung = False
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    r = {"secs": time.monotonic() - start, "rss_mib": usage.ru_maxrss / 1024, "stderr": stderr.strip()}
    if hung:
        r["class"] = "hang"
    elif os.WIFSIGNALED(status):
        r["class"] = f"signal-{os.WTERMSIG(status)}"
    else:
        r["exit"] = os.WEXITSTATUS(status)
        r["class"] = f"exit{r['exit']}"
    r["mp3_secs"] = probe_seconds(out) if r.get("exit") == 0 else 0.0
    return r


def run_ffmpeg(path, out):
    try:
        subprocess.run(["ffmpeg", "-v", "quiet", "-y", "-i", path, "-vn", "-c:a", "libmp3lame", "-b:a", "128k", out],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    except subprocess.TimeoutExpired:
        return 0.0
    if not os.path.exists(out) or os.path.getsize(out) == 0:
        return 0.0
    return ffprobe_seconds(out)


def defects(r):
    found = []
    cls = r["class"]
    if cls == "hang" or cls.startswith("signal"):
        found.append(cls.split("-")[0])
    if cls == "exit1":
        found.append("exit1")
    if cls == "exit0" and r["mp3_secs"] <= 0:
        found.append("exit0-empty")
    if r["rss_mib"] > RSS_LIMIT_MIB:
        found.append("rss")
    lines = [l for l in r["stderr"].splitlines() if l.strip()]
    if cls == "exit2" and (len(lines) != 1 or not LINE.match(lines[0])):
        found.append("stderr")
    if cls == "exit0" and (len(lines) > 1 or any(not l.startswith("mp4tomp3: warning: ") for l in lines)):
        found.append("stderr")
    return found


def one(binary, corpus_dir, entry, seconds_of, use_ffmpeg, work, ffmpeg_cache):
    path = os.path.join(corpus_dir, entry["file"])
    stem = os.path.join(work, entry["file"])
    r = run_ours(binary, path, stem + ".ours.mp3")
    r["file"] = entry["file"]
    r["original_secs"] = seconds_of[entry["seed"]]
    r["ffmpeg_secs"] = None
    if use_ffmpeg:
        if entry["file"] not in ffmpeg_cache:
            ffmpeg_cache[entry["file"]] = run_ffmpeg(path, stem + ".ffmpeg.mp3")
        r["ffmpeg_secs"] = ffmpeg_cache[entry["file"]]
    for suffix in (".ours.mp3", ".ffmpeg.mp3"):
        try:
            os.remove(stem + suffix)
        except FileNotFoundError:
            pass
    r["defects"] = defects(r)
    return r


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "mp4tomp3")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bin")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--check", action="store_true")
    p.add_argument("--no-ffmpeg", action="store_true")
    p.add_argument("--show", type=int, default=10, help="examples to print per class")
    p.add_argument("--dir", default=os.path.join(ROOT, "target", "damaged"))
    a = p.parse_args()

    binary = a.bin or build()
    corpus_dir = os.path.join(a.dir, f"corpus-{a.seed}-{a.count}")
    manifest = mutate.corpus(corpus_dir, a.count, a.seed)
    seconds_of = {os.path.basename(s): probe_seconds_any(s) for s in mutate.make_seeds()}
    work = tempfile.mkdtemp(prefix="damaged-")
    # The corpus is deterministic, so ffmpeg's results are kept beside it for the next run
    # (delete the file to measure ffmpeg again, e.g. after upgrading it).
    cache_path = os.path.join(corpus_dir, "ffmpeg-seconds.json")
    ffmpeg_cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(
            lambda e: one(binary, corpus_dir, e, seconds_of, not a.no_ffmpeg, work, ffmpeg_cache), manifest))
    os.rmdir(work)
    if not a.no_ffmpeg:
        with open(cache_path, "w") as f:
            json.dump(ffmpeg_cache, f)
    with open(os.path.join(a.dir, f"results-{a.seed}-{a.count}.json"), "w") as f:
        json.dump(results, f, indent=1)
    report(results, a, time.monotonic() - started)
    if a.check and any(r["defects"] for r in results):
        sys.exit(1)


def probe_seconds_any(path):
    p = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=duration",
                        "-of", "csv=p=0", path], capture_output=True, text=True)
    return float(p.stdout.strip().splitlines()[0])


def report(results, a, secs):
    print(f"inputs: {len(results)} damaged files (seed {a.seed}), {secs:.0f} s")
    classes = collections.Counter()
    for r in results:
        code = ""
        m = LINE.match(r["stderr"].splitlines()[0]) if r["stderr"] else None
        if r["class"] == "exit2" and m:
            code = " " + m.group(1)
        if r["class"] == "exit0":
            code = " with warning" if r["stderr"] else " clean"
        classes[r["class"] + code] += 1
    print("exit classes:")
    for k, v in sorted(classes.items(), key=lambda kv: -kv[1]):
        print(f"  {v:6d}  {k}")
    bad = [r for r in results if r["defects"]]
    kinds = collections.Counter(d for r in bad for d in r["defects"])
    print(f"defects: {len(bad)}" + ("" if not bad else "  (" + ", ".join(f"{k} {v}" for k, v in kinds.items()) + ")"))
    for r in bad[: a.show]:
        print(f"  {r['file']}: {r['class']} {r['defects']} rss {r['rss_mib']:.0f} MiB: {r['stderr'][:200]}")
    print(f"peak RSS: max {max(r['rss_mib'] for r in results):.0f} MiB; slowest {max(r['secs'] for r in results):.1f} s")
    if a.no_ffmpeg:
        return
    base = [r for r in results if r["ffmpeg_secs"] >= 0.5 * r["original_secs"]]
    ok = [r for r in base if r["mp3_secs"] >= 0.9 * r["ffmpeg_secs"]]
    made = [r for r in results if r["ffmpeg_secs"] > 0]
    refused = [r for r in made if r["mp3_secs"] <= 0]
    print(f"recovery: ffmpeg made >= 50 % of the audio from {len(base)} inputs; we made >= 90 % of ffmpeg's "
          f"duration from {len(ok)} = {100 * len(ok) / max(len(base), 1):.1f} % (goal 95 %)")
    print(f"  ffmpeg made audio from {len(made)}; we refused {len(refused)} of those")
    misses = collections.Counter()
    for r in base:
        if r not in ok:
            kinds = r["file"].split("-", 2)[2].rsplit(".", 1)[0]
            misses[re.sub(r"\d+", "N", kinds)] += 1
    for k, v in misses.most_common(a.show):
        print(f"  missed {v:4d}  {k}")
    total_ff = sum(r["ffmpeg_secs"] for r in base)
    total_us = sum(min(r["mp3_secs"], r["ffmpeg_secs"]) for r in base)
    print(f"  audio recovered over those inputs: {total_us:.0f} s of ffmpeg's {total_ff:.0f} s")


if __name__ == "__main__":
    main()
