"""The seven scenarios of issue 5, each returning a section for RESULTS.md.

A section is a dict: title, n, rows (tool, Stat, unit), targets (text, met as
True, False or None when it cannot be judged, detail), notes, skipped lines and
profiles (text). A scenario whose mockerops feature does not work yet returns a
section with only a "skipped: why" line: no number stands in for it.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile

from benchlib import (BENCH, MOCKEROPS, REPO, ToolFailed, measure, run_timed,
                      value_stat, venv_bin)

BUSYBOX_TARBALL = os.path.join(REPO, "playbooks", "busybox", "rootfs", "busybox.tar.gz")
HELLO_APP = os.path.join(REPO, "playbooks", "hello", "app.yaml")


def section(title, n=None):
    """Return an empty section."""
    return {"title": title, "n": n, "rows": [], "targets": [], "notes": [],
            "skipped": [], "profiles": []}


def skip(sec, why):
    """Record and print why (part of) a scenario was not measured."""
    sec["skipped"].append(why)
    print("  skipped: %s" % why, flush=True)


def target(sec, text, met, detail):
    """Record a target as met (True), missed (False) or not judged (None)."""
    sec["targets"].append({"text": text, "met": met, "detail": detail})
    word = {True: "met", False: "MISSED", None: "not judged"}[met]
    print("  target %s: %s (%s)" % (word, text, detail), flush=True)


def add_rows(sec, stats, unit="s"):
    """Add measured tools to a section (failed ones become skipped lines)."""
    for name, stat in stats.items():
        if stat.ok:
            sec["rows"].append({"tool": name, "stat": stat, "unit": unit})
            print("  %-34s median %s" % (name, fmt(stat.median, unit)), flush=True)
        else:
            skip(sec, "%s failed: %s" % (name, stat.error))


def fmt(seconds, unit="s"):
    """Return seconds as text in the section's unit."""
    return "%.1f ms" % (seconds * 1000) if unit == "ms" else "%.2f s" % seconds


def ratio(stats, a, b):
    """Return median(a) / median(b), or None when either is missing."""
    if a in stats and b in stats and stats[a].ok and stats[b].ok:
        return stats[a].median / stats[b].median
    return None


def judge(sec, text, value, limit, detail, lower_is_better=True):
    """Record a ratio target; value None means a side could not be measured."""
    if value is None:
        target(sec, text, None, "a side of the comparison did not run")
        return None
    met = value <= limit if lower_is_better else value >= limit
    target(sec, text, met, detail % value)
    return met


# -- 1. fan-out --------------------------------------------------------------------


def fanout(b, n):
    """One ad hoc ``true`` on n hosts: mockerops, Ansible, pyinfra and the floor."""
    sec = section("1. Fan-out: one ad hoc `true`", n)
    inv, pyinv = b.inventory(n), b.pyinfra_inventory(n)
    tools = {
        "mockerops run": lambda: run_timed([*MOCKEROPS, "run", "-i", inv, "all", "--",
                                            "true"]),
        "mockerops ping (agent path)": lambda: run_timed(
            [*MOCKEROPS, "ping", "-i", inv, "all"]),
        "floor (asyncssh)": lambda: run_timed(
            [sys.executable, os.path.join(BENCH, "floor.py"), "-i", inv, "true"]),
    }
    if b.peer_ok(sec, "ansible"):
        tools["ansible -m command"] = lambda: run_timed(
            [venv_bin("ansible"), "-i", inv, "all", "-m", "command", "-a", "true"],
            env=b.ansible_env(n))
    if b.peer_ok(sec, "pyinfra"):
        tools["pyinfra exec"] = lambda: run_timed(
            [venv_bin("pyinfra"), "-y", "--parallel", str(n), pyinv, "exec", "--",
             "true"])
    stats = measure(tools, b.runs, after=b.after_tool)
    add_rows(sec, stats)
    b.ping_stats[n] = stats.get("mockerops ping (agent path)")
    b.floor_stats[n] = stats.get("floor (asyncssh)")

    mo = "mockerops run"
    missed = [
        judge(sec, "faster than Ansible", ratio(stats, mo, "ansible -m command"), 1.0,
              "mockerops/Ansible = %.2fx"),
        judge(sec, "faster than pyinfra", ratio(stats, mo, "pyinfra exec"), 1.0,
              "mockerops/pyinfra = %.2fx"),
        judge(sec, "within 1.3x of the floor", ratio(stats, mo, "floor (asyncssh)"),
              1.3, "mockerops/floor = %.2fx"),
    ]
    if False in missed:
        b.profile(sec, "mockerops run -i INV all -- true",
                  ["run", "-i", inv, "all", "--", "true"])
    return sec


