#!/usr/bin/env python3
"""Nemesis: random faults against a real cluster, a client workload, and a checker that
judges the recorded history on its own (Jepsen's shape: nemesis, workload, history, checker).

Usage, as root (from the repository root):
    benches/nemesis.py [--nodes 5] [--jobs 1000] [--faults 40] [--seed N] [--bin PATH]
The short run CI makes (tests/it/nemesis.rs): --nodes 3 --jobs 150 --faults 10.

Harness. Each node is a real `mp4tomp3 serve` in a network namespace of its own, joined by
a veth pair to a bridge in a hub namespace (10.213.0.1; node i is 10.213.0.(10+i)), static
discovery, mutual TLS between nodes (a CA and node certificates made with openssl). The hub
namespace holds the rest: an SMTP receiver (aiosmtpd) that keeps every message, a fixture
HTTP server for URL imports, and this client. Nothing leaves the namespaces this script
makes (it deletes them at the end).

Nemesis. One fault at a time on a seeded schedule (the seed is printed; the same seed
replays the same schedule): kill -9 and restart on the same data dir; SIGSTOP/SIGCONT
(1-15 s); a node isolated from its peers; a split into two groups; a one-way cut (one node
drops what one peer sends it); SIGTERM and restart; a jump of one node's wall clock by +-1 h
for 3-12 s (libfaketime, read from a file the nemesis rewrites). Partitions are nftables
rules inside the nodes' namespaces, healed after 3-12 s.

Workload. Three users submit short clips (1-5 s AAC, a few bad files) spread over all nodes
and over the run: multipart uploads, URL imports and tus uploads (creation-with-upload), each
with an Idempotency-Key, retried with the same key on connection errors, timeouts and 503
(after Retry-After) on any node. Some jobs are canceled at once, some deleted once done;
status polls run throughout, and some done MP3s are downloaded while the faults go on
(and must equal the MP3 every node serves at the end).

Checker (after healing, restarting and waiting for every job to end): one job per key in the
whole cluster (every node's list, matched to keys by file name); every accepted job ended
`done` (good input) or `failed` with a media code (bad input), the same on every node; each
MP3 byte-identical from every node, decoding with ffmpeg with an empty stderr and the
input's duration +-50 ms; every job's times within the run; one email per ended job per
Message-ID (repeats counted), none for canceled jobs; canceled and deleted jobs have no MP3;
no 5xx but `503 owner_unavailable` or `503 unavailable` (no metadata leader) with
Retry-After; every node lists the same jobs and users; SQLite `integrity_check` ok on every node.
Exit status 1 when anything is violated.
"""

import argparse
import base64
import collections
import hashlib
import concurrent.futures
import http.client
import http.server
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET = "10.213.0"
HUB_IP = f"{NET}.1"
HTTP_PORT = 8080
CLUSTER_PORT = 4697
SMTP_PORT = 2525
FIXTURE_PORT = 8000
ADMIN = ("admin@nemesis.test", "nemesis-admin-password")
USERS = [(f"user{i}@nemesis.test", f"nemesis-password-{i}") for i in range(3)]
CLIPS = [1.0, 1.6, 2.3, 3.0, 4.2, 5.0]
MEDIA_CODES = {"not_mp4", "no_audio_track", "unsupported_codec", "corrupt_media", "truncated_media"}
KINDS = ["kill", "pause", "isolate", "split", "oneway", "term", "clock"]
# Debian's libfaketime: each node's wall clock can be moved inside its running process.
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def node_ip(i):
    return f"{NET}.{10 + i}"


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------- set-up (root namespace)

class Net:
    """The hub namespace with its bridge, and one namespace per node on a veth pair."""

    def __init__(self, n, tag):
        self.hub = f"nem{tag}-hub"
        self.nodes = [f"nem{tag}-n{i}" for i in range(n)]
        self.tag = tag

    def up(self):
        sh("ip", "netns", "add", self.hub)
        hub = ["ip", "-n", self.hub]
        sh(*hub, "link", "set", "lo", "up")
        sh(*hub, "link", "add", "br0", "type", "bridge")
        sh(*hub, "addr", "add", f"{HUB_IP}/24", "dev", "br0")
        sh(*hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.nodes):
            sh("ip", "netns", "add", ns)
            outer = f"nem{self.tag}v{i}"
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", f"nem{self.tag}e{i}")
            sh("ip", "link", "set", outer, "netns", self.hub)
            sh("ip", "link", "set", f"nem{self.tag}e{i}", "netns", ns)
            sh(*hub, "link", "set", outer, "master", "br0")
            sh(*hub, "link", "set", outer, "up")
            inner = ["ip", "-n", ns]
            sh(*inner, "link", "set", f"nem{self.tag}e{i}", "name", "eth0")
            sh(*inner, "addr", "add", f"{node_ip(i)}/24", "dev", "eth0")
            sh(*inner, "link", "set", "eth0", "up")
            sh(*inner, "link", "set", "lo", "up")

    def down(self):
        for ns in self.nodes + [self.hub]:
            sh("ip", "netns", "del", ns, check=False)


