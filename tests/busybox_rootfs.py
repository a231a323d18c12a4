"""Make a tiny busybox root filesystem and fake image for runtime tests."""

import json
import os
import shutil
import subprocess

BUSYBOX = "/bin/busybox"


def make_rootfs(path):
    """Fill path with a busybox-static root filesystem; return path."""
    for sub in ("bin", "sbin", "etc", "tmp", "root", "proc", "sys", "dev", "var/www",
                "usr/bin", "usr/sbin"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    os.chmod(os.path.join(path, "tmp"), 0o1777)
    shutil.copy2(BUSYBOX, os.path.join(path, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list-full"], stdout=subprocess.PIPE,
                             universal_newlines=True, check=True).stdout.split()
    for applet in applets:
        link = os.path.join(path, applet)
        if not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink("/bin/busybox", link)
    with open(os.path.join(path, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n"
                "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    with open(os.path.join(path, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    with open(os.path.join(path, "var", "www", "index.html"), "w") as f:
        f.write("hello from busybox\n")
    return path


def make_image(root, image_id="b" * 64, tag="busybox:latest", config=None):
    """Store a single-layer busybox image under state root; return its manifest."""
    layer = "l" * 64
    make_rootfs(os.path.join(root, "layers", layer, "fs"))
    manifest = {
        "id": image_id,
        "layers": [layer],
        "config": dict({"env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "workdir": "/",
                        "user": "", "cmd": ["sh"], "entrypoint": [],
                        "exposed": [], "healthcheck": None, "labels": {}},
                       **(config or {})),
    }
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    with open(os.path.join(root, "images", image_id + ".json"), "w") as f:
        json.dump(manifest, f)
    tags_path = os.path.join(root, "tags.json")
    tags = {}
    if os.path.exists(tags_path):
        with open(tags_path) as f:
            tags = json.load(f)
    tags[tag] = image_id
    with open(tags_path, "w") as f:
        json.dump(tags, f)
    return manifest