# -- 2. ten steps ------------------------------------------------------------------


def tenstep(b, n):
    """Ten RUN steps built uncached against ten Ansible tasks and ten pyinfra ops."""
    sec = section("2. Ten steps: ten `RUN true` built uncached", n)
    inv, pyinv = b.inventory(n), b.pyinfra_inventory(n)
    build = b.build_argv(inv, no_cache=True)
    if not b.works(sec, "mockerops build", build):
        return sec
    tools = {"mockerops build --no-cache": lambda: run_timed(build)}
    if b.peer_ok(sec, "ansible"):
        tools["ansible-playbook (10 tasks)"] = lambda: run_timed(
            [venv_bin("ansible-playbook"), "-i", inv,
             os.path.join(BENCH, "ansible", "tenstep.yml")], env=b.ansible_env(n))
    if b.peer_ok(sec, "pyinfra"):
        tools["pyinfra deploy (10 ops)"] = lambda: run_timed(
            [venv_bin("pyinfra"), "-y", "--parallel", str(n), pyinv,
             os.path.join(BENCH, "pyinfra", "tenstep.py")])
    # The probe above warmed mockerops up; the peers need no warm-up to be fair.
    stats = measure(tools, b.heavy_runs, warmup=False, after=b.after_tool)
    add_rows(sec, stats)
    b.build_stats[n] = stats.get("mockerops build --no-cache")

    mo = "mockerops build --no-cache"
    missed = [
        judge(sec, "5x faster than Ansible", ratio(stats, "ansible-playbook (10 tasks)",
                                                   mo), 5.0,
              "Ansible/mockerops = %.2fx", lower_is_better=False),
        judge(sec, "3x faster than pyinfra", ratio(stats, "pyinfra deploy (10 ops)", mo),
              3.0, "pyinfra/mockerops = %.2fx", lower_is_better=False),
    ]
    if False in missed:
        b.profile(sec, "mockerops build --no-cache", build[1:])
    return sec


# -- 3. unchanged deploy -----------------------------------------------------------


def unchanged_deploy(b, n):
    """The example app deployed again unchanged, against the floor and Ansible."""
    sec = section("3. Unchanged deploy: the hello app deployed again", n)
    inv = b.inventory(n)
    if not os.path.exists(HELLO_APP):
        skip(sec, "%s does not exist yet" % os.path.relpath(HELLO_APP, REPO))
        return sec
    deploy = [*MOCKEROPS, "deploy", "-i", inv, HELLO_APP]
    if not b.works(sec, "mockerops deploy", [*MOCKEROPS, "deploy", "--help"]):
        return sec
    if not b.works(sec, "mockerops deploy (first)", deploy):
        return sec
    tools = {
        "mockerops deploy (unchanged)": lambda: run_timed(deploy),
        "floor (asyncssh)": lambda: run_timed(
            [sys.executable, os.path.join(BENCH, "floor.py"), "-i", inv, "true"]),
    }
    if b.peer_ok(sec, "ansible"):
        playbook = os.path.join(BENCH, "ansible", "hello.yml")
        argv = [venv_bin("ansible-playbook"), "-i", inv, playbook]
        if b.works(sec, "ansible hello.yml (first)", argv, env=b.ansible_env(n)):
            tools["ansible-playbook (unchanged)"] = lambda: run_timed(
                argv, env=b.ansible_env(n))
    stats = measure(tools, b.heavy_runs, warmup=False, after=b.after_tool)
    add_rows(sec, stats)
    b.deploy_stats[n] = stats.get("mockerops deploy (unchanged)")

    mo = "mockerops deploy (unchanged)"
    missed = [
        judge(sec, "within 2x of the floor", ratio(stats, mo, "floor (asyncssh)"), 2.0,
              "mockerops/floor = %.2fx"),
        judge(sec, "5x faster than Ansible", ratio(stats, "ansible-playbook (unchanged)",
                                                   mo), 5.0,
              "Ansible/mockerops = %.2fx", lower_is_better=False),
    ]
    if False in missed:
        b.profile(sec, "mockerops deploy (unchanged)", deploy[1:])
    return sec


