#!/usr/bin/env python3
"""Rolling restart (or a lost pod) under load, as an operator sees it.

Usage (from the repository root):
    benches/rolling.py --bin target/ci/mp4tomp3 --work /tmp/rolling [--nodes 3]
                       [--mode term|kill] [--absent 5] [--report FILE]

Harness. N real `mp4tomp3 serve` processes on loopback (127.0.0.30+i), static peers, one
JWT secret. Emails go to files (no SMTP). Inputs are 1-2 s AAC clips made with ffmpeg.

Load. Four client threads send, to a random node that is up and ready (as a Kubernetes
Service does): keyed multipart uploads (a new Idempotency-Key each; one in five a retry of
an earlier key on another node, which must answer the earlier job), uploads without a key,
`GET /v1/jobs/{id}` of a random accepted job, and `GET /v1/jobs/{id}/mp3` of a random job
that was seen `done`.

Faults. `term`: each node in turn leaves the ready set, gets SIGTERM one second later (the
manifests' preStop pause is five), stays away `--absent` seconds (default 5), comes back
and rejoins the ready set once `/readyz` answers 200; the next node goes five seconds later.
With `--upgrade-to NEW` (term mode), each node comes back running the binary NEW: a rolling
upgrade; `--roll-back` then rolls every node back to `--bin` the same way (benches/upgrade.py
builds the two).
`kill`: one node gets `kill -9` and stays away `--absent` seconds (default 15); requests
in flight to it when it dies are counted apart (they hit the faulty node itself).

`split` (root, nftables): the last node is cut off from the others (a table of its own
dropping its cluster port's traffic, both ways) for `--absent` seconds (default 15), every
node staying in the ready set. The majority side must accept everything; on the
minority side an upload (keyed or not) may only be accepted or refused with
`503 unavailable` and `Retry-After` (never a second job for a key, never a job the majority
cannot read), and reads of jobs it cannot know about may be `503` (counted apart, as
requests that hit the cut-off node). User changes during the cut: a password change on
the cut-off node must be refused (`503`) and one on the majority accepted; once healed, every
node (the cut-off one too) refuses the changed user's old password and old token and takes
the new ones, and the refused change left nothing behind.

Checked at the end (exit status 1 when violated): no submission refused (keyed or not), no
failed status read, at least 99.9 % of downloads of done jobs served; every keyed retry got
its key's first job; every accepted job ends `done`; no key has two jobs.
"""

import argparse
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

ADMIN = ("admin@rolling.test", "rolling-admin-password")
USER = ("user@rolling.test", "rolling-user-password")
CLASSES = ["keyed", "unkeyed", "status", "download"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, i, args, peers, http_port, cluster_port):
        self.i = i
        self.name = f"roll-{i}"
        self.ip = f"127.0.0.{30 + i}"
        self.http = f"http://{self.ip}:{http_port}"
        self.cluster_port = cluster_port
        self.data = os.path.join(args.work, self.name)
        self.log = self.data + ".log"
        others = ",".join(p for j, p in enumerate(peers) if j != i)
        self.argv = [args.bin, "serve", "--data-dir", self.data, "--http", f"{self.ip}:{http_port}",
                     "--node-name", self.name, "--converter-slots", "1",
                     "--cluster-listen", f"{self.ip}:{cluster_port}", "--peers", others,
                     "--grace", "10s", "--login-per-minute", "100000", "--lockout-after", "100000",
                     "--quota-active", "100000", "--quota-jobs-per-day", "1000000"]
        self.env = dict(os.environ, MP4TOMP3_CLUSTER_COOKIE="rolling-cookie",
                        MP4TOMP3_JWT_SECRET="rolling-secret-rolling-secret-rolling-0000",
                        MP4TOMP3_ADMIN_EMAIL=ADMIN[0], MP4TOMP3_ADMIN_PASSWORD=ADMIN[1])
        self.env.pop("RUST_LOG", None)
        self.proc = None
        self.start()

    def start(self):
        with open(self.log, "a") as log:
            log.write(f"==== start at {time.time():.3f}\n")
            log.flush()
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=log)

    def stop(self, sig, limit=60):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=limit)


