#!/usr/bin/env python3
"""Big files (issue 14): upload throughput and server memory, resumable (tus) vs multipart,
and the streamed ZIP of many MP3s.

Usage: benches/big_files.py [--gib 1] [--zip-gb 2] [--bin PATH] [--skip-zip]
       (from the repository root; builds the release binary unless --bin is given)

Uploads: one node with no converter slots (nothing converts while we measure), a
--gib GiB file (a valid M4A followed by a `free` box of random bytes) sent on loopback
  1. as multipart (`curl -F`, POST /v1/jobs),
  2. by tus in one PATCH (`curl -T`),
  3. by tus in 16 MiB PATCHes (Python's http.client, like a tus client would),
  4. by tus through a second node that forwards it over the mesh (one PATCH, `curl -T`),
printing MB/s and the storing server's peak RSS while it received (VmRSS sampled every 20 ms).

ZIP: one node converts a 40-minute tone at 320 kbps (96 MB of MP3) as many times as it
takes to reach --zip-gb GB of MP3s, then `GET /v1/jobs/archive` streams them all: MB/s
and the server's peak RSS; the archive is checked by Python's zipfile (entry count,
sizes, CRCs).
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import ADMIN, ENV, free_port, request, wait  # noqa: E402
from convert import BENCH, BIN, ROOT  # noqa: E402

MIB = 1 << 20


def big_file(gib):
    """A valid 2 s M4A, then a `free` box filling it up to `gib` GiB."""
    os.makedirs(BENCH, exist_ok=True)
    path = os.path.join(BENCH, f"big_{gib}gib.m4a")
    if os.path.exists(path):
        return path
    tone = os.path.join(BENCH, "big_tone.m4a")
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=2", "-c:a", "aac", tone], check=True)
    head = open(tone, "rb").read()
    total = int(gib * (1 << 30))
    extra = total - len(head) - 16
    with open(path + ".tmp", "wb") as f:
        f.write(head)
        f.write((1).to_bytes(4, "big") + b"free" + (extra + 16).to_bytes(8, "big"))
        block = os.urandom(MIB)
        left = extra
        while left > 0:
            n = min(left, MIB)
            f.write(block[:n])
            left -= n
    os.rename(path + ".tmp", path)
    return path


class Peak:
    """Samples a process's VmRSS every 20 ms while in a `with` block; `.mib` is the peak."""

    def __init__(self, pid):
        self.pid, self.mib, self.stop = pid, 0.0, threading.Event()

    def rss(self):
        for line in open(f"/proc/{self.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def __enter__(self):
        self.start_mib = self.rss()

        def run():
            while not self.stop.is_set():
                self.mib = max(self.mib, self.rss())
                time.sleep(0.02)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join()


class Node:
    def __init__(self, binary, root, name, extra, cluster=None):
        self.log = os.path.join(root, f"{name}.log")
        args = [binary, "serve", "--data-dir", os.path.join(root, name), "--http", "127.0.0.1:0",
                "--max-upload-bytes", str(64 << 30), "--min-free-bytes", "0", "--node-name", name] + extra
        if cluster:
            args += ["--cluster-listen", cluster[0], "--peers", ",".join(cluster[1])]
        self.proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))

        def address():
            if self.proc.poll() is not None:
                sys.exit(open(self.log).read())
            for line in open(self.log):
                if "mp4tomp3 serving" in line:
                    return "http://" + line.split("address=")[1].split()[0]

        self.url = wait(address, f"node {name}", 30)
        self.token = wait(lambda: request(self.url + "/login", method="POST", auth=ADMIN).decode(), "a login", 20)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def curl(*args):
    out = subprocess.run(["curl", "-sS", "-f", "-m", "3600", *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"curl {' '.join(args)}: {out.stderr}")
    return out.stdout


def tus_create(node, size, target=None):
    headers = curl("-D", "-", "-o", "/dev/null", "-X", "POST", "-H", f"Authorization: Bearer {node.token}",
                   "-H", "Tus-Resumable: 1.0.0", "-H", f"Upload-Length: {size}",
                   node.url + "/v1/uploads")
    location = [h.split(":", 1)[1].strip() for h in headers.splitlines() if h.lower().startswith("location:")][0]
    return (target or node).url + location


def tus_patch_curl(node, upload_url, path, token):
    return curl("-D", "-", "-o", "/dev/null", "-X", "PATCH", "-T", path, "-H", f"Authorization: Bearer {token}",
                "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
                "-H", "Content-Type: application/offset+octet-stream", upload_url)


def tus_patch_chunks(upload_url, path, token, chunk):
    u = urllib.parse.urlparse(upload_url)
    size = os.path.getsize(path)
    offset = 0
    with open(path, "rb") as f:
        while offset < size:
            n = min(chunk, size - offset)
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
            conn.putrequest("PATCH", u.path)
            for k, v in [("Authorization", f"Bearer {token}"), ("Tus-Resumable", "1.0.0"),
                         ("Upload-Offset", str(offset)), ("Content-Type", "application/offset+octet-stream"),
                         ("Content-Length", str(n))]:
                conn.putheader(k, v)
            conn.endheaders()
            left = n
            while left:
                block = f.read(min(left, MIB))
                conn.send(block)
                left -= len(block)
            r = conn.getresponse()
            r.read()
            if r.status != 204:
                sys.exit(f"PATCH at {offset}: {r.status}")
            offset = int(r.getheader("Upload-Offset"))
            conn.close()


def uploads(binary, gib):
    path = big_file(gib)
    size = os.path.getsize(path)
    print(f"uploads: {size / MIB:.0f} MiB on loopback; peak RSS of the storing node while it received")
    print(f"{'how':<34} {'seconds':>8} {'MB/s':>8} {'RSS before MiB':>15} {'peak RSS MiB':>13}")
    ports = [free_port(), free_port()]
    addrs = [f"127.0.0.2:{ports[0]}", f"127.0.0.3:{ports[1]}"]
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "target")) as root:
        a = Node(binary, root, "node-a", ["--converter-slots", "0"], (addrs[0], addrs))
        b = Node(binary, root, "node-b", ["--converter-slots", "0"], (addrs[1], addrs))
        wait(lambda: "node-b" in request(a.url + "/v1/cluster", a.token).decode(), "the mesh", 30)
        try:
            runs = [
                ("multipart POST /v1/jobs (curl -F)",
                 lambda: curl("-o", "/dev/null", "-H", f"Authorization: Bearer {a.token}", "-F", f"file=@{path}",
                              a.url + "/v1/jobs")),
                ("tus, one PATCH (curl -T)",
                 lambda: tus_patch_curl(a, tus_create(a, size), path, a.token)),
                ("tus, 16 MiB PATCHes (http.client)",
                 lambda: tus_patch_chunks(tus_create(a, size), path, a.token, 16 * MIB)),
                ("tus through node B (curl -T)",
                 lambda: tus_patch_curl(a, tus_create(a, size, target=b), path, b.token)),
            ]
            for name, run in runs:
                time.sleep(2)
                with Peak(a.proc.pid) as peak:
                    start = time.monotonic()
                    run()
                    secs = time.monotonic() - start
                print(f"{name:<34} {secs:8.2f} {size / secs / 1e6:8.0f} {peak.start_mib:15.1f} {peak.mib:13.1f}")
        finally:
            a.stop()
            b.stop()


