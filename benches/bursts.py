#!/usr/bin/env python3
"""Memory after bursts: idle RSS of `serve` after rounds of concurrent uploads (issue 11, item 10).

Usage: benches/bursts.py [--rounds 10] [--uploads 100] [--seconds 20]
       (from the repository root; builds the release binary)

One node, default settings. Each round uploads the same clip --uploads times at once (one curl
process per upload, multipart POST /v1/jobs), waits until every job of the round is done, waits
6 s (idle; longer than the node's heap-trim period, src/memory.rs), and reads the server's VmRSS from /proc. The input is a
--seconds long H.264 + stereo AAC clip made with ffmpeg under target/bench/. Target: the idle
RSS after the last round is within 64 MiB of the first round's.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import ADMIN, ENV, request, wait  # noqa: E402
from convert import AUDIO, BENCH, BIN, ROOT  # noqa: E402


def clip(seconds):
    os.makedirs(BENCH, exist_ok=True)
    path = os.path.join(BENCH, f"clip_{seconds}s.mp4")
    if not os.path.exists(path):
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc=size=640x360:rate=25:d={seconds}", "-filter_complex", AUDIO.format(d=seconds),
                        "-map", "0:v", "-map", "[a]", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                        "-b:a", "128k", path + ".tmp.mp4"], check=True)
        os.rename(path + ".tmp.mp4", path)
    return path


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--uploads", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the server (experiments)")
    ap.add_argument("--trim-probe", action="store_true", help="at the end, call malloc_trim(0) in the server via gdb")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "mp4tomp3"], cwd=ROOT, check=True)
    video = clip(args.seconds)
    extra = dict(e.split("=", 1) for e in args.env)
    with tempfile.TemporaryDirectory() as root:
        log = open(os.path.join(root, "serve.log"), "w")
        proc = subprocess.Popen([BIN, "serve", "--data-dir", os.path.join(root, "data"), "--http", "127.0.0.1:0"],
                                env=dict(ENV, **extra), stdout=subprocess.DEVNULL, stderr=log)
        try:
            def address():
                if proc.poll() is not None:
                    sys.exit(open(log.name).read())
                for line in open(log.name):
                    if "mp4tomp3 serving" in line:
                        return "http://" + line.split("address=")[1].split()[0]
            url = wait(address, "the server", 30)
            token = wait(lambda: request(url + "/login", method="POST", auth=ADMIN).decode(), "a login", 20)
            time.sleep(1)
            print(f"{'round':>5} {'uploads':>8} {'seconds':>8} {'idle RSS MiB':>13}")
            print(f"{0:5} {0:8} {0:8} {rss_mib(proc.pid):13.1f}")
            first = None
            for r in range(1, args.rounds + 1):
                start = time.monotonic()

                def upload(_):
                    out = subprocess.run(["curl", "-sf", "-m", "600", "-H", f"Authorization: Bearer {token}",
                                          "-F", f"file=@{video}", url + "/v1/jobs"], capture_output=True)
                    if out.returncode != 0:
                        sys.exit(f"upload failed: curl exit {out.returncode} {out.stdout!r}")
                    return json.loads(out.stdout)["id"]

                with concurrent.futures.ThreadPoolExecutor(args.uploads) as pool:
                    ids = list(pool.map(upload, range(args.uploads)))

                pending = set(ids)

                def all_done():
                    for i in list(pending):
                        state = json.loads(request(f"{url}/v1/jobs/{i}", token))["state"]
                        if state in ("failed", "canceled"):
                            sys.exit(f"job {i} ended {state}")
                        if state != "done":
                            return False
                        pending.discard(i)
                    return True

                wait(all_done, "the round's jobs")
                took = time.monotonic() - start
                time.sleep(6)
                rss = rss_mib(proc.pid)
                first = first or rss
                print(f"{r:5} {args.uploads:8} {took:8.1f} {rss:13.1f}", flush=True)
            if args.trim_probe:
                # Diagnostic: how much of the idle RSS is memory the allocator holds but nothing uses.
                subprocess.run(["gdb", "-p", str(proc.pid), "-batch", "-ex", "call (int)malloc_trim(0)"],
                               capture_output=True)
                print(f"after malloc_trim(0) from gdb: {rss_mib(proc.pid):.1f} MiB")
            growth = rss - first
            print(f"idle RSS after round {args.rounds} - after round 1: {growth:+.1f} MiB (target: <= 64 MiB)")
            sys.exit(0 if growth <= 64 else 1)
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
