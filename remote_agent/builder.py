"""Execute a parsed Mockerfile's steps into layers and an image manifest.

The controller sends the steps already rendered and expanded, with a context
manifest {relpath: {type, mode, digest, target}} whose files are in the blob
store. Each step gets a layer id chained from the one before; a layer that exists
is reused (unless no_cache), so an unchanged build runs nothing. Every step,
metadata ones included, leaves a layer record: ``empty`` records are kept for the
cache chain and listed in the manifest's history, while only layers with files go
in its ``layers`` (what a container mounts). RUN executes in sandbox.run_isolated
over the stacked layers below it, never on the host.

Steps are numbered from 1, in the order sent (one per Mockerfile instruction),
alike in "step" and "output" events, plan's "missing" and error messages.
"""

import collections
import copy
import glob
import os
import shutil
import stat
import tarfile

from remote_agent import layers, sandbox, util
from remote_agent.errors import AgentError, CommandFailed, InvalidRequest, NotFound

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HEALTH_DEFAULTS = {"interval": 30.0, "timeout": 30.0, "retries": 3,
                   "start_period": 0.0}
TAIL_BYTES = 4096
ENTRY_TYPES = ("file", "dir", "symlink")


def default_config():
    """Return the config of an image built FROM scratch or a tarball."""
    return {"env": {"PATH": DEFAULT_PATH}, "workdir": "", "user": "", "cmd": [],
            "entrypoint": [], "exposed": [], "healthcheck": None, "labels": {}}


def instruction_key(step):
    """Return the part of a step its layer id covers: never line numbers."""
    flags = dict(step.get("flags") or {})
    flags.pop("values", None)  # ARG values reach the key through RUN's env
    return {"name": step["name"], "args": step.get("args") or [], "flags": flags}


def describe(step):
    """Return a step as one line of Mockerfile text for progress and errors."""
    text = step.get("raw") or "%s %s" % (step["name"], " ".join(
        str(a) for a in step.get("args") or []))
    return " ".join(text.split())