def archive(binary, zip_gb):
    os.makedirs(BENCH, exist_ok=True)
    tone = os.path.join(BENCH, "tone_40min.m4a")
    if not os.path.exists(tone):
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        "sine=frequency=440:duration=2400", "-ac", "1", "-c:a", "aac", "-b:a", "32k", tone],
                       check=True)
    per_job = 2400 * 320_000 / 8
    jobs = max(1, round(zip_gb * 1e9 / per_job))
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "target")) as root:
        node = Node(binary, root, "node-a", [])
        try:
            ids = []
            for i in range(jobs):
                out = curl("-H", f"Authorization: Bearer {node.token}", "-F", f"file=@{tone};filename=talk.m4a",
                           "-F", "bitrate=320", node.url + "/v1/jobs")
                ids.append(json.loads(out)["id"])

            def done():
                states = [json.loads(request(f"{node.url}/v1/jobs/{i}", node.token))["state"] for i in ids]
                if any(s in ("failed", "canceled") for s in states):
                    sys.exit(f"a job did not convert: {states}")
                return all(s == "done" for s in states)

            start = time.monotonic()
            wait(done, "the conversions", 3600)
            print(f"zip: {jobs} jobs of 40 min at 320 kbps converted in {time.monotonic() - start:.0f} s")
            time.sleep(7)
            out = os.path.join(root, "all.zip")
            with Peak(node.proc.pid) as peak:
                start = time.monotonic()
                curl("-o", out, "-H", f"Authorization: Bearer {node.token}",
                     f"{node.url}/v1/jobs/archive?ids={','.join(ids)}")
                secs = time.monotonic() - start
            size = os.path.getsize(out)
            z = zipfile.ZipFile(out)
            infos = z.infolist()
            assert len(infos) == jobs, len(infos)
            assert z.testzip() is None
            names = {i.filename for i in infos}
            assert len(names) == jobs and all(i.compress_type == zipfile.ZIP_STORED for i in infos)
            print(f"{'archive':<10} {'entries':>8} {'bytes':>14} {'seconds':>8} {'MB/s':>8} "
                  f"{'RSS before MiB':>15} {'peak RSS MiB':>13}")
            print(f"{'GET':<10} {jobs:8} {size:14} {secs:8.2f} {size / secs / 1e6:8.0f} {peak.start_mib:15.1f} "
                  f"{peak.mib:13.1f}")
            print("checked by Python's zipfile: entries, unique names, stored, CRCs")
        finally:
            node.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--zip-gb", type=float, default=2.0)
    ap.add_argument("--bin", default=None, help="the binary (default: build target/release/mp4tomp3)")
    ap.add_argument("--skip-zip", action="store_true")
    ap.add_argument("--skip-uploads", action="store_true")
    args = ap.parse_args()
    binary = args.bin
    if binary is None:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "mp4tomp3"], cwd=ROOT, check=True)
        binary = BIN
    if not args.skip_uploads:
        uploads(binary, args.gib)
    if not args.skip_zip:
        archive(binary, args.zip_gb)


if __name__ == "__main__":
    main()