# -- 4 and 5. container start ------------------------------------------------------


def prepare_images(b):
    """Extract the busybox rootfs and make the 3 MB and 495 MB extra layers."""
    rootfs = os.path.join(b.work, "rootfs")
    if not os.path.isdir(os.path.join(rootfs, "bin")):
        os.makedirs(rootfs, exist_ok=True)
        with tarfile.open(BUSYBOX_TARBALL) as tar:
            tar.extractall(rootfs)
    layers = {}
    for name, mib in (("small", 3), ("big", 495)):
        layer = os.path.join(b.work, "layer-%s" % name)
        blob = os.path.join(layer, "data.bin")
        if not os.path.exists(blob) or os.path.getsize(blob) != mib << 20:
            os.makedirs(layer, exist_ok=True)
            chunk = os.urandom(1 << 20)
            with open(blob, "wb") as f:
                for _ in range(mib):
                    f.write(chunk)
        layers[name] = layer
    return rootfs, layers


def start_times(b, tool, count, extra, podman=False):
    """Run start_times.py once; return its list of seconds or raise ToolFailed."""
    argv = [sys.executable, os.path.join(BENCH, "start_times.py"), tool,
            "--count", str(count), *extra]
    # A private network namespace: the agent's runtime makes its bridge, veths and
    # NAT rules there, never in the machine's own namespace.
    if podman:
        argv = ["unshare", "-m", "-n", "--propagation", "private", *argv,
                "--hide-cgroup2"]
    else:
        argv = ["unshare", "-n", *argv]
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if result.returncode != 0:
        raise ToolFailed(result.stderr.strip()[-400:])
    return json.loads(result.stdout)


def _in_process(b, tools, count):
    """Time each start tool over b.runs runs of count starts; return name -> Stat.

    Each run's figure is the median of its count starts; the spread is over runs.
    """
    import statistics

    values = {name: [] for name in tools}
    errors = {}
    for i in range(b.runs):
        for name, (tool, extra, podman) in tools.items():
            if name in errors:
                continue
            try:
                times = start_times(b, tool, count, extra, podman)
                values[name].append(statistics.median(times))
            except ToolFailed as exc:
                errors[name] = str(exc)
                print("  %s failed: %s" % (name, exc), flush=True)
    return {name: value_stat(values[name], errors.get(name)) for name in tools}


def container_start(b):
    """Start /bin/true: the agent runtime in-process, unshare+chroot, podman+crun."""
    sec = section("4. Container start on one host, no SSH: /bin/true")
    rootfs, _ = prepare_images(b)
    scratch = os.path.join(b.work, "start-scratch")
    os.makedirs(scratch, exist_ok=True)
    tools = {
        "mockerops agent container (run, exit, rm)": (
            "container", ["--lower", rootfs, "--scratch", scratch], False),
        "mockerops build-step sandbox (run_isolated)": (
            "agent", ["--lower", rootfs, "--scratch", scratch], False),
        "floor (unshare -mpuin -f chroot)": ("floor", ["--rootfs", rootfs], False),
    }
    if b.peer_ok(sec, "podman") and b.podman_image():
        tools["podman run --rm (crun)"] = (
            "podman", ["--image", b.podman_image(), "--podman-root", b.podman_root],
            True)
    stats = _in_process(b, tools, b.start_count)
    add_rows(sec, stats, unit="ms")
    sec["notes"].append(
        "Each run's figure is the median of %d starts after one warm-up start; the "
        "spread is over runs. The agent is called in-process, in a private network "
        "namespace: the container row is remote_agent.containers.run (record, "
        "IPAM, bridge and veth, detached supervisor, PID 1) of /bin/true, waiting "
        "until it has exited, then rm; the sandbox row is the build-step engine "
        "sandbox.run_isolated with network none. The floor and podman use an "
        "empty network namespace (no veth)." % b.start_count)
    mo = "mockerops agent container (run, exit, rm)"
    missed = [
        judge(sec, "within 1.5x of the floor", ratio(stats, mo,
                                                     "floor (unshare -mpuin -f chroot)"),
              1.5, "agent/floor = %.2fx"),
        judge(sec, "faster than podman", ratio(stats, mo, "podman run --rm (crun)"), 1.0,
              "agent/podman = %.2fx"),
    ]
    if False in missed:
        sec["profiles"].append(("agent container start (cProfile, in-process)",
                                profile_start(b, rootfs, scratch)))
    return sec