def make_certs(work, n):
    """A CA and one certificate per node carrying the cluster's shared DNS name."""
    d = os.path.join(work, "tls")
    os.makedirs(d, exist_ok=True)
    ossl = ["openssl"]
    # Made as of yesterday (libfaketime), so a node whose clock jumps back an hour still finds
    # every certificate valid, as with certificates issued well before they are used.
    yesterday = dict(os.environ, LD_PRELOAD=LIBFAKETIME, FAKETIME="-1d")
    sh(*ossl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "3", "-subj", "/CN=nemesis-ca", env=yesterday)
    ext = f"{d}/ext.cnf"
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:mp4tomp3-cluster\nextendedKeyUsage=serverAuth,clientAuth\n"
                "basicConstraints=CA:FALSE\n")
    for i in range(n):
        sh(*ossl, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", f"{d}/n{i}.key", "-out", f"{d}/n{i}.csr", "-subj", f"/CN=node-{i}", env=yesterday)
        sh(*ossl, "x509", "-req", "-in", f"{d}/n{i}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
           "-CAcreateserial", "-out", f"{d}/n{i}.pem", "-days", "3", "-extfile", ext, env=yesterday)
    return d


def decoded_secs(path):
    """The audio's length as ffmpeg decodes it (priming and padding removed, as a player plays
    it), from the count of samples."""
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-ac", "1", "-ar", "44100", "-f", "s16le", "-"],
                         capture_output=True, check=True).stdout
    return len(pcm) / 2 / 44100


def make_inputs(work):
    """Short AAC clips, their durations by ffprobe, and two bad files."""
    d = os.path.join(work, "inputs")
    os.makedirs(d, exist_ok=True)
    clips = {}
    for secs in CLIPS:
        path = os.path.join(d, f"clip{secs}.m4a")
        sh("ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
           f"sine=f={200 + int(secs * 100)}:r=44100:d={secs}", "-ac", "2", "-c:a", "aac", "-b:a", "96k", path)
        clips[path] = decoded_secs(path)
    bad = os.path.join(d, "bad-text.mp4")
    with open(bad, "wb") as f:
        f.write(b"this is not an MP4 at all\n" * 40)
    silent = os.path.join(d, "bad-video-only.mp4")
    sh("ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
       "testsrc=size=32x24:rate=5:d=1", "-c:v", "mpeg4", silent)
    return clips, {bad: "not_mp4", silent: "no_audio_track"}


def outside(args):
    if os.geteuid() != 0:
        sys.exit("nemesis.py: needs root (network namespaces, nftables)")
    for tool in ("ip", "nft", "openssl", "ffmpeg", "ffprobe"):
        if not shutil.which(tool):
            sys.exit(f"nemesis.py: `{tool}` is missing (apt-get install iproute2 nftables openssl ffmpeg)")
    if not os.path.exists(LIBFAKETIME):
        sys.exit(f"nemesis.py: {LIBFAKETIME} is missing (apt-get install libfaketime)")
    if not args.bin:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        args.bin = os.path.join(ROOT, "target", "release", "mp4tomp3")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    work = args.work or os.path.join(ROOT, "target", "nemesis", f"seed-{seed}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    clips, bad = make_inputs(work)
    tls = make_certs(work, args.nodes)
    tag = str(os.getpid() % 100000)
    net = Net(args.nodes, tag)
    plan = dict(seed=seed, nodes=args.nodes, jobs=args.jobs, faults=args.faults, bin=os.path.abspath(args.bin),
                work=work, tls=tls, clips=clips, bad=bad, namespaces=net.nodes, report=args.report)
    with open(os.path.join(work, "plan.json"), "w") as f:
        json.dump(plan, f, indent=1)
    print(f"nemesis: seed {seed}, {args.nodes} nodes, {args.jobs} jobs, {args.faults} faults; work dir {work}",
          flush=True)
    try:
        net.up()
        rc = subprocess.run(["ip", "netns", "exec", net.hub, sys.executable, os.path.abspath(__file__),
                             "--inside", os.path.join(work, "plan.json")]).returncode
    finally:
        net.down()
    sys.exit(rc)


# ---------------------------------------------------------------- inside the hub namespace

class Mail:
    """An SMTP receiver that keeps every message's Message-ID, recipient and subject."""

    def __init__(self, path):
        from aiosmtpd.controller import Controller
        self.messages = []
        self.lock = threading.Lock()
        self.path = path
        mail = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                import email
                msg = email.message_from_bytes(envelope.content)
                with mail.lock:
                    mail.messages.append({"message_id": msg["Message-ID"], "to": envelope.rcpt_tos,
                                          "subject": msg["Subject"], "at": time.time()})
                return "250 OK"

        self.controller = Controller(Handler(), hostname=HUB_IP, port=SMTP_PORT)
        self.controller.start()

    def stop(self):
        self.controller.stop()
        with open(self.path, "w") as f:
            json.dump(self.messages, f, indent=1)


def fixture_server(files):
    """Serves /f/<anything>/<name> as the input called <name> (the key rides in the path)."""
    by_name = {os.path.basename(p): p for p in files}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            path = by_name.get(self.path.rsplit("/", 1)[-1].split("-", 1)[-1])
            if not path:
                self.send_response(404)
                self.end_headers()
                return
            data = open(path, "rb").read()
            self.send_response(200)
            self.send_header("content-type", "video/mp4")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer((HUB_IP, FIXTURE_PORT), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Node:
    def __init__(self, i, plan):
        self.i = i
        self.ns = plan["namespaces"][i]
        self.name = f"n{i}"
        self.data = os.path.join(plan["work"], self.name)
        self.log = self.data + ".log"
        self.ip = node_ip(i)
        tls = plan["tls"]
        peers = ",".join(f"{node_ip(j)}:{CLUSTER_PORT}" for j in range(plan["nodes"]) if j != i)
        self.argv = ["ip", "netns", "exec", self.ns, plan["bin"], "serve", "--data-dir", self.data,
                     "--http", f"0.0.0.0:{HTTP_PORT}", "--node-name", self.name, "--converter-slots", "1",
                     "--public-url", f"http://{self.ip}:{HTTP_PORT}",
                     "--cluster-listen", f"{self.ip}:{CLUSTER_PORT}", "--peers", peers,
                     "--cluster-tls-cert", f"{tls}/n{i}.pem", "--cluster-tls-key", f"{tls}/n{i}.key",
                     "--cluster-tls-ca", f"{tls}/ca.pem",
                     "--smtp-host", HUB_IP, "--smtp-port", str(SMTP_PORT), "--smtp-tls", "none",
                     "--fetch-allow-hosts", HUB_IP, "--grace", "10s",
                     "--login-per-minute", "100000", "--lockout-after", "100000",
                     "--quota-active", "100000", "--quota-jobs-per-day", "1000000"]
        self.env = dict(os.environ, MP4TOMP3_CLUSTER_COOKIE="nemesis-cookie",
                        MP4TOMP3_JWT_SECRET="nemesis-secret-nemesis-secret-nemesis-00",
                        MP4TOMP3_ADMIN_EMAIL=ADMIN[0], MP4TOMP3_ADMIN_PASSWORD=ADMIN[1])
        self.env.pop("RUST_LOG", None)
        self.clock = self.data + ".clock"
        with open(self.clock, "w") as f:
            f.write("+0\n")
        self.env.update(LD_PRELOAD=LIBFAKETIME, FAKETIME_TIMESTAMP_FILE=self.clock, FAKETIME_CACHE_DURATION="1",
                        FAKETIME_DONT_FAKE_MONOTONIC="1")
        self.proc = None
        self.paused = False
        self.start()

    def start(self):
        with open(self.log, "a") as log:
            log.write(f"==== start at {time.time():.3f}\n")
            log.flush()
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=log)

    def signal(self, sig):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait_exit(self, limit):
        try:
            self.proc.wait(timeout=limit)
            return True
        except subprocess.TimeoutExpired:
            return False

    def jump(self, offset):
        """Moves this node's wall clock to `offset` from the real one (`+1h`, `-1h`, `+0`)."""
        with open(self.clock, "w") as f:
            f.write(offset + "\n")

    def nft(self, rules):
        """Replaces this namespace's nemesis rules (an empty list heals)."""
        script = "table inet nemesis\ndelete table inet nemesis\n"
        if rules:
            script += "table inet nemesis {\n chain input { type filter hook input priority 0; policy accept;\n"
            script += "".join(f"  {r}\n" for r in rules) + " }\n}\n"
        subprocess.run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"], input=script, text=True, check=True,
                       capture_output=True)


