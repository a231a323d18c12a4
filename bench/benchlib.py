"""What every scenario of the bench shares: timing, statistics, peers, the lab.

Timings are wall-clock seconds of a whole command (process start to exit),
taken with time.perf_counter around a child reaped with os.wait4, which also
gives the child's peak resident memory. Tools are run in a rotating order on
each run so that drift on a shared machine spreads over all of them.
"""

import contextlib
import glob
import io
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import time

import yaml


# The console script beside this interpreter, not a shim earlier on PATH (pyenv's
# shims are shell scripts that would add their start-up to every mockerops run).
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "mockerops")
MOCKEROPS = [_SCRIPT] if os.access(_SCRIPT, os.X_OK) else ["mockerops"]

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
VENV = os.path.join(BENCH, ".venv")
LAB_NAME = "bench"
LAB_SUBNET = "10.220.0.0/24"


class ToolFailed(Exception):
    """A measured command exited non-zero: the tool is broken for this scenario."""


class Timing:
    """One command's timing: wall seconds, child CPU seconds, peak RSS in KiB."""

    def __init__(self, wall, cpu, maxrss_kb):
        self.wall = wall
        self.cpu = cpu
        self.maxrss_kb = maxrss_kb


def run_timed(argv, env=None, cwd=None, timeout=900):
    """Run argv with output captured; return its Timing or raise ToolFailed."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # Reading the pipe while the child runs keeps a chatty child from blocking.
    out = io.BytesIO()
    deadline = start + timeout
    with contextlib.suppress(ValueError):
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            out.write(chunk)
            if time.perf_counter() > deadline:
                proc.kill()
                break
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    if proc.returncode != 0:
        tail = out.getvalue().decode(errors="replace").strip().splitlines()[-6:]
        raise ToolFailed("%s exited %s: %s" % (
            os.path.basename(argv[0]), proc.returncode, " | ".join(tail)))
    return Timing(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


def measure(tools, runs, warmup=True, after=None):
    """Time each tool runs times, rotating the order; return name -> Stat.

    tools maps a name to a function that returns a Timing. A tool that fails
    is dropped with its error in Stat.error; after(name) runs after each call
    (outside the timing), e.g. to close Ansible's control masters.
    """
    names = list(tools)
    samples = {name: [] for name in names}
    errors = {}
    if warmup:
        for name in names:
            _call(tools, name, samples, errors, after, keep=False)
    for i in range(runs):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            if name not in errors:
                _call(tools, name, samples, errors, after, keep=True)
    return {name: Stat(samples[name], errors.get(name)) for name in names}


def _call(tools, name, samples, errors, after, keep):
    try:
        timing = tools[name]()
        if keep:
            samples[name].append(timing)
    except ToolFailed as exc:
        errors[name] = str(exc)
        print("  %s failed: %s" % (name, exc), flush=True)
    finally:
        if after:
            after(name)


class Stat:
    """Median and spread of a tool's timings (seconds), or why there are none."""

    def __init__(self, timings, error=None):
        self.timings = timings
        self.error = error

    @property
    def ok(self):
        return bool(self.timings) and not self.error

    @property
    def walls(self):
        return [t.wall for t in self.timings]

    @property
    def median(self):
        return statistics.median(self.walls)

    @property
    def low(self):
        return min(self.walls)

    @property
    def high(self):
        return max(self.walls)

    @property
    def maxrss_kb(self):
        return max(t.maxrss_kb for t in self.timings)

    @property
    def cpu(self):
        return statistics.median(t.cpu for t in self.timings)


def value_stat(values, error=None):
    """Return a Stat over plain seconds (measured in-process, not a command)."""
    return Stat([Timing(v, 0.0, 0) for v in values], error)


# -- the machine -------------------------------------------------------------------


def machine():
    """Return a one-line description: cores, memory, kernel, CPU model, Python."""
    model = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return "%d cores (%s), %.1f GiB memory, Linux %s, Python %s" % (
        os.cpu_count(), model or "unknown CPU", mem, platform.release(),
        platform.python_version())


def load_average():
    """Return the 1-minute load average, to show how busy the shared machine was."""
    return os.getloadavg()[0]


# -- peers -------------------------------------------------------------------------


def venv_bin(name):
    """Return the path of a program installed in the bench's virtualenv."""
    return os.path.join(VENV, "bin", name)


def install_peers(log):
    """Install ansible-core and pyinfra (venv) and podman with crun (apt); return
    {peer: None when usable, else why not}."""
    state = {}
    if not os.path.exists(venv_bin("python")):
        log("creating %s" % VENV)
        _quiet([sys.executable, "-m", "venv", VENV])
    for peer, package, program in (("ansible", "ansible-core", "ansible-playbook"),
                                   ("pyinfra", "pyinfra", "pyinfra")):
        if not os.path.exists(venv_bin(program)):
            log("installing %s into %s" % (package, VENV))
            _quiet([venv_bin("pip"), "install", "-q", package])
        state[peer] = None if os.path.exists(venv_bin(program)) else (
            "pip install %s failed (see above)" % package)
    if not (shutil.which("podman") and shutil.which("crun")):
        log("installing podman and crun with apt-get")
        _quiet(["apt-get", "update", "-qq"])
        _quiet(["apt-get", "install", "-y", "-qq", "podman", "crun"])
    state["podman"] = None if shutil.which("podman") and shutil.which("crun") else (
        "apt-get install podman crun failed")
    return state


