#!/usr/bin/env python3
"""Scale-down handoff benchmark: how fast a leaving pod hands its jobs to the staying one.

Usage: benches/handoff.py [--jobs 20] [--runs 1]   (from the repository root; builds the release binary)

Two nodes named like StatefulSet pods (mp4tomp3-0 on 127.0.0.2, mp4tomp3-1 on 127.0.0.3) find
each other through a stub kube API served by this script (Pod list/watch, and the StatefulSet
with its desired replicas). Both run with --converter-slots 0, so every job uploaded to
mp4tomp3-1 stays queued with its MP4 (target/bench/video_10min.mp4, 24 MB; done jobs' MP3s
travel the same way). Then the StatefulSet says 1 replica and mp4tomp3-1 gets SIGTERM: the time
from the signal to its exit is the handoff (plus the HTTP stop and one kube read), and every job
is checked to answer through mp4tomp3-0 afterwards.
"""

import argparse
import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import ADMIN, Node, free_port, request, upload, wait  # noqa: E402
from convert import ROOT, make_inputs  # noqa: E402

STATE = {"replicas": 2, "pods": []}


def pod(i):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"mp4tomp3-{i}", "namespace": "test", "uid": f"u{i}",
                         "labels": {"app": "mp4tomp3"}, "resourceVersion": "1"},
            "status": {"phase": "Running", "podIP": f"127.0.0.{i + 2}"}}


class Stub(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.startswith("/apis/apps/v1/namespaces/test/statefulsets/mp4tomp3"):
            n = STATE["replicas"]
            return self.reply({"apiVersion": "apps/v1", "kind": "StatefulSet",
                               "metadata": {"name": "mp4tomp3", "namespace": "test"},
                               "spec": {"replicas": n, "serviceName": "mp4tomp3-cluster",
                                        "selector": {"matchLabels": {"app": "mp4tomp3"}},
                                        "template": {"metadata": {"labels": {"app": "mp4tomp3"}}}}})
        if self.path.startswith("/api/v1/namespaces/test/pods"):
            if "watch=true" in self.path or "watch=1" in self.path:
                # A quiet watch: nothing changes; the client watches again when it ends.
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                time.sleep(20)
                return
            return self.reply({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
                               "items": STATE["pods"]})
        self.send_response(404)
        self.end_headers()


def run(video, jobs):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    STATE.update(replicas=2, pods=[pod(0), pod(1)])
    with tempfile.TemporaryDirectory() as root:
        kubeconfig = os.path.join(root, "kubeconfig")
        with open(kubeconfig, "w") as f:
            f.write(f"apiVersion: v1\nkind: Config\nclusters:\n- name: s\n  cluster:\n    server: "
                    f"http://127.0.0.1:{server.server_address[1]}\nusers:\n- name: u\n  user: {{}}\n"
                    "contexts:\n- name: c\n  context:\n    cluster: s\n    user: u\n    namespace: test\n"
                    "current-context: c\n")
        port = free_port()
        nodes = []
        try:
            for i in range(2):
                args = ["--cluster-listen", f"127.0.0.{i + 2}:{port}", "--discovery", "kube",
                        "--kube-selector", "app=mp4tomp3", "--login-per-minute", "100000",
                        "--cluster-insecure"]
                nodes.append(Node(root, f"mp4tomp3-{i}", args, slots=0, env={"KUBECONFIG": kubeconfig}))
            stay, leave = nodes
            token = wait(lambda: request(stay.url + "/login", method="POST", auth=ADMIN).decode(), "a login", 20)

            def up():
                ms = json.loads(request(leave.url + "/v1/cluster", token))["members"]
                return any(m["state"] == "up" for m in ms)

            wait(up, "the mesh", 30)
            ids = [upload(leave, token, video) for _ in range(jobs)]
            size = os.path.getsize(video) * jobs
            STATE["replicas"] = 1
            start = time.monotonic()
            leave.proc.send_signal(signal.SIGTERM)
            leave.proc.wait(timeout=600)
            elapsed = time.monotonic() - start
            summary = [line for line in open(leave.log) if "handoff finished" in line]
            if not summary or f"moved={jobs}" not in summary[0]:
                sys.exit(f"handoff incomplete: {summary}\n{open(leave.log).read()[-3000:]}")
            for i in ids:
                state = json.loads(request(f"{stay.url}/v1/jobs/{i}", token))["state"]
                if state != "queued":
                    sys.exit(f"job {i} is {state} after the handoff")
            return elapsed, size
        finally:
            for n in nodes:
                if n.proc.poll() is None:
                    n.stop()
            server.shutdown()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    video = make_inputs()[0]
    for _ in range(args.runs):
        elapsed, size = run(video, args.jobs)
        mb = size / 1e6
        print(f"handed over {args.jobs} jobs ({mb:.0f} MB of MP4s) in {elapsed:.2f} s "
              f"(SIGTERM to exit): {mb / elapsed:.0f} MB/s")


if __name__ == "__main__":
    main()