class Client:
    """HTTP to the nodes, recording every answer for the checker."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.lock = threading.Lock()
        self.answers = collections.Counter()  # "ok" / "5xx" / "timeout" / "refused"
        self.bad_5xx = []
        # (time sent, request class, node name, answered without 5xx/timeout, what it got, path)
        self.history = []

    def call(self, node, method, path, body=None, headers=None, timeout=10.0, token=None):
        """(status, headers dict, body bytes); raises OSError on connection errors/timeouts."""
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection(node.ip, HTTP_PORT, timeout=timeout)
        sent = time.time()
        cls = request_class(method, path, headers)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as e:
            with self.lock:
                what = "timeout" if isinstance(e, TimeoutError) else "refused"
                self.answers[what] += 1
                self.history.append((sent, cls, node.name, False, what, path))
            raise OSError(str(e)) from e
        finally:
            conn.close()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        code = None
        if r.status >= 500:
            try:
                code = json.loads(data)["error"]["code"]
            except Exception:
                pass
        with self.lock:
            self.history.append((sent, cls, node.name, r.status < 500, f"{r.status} {code or ''}".strip(), path))
            if r.status >= 500:
                self.answers["5xx"] += 1
                if not (r.status == 503 and code in ("owner_unavailable", "unavailable") and "retry-after" in hdrs):
                    self.bad_5xx.append(f"{method} {path} on {node.name}: {r.status} {data[:200]!r}")
            else:
                self.answers["ok"] += 1
        return r.status, hdrs, data

    def retrying(self, rng, method, path, deadline, ok=(200, 201, 202, 204), trail=None, **kw):
        """Calls random nodes until an answer in `ok` (or a 4xx), retrying connection errors,
        timeouts, 503 (after Retry-After) and 429. Returns (status, headers, body, node) or None.
        `trail` collects what each attempt got (an operation whose first attempt timed out
        may have happened, and then be answered 404 by the retry)."""
        while time.monotonic() < deadline:
            node = rng.choice(self.nodes)
            try:
                status, hdrs, data = self.call(node, method, path, **kw)
            except OSError as e:
                if trail is not None:
                    trail.append(f"{node.name}: {e}")
                time.sleep(0.3 + rng.random() * 0.5)
                continue
            if trail is not None:
                trail.append(f"{node.name}: {status}")
            if status in ok or (400 <= status < 500 and status != 429):
                return status, hdrs, data, node
            pause = hdrs.get("retry-after", "1")
            time.sleep(min(float(pause) if pause.isdigit() else 1.0, 5.0) * (0.5 + rng.random() / 2))
        return None


def request_class(method, path, headers):
    """What kind of request this is, for availability per class."""
    path = path.split("?")[0]
    if method == "POST" and path in ("/v1/jobs", "/v1/uploads"):
        return "keyed submit" if "Idempotency-Key" in headers else "submit"
    if method == "GET" and path.startswith("/v1/jobs/") and path.endswith("/mp3"):
        return "download"
    if method == "GET" and path.startswith("/v1/jobs/"):
        return "status"
    if method == "GET" and path == "/v1/jobs":
        return "list"
    return "other"


def multipart(field_name, file_name, data, fields=None):
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
                 f'filename="{file_name}"\r\nContent-Type: video/mp4\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Workload:
    def __init__(self, plan, client, tokens, rng):
        self.plan = plan
        self.client = client
        self.tokens = tokens
        self.clips = plan["clips"]
        self.bad = plan["bad"]
        self.records = {}  # key -> record
        self.lock = threading.Lock()
        self.rng = rng

    def plan_jobs(self, n, span):
        jobs = []
        clips = sorted(self.clips)
        bad = sorted(self.bad)
        for k in range(n):
            r = self.rng.random()
            path = self.rng.choice(bad) if r < 0.06 else self.rng.choice(clips)
            how = self.rng.choices(["multipart", "url", "tus"], [0.6, 0.25, 0.15])[0]
            then = self.rng.choices(["none", "download", "cancel", "delete"], [0.6, 0.25, 0.07, 0.08])[0]
            key = f"k{k:04d}x{self.rng.randrange(1 << 30):08x}"
            jobs.append(dict(key=key, path=path, how=how, then=then, user=k % len(USERS),
                             at=self.rng.random() * span, seed=self.rng.randrange(1 << 30)))
        return sorted(jobs, key=lambda j: j["at"])

    def run_one(self, job, t0):
        rng = random.Random(job["seed"])
        delay = t0 + job["at"] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        token = self.tokens[job["user"]]
        name = f"{job['key']}-{os.path.basename(job['path'])}"
        rec = dict(job, file_name=name, ids=set(), accepted_at=None, status=None, canceled=False, deleted=False)
        with self.lock:
            self.records[job["key"]] = rec
        deadline = time.monotonic() + 180
        headers = {"Idempotency-Key": job["key"]}
        data = open(job["path"], "rb").read()
        got = None
        if job["how"] == "multipart":
            body, ctype = multipart("file", name, data)
            got = self.client.retrying(rng, "POST", "/v1/jobs", deadline, body=body, token=token,
                                       headers=dict(headers, **{"Content-Type": ctype}))
        elif job["how"] == "url":
            body = json.dumps({"url": f"http://{HUB_IP}:{FIXTURE_PORT}/f/{name}"}).encode()
            got = self.client.retrying(rng, "POST", "/v1/jobs", deadline, body=body, token=token,
                                       headers=dict(headers, **{"Content-Type": "application/json"}))
        else:
            got = self.tus(rng, name, data, headers, token, deadline)
        if got is None:
            rec["status"] = "gave up"
            return
        status, hdrs, body, _node = got
        rec["status"] = status
        if status not in (200, 201, 202):
            rec["refused"] = body[:300].decode(errors="replace")
            return
        job_id = hdrs.get("_job_id") or json.loads(body)["id"]
        rec["ids"].add(job_id)
        rec["accepted_at"] = time.time()
        # A few status polls from random nodes, as a waiting client would.
        for _ in range(rng.randrange(1, 4)):
            self.client.retrying(rng, "GET", f"/v1/jobs/{job_id}", time.monotonic() + 5, token=token)
            time.sleep(rng.random())
        if job["then"] == "cancel":
            rec["cancel_trail"] = []
            got = self.client.retrying(rng, "DELETE", f"/v1/jobs/{job_id}", time.monotonic() + 120, token=token,
                                       trail=rec["cancel_trail"])
            rec["canceled"] = bool(got and got[0] in (200, 204))
            # A first attempt lost in a fault may have been carried out: its retry then finds
            # nothing (404). The job may be gone (it was done) or canceled; both are right.
            rec["maybe_canceled"] = len(rec["cancel_trail"]) > 1
        elif job["then"] == "download":
            end = time.monotonic() + 120
            while time.monotonic() < end:
                got = self.client.retrying(rng, "GET", f"/v1/jobs/{job_id}", end, token=token)
                if got and got[0] == 200 and json.loads(got[2])["state"] in ("done", "failed"):
                    if json.loads(got[2])["state"] == "done":
                        got = self.client.retrying(rng, "GET", f"/v1/jobs/{job_id}/mp3", end, token=token,
                                                   timeout=30)
                        if got and got[0] == 200:
                            rec["downloaded"] = hashlib.sha256(got[2]).hexdigest()
                    break
                time.sleep(1)
        elif job["then"] == "delete":
            end = time.monotonic() + 150
            while time.monotonic() < end:
                got = self.client.retrying(rng, "GET", f"/v1/jobs/{job_id}", end, token=token)
                if got and got[0] == 200 and json.loads(got[2])["state"] in ("done", "failed"):
                    rec["delete_trail"] = []
                    got = self.client.retrying(rng, "DELETE", f"/v1/jobs/{job_id}", end, token=token,
                                               trail=rec["delete_trail"])
                    rec["deleted"] = bool(got and got[0] in (200, 204)) or len(rec["delete_trail"]) > 1
                    break
                time.sleep(1)

    def tus(self, rng, name, data, headers, token, deadline):
        """creation-with-upload; if the answer is not the job yet, HEAD and PATCH the rest."""
        meta = "filename " + base64.b64encode(name.encode()).decode()
        tus = {"Tus-Resumable": "1.0.0"}
        got = self.client.retrying(rng, "POST", "/v1/uploads", deadline, body=data, token=token,
                                   headers=dict(headers, **tus, **{"Upload-Length": str(len(data)),
                                                                    "Upload-Metadata": meta,
                                                                    "Content-Type": "application/offset+octet-stream"}))
        if got is None or got[0] != 201:
            return got
        location = got[1]["location"]
        job = got[1].get("mp4tomp3-job")
        while job is None and time.monotonic() < deadline:
            head = self.client.retrying(rng, "HEAD", location, deadline, token=token, headers=tus)
            if head is None or head[0] != 200:
                return head
            job = head[1].get("mp4tomp3-job")
            offset = int(head[1]["upload-offset"])
            if job is None:
                patch = self.client.retrying(rng, "PATCH", location, deadline, body=data[offset:], token=token,
                                             headers=dict(tus, **{"Upload-Offset": str(offset),
                                                                  "Content-Type": "application/offset+octet-stream"}))
                if patch and patch[0] == 204:
                    job = patch[1].get("mp4tomp3-job")
        if job is None:
            return None
        return 202, {"_job_id": job.rsplit("/", 1)[-1]}, b"", None


class Nemesis:
    def __init__(self, nodes, rng, count, voters):
        self.nodes = nodes
        self.voters = voters  # the metadata group's voters (node names)
        self.rng = rng
        kinds = []
        while len(kinds) < count:
            batch = KINDS[:]
            rng.shuffle(batch)
            kinds += batch
        self.kinds = kinds[:count]
        self.log = []  # (kind, detail, start, end)
        self.faulty = []  # (start, end, names of the nodes the fault is on)
        self.active = False

    def span(self):
        return 9.0 * len(self.kinds)

    def partition(self, groups):
        """Each node drops what comes from nodes outside its group."""
        for group in groups:
            others = [node_ip(n.i) for g in groups if g is not group for n in g]
            for n in group:
                n.nft([f"ip saddr {{ {', '.join(others)} }} drop"])

    def heal(self):
        for n in self.nodes:
            n.nft([])

    def restart(self, node):
        node.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection(node.ip, HTTP_PORT, timeout=2)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)

    def run(self):
        rng = self.rng
        for kind in self.kinds:
            time.sleep(2 + rng.random() * 4)
            node = rng.choice(self.nodes)
            start = time.time()
            self.active = True
            if kind == "kill":
                node.signal(signal.SIGKILL)
                node.wait_exit(10)
                time.sleep(rng.uniform(1, 5))
                self.restart(node)
                detail = node.name
            elif kind == "pause":
                secs = rng.uniform(1, 15)
                node.signal(signal.SIGSTOP)
                time.sleep(secs)
                node.signal(signal.SIGCONT)
                detail = f"{node.name} {secs:.1f}s"
            elif kind == "term":
                node.signal(signal.SIGTERM)
                if not node.wait_exit(60):
                    node.signal(signal.SIGKILL)
                    node.wait_exit(10)
                    detail = f"{node.name} (did not exit in 60 s: killed)"
                else:
                    detail = node.name
                self.restart(node)
            elif kind == "clock":
                jump = rng.choice(["+1h", "-1h"])
                secs = rng.uniform(3, 12)
                node.jump(jump)
                time.sleep(secs)
                node.jump("+0")
                time.sleep(1.5)  # libfaketime reads the file at most once a second
                detail = f"{node.name} {jump} {secs:.1f}s"
            else:
                if kind == "isolate":
                    groups = [[node], [n for n in self.nodes if n is not node]]
                    self.partition(groups)
                    detail = node.name
                elif kind == "split":
                    shuffled = self.nodes[:]
                    rng.shuffle(shuffled)
                    cut = len(shuffled) // 2
                    groups = [shuffled[:cut], shuffled[cut:]]
                    self.partition(groups)
                    detail = "|".join(",".join(n.name for n in g) for g in groups)
                else:
                    peer = rng.choice([n for n in self.nodes if n is not node])
                    node.nft([f"ip saddr {node_ip(peer.i)} drop"])
                    detail = f"{peer.name}->{node.name} dropped"
                time.sleep(rng.uniform(3, 12))
                self.heal()
            self.active = False
            self.log.append((kind, detail, start, time.time()))
            if kind == "split":
                # The faulty side is the one cut off from the Raft majority: the side with
                # fewer voters (with 5 pods and 3 voters, it may be the larger one).
                on = {n.name for n in min(groups, key=lambda g: (sum(n.name in self.voters for n in g), len(g)))}
            else:
                on = {node.name}
            self.faulty.append((start, time.time(), on))
            print(f"  fault {len(self.log)}/{len(self.kinds)}: {kind} {detail} ({time.time() - start:.1f} s)",
                  flush=True)


def login(client, rng, email, password):
    body = json.dumps({"email": email, "password": password}).encode()
    got = client.retrying(rng, "POST", "/v1/auth/token", time.monotonic() + 60, body=body,
                          headers={"Content-Type": "application/json"})
    if not got or got[0] != 200:
        sys.exit(f"nemesis: cannot log in {email}: {got}")
    return json.loads(got[2])["access_token"]


def wait_mesh(client, nodes, token):
    """Waits for the full mesh and the metadata group's voters (up to 3); answers their names."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            views = [json.loads(client.call(n, "GET", "/v1/cluster", token=token)[2]) for n in nodes]
            ups = [sum(m["state"] == "up" for m in v["members"]) for v in views]
            meta = views[0]["metadata"]
            if (all(u >= len(nodes) - 1 for u in ups) and len(meta["voters"]) == min(3, len(nodes))
                    and not meta.get("changing")):
                return set(meta["voters"])
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.3)
    sys.exit("nemesis: the mesh and the metadata group did not form in 60 s")