def profile_start(b, rootfs, scratch):
    """Profile twenty in-process agent starts and time a bare interpreter start."""
    import pstats
    import time

    path = os.path.join(b.work, "profile-start.out")
    subprocess.run(["unshare", "-n", sys.executable, "-m", "cProfile", "-o", path,
                    os.path.join(BENCH, "start_times.py"), "container", "--count",
                    "20", "--lower", rootfs, "--scratch", scratch],
                   stdout=subprocess.DEVNULL, check=True)
    stats = pstats.Stats(path)
    rows = sorted(((tt, ct, nc, "%s(%s)" % (os.path.basename(f), fn))
                   for (f, _, fn), (_, nc, tt, ct, _) in stats.stats.items()),
                  reverse=True)[:8]
    lines = ["top functions of 21 container starts by own time (own s, cumulative s, "
             "calls):"]
    lines += ["  %6.3f %6.3f %5d  %s" % row for row in rows]
    for (f, _, fn), (_, _, _, _, callers) in stats.stats.items():
        if fn in ("<built-in method time.sleep>", "<built-in method posix.waitpid>"):
            for (cf, cl, cfn), (_, _, ctt, _) in sorted(
                    callers.items(), key=lambda kv: -kv[1][2])[:3]:
                lines.append("  %s called from %s:%d(%s): %.3f s" % (
                    fn[16:-1], os.path.relpath(cf, REPO), cl, cfn, ctt))

    bare = []
    for _ in range(10):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t0)
    helper = []
    env = dict(os.environ, PYTHONPATH=REPO)
    for _ in range(10):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import remote_agent.nsexec, "
                        "remote_agent.mounts"], check=True, env=env)
        helper.append(time.perf_counter() - t0)
    lines.append("a bare `python3 -c pass` takes %.1f ms; importing the nsexec "
                 "helper's modules in a new interpreter %.1f ms (medians of 10)" % (
                     sorted(bare)[5] * 1000, sorted(helper)[5] * 1000))
    return "\n".join(lines)


def image_size(b):
    """Start time with a 5 MB image and with a 500 MB image (an extra file layer)."""
    sec = section("5. Image size: start time, 5 MB image vs 500 MB image")
    rootfs, layers = prepare_images(b)
    scratch = os.path.join(b.work, "size-scratch")
    tools = {}
    for name, label in (("small", "5 MB image"), ("big", "500 MB image")):
        work = os.path.join(scratch, name)
        os.makedirs(work, exist_ok=True)
        tools["mockerops agent container, %s" % label] = (
            "container", ["--lower", layers[name], "--lower", rootfs, "--scratch", work],
            False)
    stats = _in_process(b, tools, b.start_count)
    add_rows(sec, stats, unit="ms")
    sec["notes"].append(
        "Both images are the busybox rootfs (2 MB) under one more layer holding a "
        "3 MB or a 495 MB file of random bytes.")
    judge(sec, "size does not matter: ratio 500 MB / 5 MB at most 1.2",
          ratio(stats, "mockerops agent container, 500 MB image",
                "mockerops agent container, 5 MB image"),
          1.2, "500 MB / 5 MB = %.2fx")
    return sec


# -- 6. build cache ----------------------------------------------------------------


def build_cache(b, n):
    """A fully cached rebuild of the ten-step Mockerfile; hashing against sha256sum."""
    sec = section("6. Build cache: cached rebuild and COPY hashing", n)
    inv = b.inventory(n)
    cached = b.build_argv(inv, no_cache=False)
    if n not in b.build_stats or not b.build_stats[n] or not b.build_stats[n].ok:
        skip(sec, "cached rebuild: the uncached build of scenario 2 did not run")
    elif b.works(sec, "mockerops build (cached)", cached):
        stats = measure({"mockerops build (cached)": lambda: run_timed(cached)},
                        b.runs, warmup=False)
        add_rows(sec, stats)
        ping, floor = b.ping_stats.get(n), b.floor_stats.get(n)
        if stats["mockerops build (cached)"].ok and floor and floor.ok:
            cached_s = stats["mockerops build (cached)"].median
            per_host = (cached_s - floor.median) / n
            sec["notes"].append(
                "Time per host beyond the connection = (cached build - the floor's "
                "connect and one command) / N = %.0f ms%s." % (
                    per_host * 1000, "" if not (ping and ping.ok) else
                    "; beyond `mockerops ping` (connect and start the agent) it is "
                    "%.0f ms" % ((cached_s - ping.median) / n * 1000)))
            met = per_host < 0.1
            target(sec, "cached rebuild under 100 ms per host beyond the connection",
                   met, "%.0f ms per host" % (per_host * 1000))
            if not met:
                b.profile(sec, "mockerops build (cached)", cached[1:])
    hashing(b, sec)
    return sec