class Builder:
    """One image build: the chain of layers so far and the image config."""

    def __init__(self, root, steps, context, tag=None, no_cache=False,
                 build_args=None, emit=None, cancel=None, network="host",
                 timeout=None, dry_run=False):
        self.root = root
        self.steps = check_steps(steps)
        self.context = check_context(context or {})
        self.tag = tag
        self.no_cache = bool(no_cache)
        self.build_args = dict(build_args or {})
        self.emit = emit or (lambda event, data=None, blob=b"": None)
        self.cancel = cancel
        self.network = network
        self.timeout = timeout
        self.dry_run = dry_run
        self.missing = []
        self.chain = ""
        self.layers = []
        self.history = []
        self.config = default_config()
        self.args = {}
        self.seen_from = False
        self.cmd_inherited = False

    def __repr__(self):
        return "<Builder %d steps tag=%s>" % (len(self.steps), self.tag)

    def plan(self):
        """Return {"id", "missing"}: the image id a build would give, building nothing.

        id is None when a step's layer is missing: what it holds is not known
        until it is built; missing lists those steps' numbers.
        """
        self.dry_run = True
        with layers.store_lock(self.root):
            for index, step in enumerate(self.steps):
                self.step(index, step)
        body = {"layers": self.layers, "config": self.config, "history": self.history}
        image = None if self.missing else layers.digest_of(body)
        return {"id": image, "missing": self.missing}

    def build(self):
        """Run every step and return the stored image manifest."""
        if self.tag and layers.normalize_tag(self.tag) is None:
            raise InvalidRequest("bad tag %r: use name[:tag]" % (self.tag,))
        with layers.store_lock(self.root):
            for index, step in enumerate(self.steps):
                if self.cancel is not None and self.cancel.is_set():
                    raise AgentError("build cancelled before step %d" % (index + 1))
                self.step(index, step)
            manifest = layers.save_image(self.root, self.layers, self.config,
                                         self.history)
        if self.tag:
            layers.tag_image(self.root, manifest["id"], self.tag)
        return manifest

    def step(self, index, step):
        """Run one step: FROM, RUN, COPY, WORKDIR, or a config change."""
        name = step["name"]
        if name == "FROM":
            return self.from_(index, step)
        if not self.seen_from:
            if name != "ARG":
                raise InvalidRequest("step %d: %s before FROM" % (index + 1, name))
            return self.report(index, step, True, None)  # FROM's ARGs: controller's
        if name == "RUN":
            return self.run(index, step)
        if name == "COPY":
            return self.copy(index, step)
        if name == "WORKDIR":
            path = step["args"][0]
            self.config["workdir"] = path
            return self.make_layer(index, step, layers.layer_id(
                self.chain, instruction_key(step)), lambda fs: self.mkdir(fs, path))
        self.configure(step)
        return self.make_layer(index, step, layers.layer_id(
            self.chain, instruction_key(step)), None)

    def report(self, index, step, cached, layer):
        """Emit the progress event of a step, numbered from 1 as errors are."""
        self.emit("step", {"step": index + 1, "instruction": describe(step),
                           "cached": cached, "layer": layer})

    def make_layer(self, index, step, layer, fill, replace=None):
        """Reuse layer if it exists, else build it with fill(fs_dir) and commit."""
        replace = self.no_cache if replace is None else replace
        cached = layers.layer_exists(self.root, layer) and not replace
        if self.dry_run:
            if layers.layer_exists(self.root, layer):
                self.push(layer)
            else:
                self.missing.append(index + 1)
                self.chain = layer
                self.history.append(layer)
            return
        self.report(index, step, cached, layer)
        if not cached:
            build_dir = layers.new_build_dir(self.root)
            try:
                if fill is not None:
                    fill(os.path.join(build_dir, "fs"))
                layers.remove_tree(os.path.join(build_dir, "work"))
                layers.commit_layer(self.root, layer, build_dir, {
                    "parent": self.chain, "instruction": instruction_key(step),
                }, replace=replace)
            finally:
                layers.remove_tree(build_dir)
        self.push(layer)

    def push(self, layer):
        """Make layer the top of the chain, and of the mounted stack if it has files."""
        meta = layers.layer_meta(self.root, layer) or {}
        self.chain = layer
        self.history.append(layer)
        if not meta.get("empty", False):
            self.layers.append(layer)

    def lowerdirs(self):
        """Return the fs dirs of the layers so far, top first, as overlayfs wants."""
        return [layers.layer_fs(self.root, l) for l in reversed(self.layers)]

    # -- FROM -----------------------------------------------------------------

    def from_(self, index, step):
        """Start from scratch, an image on this host, or a tarball in the context."""
        ref = step["args"][0]
        kind = (step.get("flags") or {}).get("base") or (
            "scratch" if ref == "scratch" else "image")
        self.seen_from = True
        if kind == "scratch":
            return self.report(index, step, True, None)
        if kind == "image":
            manifest = layers.resolve_image(self.root, ref)
            self.chain = manifest["id"]
            self.layers = list(manifest["layers"])
            self.history = list(manifest.get("history", []))
            self.config = copy.deepcopy(manifest["config"])
            self.cmd_inherited = True
            return self.report(index, step, True, manifest["id"])

        source = step.get("source") or ref
        entry = self.entry(index, source)
        digest = entry.get("digest")
        layer = layers.tarball_layer_id(digest)
        # A base layer depends on the tarball's bytes alone: never extracted twice,
        # not even with no_cache.
        blob = None
        if not (self.dry_run or layers.layer_exists(self.root, layer)):
            blob = self.blob(index, source, digest)
        self.make_layer(index, step, layer, lambda fs: extract_tarball(blob, fs),
                        replace=False)

    # -- RUN ------------------------------------------------------------------

    def run_env(self):
        """Return the environment a RUN sees: ENV, then ARG values, then PATH."""
        env = dict(self.config["env"])
        for name, value in self.args.items():
            env.setdefault(name, value)
        env.setdefault("PATH", DEFAULT_PATH)
        return env

    def run(self, index, step):
        """Run a command in a sandbox over the layers so far; writes make the layer."""
        args = step["args"]
        shell = (step.get("flags") or {}).get("form", "shell") == "shell"
        argv = ["/bin/sh", "-c", args[0]] if shell else list(args)
        env = self.run_env()
        layer = layers.layer_id(self.chain, instruction_key(step), env=env)

        def fill(fs):
            tail = collections.deque(maxlen=TAIL_BYTES)

            def on_output(chunk):
                tail.extend(chunk)
                self.emit("output", {"step": index + 1}, chunk)

            code = sandbox.run_isolated(
                self.lowerdirs(), fs, os.path.join(os.path.dirname(fs), "work"),
                argv, env, cwd=self.config["workdir"] or "/",
                user=self.config["user"], hostname="build", timeout=self.timeout,
                on_output=on_output, network=self.network, cancel=self.cancel,
            )
            if code != 0:
                output = bytes(tail).decode("utf-8", "replace").rstrip()
                message = "step %d: %s exited %d" % (index + 1, describe(step), code)
                if output:
                    message += "; last output:\n" + output
                error = CommandFailed(argv, code, output, message=message)
                # The controller maps the step back to its Mockerfile line.
                error.details.update(step=index + 1, instruction=describe(step),
                                     output=output)
                raise error

        self.make_layer(index, step, layer, fill)

    # -- COPY -----------------------------------------------------------------

    def entry(self, index, relpath):
        """Return the context manifest entry of relpath."""
        entry = self.context.get(relpath)
        if entry is None:
            raise InvalidRequest("step %d: %r is not in the build context manifest"
                                 % (index + 1, relpath))
        return entry

    def blob(self, index, relpath, digest):
        """Return the stored blob of a context file, which must have been uploaded."""
        path = layers.blob_path(self.root, digest)
        if not os.path.exists(path):
            raise NotFound("step %d: blob %s of %r is not on this host; upload it "
                           "with blob.put first" % (index + 1, digest[:12], relpath))
        return path

    def copy_plan(self, index, step):
        """Return [(dest path, relpath, entry)] for a COPY, parents before children."""
        args = step["args"]
        dest = args[-1]
        sources = step.get("sources")
        if sources is None:
            sources = args[:-1]
        if not sources:
            raise InvalidRequest("step %d: COPY matched no files" % (index + 1))
        into_dir = (dest.endswith("/") or len(sources) > 1 or any(
            glob.has_magic(p) for p in args[:-1]))
        if not into_dir and self.entry(index, sources[0])["type"] != "dir":
            into_dir = self.is_dir(dest)
        plan = []
        for src in sources:
            entry = self.entry(index, src)
            if entry["type"] != "dir":
                target = os.path.join(dest, os.path.basename(src)) if into_dir else dest
                plan.append((target.rstrip("/"), src, entry))
                continue
            plan.append((dest.rstrip("/") or "/", src, {"type": "dir", "mode": None}))
            prefix = "" if src == "." else src + "/"
            for rel in sorted(self.context):
                if rel != "." and rel.startswith(prefix):
                    plan.append((os.path.join(dest, rel[len(prefix):]), rel,
                                 self.context[rel]))
        return plan

    def is_dir(self, path):
        """Return True when path is a directory in the image built so far."""
        found = layers.lookup(self.lowerdirs(), self.resolve(path, [], True))
        return found is not None and os.path.isdir(found)

    def copy(self, index, step):
        """Materialise context files from blobs into a new layer."""
        plan = self.copy_plan(index, step)
        files = [[dest, e.get("digest") or "", e.get("mode"), e["type"],
                  e.get("target") or ""] for dest, _, e in plan]
        layer = layers.layer_id(self.chain, instruction_key(step), files=files)
        chown = (step.get("flags") or {}).get("chown")

        def fill(fs):
            owner = self.owner(index, chown) if chown else (0, 0)
            for dest, rel, entry in plan:
                kind = entry["type"]
                inner, path = self.place(fs, dest, follow_last=kind == "dir")
                if kind == "dir" and entry["mode"] is None:
                    # The destination itself: keep what the image has, or make it.
                    if inner:
                        self.ensure_dir_chain(fs, inner)
                    if chown:
                        os.chown(path, *owner)
                    continue
                if kind != "dir" or not os.path.isdir(path) or os.path.islink(path):
                    remove_any(path)
                if kind == "dir":
                    if not os.path.isdir(path):
                        os.mkdir(path)
                    os.chown(path, *owner)
                    os.chmod(path, entry["mode"] & 0o7777)
                elif kind == "symlink":
                    os.symlink(entry["target"], path)
                    os.lchown(path, *owner)
                else:
                    shutil.copyfile(self.blob(index, rel, entry["digest"]), path)
                    os.chown(path, *owner)  # before chmod: chown clears set-id bits
                    os.chmod(path, entry["mode"] & 0o7777)

        self.make_layer(index, step, layer, fill)

    def owner(self, index, spec):
        """Return (uid, gid) for a --chown user[:group], names read from the image."""
        user, _, group = spec.partition(":")
        uid = self.id_of(index, user, "etc/passwd", 2)
        gid = self.id_of(index, group, "etc/group", 2) if group else uid
        return uid, gid

    def id_of(self, index, name, table, column):
        """Return a numeric id, looking a name up in the image's passwd or group."""
        if name.isdigit():
            return int(name)
        path = layers.lookup(self.lowerdirs(), self.resolve(table, [], False))
        try:
            with open(path or "/nonexistent", encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.rstrip("\n").split(":")
                    if len(fields) > column and fields[0] == name:
                        return int(fields[column])
        except (OSError, ValueError):
            pass
        raise InvalidRequest(
            "step %d: COPY --chown: no %r in the image's /%s; use a numeric id or "
            "create it first" % (index + 1, name, table))

    # -- paths in the image ---------------------------------------------------

    def resolve(self, path, extra_top, follow_last):
        """Return path with symlinks in the image resolved, as if it were /."""
        stack = list(extra_top) + self.lowerdirs()
        try:
            return util.resolve_in_root(
                path, lambda rel: layers.lookup(stack, rel), follow_last)
        except OSError as exc:
            raise InvalidRequest(exc.strerror or str(exc))

    def place(self, fs, dest, follow_last=False):
        """Return (path in the image, path in layer fs) of dest, making its parents."""
        rel = self.resolve(dest, [fs], follow_last)
        parts = rel.split("/") if rel else []
        for depth in range(1, len(parts)):
            self.ensure_dir(fs, "/".join(parts[:depth]))
        return rel, (os.path.join(fs, rel) if rel else fs)

    def ensure_dir(self, fs, rel):
        """Make directory rel in the layer, with the owner and mode the image has."""
        path = os.path.join(fs, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            return
        remove_any(path)
        below = layers.lookup(self.lowerdirs(), rel)
        os.mkdir(path)
        if below and os.path.isdir(below) and not os.path.islink(below):
            st = os.lstat(below)
            os.chown(path, st.st_uid, st.st_gid)
            os.chmod(path, stat.S_IMODE(st.st_mode))
        else:
            os.chmod(path, 0o755)

    def mkdir(self, fs, path):
        """Create WORKDIR path in the layer unless the image already has it."""
        rel = self.resolve(path, [], True)
        if rel and not self.is_dir("/" + rel):
            self.ensure_dir_chain(fs, rel)

    def ensure_dir_chain(self, fs, rel):
        """Make rel and its parents in the layer."""
        parts = rel.split("/")
        for depth in range(1, len(parts) + 1):
            self.ensure_dir(fs, "/".join(parts[:depth]))

    # -- config ---------------------------------------------------------------

    def configure(self, step):
        """Apply a metadata instruction (ENV, ARG, USER, CMD, ...) to the config."""
        name, args = step["name"], step.get("args") or []
        flags = step.get("flags") or {}
        config = self.config
        if name == "ENV":
            config["env"].update({k: v for k, v in args})
        elif name == "ARG":
            values = flags.get("values")
            for arg, default in args:
                if values is not None:
                    value = values.get(arg)
                else:
                    value = self.build_args.get(arg, default)
                if value is None:
                    self.args.pop(arg, None)
                else:
                    self.args[arg] = value
        elif name == "USER":
            config["user"] = args[0]
        elif name == "EXPOSE":
            config["exposed"] = sorted(set(config["exposed"]) | set(args))
        elif name == "LABEL":
            config["labels"].update({k: v for k, v in args})
        elif name in ("CMD", "ENTRYPOINT"):
            argv = list(args)
            if flags.get("form", "shell") == "shell":
                argv = ["/bin/sh", "-c", args[0]]
            if name == "CMD":
                config["cmd"], self.cmd_inherited = argv, False
            else:
                config["entrypoint"] = argv
                if self.cmd_inherited:  # as Docker: a new ENTRYPOINT drops a base CMD
                    config["cmd"], self.cmd_inherited = [], False
        elif name == "HEALTHCHECK":
            if flags.get("none"):
                config["healthcheck"] = None
            else:
                test = (["/bin/sh", "-c", args[0]]
                        if flags.get("form", "shell") == "shell" else list(args))
                check = dict(HEALTH_DEFAULTS, test=test)
                check.update({k: flags[k] for k in HEALTH_DEFAULTS if k in flags})
                config["healthcheck"] = check
        else:
            raise InvalidRequest("unknown instruction %r" % (name,))


def remove_any(path):
    """Remove whatever is at path (file, link, device or tree), if anything."""
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        os.unlink(path)
    elif os.path.isdir(path):
        layers.remove_tree(path)


def check_steps(steps):
    """Return steps if they look like parsed instructions, else raise InvalidRequest."""
    if not isinstance(steps, list) or not steps:
        raise InvalidRequest("image.build needs a non-empty list of steps")
    for index, step in enumerate(steps):
        if not isinstance(step, dict) or not isinstance(step.get("name"), str):
            raise InvalidRequest("step %d is not an instruction: %r"
                                 % (index + 1, step))
        if not isinstance(step.get("args", []), list):
            raise InvalidRequest("step %d: args must be a list" % (index + 1))
    return steps


def check_context(context):
    """Return the context manifest if its entries are well-formed."""
    if not isinstance(context, dict):
        raise InvalidRequest("context must be an object {relpath: entry}")
    for rel, entry in context.items():
        if (rel.startswith("/") or ".." in rel.split("/")
                or not isinstance(entry, dict)
                or entry.get("type") not in ENTRY_TYPES):
            raise InvalidRequest("bad context entry %r: %r" % (rel, entry))
        if entry["type"] == "file":
            layers.check_digest(entry.get("digest"))
        if entry["type"] == "symlink" and not isinstance(entry.get("target"), str):
            raise InvalidRequest("context symlink %r has no target" % (rel,))
        if entry["type"] != "symlink" and not isinstance(entry.get("mode"), int):
            raise InvalidRequest("context entry %r has no mode" % (rel,))
    return context


def extract_tarball(path, dest):
    """Extract a rootfs tarball into dest, refusing members that would leave it."""
    trusted = {"filter": "fully_trusted"} if hasattr(
        tarfile, "fully_trusted_filter") else {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            name = _member_name(member.name)
            if name is None:
                continue
            _check_inside(dest, name, member.name)
            if member.islnk():
                link = _member_name(member.linkname)
                if not link:
                    raise InvalidRequest("tarball hard link %r points outside the "
                                         "rootfs" % member.name)
                _check_inside(dest, link, member.name)
                member.linkname = link
            target = os.path.join(dest, name)
            if os.path.lexists(target) and not (member.isdir() and
                                                os.path.isdir(target)):
                remove_any(target)  # never write through a link an earlier member made
            member.name = name
            tar.extract(member, dest, set_attrs=True, numeric_owner=True, **trusted)


def _member_name(name):
    """Return a tar member name relative to the rootfs, None for the root itself."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidRequest("tarball member %r climbs out of the rootfs" % name)
    return "/".join(parts) or None


def _check_inside(dest, name, original):
    """Refuse a member whose parent directories in dest include a symlink."""
    path = dest
    for part in name.split("/")[:-1]:
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise InvalidRequest("tarball member %r lies under symlink %r, which "
                                 "could lead outside the rootfs" % (original, part))