def list_all(client, node, token):
    """Every job node `node` lists (admin, all users), or None if it cannot answer now."""
    out, offset = [], 0
    while True:
        status, _, data = client.call(node, "GET", f"/v1/jobs?all=true&limit=100&offset={offset}", token=token,
                                      timeout=20)
        if status != 200:
            return None
        page = json.loads(data)
        items = page["jobs"] if isinstance(page, dict) else page
        out += items
        if len(items) < 100:
            return out
        offset += 100


def inside(plan_path):
    plan = json.load(open(plan_path))
    rng = random.Random(plan["seed"])
    mail = Mail(os.path.join(plan["work"], "mail.json"))
    fixtures = fixture_server(list(plan["clips"]) + list(plan["bad"]))
    nodes = [Node(i, plan) for i in range(plan["nodes"])]
    client = Client(nodes)
    violations = []
    final = None
    try:
        admin = login(client, rng, *ADMIN)
        voters = wait_mesh(client, nodes, admin)
        for email, password in USERS:
            body = json.dumps({"email": email, "password": password}).encode()
            client.retrying(rng, "POST", "/v1/users", time.monotonic() + 60, body=body, token=admin,
                            headers={"Content-Type": "application/json"})
        time.sleep(1.5)  # users replicate
        tokens = [login(client, rng, e, p) for e, p in USERS]
        nemesis = Nemesis(nodes, random.Random(f"{plan['seed']}:nemesis"), plan["faults"], voters)
        work = Workload(plan, client, tokens, random.Random(f"{plan['seed']}:workload"))
        jobs = work.plan_jobs(plan["jobs"], nemesis.span())
        t0 = time.monotonic()
        started = time.time()
        fault_thread = threading.Thread(target=nemesis.run)
        fault_thread.start()
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            for f in [pool.submit(work.run_one, j, t0) for j in jobs]:
                f.result()
        fault_thread.join()
        # Heal everything and bring every node back.
        nemesis.heal()
        for n in nodes:
            n.signal(signal.SIGCONT)
            if n.proc.poll() is not None:
                nemesis.restart(n)
        workload_secs = time.time() - started
        print(f"  workload and faults ended after {workload_secs:.0f} s; waiting for every job to end", flush=True)
        found, final = check(plan, client, nodes, admin, work, mail, nemesis, started)
        violations += found
    finally:
        for n in nodes:
            n.signal(signal.SIGCONT)
            n.signal(signal.SIGTERM)
        for n in nodes:
            if not n.wait_exit(30):
                n.signal(signal.SIGKILL)
                n.wait_exit(10)
        mail.stop()
        fixtures.shutdown()
    for n in nodes:
        db = sqlite3.connect(os.path.join(n.data, "node.db"))
        result = db.execute("PRAGMA integrity_check").fetchall()
        db.close()
        if result != [("ok",)]:
            violations.append(f"{n.name}: integrity_check says {result}")
        violations += leftovers(n, final)
        panics = [line.strip() for line in open(n.log, errors="replace") if "panicked" in line]
        violations += [f"{n.name} panicked: {line[:300]}" for line in panics]
    if violations:
        print(f"nemesis: {len(violations)} violation(s) (seed {plan['seed']}):")
        for v in violations[:50]:
            print("  - " + v)
        return 1
    print(f"nemesis: no violation (seed {plan['seed']})")
    return 0