def _quiet(argv):
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if result.returncode != 0:
        print("  %s failed: %s" % (" ".join(argv[:3]), result.stdout.strip()[-400:]))
    return result.returncode == 0


# -- the lab -----------------------------------------------------------------------


class Lab:
    """The bench's own lab: up on enter, down on exit, whatever happened."""

    def __init__(self, work, hosts):
        self.work = work
        self.hosts = hosts
        self.dir = os.path.join(work, "lab")
        self.inventory = os.path.join(work, "lab-inventory.yaml")
        self.key = os.path.join(self.dir, "id_ed25519")
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        self.addresses = []

    def __enter__(self):
        try:
            subprocess.run([*MOCKEROPS, "lab", "up", "-n", str(self.hosts),
                            "--name", LAB_NAME, "--subnet", LAB_SUBNET,
                            "--dir", self.dir, "--inventory", self.inventory],
                           check=True, stdout=subprocess.DEVNULL)
            with open(self.inventory) as f:
                data = yaml.safe_load(f)
            hosts = data["all"]["children"][LAB_NAME]["hosts"]
            self.names = list(hosts)
            self.data = data
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()

    def down(self):
        """Remove the lab; report, never raise, so the caller's error survives."""
        result = subprocess.run([*MOCKEROPS, "lab", "down", "--name", LAB_NAME,
                                 "--dir", self.dir, "--inventory", self.inventory],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        if result.returncode != 0:
            print("lab down failed: %s" % result.stderr.strip(), file=sys.stderr)

    def inventory_for(self, n):
        """Write the YAML inventory of the first n hosts; return its path."""
        data = yaml.safe_load(yaml.safe_dump(self.data))
        hosts = data["all"]["children"][LAB_NAME]["hosts"]
        for name in self.names[n:]:
            del hosts[name]
        # playbooks/hello/app.yaml deploys to the group 'lab': name the same hosts so.
        data["all"]["children"]["lab"] = {"hosts": {name: None for name in hosts}}
        path = os.path.join(self.work, "inventory-%d.yaml" % n)
        with open(path, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
        return path

    def pyinfra_inventory_for(self, n):
        """Write a pyinfra inventory of the first n hosts; return its path."""
        hosts = self.data["all"]["children"][LAB_NAME]["hosts"]
        rows = [(hosts[name]["ansible_host"], name) for name in self.names[:n]]
        lines = [
            "# The bench lab's first %d hosts, for pyinfra (written by bench/run.py)." % n,
            "_DATA = {'ssh_user': 'root', 'ssh_key': %r," % self.key,
            "         'ssh_known_hosts_file': %r," % self.known_hosts,
            "         'ssh_strict_host_key_checking': 'yes'}",
            "%s = [" % LAB_NAME,
        ]
        lines += ["    (%r, dict(_DATA, name=%r))," % row for row in rows]
        lines.append("]")
        path = os.path.join(self.work, "inventory_%d.py" % n)
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path


# -- profiles ----------------------------------------------------------------------


def profile_command(args, out_path, env=None, top=12):
    """Run ``python3 -m mockerops ARGS`` under cProfile; return a text summary."""
    argv = [sys.executable, "-m", "cProfile", "-o", out_path, "-m", "mockerops", *args]
    start = time.perf_counter()
    try:
        timing = run_timed(argv, env=env)
    except ToolFailed as exc:
        return "profile run failed: %s" % exc
    return summarize_profile(out_path, timing.wall or time.perf_counter() - start,
                             timing.cpu, top)


def summarize_profile(path, wall, cpu, top=12):
    """Return wall, CPU, import share, idle wait and the top functions by own time."""
    stats = pstats.Stats(path)
    imports = idle = 0.0
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
        where = "%s:%s(%s)" % (_short(filename), line, func)
        if func == "_find_and_load" and "importlib" in filename:
            imports = max(imports, ct)
        if filename == "~" and ("poll" in func or "select" in func):
            idle += tt
        rows.append((tt, ct, nc, where))
    rows.sort(reverse=True)
    lines = [
        "wall %.2f s, controller CPU %.2f s, in imports %.2f s, waiting in "
        "select/poll %.2f s" % (wall, cpu, imports, idle),
        "top functions by own time (own s, cumulative s, calls):",
    ]
    for tt, ct, nc, where in rows[:top]:
        lines.append("  %6.3f %6.3f %7d  %s" % (tt, ct, nc, where))
    return "\n".join(lines)


def _short(filename):
    for marker in ("site-packages/", "lib/python3", REPO + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def podman_cgroups():
    """Return the libpod_parent cgroup dirs (podman's cgroupfs parent) that exist."""
    return set(glob.glob("/sys/fs/cgroup/*/libpod_parent")
               + glob.glob("/sys/fs/cgroup/libpod_parent"))


def remove_cgroups(paths):
    """Remove empty cgroup dirs and their empty children, deepest first."""
    for top in paths:
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
