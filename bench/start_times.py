#!/usr/bin/env python3
"""Time container starts on this machine, no SSH: print a JSON list of seconds.

    start_times.py container --count K --lower DIR [--lower DIR...] --scratch DIR
    start_times.py agent  --count K --lower DIR [--lower DIR...] --scratch DIR
    start_times.py floor  --count K --rootfs DIR
    start_times.py podman --count K --image NAME --podman-root DIR [--hide-cgroup2]

container calls the agent's container runtime in-process
(remote_agent.containers.run of an image whose layers are the --lower dirs, wait
until it has exited, then rm: record, network, supervisor, reaping PID 1); agent
calls the build-step engine in-process (remote_agent.sandbox's run_isolated: mount, PID, UTS, IPC and network namespaces over an overlay of the
layers, /bin/true under a reaping PID 1); floor is util-linux unshare of the
same namespaces with chroot into the same root filesystem; podman runs
``podman run --rm`` with crun on an image imported from the same tarball.

--hide-cgroup2 unmounts /sys/fs/cgroup/unified first: crun 1.8 refuses a
hybrid cgroup hierarchy whose v2 part has any controller. Call it only in a
private mount namespace (``unshare -m --propagation private``), so the host
never loses the mount.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def agent_starter(args):
    """Return a function that starts /bin/true with the agent's runtime once."""
    from remote_agent import sandbox

    upper = os.path.join(args.scratch, "upper")
    work = os.path.join(args.scratch, "work")

    def start():
        code = sandbox.run_isolated(args.lower, upper, work, ["/bin/true"],
                                    ["PATH=/bin:/usr/bin"], network="none")
        if code != 0:
            raise SystemExit("agent sandbox: /bin/true exited %s" % code)
    return start


def container_starter(args):
    """Return a function that runs /bin/true in a container, waits, removes it."""
    from remote_agent import containers, layers

    root = os.path.join(args.scratch, "root")
    ids = []
    for lower in reversed(args.lower):  # a manifest lists layers bottom first
        layer = layers.digest_of({"bench-layer": os.path.abspath(lower)})
        fs = layers.layer_fs(root, layer)
        if not os.path.lexists(fs):
            os.makedirs(os.path.dirname(fs), exist_ok=True)
            os.symlink(os.path.abspath(lower), fs)
        ids.append(layer)
    config = {"env": ["PATH=/bin:/usr/bin"], "workdir": "/", "user": "",
              "cmd": ["/bin/true"], "entrypoint": [], "exposed": [],
              "healthcheck": None, "labels": {}}
    manifest = layers.save_image(root, ids, config, [])

    def start():
        info = containers.run(root, image=manifest["id"], command=["/bin/true"])
        cid = info["id"]
        while containers.refresh(root, cid).get("status") != "exited":
            time.sleep(0.001)
        code = containers.read_state(root, cid).get("exit_code")
        containers.rm(root, cid)
        if code not in (0, None):
            raise SystemExit("agent container: /bin/true exited %s" % code)
    return start


def command_starter(argv):
    """Return a function that runs argv once, failing loudly on a bad exit."""
    def start():
        result = subprocess.run(argv, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise SystemExit("%s exited %s: %s" % (
                argv[0], result.returncode, result.stderr.strip()[-300:]))
    return start


def podman_argv(args, *verb):
    """Return a podman command line on the bench's own storage, no systemd needed."""
    return ["podman", "--root", os.path.join(args.podman_root, "root"),
            "--runroot", os.path.join(args.podman_root, "run"),
            "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
            "--events-backend", "file", *verb]


def main():
    """Parse arguments, start the tool count times, print the seconds as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=["container", "agent", "floor", "podman"])
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--lower", action="append", default=[])
    parser.add_argument("--scratch")
    parser.add_argument("--rootfs")
    parser.add_argument("--image")
    parser.add_argument("--podman-root")
    parser.add_argument("--hide-cgroup2", action="store_true")
    args = parser.parse_args()

    if args.hide_cgroup2 and os.path.ismount("/sys/fs/cgroup/unified"):
        subprocess.run(["umount", "/sys/fs/cgroup/unified"], check=True)
    if args.tool == "container":
        start = container_starter(args)
    elif args.tool == "agent":
        start = agent_starter(args)
    elif args.tool == "floor":
        start = command_starter(["unshare", "-m", "-p", "-u", "-i", "-n", "-f",
                                 "chroot", args.rootfs, "/bin/true"])
    else:
        # Raising RLIMIT_NOFILE/NPROC needs CAP_SYS_RESOURCE, which this machine
        # withholds, so podman is given limits within the current hard ones.
        start = command_starter(podman_argv(
            args, "run", "--rm", "--runtime", "crun", "--network", "none",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
            args.image, "/bin/true"))

    start()  # warm the page cache and the interpreter's imports
    times = []
    for _ in range(args.count):
        t0 = time.perf_counter()
        start()
        times.append(time.perf_counter() - t0)
    json.dump(times, sys.stdout)


if __name__ == "__main__":
    main()