def check(plan, client, nodes, admin, work, mail, nemesis, started):
    violations = []
    records = work.records
    accepted = {k: r for k, r in records.items() if r["ids"]}
    for k, r in records.items():
        if len(r["ids"]) > 1:
            violations.append(f"key {k}: the client was given {len(r['ids'])} jobs: {sorted(r['ids'])}")
        if not r["ids"]:
            violations.append(f"key {k} ({r['how']}): never accepted: {r['status']} {r.get('refused', '')}")
    # Wait until every node answers the list and every accepted job has ended there.
    deadline = time.monotonic() + 240
    lists = None
    while time.monotonic() < deadline:
        try:
            lists = [list_all(client, n, admin) for n in nodes]
        except OSError:
            lists = None
        if lists and all(x is not None for x in lists):
            ended = all(j["state"] in ("done", "failed", "canceled") for x in lists for j in x)
            views = [{j["id"]: j["state"] for j in x} for x in lists]
            if ended and all(v == views[0] for v in views):
                break
        time.sleep(1)
    converged = time.monotonic() < deadline
    print(f"  {'converged' if converged else 'NOT converged'} {240 - (deadline - time.monotonic()):.0f} s after healing",
          flush=True)
    if not converged:
        for n in nodes:
            try:
                members = json.loads(client.call(n, "GET", "/v1/cluster", token=admin)[2])["members"]
                seen = collections.Counter(j["id"].split("~")[0] for j in list_all(client, n, admin) or [])
                print(f"    {n.name}: members {[(m['node'], m['state']) for m in members]}; "
                      f"lists jobs of {dict(sorted(seen.items()))}", flush=True)
            except (OSError, KeyError, ValueError) as e:
                print(f"    {n.name}: {e}", flush=True)
    if not lists or any(x is None for x in lists):
        return violations + ["not every node could list the jobs after healing"], None
    stuck = {j["id"]: j["state"] for x in lists for j in x if j["state"] not in ("done", "failed", "canceled")}
    for jid, state in sorted(stuck.items()):
        violations.append(f"job {jid} still {state} 240 s after healing")
    views = [{j["id"]: (j["state"], j.get("mp3_bytes")) for j in x} for x in lists]
    for n, v in zip(nodes[1:], views[1:]):
        if v != views[0]:
            diff = set(v.items()) ^ set(views[0].items())
            violations.append(f"{n.name} lists other jobs than n0: {sorted(diff)[:6]}")
    users = []
    for n in nodes:
        status, _, data = client.call(n, "GET", "/v1/users", token=admin)
        body = json.loads(data)
        items = body["users"] if isinstance(body, dict) else body
        users.append(sorted((u["email"], u.get("admin")) for u in items))
    if any(u != users[0] for u in users):
        violations.append(f"nodes list different users: {users}")
    # One job per key, across the whole cluster.
    by_key = collections.defaultdict(set)
    for j in lists[0]:
        by_key[j["file_name"].split("-", 1)[0]].add(j["id"])
    duplicates = 0
    for key, ids in by_key.items():
        r = records.get(key)
        if r is None:
            violations.append(f"jobs nobody asked for: {sorted(ids)}")
            continue
        extra = ids - r["ids"]
        if extra:
            duplicates += len(extra)
            violations.append(f"key {key}: {len(ids)} jobs in the cluster ({sorted(ids)}), the client got {sorted(r['ids'])}")
    # Each accepted job's end.
    jobs = {j["id"]: j for j in lists[0]}
    mails = collections.Counter(m["message_id"] for m in mail.messages)
    durations = {"faults": [], "calm": []}
    rng = random.Random(1)
    for key, r in sorted(accepted.items()):
        (jid,) = list(r["ids"])[:1]
        j = jobs.get(jid)
        mid = f"<{jid}@mp4tomp3>"
        bad_code = plan["bad"].get(r["path"])
        if j is None:
            if not (r["deleted"] or r["canceled"] or r.get("maybe_canceled")):
                violations.append(f"job {jid} ({key}) accepted but listed by no node")
            for n in nodes:
                status = client.call(n, "GET", f"/v1/jobs/{jid}", token=admin)[0]
                if status not in (404, 410):
                    violations.append(f"deleted job {jid} answers {status} on {n.name}")
            continue
        state = j["state"]
        if (r["canceled"] or r.get("maybe_canceled")) and state == "canceled":
            if mails[mid]:
                violations.append(f"canceled job {jid} sent {mails[mid]} email(s)")
            for n in nodes:
                status = client.call(n, "GET", f"/v1/jobs/{jid}/mp3", token=admin)[0]
                if status == 200:
                    violations.append(f"canceled job {jid} has an MP3 on {n.name}")
            continue
        if state == "canceled":
            violations.append(f"job {jid} is canceled; the client never canceled it")
            continue
        if mails[mid] == 0:
            violations.append(f"job {jid} ended {state} with no email")
        if bad_code:
            if state != "failed" or (j.get("error") or {}).get("code") != bad_code:
                violations.append(f"job {jid} from {os.path.basename(r['path'])}: {state} {j.get('error')}, "
                                  f"expected failed {bad_code}")
            continue
        if state != "done":
            violations.append(f"job {jid} ({r['how']}, {os.path.basename(r['path'])}) ended {state}: {j.get('error')}")
            continue
        bodies = set()
        for n in nodes:
            status, _, data = client.call(n, "GET", f"/v1/jobs/{jid}/mp3", token=admin, timeout=30)
            if status != 200:
                violations.append(f"job {jid}: the MP3 answers {status} on {n.name}")
            else:
                bodies.add(data)
        if len(bodies) > 1:
            violations.append(f"job {jid}: the nodes serve {len(bodies)} different MP3s")
        if r.get("downloaded") and bodies and r["downloaded"] != hashlib.sha256(next(iter(bodies))).hexdigest():
            violations.append(f"job {jid}: the MP3 downloaded during the run differs from the one served now")
        if bodies:
            violations += check_mp3(jid, next(iter(bodies)), plan["clips"][r["path"]], plan["work"])
        created = parse_time(j["created_at"])
        finished = parse_time(j["finished_at"])
        # A node whose wall clock jumped must not stamp its jobs with the jump.
        if not (started - 5 <= created <= finished <= time.time() + 5):
            violations.append(f"job {jid}: created {j['created_at']}, finished {j['finished_at']}: "
                              f"outside the run (a clock jump stamped it?)")
        during = any(s - 1 <= finished and created <= e + 1 for _, _, s, e in nemesis.log)
        durations["faults" if during else "calm"].append(finished - created)
    extra_mails = sum(c - 1 for c in mails.values() if c > 1)
    for mid in mails:
        jid = mid.strip("<>").rsplit("@", 1)[0]
        if jid not in jobs and not any(jid in r["ids"] for r in records.values()):
            violations.append(f"an email for a job nobody has: {mid}")
    violations += [f"5xx: {x}" for x in client.bad_5xx]
    report(plan, records, jobs, nemesis, client, durations, duplicates, extra_mails, started)
    return violations, jobs


