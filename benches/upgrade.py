#!/usr/bin/env python3
"""Rolling upgrade and rollback under load: the previous release, HEAD, the previous again.

Usage (from the repository root; root, for loopback addresses):
    benches/upgrade.py [--from REV] [--work /tmp/upgrade] [--nodes 3]

Builds `--from` (a git revision: the release running before this one; default: the main
branch as the last session left it) in a worktree and HEAD (both `--profile ci`, sharing
this checkout's target directory, so only the crate itself is rebuilt), then runs
benches/rolling.py in term mode: three nodes of the old build under load (keyed and
unkeyed uploads, status reads, downloads), each in turn stopped with SIGTERM and started
again on HEAD's build, then each in turn rolled back to the old build. It reports what
rolling.py reports (refused requests by class, jobs lost, keys with two jobs) and exits 1 on
a violation.

The contract it checks (README "Operating on Kubernetes"): version N reads and serves
N - 1's messages and database, and N - 1 opens a database N has migrated as long as N's
migrations only expanded (src/store.rs, `Schema`).
"""

import argparse
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(tree, out):
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(ROOT, "target"))
    subprocess.run(["cargo", "build", "--profile", "ci", "--bin", "mp4tomp3", "-q"], cwd=tree, env=env, check=True)
    shutil.copy(os.path.join(ROOT, "target", "ci", "mp4tomp3"), out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--from", dest="rev", default="1d2ebae")
    p.add_argument("--work", default="/tmp/upgrade")
    p.add_argument("--nodes", type=int, default=3)
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    old_tree = os.path.join(args.work, "old-tree")
    subprocess.run(["git", "worktree", "remove", "--force", old_tree], cwd=ROOT, capture_output=True)
    subprocess.run(["git", "worktree", "add", "--detach", old_tree, args.rev], cwd=ROOT, check=True,
                   capture_output=True)
    old, new = os.path.join(args.work, "mp4tomp3-old"), os.path.join(args.work, "mp4tomp3-new")
    try:
        print(f"upgrade: building {args.rev}", flush=True)
        build(old_tree, old)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", old_tree], cwd=ROOT, capture_output=True)
    print("upgrade: building HEAD", flush=True)
    build(ROOT, new)
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benches", "rolling.py"), "--bin", old,
                          "--upgrade-to", new, "--roll-back", "--mode", "term", "--nodes", str(args.nodes),
                          "--work", os.path.join(args.work, "run"),
                          "--report", os.path.join(args.work, "report.txt")])
    sys.exit(run.returncode)


if __name__ == "__main__":
    main()
