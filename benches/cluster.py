#!/usr/bin/env python3
"""Cluster benchmark: a batch of conversions on 1 node vs 2 nodes, and a cross-node call.

Usage: benches/cluster.py [--jobs 8] [--runs 1]   (from the repository root; builds the release binary)

Input: target/bench/video_10min.mp4 (H.264 + stereo AAC, 10 minutes; made by benches/convert.py's
recipe on first use). Every node runs with --converter-slots 1, so the figures show placement
across nodes, not core count. All jobs are uploaded to node A (POST /v1/jobs, in parallel); the
time runs from the first upload until every job is done. With 2 nodes the script also counts
the jobs node B converted (its log's "converting a job for its owner" lines).

Cross-node call: node A's /v1/cluster reports, per member, the round-trip time of its last
heartbeat (a probe RPC to the peer, which answers with its status). Sampled every 0.5 s for
10 s on the idle cluster; median and max printed.
"""

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert import BIN, ROOT, make_inputs  # noqa: E402

ADMIN = ("admin@example.com", "bench-password")
ENV = dict(
    os.environ,
    MP4TOMP3_CLUSTER_COOKIE="bench-cookie",
    MP4TOMP3_JWT_SECRET="bench-secret-bench-secret-bench-secret-0",
    MP4TOMP3_ADMIN_EMAIL=ADMIN[0],
    MP4TOMP3_ADMIN_PASSWORD=ADMIN[1],
)
ENV.pop("RUST_LOG", None)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, root, name, cluster_args, slots=1, env=None):
        self.data = os.path.join(root, name)
        self.log = self.data + ".log"
        argv = [BIN, "serve", "--data-dir", self.data, "--http", "127.0.0.1:0", "--node-name", name,
                "--converter-slots", str(slots)] + cluster_args
        self.proc = subprocess.Popen(argv, env=dict(ENV, **(env or {})), stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "w"))
        self.url = "http://" + wait(lambda: self.address(), "the node's address")

    def address(self):
        if self.proc.poll() is not None:
            sys.exit(f"node exited:\n{open(self.log).read()}")
        for line in open(self.log):
            if "mp4tomp3 serving" in line:
                return line.split("address=")[1].split()[0]
        return None

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def wait(check, what, limit=3600):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def request(url, token=None, method="GET", auth=None):
    req = urllib.request.Request(url, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if auth:
        import base64
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def upload(node, token, path):
    out = subprocess.run(["curl", "-sf", "-H", f"Authorization: Bearer {token}", "-F", f"file=@{path}",
                          node.url + "/v1/jobs"], capture_output=True, check=True)
    return json.loads(out.stdout)["id"]


def members(node, token):
    try:
        return json.loads(request(node.url + "/v1/cluster", token))["members"]
    except Exception:
        return []


def batch(video, n_nodes, jobs):
    with tempfile.TemporaryDirectory() as root:
        ports = [free_port() for _ in range(n_nodes)]
        addrs = [f"127.0.0.{i + 2}:{p}" for i, p in enumerate(ports)]
        nodes = []
        for i in range(n_nodes):
            extra = ["--cluster-listen", addrs[i], "--peers", ",".join(addrs)] if n_nodes > 1 else []
            nodes.append(Node(root, f"node-{'ab'[i]}", extra))
        try:
            a = nodes[0]
            token = wait(lambda: request(a.url + "/login", method="POST", auth=ADMIN).decode(), "a login", 20)
            if n_nodes > 1:
                wait(lambda: [m for m in members(a, token) if m["state"] == "up"] and True, "the mesh", 30)
                time.sleep(1.0)  # a heartbeat with B's slots
            start = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
                ids = list(pool.map(lambda _: upload(a, token, video), range(jobs)))

            def all_done():
                states = [json.loads(request(f"{a.url}/v1/jobs/{i}", token))["state"] for i in ids]
                if any(s in ("failed", "canceled") for s in states):
                    sys.exit(f"a job ended {states}")
                return all(s == "done" for s in states)

            wait(all_done, "the batch")
            elapsed = time.monotonic() - start
            on_b = 0
            rtts = []
            if n_nodes > 1:
                on_b = sum("converting a job for its owner" in line for line in open(nodes[1].log))
                for _ in range(20):
                    rtts += [m["heartbeat_rtt_ms"] for m in members(a, token) if m.get("heartbeat_rtt_ms")]
                    time.sleep(0.5)
            return elapsed, on_b, rtts
        finally:
            for n in nodes:
                n.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    video = make_inputs()[0]
    results = {}
    for n in (1, 2):
        runs = [batch(video, n, args.jobs) for _ in range(args.runs)]
        results[n] = runs
        for elapsed, on_b, _ in runs:
            extra = f", {on_b} of {args.jobs} converted on node B" if n > 1 else ""
            print(f"{n} node(s): {args.jobs} x 10-min MP4 in {elapsed:.1f} s{extra}")
    one = statistics.median(r[0] for r in results[1])
    two = statistics.median(r[0] for r in results[2])
    print(f"speed-up with 2 nodes: {one / two:.2f}x")
    rtts = [x for r in results[2] for x in r[2]]
    if rtts:
        print(f"cross-node heartbeat RTT: median {statistics.median(rtts):.2f} ms, max {max(rtts):.2f} ms "
              f"({len(rtts)} samples)")


if __name__ == "__main__":
    main()