def leftovers(node, final):
    """Files a stopped node still keeps that no job needs: an MP3 of a job that is gone or was
    canceled, anything in tmp/ or remote/ (staging, pieces in flight)."""
    out = []
    if final is None:
        return out
    jobs_dir = os.path.join(node.data, "jobs")
    for jid in os.listdir(jobs_dir) if os.path.isdir(jobs_dir) else []:
        files = os.listdir(os.path.join(jobs_dir, jid))
        state = final.get(jid, {}).get("state")
        if files and state in (None, "canceled"):
            out.append(f"{node.name}: jobs/{jid} keeps {files}, the job being {state or 'gone'}")
        if state == "done" and jid.split("~")[0] == node.name and files != ["output.mp3"]:
            out.append(f"{node.name}: done job {jid} has {files}")
    for sub in ("tmp", "remote"):
        d = os.path.join(node.data, sub)
        for base, _, files in os.walk(d):
            for f in files:
                out.append(f"{node.name}: {os.path.relpath(os.path.join(base, f), node.data)} left behind")
    return out


def check_mp3(jid, data, expected, work):
    path = os.path.join(work, f"check-{jid.replace('~', '_')}.mp3")
    with open(path, "wb") as f:
        f.write(data)
    out = []
    dec = subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-i", path, "-f", "null", "-"],
                         capture_output=True, text=True)
    if dec.returncode != 0 or dec.stderr.strip():
        out.append(f"job {jid}: ffmpeg decoding the MP3 says {dec.stderr.strip()[:200]!r}")
    dur = decoded_secs(path)
    if abs(dur - expected) > 0.05:
        out.append(f"job {jid}: the MP3 lasts {dur:.3f} s, the input {expected:.3f} s")
    os.remove(path)
    return out


