#!/usr/bin/env python3
"""Authenticated reads per second: `GET /v1/jobs/{id}` with a Bearer token, under wrk.

Usage (from the repository root; needs wrk and ffmpeg):
    benches/auth_read.py --bin target/ci/mp4tomp3 --work /tmp/auth_read [--seconds 10]
                         [--connections 32] [--nodes 1]

One node (or the first of `--nodes` on loopback, static peers) serves; a user uploads one
short clip; wrk then reads that job with the user's token for `--seconds`, after a
2-second warm-up, and reads `/healthz` the same way (the ceiling: no authentication, no
job). Prints requests/s and the latency percentiles wrk reports (p50, p90, p99).

Every token check verifies the JWT and then the user's token generation and signed-out
sessions, from the replicated metadata's in-memory view (`meta/users.rs`).
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

from rolling import free_port, wait_until as until  # benches/ is on the path when run

ADMIN = ("admin@bench.test", "bench-admin-password")
USER = ("reader@bench.test", "bench-reader-password")


def call(url, method="GET", body=None, headers=None, token=None):
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def login(http, email, password):
    auth = base64.b64encode(f"{email}:{password}".encode()).decode()
    s, out = call(http + "/login", "POST", b"", {"Authorization": "Basic " + auth})
    return out.decode() if s == 200 else None


def wrk(url, token, seconds, connections):
    """(requests/s, {percentile: ms}) from wrk --latency."""
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if token:
        argv[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        sys.exit(f"auth_read: wrk saw error answers:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    lat = {}
    for pct, value, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[int(pct)] = float(value) * unit[u]
    return rps, lat


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--nodes", type=int, default=1)
    args = p.parse_args()
    if not shutil.which("wrk"):
        sys.exit("auth_read: wrk is not installed (apt-get install wrk)")
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    clip = os.path.join(args.work, "clip.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
                    "-c:a", "aac", clip], check=True)
    http_ports = [free_port() for _ in range(args.nodes)]
    cluster_ports = [free_port() for _ in range(args.nodes)]
    peers = [f"127.0.0.{40 + i}:{cluster_ports[i]}" for i in range(args.nodes)]
    procs = []
    try:
        for i in range(args.nodes):
            argv = [args.bin, "serve", "--data-dir", os.path.join(args.work, f"n{i}"),
                    "--http", f"127.0.0.{40 + i}:{http_ports[i]}", "--node-name", f"n{i}",
                    "--login-per-minute", "100000", "--lockout-after", "100000"]
            if args.nodes > 1:
                argv += ["--cluster-listen", peers[i], "--peers", ",".join(q for j, q in enumerate(peers) if j != i)]
            env = dict(os.environ, MP4TOMP3_CLUSTER_COOKIE="bench-cookie",
                       MP4TOMP3_JWT_SECRET="bench-secret-bench-secret-bench-secret-00",
                       MP4TOMP3_ADMIN_EMAIL=ADMIN[0], MP4TOMP3_ADMIN_PASSWORD=ADMIN[1])
            env.pop("RUST_LOG", None)
            log = open(os.path.join(args.work, f"n{i}.log"), "w")
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log))
        http = f"http://127.0.0.40:{http_ports[0]}"
        admin = until("the node", 60, lambda: login(http, *ADMIN))
        until("the admin in the metadata", 60, lambda: call(http + "/v1/users", token=admin)[0] == 200)
        s, out = call(http + "/v1/users", "POST", json.dumps({"email": USER[0], "password": USER[1]}).encode(),
                      {"Content-Type": "application/json"}, admin)
        assert s == 201, (s, out)
        token = login(http, *USER)
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"clip.mp4\"\r\n"
                f"Content-Type: video/mp4\r\n\r\n").encode() + open(clip, "rb").read() + f"\r\n--{boundary}--\r\n".encode()
        s, out = call(http + "/v1/jobs", "POST", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"},
                      token)
        assert s == 202, (s, out)
        job = json.loads(out)["id"]
        until("the job to be done", 60,
              lambda: json.loads(call(f"{http}/v1/jobs/{job}", token=token)[1])["state"] == "done")
        url = f"{http}/v1/jobs/{job}"
        wrk(url, token, 2, args.connections)
        rps, lat = wrk(url, token, args.seconds, args.connections)
        hrps, hlat = wrk(http + "/healthz", None, args.seconds, args.connections)
        print(f"auth_read: {args.nodes} node(s), wrk -t2 -c{args.connections} -d{args.seconds}s")
        print(f"  GET /v1/jobs/{{id}} (Bearer): {rps:,.0f} requests/s, "
              f"p50 {lat.get(50, 0):.2f} ms, p90 {lat.get(90, 0):.2f} ms, p99 {lat.get(99, 0):.2f} ms")
        print(f"  GET /healthz:                 {hrps:,.0f} requests/s, "
              f"p50 {hlat.get(50, 0):.2f} ms, p90 {hlat.get(90, 0):.2f} ms, p99 {hlat.get(99, 0):.2f} ms")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()


if __name__ == "__main__":
    main()
