#!/usr/bin/env python3
"""Cost of a cluster's size: N nodes on loopback, measured from node 0.

Usage (from the repository root):
    benches/scale.py --bin target/release/mp4tomp3 --nodes 3 [--nodes 10 ...] [--work DIR]

For each N: N `mp4tomp3 serve` processes on 127.0.0.(40+i) (static peers, full mesh, one
converter slot each), once the mesh and the metadata group are formed:
- list: `GET /v1/jobs?limit=20` from node 0 (the user has 30 jobs spread over the nodes),
  200 requests one after another; p50/p95/p99;
- keyed upload: `POST /v1/jobs` of a 1 s clip with a new Idempotency-Key, 60 one after
  another (the earlier ones converting meanwhile); p50/p95/p99;
- keyed upload, converters idle: 60 more, each once the job before it has ended (the
  submission's own cost: its commit and the replicas' work, not the conversions');
- status: `GET /v1/jobs/{id}` of a job another node owns, 200 one after another; p50/p99;
- idle CPU: the CPU time of all N processes over 10 s of no requests, as % of one core.
"""

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

ADMIN = ("admin@scale.test", "scale-admin-password")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, method="GET", body=None, headers=None, token=None, timeout=30.0):
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait(what, limit, check):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"scale: gave up waiting for {what}")


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def one(args, n, clip):
    work = os.path.join(args.work, f"n{n}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    http = [free_port() for _ in range(n)]
    cport = [free_port() for _ in range(n)]
    peers = [f"127.0.0.{40 + i}:{cport[i]}" for i in range(n)]
    env = dict(os.environ, MP4TOMP3_CLUSTER_COOKIE="scale-cookie",
               MP4TOMP3_JWT_SECRET="scale-secret-scale-secret-scale-secret-00",
               MP4TOMP3_ADMIN_EMAIL=ADMIN[0], MP4TOMP3_ADMIN_PASSWORD=ADMIN[1])
    env.pop("RUST_LOG", None)
    procs = []
    for i in range(n):
        argv = [args.bin, "serve", "--data-dir", os.path.join(work, f"s{i}"),
                "--http", f"127.0.0.{40 + i}:{http[i]}", "--node-name", f"scale-{i}",
                "--converter-slots", "1", "--cluster-listen", peers[i],
                "--peers", ",".join(p for j, p in enumerate(peers) if j != i),
                "--login-per-minute", "100000", "--quota-active", "100000",
                "--quota-jobs-per-day", "1000000"]
        log = open(os.path.join(work, f"s{i}.log"), "w")
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log))
    url = [f"http://127.0.0.{40 + i}:{http[i]}" for i in range(n)]
    try:
        auth = "Basic " + base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()

        def token():
            s, out = call(url[0] + "/login", "POST", b"", {"Authorization": auth})
            return out.decode() if s == 200 else None
        tok = wait("node 0", 120, token)

        def formed():
            s, out = call(url[0] + "/v1/cluster", token=tok)
            view = json.loads(out)
            up = sum(1 for m in view["members"] if m["state"] == "up")
            meta = view["metadata"]
            return up == n - 1 and meta["leader"] and len(meta["voters"]) + len(meta["learners"]) == n
        wait("the mesh and the metadata group", 300, formed)
        # Where the leader is changes a write's path (pod 0 leads, votes, or only learns).
        meta = json.loads(call(url[0] + "/v1/cluster", token=tok)[1])["metadata"]
        print(f"N={n}: leader {meta['leader']}, voters {', '.join(meta['voters'])}", flush=True)
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.mp4\"\r\n"
                f"Content-Type: video/mp4\r\n\r\n").encode() + clip + f"\r\n--{boundary}--\r\n".encode()
        form = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        remote = None
        for k in range(30):
            s, out = call(url[k % n] + "/v1/jobs", "POST", body, form, tok)
            assert s == 202, (s, out)
            if k % n == 1 % n:
                remote = json.loads(out)["id"]
        time.sleep(3)
        figures = {}

        def timed(label, count, fn):
            xs = []
            for _ in range(count):
                t = time.perf_counter()
                s = fn()
                xs.append((time.perf_counter() - t) * 1000)
                assert s in (200, 202), (label, s)
            figures[label] = (pct(xs, 0.5), pct(xs, 0.95), pct(xs, 0.99))
        timed("list", 200, lambda: call(url[0] + "/v1/jobs?limit=20", token=tok)[0])
        timed("status", 200, lambda: call(f"{url[0]}/v1/jobs/{remote}", token=tok)[0])

        def keyed():
            return call(url[0] + "/v1/jobs", "POST", body, dict(form, **{"Idempotency-Key": uuid.uuid4().hex}), tok)[0]
        timed("keyed upload", 60, keyed)

        # The same, one at a time on a cluster that has finished converting: what a keyed
        # upload costs (its commit, its fan-out to N replicas), not the conversions of the
        # uploads before it sharing the host's cores.
        def settled():
            s, out = call(url[0] + "/v1/jobs?limit=100", token=tok)
            jobs = json.loads(out)["jobs"] if s == 200 else None
            return jobs is not None and all(j["state"] in ("done", "failed", "canceled") for j in jobs)
        wait("the conversions to end", 300, settled)
        paced = []
        for _ in range(60):
            t = time.perf_counter()
            s = keyed()
            paced.append((time.perf_counter() - t) * 1000)
            assert s == 202, ("paced keyed upload", s)
            wait("the conversion to end", 120, settled)
        figures["keyed upload, converters idle"] = (pct(paced, 0.5), pct(paced, 0.95), pct(paced, 0.99))
        time.sleep(5)
        pids = [p.pid for p in procs]
        a = cpu_ticks(pids)
        time.sleep(10)
        b = cpu_ticks(pids)
        hz = os.sysconf("SC_CLK_TCK")
        idle = 100.0 * (b - a) / hz / 10
        line = " | ".join(f"{k} {v[0]:.1f}/{v[1]:.1f}/{v[2]:.1f} ms" for k, v in figures.items())
        print(f"N={n}: {line} | idle CPU {idle:.1f} % of a core", flush=True)
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--nodes", type=int, action="append", required=True)
    ap.add_argument("--work", default="/tmp/scale")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    clip_path = os.path.join(args.work, "clip.mp4")
    subprocess.run(["ffmpeg", "-y", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
                    "-c:a", "aac", "-b:a", "64k", clip_path], check=True)
    clip = open(clip_path, "rb").read()
    print("p50/p95/p99 from node 0", flush=True)
    for n in args.nodes:
        one(args, n, clip)


if __name__ == "__main__":
    main()