def parse_time(text):
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def report(plan, records, jobs, nemesis, client, durations, duplicates, extra_mails, started):
    states = collections.Counter(j["state"] for j in jobs.values())
    accepted = sum(1 for r in records.values() if r["ids"])
    lost = sum(1 for r in records.values() for i in r["ids"] if i not in jobs and not r["deleted"] and not r.get("maybe_canceled")
               and not r["canceled"])
    faults = collections.Counter(k for k, _, _, _ in nemesis.log)
    replaced = sum(1 for j in jobs.values() if j.get("attempt", 1) > 1)
    # Conversions that ran to the end, from the nodes' logs ("converted job_id=... attempt=N").
    finished = collections.Counter()
    for n in range(plan["nodes"]):
        for line in open(os.path.join(plan["work"], f"n{n}.log"), errors="replace"):
            if " converted job_id=" in line:
                finished[line.split(" converted job_id=")[1].split()[0]] += 1
    twice = sum(1 for c in finished.values() if c > 1)
    total = sum(client.answers.values())
    avail = client.answers["ok"] / total if total else 0

    def pct(xs, p):
        if not xs:
            return "-"
        xs = sorted(xs)
        return f"{xs[min(len(xs) - 1, int(p * len(xs)))]:.2f} s"

    lines = [
        f"seed {plan['seed']}, {plan['nodes']} nodes, {time.time() - started:.0f} s",
        f"jobs: asked {len(records)}, accepted {accepted}, done {states['done']}, failed {states['failed']}, "
        f"canceled {states['canceled']}, deleted {sum(r['deleted'] for r in records.values())}, lost {lost}",
        "faults: " + ", ".join(f"{k} {faults[k]}" for k in KINDS),
        f"jobs placed again (attempt > 1): {replaced}; converted to the end more than once: {twice}; "
        f"duplicate jobs for a key: {duplicates}; repeated emails (same Message-ID): {extra_mails}",
        f"availability: {avail:.1%} of {total} requests answered without 5xx or timeout "
        f"({dict(client.answers)})",
        f"accept to done: calm p50 {pct(durations['calm'], 0.5)} p99 {pct(durations['calm'], 0.99)} "
        f"({len(durations['calm'])} jobs); during faults p50 {pct(durations['faults'], 0.5)} "
        f"p99 {pct(durations['faults'], 0.99)} ({len(durations['faults'])} jobs)",
    ]
    # Per class of request, leaving out requests sent to the node a fault was on (the killed,
    # frozen, isolated or cut-off node; a split's side without a majority of the voters) while
    # it was on.
    def on_faulty(t, name):
        return any(a <= t <= b + 1.0 and name in on for a, b, on in nemesis.faulty)

    def fault_at(t):
        """The fault on at `t` (or that ended within 5 s before), and seconds since it began."""
        near = [(kind, detail, a) for kind, detail, a, b in nemesis.log if a <= t <= b + 5.0]
        if not near:
            return "calm", None
        kind, detail, a = near[-1]
        return f"{kind} {detail}", t - a

    per = collections.defaultdict(lambda: [0, 0, 0, 0])  # all ok, all, elsewhere ok, elsewhere
    misses = collections.defaultdict(list)  # class -> (what, fault, seconds into it, node, path)
    for t, cls, name, ok, what, path in client.history:
        row = per[cls]
        row[0] += ok
        row[1] += 1
        if not on_faulty(t, name):
            row[2] += ok
            row[3] += 1
            if not ok:
                fault, into = fault_at(t)
                misses[cls].append((what, fault, into, name, path))
    for cls in ["keyed submit", "submit", "status", "download", "list", "other"]:
        if cls in per:
            a, b, c, d = per[cls]
            lines.append(f"availability {cls}: {a / b:.1%} of {b}; not sent to the faulty node "
                         f"{c / d if d else 1:.2%} of {d}")
            # What the requests not sent to the faulty node got instead, and when.
            by = collections.Counter(f"{what} during {fault.split()[0]}" for what, fault, *_ in misses[cls])
            if by:
                lines.append("  missed: " + ", ".join(f"{k} x{v}" for k, v in by.most_common()))
                into = sorted(x for _, _, x, *_ in misses[cls] if x is not None)
                if into:
                    lines.append(f"  seconds into the fault: p50 {into[len(into) // 2]:.1f}, max {into[-1]:.1f}")
    for line in lines:
        print("  " + line)
    if plan.get("report"):
        with open(plan["report"], "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(plan["work"], "history.json"), "w") as f:
        json.dump({"records": {k: dict(r, ids=sorted(r["ids"])) for k, r in records.items()},
                   "faults": nemesis.log, "misses": misses}, f, indent=1, default=str)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--inside":
        sys.exit(inside(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--faults", type=int, default=40)
    p.add_argument("--seed", type=int)
    p.add_argument("--bin", help="the mp4tomp3 binary (default: build --release)")
    p.add_argument("--work", help="work directory (default target/nemesis/seed-N)")
    p.add_argument("--report", help="also write the figures to this file")
    args = p.parse_args()
    if not 3 <= args.nodes <= 5:
        p.error("--nodes must be 3 to 5")
    outside(args)


if __name__ == "__main__":
    main()