def hashing(b, sec):
    """Hash 200 MB of files with mockerops/build.py's hashing, against sha256sum."""
    if not os.path.exists(os.path.join(REPO, "mockerops", "build.py")):
        skip(sec, "hashing: mockerops/build.py does not exist yet")
        return
    if b.hash_result is None:
        result = subprocess.run(
            [sys.executable, os.path.join(BENCH, "hash_bench.py"), "--dir",
             os.path.join(b.work, "hash"), "--runs", str(b.runs)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            skip(sec, "hashing failed: %s" % result.stderr.strip()[-400:])
            return
        b.hash_result = json.loads(result.stdout)
    h = b.hash_result
    mb = h["bytes"] / 2**20
    stats = {
        "mockerops build.plan_build (cold digest cache)": value_stat(h["mockerops"]),
        "sha256sum": value_stat(h["sha256sum"]),
        "mockerops build.plan_build (digest cache, unchanged)": value_stat(h["cached"]),
    }
    add_rows(sec, stats)
    speed = {k: mb / v.median for k, v in stats.items()}
    sec["notes"].append(
        "Hashing %d files, %.0f MiB, warm page cache: mockerops %.0f MiB/s, "
        "sha256sum %.0f MiB/s. Files opened: %s on a cold cache, %s with the cache "
        "(stat unchanged), %d after one file was rewritten (%.1f ms)." % (
            h["files"], mb, speed["mockerops build.plan_build (cold digest cache)"],
            speed["sha256sum"], max(h["cold_opens"]), max(h["cached_opens"]),
            h["changed_opens"], h["changed_seconds"] * 1000))
    share = (speed["mockerops build.plan_build (cold digest cache)"]
             / speed["sha256sum"])
    target(sec, "hashing at 80% or more of sha256sum's throughput", share >= 0.8,
           "%.0f%% of sha256sum" % (share * 100))
    target(sec, "files with an unchanged stat are not re-read; a changed one is",
           max(h["cached_opens"]) == 0 and h["changed_opens"] == 1,
           "%d of %d files re-read unchanged, %d after one changed" % (
               max(h["cached_opens"]), h["files"], h["changed_opens"]))


# -- 7. controller memory ----------------------------------------------------------


def controller_memory(b):
    """Peak resident memory of the controller deploying to the most hosts, per host."""
    n = max(b.hosts)
    sec = section("7. Controller memory: peak RSS while deploying, per host", n)
    stat = b.deploy_stats.get(n)
    ping = b.ping_stats.get(n)
    if ping and ping.ok:
        sec["notes"].append(
            "For scale: `mockerops ping` to %d hosts peaks at %.1f MB (%.2f MB per "
            "host); it is not the deploy the target is about." % (
                n, ping.maxrss_kb / 1024, ping.maxrss_kb / 1024 / n))
    if not stat or not stat.ok:
        skip(sec, "no unchanged deploy to %d hosts was measured (see scenario 3)" % n)
        return sec
    mb = stat.maxrss_kb / 1024
    sec["notes"].append("mockerops deploy to %d hosts peaked at %.1f MB." % (n, mb))
    if n < 30:
        target(sec, "under 2 MB per host at N=30", None,
               "only N=%d was run: %.2f MB per host" % (n, mb / n))
        return sec
    met = mb / n < 2.0
    target(sec, "under 2 MB per host at N=%d" % n, met, "%.2f MB per host" % (mb / n))
    if not met:
        b.profile(sec, "mockerops deploy (memory)",
                  ["deploy", "-i", b.inventory(n), HELLO_APP])
    return sec
