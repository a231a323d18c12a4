#!/usr/bin/env python3
"""Benchmark mockerops against Ansible, pyinfra, podman and the floor; write RESULTS.md.

    python3 bench/run.py                      # N = 10 and 30, 5 runs (about 20 min)
    python3 bench/run.py --hosts 10 --runs 3  # one fleet size
    python3 bench/run.py --smoke              # CI: N = 2, one run, a few minutes

Run as root from anywhere. The bench installs its peers itself (ansible-core and
pyinfra into bench/.venv, podman and crun with apt-get; a peer that cannot be
installed is skipped with a message), brings up its own lab ("bench" on
10.220.0.0/24, files under /tmp/mockerops-bench), runs the scenarios of issue 5
side by side, prints the table and writes it to bench/RESULTS.md (or --out).
The lab is torn down on every path, including errors and Ctrl-C. A scenario
whose mockerops feature does not work yet prints "skipped: <why>".
"""

import argparse
import datetime
import os
import shlex
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
import report  # noqa: E402
import scenarios  # noqa: E402
from benchlib import BENCH, MOCKEROPS, Lab, ToolFailed, run_timed  # noqa: E402

WORK = "/tmp/mockerops-bench"


class Bench:
    """The state the scenarios share: options, lab, peers and earlier figures."""

    def __init__(self, args, lab, peers):
        self.args = args
        self.lab = lab
        self.peers = peers
        self.work = WORK
        self.hosts = args.hosts
        self.runs = args.runs
        self.heavy_runs = args.heavy_runs
        self.start_count = 3 if args.smoke else 10
        self.ping_stats, self.build_stats, self.deploy_stats = {}, {}, {}
        self.floor_stats = {}
        self.podman_root = os.path.join(WORK, "podman")
        self._inventories, self._pyinventories = {}, {}
        self._podman_image = None
        self.hash_result = None
        self.context = os.path.join(WORK, "tenstep-context")
        os.makedirs(self.context, exist_ok=True)
        shutil.copy(scenarios.BUSYBOX_TARBALL, self.context)

    def inventory(self, n):
        """Return the YAML inventory of the lab's first n hosts."""
        if n not in self._inventories:
            self._inventories[n] = self.lab.inventory_for(n)
        return self._inventories[n]

    def pyinfra_inventory(self, n):
        """Return the pyinfra inventory of the lab's first n hosts."""
        if n not in self._pyinventories:
            self._pyinventories[n] = self.lab.pyinfra_inventory_for(n)
        return self._pyinventories[n]

    def ansible_env(self, n):
        """Return the environment that points Ansible at the bench's config for n."""
        path = os.path.join(WORK, "ansible-%d.cfg" % n)
        if not os.path.exists(path):
            ssh_args = ("-o ControlMaster=auto -o ControlPersist=60s "
                        "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes "
                        "-o BatchMode=yes" % self.lab.known_hosts)
            with open(path, "w") as f:
                f.write("\n".join([
                    "# Written by bench/run.py: forks = N, pipelining, ControlPersist.",
                    "[defaults]",
                    "forks = %d" % n,
                    "host_key_checking = True",
                    "interpreter_python = /usr/bin/python3",
                    "gathering = explicit",
                    "retry_files_enabled = False",
                    "[ssh_connection]",
                    "pipelining = True",
                    "ssh_args = %s" % ssh_args,
                    "control_path_dir = %s" % self.control_dir,
                    "",
                ]))
        return dict(os.environ, ANSIBLE_CONFIG=path, ANSIBLE_NOCOLOR="1",
                    ANSIBLE_LOCAL_TEMP=os.path.join(WORK, "ansible-tmp"))

    @property
    def control_dir(self):
        return os.path.join(WORK, "ansible-cp")

    def after_tool(self, name):
        """Close Ansible's control masters after each run, so every run is cold."""
        if not name.startswith("ansible") or not os.path.isdir(self.control_dir):
            return
        for sock in os.listdir(self.control_dir):
            subprocess.run(["ssh", "-o", "ControlPath=" + os.path.join(
                self.control_dir, sock), "-O", "exit", "bench"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def peer_ok(self, sec, peer):
        """Return True when a peer is installed; else record why it is skipped."""
        why = self.peers.get(peer)
        if why:
            scenarios.skip(sec, "%s: %s" % (peer, why))
        return not why

    def works(self, sec, label, argv, env=None):
        """Run argv once unmeasured; on failure record 'skipped' and return False."""
        try:
            run_timed(argv, env=env)
            return True
        except ToolFailed as exc:
            scenarios.skip(sec, "%s does not work yet: %s" % (label, exc))
            return False

    def build_argv(self, inv, no_cache):
        """Return the mockerops build command of the ten-step Mockerfile."""
        argv = [*MOCKEROPS, "build", "-i", inv, "all",
                os.path.join(BENCH, "tenstep", "Mockerfile"), "--context",
                self.context, "-t", "bench-tenstep:latest"]
        return argv + (["--no-cache"] if no_cache else [])

    def podman_image(self):
        """Import the busybox rootfs into the bench's podman storage once."""
        if self._podman_image is None:
            name = "localhost/mockerops-bench-busybox"
            try:
                run_timed(["podman", "--root", os.path.join(self.podman_root, "root"),
                           "--runroot", os.path.join(self.podman_root, "run"),
                           "--storage-driver", "overlay", "--events-backend", "file",
                           "import", scenarios.BUSYBOX_TARBALL, name])
                self._podman_image = name
            except ToolFailed as exc:
                print("  podman import failed: %s" % exc)
                self._podman_image = ""
        return self._podman_image

    def profile(self, sec, label, args):
        """Profile one mockerops command with cProfile; attach the summary."""
        if self.args.no_profile:
            return
        path = os.path.join(WORK, "profile-%d.out" % len(sec["profiles"]))
        print("  profiling %s" % label, flush=True)
        text = benchlib.profile_command(args, path)
        sec["profiles"].append((label + " (cProfile, one run)", text))


def parse_args(argv=None):
    """Return the command line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--hosts", default="10,30",
                        help="comma-separated fleet sizes (default: 10,30)")
    parser.add_argument("--runs", type=int, default=5, help="measured runs (5)")
    parser.add_argument("--heavy-runs", type=int, default=3,
                        help="runs of the ten-step and deploy scenarios (3)")
    parser.add_argument("--smoke", action="store_true",
                        help="N = 2, one run: a quick check that the bench works")
    parser.add_argument("--out", default=os.path.join(BENCH, "RESULTS.md"))
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the profiles of missed targets")
    args = parser.parse_args(argv)
    if args.smoke:
        args.hosts, args.runs, args.heavy_runs = "2", 1, 1
    args.hosts = sorted({int(h) for h in args.hosts.split(",")})
    args.heavy_runs = min(args.heavy_runs, args.runs)
    return args


def main(argv=None):
    """Install peers, bring the lab up, run every scenario, write RESULTS.md."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root: the lab and the container starts do")
    started = time.monotonic()
    load_start = benchlib.load_average()
    if os.path.isdir(os.path.join(WORK, "lab")):
        Lab(WORK, 1).down()  # left by a run that was killed outright
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    podman_cgroups = benchlib.podman_cgroups()
    try:
        sections, peers = run_scenarios(args)
    finally:
        # podman run --rm leaves the parent cgroups it made (libpod_parent);
        # remove those this run created, and the work dir with podman's store.
        benchlib.remove_cgroups(benchlib.podman_cgroups() - podman_cgroups)
        shutil.rmtree(WORK, ignore_errors=True)

    sections.sort(key=lambda s: (s["title"].split(".")[0].zfill(2), s["n"] or 0))
    meta = {
        "command": "python3 bench/run.py " + " ".join(map(shlex.quote, sys.argv[1:])),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": benchlib.machine(),
        "load_start": load_start,
        "load_end": benchlib.load_average(),
        "hosts": args.hosts,
        "runs": args.runs,
        "heavy_runs": args.heavy_runs,
        "peers": peer_versions(peers),
        "elapsed": time.monotonic() - started,
    }
    text = report.render(meta, sections)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    print()
    print(text)
    print("Written: %s" % args.out)


def run_scenarios(args):
    """Install peers, bring the lab up, run every scenario; return sections, peers."""
    # The peers' packages were compiled when pip installed them; compile ours
    # too, or a PYTHONDONTWRITEBYTECODE environment recompiles it on every run.
    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    os.path.join(benchlib.REPO, "mockerops"),
                    os.path.join(benchlib.REPO, "remote_agent")],
                   stdout=subprocess.DEVNULL, check=False)
    print("--> Installing peers", flush=True)
    peers = benchlib.install_peers(lambda m: print("  " + m, flush=True))
    for peer, why in peers.items():
        print("  %s: %s" % (peer, why or "ready"), flush=True)

    sections = []
    print("--> Bringing up lab %r with %d hosts" % (benchlib.LAB_NAME, max(args.hosts)),
          flush=True)
    with Lab(WORK, max(args.hosts)) as lab:
        b = Bench(args, lab, peers)
        for n in args.hosts:
            for scenario in (scenarios.fanout, scenarios.tenstep,
                             scenarios.unchanged_deploy, scenarios.build_cache):
                print("--> %s, N = %d" % (scenario.__doc__.split(":")[0].split(",")[0],
                                          n), flush=True)
                sections.append(scenario(b, n))
        for scenario in (scenarios.container_start, scenarios.image_size,
                         scenarios.controller_memory):
            print("--> %s" % scenario.__doc__.split(":")[0], flush=True)
            sections.append(scenario(b))
    print("--> Lab %r removed" % benchlib.LAB_NAME, flush=True)
    return sections, peers


def peer_versions(peers):
    """Return the versions of the peers that are installed, for the header."""
    found = []
    for peer, argv in (("ansible", [benchlib.venv_bin("ansible"), "--version"]),
                       ("pyinfra", [benchlib.venv_bin("pyinfra"), "--version"]),
                       ("podman", ["podman", "--version"]),
                       ("podman", ["crun", "--version"])):
        if peers.get(peer):
            continue
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True).stdout.strip().splitlines()
        found.append(out[0] if out else argv[0])
    return ", ".join(found) or "none"


if __name__ == "__main__":
    main()