def call(url, method="GET", body=None, headers=None, token=None, timeout=20.0):
    """(status, headers, body bytes); raises OSError on connection errors and timeouts."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout) as e:
        raise OSError(str(e)) from e


def multipart(name, data):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class Run:
    def __init__(self, args, nodes, token, clips):
        self.args = args
        self.nodes = nodes
        self.token = token
        self.clips = clips
        self.lock = threading.Lock()
        self.ready = set(range(len(nodes)))
        self.dead = None  # (node index, time) of a kill -9
        self.cut = None  # node index cut off (split mode), while it is
        self.cut_node = None  # the node cut off, its cut's start and end (time.monotonic)
        self.cut_started = None
        self.cut_ended = None
        self.admin = None  # an admin's token (the split watches the group's state)
        self.user_tokens = {}  # split: tokens of the users whose passwords change
        self.user_changes = None  # split: the statuses of the two password changes
        self.stop = threading.Event()
        self.counts = {c: collections.Counter() for c in CLASSES}
        self.failures = []
        self.jobs = {}  # id -> key or None
        self.keys = {}  # key -> first id
        self.done = set()
        self.retries = []  # (key, expected id, got id)
        self.rng = random.Random(args.seed)

    def node(self, rng):
        with self.lock:
            ready = sorted(self.ready)
        return self.nodes[rng.choice(ready)] if ready else None

    def record(self, cls, node, started, ok, what, allowed_on_cut=False):
        with self.lock:
            # In flight to the node while it was cut off (or had not rejoined yet).
            was_cut = (self.cut_node == node.i and self.cut_started is not None
                       and time.monotonic() >= self.cut_started
                       and (self.cut is not None or started < self.cut_ended))
            if was_cut:
                # Sent to the cut-off node: keyed writes may be refused there (503 unavailable),
                # reads of what it cannot know may fail; counted apart.
                if ok:
                    self.counts[cls]["ok"] += 1
                elif allowed_on_cut:
                    self.counts[cls]["refused by the cut-off node"] += 1
                else:
                    self.counts[cls]["failed on the cut-off node"] += 1
                    self.failures.append(f"{cls} on {node.name} (cut off) at {started - self.t0:.1f} s: {what}")
                return
            dead = self.dead
            if not ok and dead is not None and node.i == dead[0] and started <= dead[1]:
                # In flight to the node when it was killed: the faulty node itself.
                self.counts[cls]["hit the killed node"] += 1
                return
            self.counts[cls]["ok" if ok else "failed"] += 1
            if not ok:
                self.failures.append(f"{cls} on {node.name} at {started - self.t0:.1f} s: {what}")

    def one(self, rng):
        cls = rng.choices(CLASSES, weights=[25, 20, 35, 20])[0]
        node = self.node(rng)
        if node is None:
            time.sleep(0.05)
            return
        started = time.monotonic()
        with self.lock:
            jobs = list(self.jobs)
            done = sorted(self.done)
            keys = list(self.keys.items())
        if cls in ("keyed", "unkeyed"):
            name, data = rng.choice(self.clips)
            body, headers = multipart(name, data)
            key = None
            retry_of = None
            if cls == "keyed":
                if keys and rng.random() < 0.2:
                    key, retry_of = rng.choice(keys)
                else:
                    key = uuid.uuid4().hex
                headers["Idempotency-Key"] = key
            try:
                status, _, out = call(node.http + "/v1/jobs", "POST", body, headers, self.token)
            except OSError as e:
                self.record(cls, node, started, False, str(e))
                return
            ok = status in (200, 202)
            refused = status == 503 and b'"unavailable"' in out
            self.record(cls, node, started, ok, f"{status} {out[:200]!r}", allowed_on_cut=refused)
            if ok:
                jid = json.loads(out)["id"]
                with self.lock:
                    self.jobs.setdefault(jid, key)
                    if key is not None:
                        first = self.keys.setdefault(key, jid)
                        if retry_of is not None:
                            self.retries.append((key, retry_of, jid))
                        elif first != jid:
                            self.retries.append((key, first, jid))
        elif cls == "status":
            if not jobs:
                return
            jid = rng.choice(jobs)
            try:
                status, _, out = call(f"{node.http}/v1/jobs/{jid}", token=self.token)
            except OSError as e:
                self.record(cls, node, started, False, str(e))
                return
            self.record(cls, node, started, status == 200, f"{status} {out[:200]!r}", allowed_on_cut=status == 503)
            if status == 200 and json.loads(out)["state"] == "done":
                with self.lock:
                    self.done.add(jid)
        else:
            if not done:
                return
            jid = rng.choice(done)
            try:
                status, _, out = call(f"{node.http}/v1/jobs/{jid}/mp3", token=self.token)
            except OSError as e:
                self.record(cls, node, started, False, str(e))
                return
            ok = status == 200 and len(out) > 1000
            self.record(cls, node, started, ok, f"{status} {out[:200]!r}", allowed_on_cut=status == 503)

    def client(self, seed):
        rng = random.Random(seed)
        while not self.stop.is_set():
            self.one(rng)

    def faults(self):
        args = self.args
        time.sleep(args.warmup)
        if args.mode == "split":
            self.split()
            time.sleep(args.tail)
            return
        order = list(range(len(self.nodes))) if args.mode == "term" else [1 % len(self.nodes)]
        # A rolling upgrade (and back): a pass over every node per binary.
        passes = [None]
        if args.upgrade_to:
            passes = [args.upgrade_to] + ([args.bin] if args.roll_back else [])
        for binary, i in [(b, i) for b in passes for i in order]:
            node = self.nodes[i]
            if args.mode == "term":
                with self.lock:
                    self.ready.discard(i)
                time.sleep(1.0)
                print(f"  {time.monotonic() - self.t0:6.1f} s  SIGTERM {node.name}", flush=True)
                node.stop(signal.SIGTERM)
            else:
                with self.lock:
                    self.ready.discard(i)
                    self.dead = (i, time.monotonic())
                print(f"  {time.monotonic() - self.t0:6.1f} s  kill -9 {node.name}", flush=True)
                node.stop(signal.SIGKILL)
            time.sleep(args.absent)
            if binary:
                node.argv[0] = binary
                print(f"  {time.monotonic() - self.t0:6.1f} s  {node.name} starts {binary}", flush=True)
            node.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if call(node.http + "/readyz", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            with self.lock:
                self.ready.add(i)
            print(f"  {time.monotonic() - self.t0:6.1f} s  {node.name} back and ready", flush=True)
            time.sleep(5.0)
        time.sleep(args.tail)


    def split(self):
        """Cuts the last node off from the others for `--absent` seconds (nftables, loopback)."""
        # On loopback every node's connections leave from 127.0.0.1, so the cut is by port:
        # the last node's cluster port, which carries all its sessions (a node dials only
        # peers whose address sorts after its own: the last node dials nobody).
        cut = self.nodes[-1]
        rules = (f"table inet rolling {{\n chain input {{ type filter hook input priority 0; policy accept;\n"
                 f"  tcp dport {cut.cluster_port} drop\n"
                 f"  tcp sport {cut.cluster_port} drop\n }}\n}}\n")
        with self.lock:
            self.cut = cut.i
            self.cut_node = cut.i
            self.cut_started = time.monotonic()
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
        print(f"  {time.monotonic() - self.t0:6.1f} s  {cut.name} cut off", flush=True)
        try:
            t_cut = time.monotonic()
            time.sleep(min(3.0, self.args.absent / 3))
            # One change on each side (the cut-off one waits out the metadata's patience).
            minority = change_password(cut, self.user_tokens["u1"], "u1-password-1", "u1-password-2")
            majority = change_password(self.nodes[0], self.user_tokens["u2"], "u2-password-1", "u2-password-2")
            self.user_changes = (minority, majority)
            print(f"  {time.monotonic() - self.t0:6.1f} s  password change on {cut.name}: {minority}, "
                  f"on {self.nodes[0].name}: {majority}", flush=True)
            time.sleep(max(0.0, self.args.absent - (time.monotonic() - t_cut)))
        finally:
            subprocess.run(["nft", "delete", "table", "inet", "rolling"], check=False)
        print(f"  {time.monotonic() - self.t0:6.1f} s  healed", flush=True)
        # It stays the faulty node until it has rejoined: its sessions are back and it
        # follows the group's leader again (how long that takes is printed). Requests to
        # it from then on count normally.
        healed = time.monotonic()

        def rejoined():
            terms = []
            for n in (self.nodes[0], cut):
                s, _, out = call(n.http + "/v1/cluster", token=self.admin, timeout=2)
                meta = json.loads(out)["metadata"] if s == 200 else {}
                if not meta.get("leader"):
                    return False
                terms.append((meta.get("leader"), meta.get("term")))
            return terms[0] == terms[1]
        wait_until(f"{cut.name} to rejoin the group", 60, rejoined)
        with self.lock:
            self.cut = None
            self.cut_ended = time.monotonic()
        print(f"  {time.monotonic() - self.t0:6.1f} s  {cut.name} follows the leader again "
              f"({time.monotonic() - healed:.1f} s after healing)", flush=True)


def login(node, email, password):
    """A token for `email` from `node` (None if refused)."""
    auth = __import__("base64").b64encode(f"{email}:{password}".encode()).decode()
    s, _, out = call(node.http + "/login", "POST", b"", {"Authorization": "Basic " + auth}, timeout=5)
    return out.decode() if s == 200 else None


def change_password(node, token, current, new):
    """`POST /v1/me/password` on `node`: its status."""
    body = json.dumps({"current_password": current, "new_password": new}).encode()
    s, _, _ = call(node.http + "/v1/me/password", "POST", body, {"Content-Type": "application/json"}, token, timeout=30)
    return s


def wait_until(what, limit, check):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except OSError:
            pass
        time.sleep(0.3)
    sys.exit(f"rolling: gave up waiting for {what}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--mode", choices=["term", "kill", "split"], default="term")
    p.add_argument("--absent", type=float)
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--tail", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--report")
    p.add_argument("--upgrade-to", help="term mode: restart each node with this binary")
    p.add_argument("--roll-back", action="store_true", help="then restart each with --bin again")
    args = p.parse_args()
    if args.upgrade_to and args.mode != "term":
        sys.exit("--upgrade-to needs --mode term")
    if args.absent is None:
        args.absent = 5.0 if args.mode == "term" else 15.0
    if args.mode == "split":
        subprocess.run(["nft", "delete", "table", "inet", "rolling"], check=False, capture_output=True)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    clips = []
    for k, secs in enumerate([1.0, 1.5, 2.0]):
        path = os.path.join(args.work, f"clip{k}.mp4")
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"sine=frequency={300 + 110 * k}:duration={secs}",
                        "-c:a", "aac", "-b:a", "64k", path], check=True)
        clips.append((f"clip{k}.mp4", open(path, "rb").read()))
    http_ports = [free_port() for _ in range(args.nodes)]
    cluster_ports = [free_port() for _ in range(args.nodes)]
    peers = [f"127.0.0.{30 + i}:{cluster_ports[i]}" for i in range(args.nodes)]
    nodes = [Node(i, args, peers, http_ports[i], cluster_ports[i]) for i in range(args.nodes)]
    failed = True
    try:
        def admin_token():
            s, _, out = call(nodes[0].http + "/login", "POST", b"", {
                "Authorization": "Basic " + __import__("base64").b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()})
            return out.decode() if s == 200 else None
        admin = wait_until("the first node", 60, admin_token)

        def group():
            s, _, out = call(nodes[0].http + "/v1/cluster", token=admin)
            meta = json.loads(out)["metadata"] if s == 200 else {}
            return (meta.get("leader") and len(meta.get("voters", [])) == min(3, args.nodes)
                    and not meta.get("changing"))
        wait_until("the metadata group", 90, group)
        s, _, out = call(nodes[0].http + "/v1/users", "POST",
                         json.dumps({"email": USER[0], "password": USER[1]}).encode(),
                         {"Content-Type": "application/json"}, admin)
        assert s == 201, (s, out)

        def user_token():
            auth = __import__("base64").b64encode(f"{USER[0]}:{USER[1]}".encode()).decode()
            for n in nodes:
                s, _, out = call(n.http + "/login", "POST", b"", {"Authorization": "Basic " + auth})
                if s != 200:
                    return None
            return out.decode()
        token = wait_until("the user on every node", 30, user_token)
        run = Run(args, nodes, token, clips)
        run.admin = admin
        if args.mode == "split":
            for u in ("u1", "u2"):
                s, _, out = call(nodes[0].http + "/v1/users", "POST",
                                 json.dumps({"email": f"{u}@rolling.test", "password": f"{u}-password-1"}).encode(),
                                 {"Content-Type": "application/json"}, admin)
                assert s == 201, (s, out)
                run.user_tokens[u] = wait_until(f"{u} on the last node", 30,
                                                lambda u=u: login(nodes[-1], f"{u}@rolling.test", f"{u}-password-1"))
        run.t0 = time.monotonic()
        print(f"rolling: {args.nodes} nodes, mode {args.mode}, absent {args.absent:.0f} s", flush=True)
        threads = [threading.Thread(target=run.client, args=(args.seed * 100 + k,)) for k in range(4)]
        for t in threads:
            t.start()
        run.faults()
        run.stop.set()
        for t in threads:
            t.join()
        # Every accepted job ends done (asked of any node), and keys are unique.
        states = {}
        for jid in list(run.jobs):
            def ended():
                s, _, out = call(f"{nodes[0].http}/v1/jobs/{jid}", token=token)
                return s == 200 and json.loads(out)["state"] in ("done", "failed") and json.loads(out)["state"]
            states[jid] = wait_until(f"job {jid} to end", 120, ended)
        s, _, out = call(nodes[0].http + "/v1/jobs?limit=100", token=token)
        listed = []
        offset = 0
        while True:
            s, _, out = call(f"{nodes[0].http}/v1/jobs?limit=100&offset={offset}", token=token)
            page = json.loads(out)
            listed += page["jobs"]
            if page.get("next_offset") is None:
                break
            offset = page["next_offset"]
        lost = [j for j in run.jobs if j not in {x["id"] for x in listed}]
        bad_retries = [r for r in run.retries if r[1] != r[2]]
        lines = [f"mode {args.mode}, {args.nodes} nodes, absent {args.absent:.0f} s, "
                 f"{time.monotonic() - run.t0:.0f} s of load"]
        if args.upgrade_to:
            lines.append(f"upgrade: {args.bin} -> {args.upgrade_to}" + (f" -> {args.bin}" if args.roll_back else ""))
        violations = []
        for cls in CLASSES:
            c = run.counts[cls]
            total = c["ok"] + c["failed"]
            pct = 100.0 * c["ok"] / total if total else 100.0
            extra = f", {c['hit the killed node']} in flight to the killed node" if c["hit the killed node"] else ""
            if c["refused by the cut-off node"]:
                extra += f", {c['refused by the cut-off node']} refused by the cut-off node (503, allowed)"
            if c["failed on the cut-off node"]:
                extra += f", {c['failed on the cut-off node']} FAILED on the cut-off node"
                violations.append(f"{c['failed on the cut-off node']} {cls} requests failed on the cut-off node")
            lines.append(f"{cls}: {c['ok']} of {total} answered ({pct:.2f} %), {c['failed']} failed{extra}")
            if cls == "download":
                if pct < 99.9:
                    violations.append(f"downloads {pct:.2f} % < 99.9 %")
            elif c["failed"]:
                violations.append(f"{c['failed']} {cls} requests failed")
        done = sum(1 for s in states.values() if s == "done")
        lines.append(f"jobs: accepted {len(run.jobs)}, done {done}, lost {len(lost)}; "
                     f"keyed retries {len(run.retries)}, answered another job {len(bad_retries)}")
        if lost:
            violations.append(f"lost jobs: {lost[:5]}")
        if done != len(run.jobs):
            violations.append(f"{len(run.jobs) - done} jobs did not end done")
        if bad_retries:
            violations.append(f"keys with two jobs: {bad_retries[:5]}")
        if args.mode == "split":
            minority, majority = run.user_changes or (None, None)
            lines.append(f"user changes: on the cut-off node {minority} (503 wanted), on the majority {majority}")
            if minority != 503:
                violations.append(f"a password change on the cut-off node answered {minority}, not 503")
            if majority != 200:
                violations.append(f"a password change on the majority answered {majority}, not 200")
            for n in nodes:
                checks = {
                    "u2's old password refused": login(n, "u2@rolling.test", "u2-password-1") is None,
                    "u2's new password taken": login(n, "u2@rolling.test", "u2-password-2") is not None,
                    "u2's old token refused": call(n.http + "/v1/jobs", token=run.user_tokens["u2"])[0] == 401,
                    "u1 unchanged": login(n, "u1@rolling.test", "u1-password-1") is not None,
                    "u1's token still works": call(n.http + "/v1/jobs", token=run.user_tokens["u1"])[0] == 200,
                }
                for what, ok in checks.items():
                    if not ok:
                        violations.append(f"after healing, on {n.name}: not {what}")
        for line in lines:
            print("  " + line)
        for f in run.failures[:20]:
            print("  failure: " + f)
        if args.report:
            with open(args.report, "w") as f:
                f.write("\n".join(lines) + "\n")
        if violations:
            print("VIOLATIONS:\n  " + "\n  ".join(violations))
        else:
            print("  no violation")
            failed = False
    finally:
        for n in nodes:
            try:
                n.stop(signal.SIGKILL, 10)
            except Exception:
                pass
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
