#!/usr/bin/env python3
"""Hash a COPY of 200 MB of files with mockerops/build.py, against sha256sum.

    hash_bench.py --dir DIR --runs R     prints JSON

Makes DIR/context/files/ (200 files of 1 MiB of random bytes) once, then for each
run: plan_build with an empty digest cache (every file read), sha256sum over the
same files, and plan_build again with the cache from disk (a second build: no
file should be read). Last, one file is rewritten and one more plan_build must
read exactly that file. File opens are counted with an audit hook. Every pass
runs on a warm page cache, so it measures hashing, not the disk.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mockerops import build  # noqa: E402

FILES, SIZE = 200, 1 << 20
OPENED = []


def audit(event, args):
    """Record the paths of files opened while counting is on."""
    if event == "open" and OPENED and isinstance(args[0], str):
        OPENED.append(args[0])


def make_context(ctx):
    """Write the Mockerfile and the files once; return the file paths."""
    files = os.path.join(ctx, "files")
    os.makedirs(files, exist_ok=True)
    paths = [os.path.join(files, "f%03d.bin" % i) for i in range(FILES)]
    for path in paths:
        if not os.path.exists(path) or os.path.getsize(path) != SIZE:
            with open(path, "wb") as f:
                f.write(os.urandom(SIZE))
    with open(os.path.join(ctx, "Mockerfile"), "w") as f:
        f.write("FROM scratch\nCOPY files /files\n")
    return paths


def plan(ctx, cache_path, fresh):
    """Time one plan_build; return (seconds, files under ctx it opened)."""
    if fresh and os.path.exists(cache_path):
        os.unlink(cache_path)
    cache = build.DigestCache(cache_path)
    OPENED[:] = [None]
    t0 = time.perf_counter()
    build.plan_build(os.path.join(ctx, "Mockerfile"), ctx, cache=cache)
    seconds = time.perf_counter() - t0
    opened = [p for p in OPENED[1:] if p.startswith(os.path.join(ctx, "files"))]
    OPENED[:] = []
    return seconds, len(opened)


def main():
    """Run the passes and print their timings as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ctx = os.path.join(args.dir, "context")
    cache_path = os.path.join(args.dir, "digests.json")
    paths = make_context(ctx)
    sys.addaudithook(audit)
    subprocess.run(["cat", *paths], stdout=subprocess.DEVNULL, check=True)

    out = {"bytes": FILES * SIZE, "files": FILES, "mockerops": [], "sha256sum": [],
           "cached": [], "cold_opens": [], "cached_opens": []}
    for _ in range(args.runs):
        seconds, opens = plan(ctx, cache_path, fresh=True)
        out["mockerops"].append(seconds)
        out["cold_opens"].append(opens)
        t0 = time.perf_counter()
        subprocess.run(["sha256sum", *paths], stdout=subprocess.DEVNULL, check=True)
        out["sha256sum"].append(time.perf_counter() - t0)
        seconds, opens = plan(ctx, cache_path, fresh=False)
        out["cached"].append(seconds)
        out["cached_opens"].append(opens)

    with open(paths[7], "r+b") as f:
        f.write(os.urandom(16))
    out["changed_seconds"], out["changed_opens"] = plan(ctx, cache_path, fresh=False)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
