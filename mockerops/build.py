"""Build an image on a host: render, parse, hash the context, upload, image.build.

    check_mockerfile(...)       render, parse and check sources: no host needed
    plan_build(...)             the above plus the context manifest and its digests
    await build_image(session, ...)   upload missing blobs, build, return the manifest

Only files a COPY (or a FROM tarball) names go into the context manifest, and only
blobs the host says it lacks cross the wire. A RUN step that fails on the host
is reported as a MockerfileError naming the Mockerfile's file:line. File digests
are cached in ~/.cache/mockerops/digests.json, reused only while a file's stat is
unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import hashlib
import json
import logging
import os
import stat
import sys
import threading
from typing import Any, Callable

from mockerops.errors import AgentCallError, MockerfileError
from mockerops.mockerfile import Instruction, base_kind, parse, render, resolve

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
READ_SIZE = 1024 * 1024
CALL_TIMEOUT = 120.0
BUILD_TIMEOUT = 3600.0


@dataclasses.dataclass
class BuildPlan:
    """What a build sends a host: steps, the context manifest, the files behind it."""

    mockerfile: str
    context_dir: str
    instructions: list[Instruction]
    context: dict[str, dict] = dataclasses.field(default_factory=dict)
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    bases: list[str] = dataclasses.field(default_factory=list)
    sources: dict[int, list[str]] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"<BuildPlan {self.mockerfile} {len(self.instructions)} steps "
                f"{len(self.files)} files>")

    def steps(self) -> list[dict]:
        """Return the instructions as image.build steps, with their sources."""
        out = []
        for index, ins in enumerate(self.instructions):
            step = ins.to_step()
            if ins.name == "COPY":
                step["sources"] = self.sources[index]
            elif ins.name == "FROM" and ins.flags.get("base") == "tarball":
                step["source"] = self.sources[index][0]
            out.append(step)
        return out


# -- digests ------------------------------------------------------------------


class DigestCache:
    """sha256 of files keyed by path and stat, kept on disk between runs."""

    def __init__(self, path: str | None = None) -> None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        self.path = path or os.path.join(base, "mockerops", "digests.json")
        self.lock = threading.Lock()
        self.entries: dict[str, list] | None = None
        self.dirty = False

    def __repr__(self) -> str:
        return f"<DigestCache {self.path}>"

    def digest(self, path: str, st: os.stat_result) -> str:
        """Return the sha256 of the file at path, hashing only when its stat moved."""
        # ctime joins the key: rewriting a file and restoring its mtime (as
        # `touch -r` or a careless tool does) cannot restore ctime.
        key = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        with self.lock:
            self._load()
            hit = self.entries.get(path)
            if hit and hit[:4] == key:
                return hit[4]
        digest = hash_file(path)
        with self.lock:
            self.entries[path] = key + [digest]
            self.dirty = True
        return digest

    def _load(self) -> None:
        """Read the cache file once; a missing or damaged one starts empty."""
        if self.entries is not None:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                self.entries = dict(json.load(f))
        except (OSError, ValueError, TypeError):
            self.entries = {}

    def save(self) -> None:
        """Write the cache atomically if it changed; a failure only costs speed."""
        with self.lock:
            if not self.dirty:
                return
            data = json.dumps(self.entries, separators=(",", ":"))
            self.dirty = False
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(data)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.debug("cannot write digest cache %s: %s", self.path, exc)


def hash_file(path: str) -> str:
    """Return the sha256 hex digest of a file's bytes."""
    with open(path, "rb") as f:
        if sys.version_info >= (3, 11):
            return hashlib.file_digest(f, "sha256").hexdigest()
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(READ_SIZE), b""):
            h.update(chunk)
        return h.hexdigest()


_CACHE = DigestCache()


# -- planning -----------------------------------------------------------------


def check_mockerfile(mockerfile, context_dir, *, host: str = "",
                     variables: dict | None = None,
                     build_args: dict | None = None) -> list[Instruction]:
    """Render, parse and resolve, and check COPY/FROM sources; no host needed."""
    plan = _plan(str(mockerfile), str(context_dir), host, variables, build_args,
                 None, hashing=False)
    return plan.instructions


def plan_build(mockerfile, context_dir, *, host: str = "",
               variables: dict | None = None, build_args: dict | None = None,
               base_env: dict | None = None,
               cache: DigestCache | None = None) -> BuildPlan:
    """Return the build plan: resolved steps and the hashed context manifest."""
    cache = cache or _CACHE
    plan = _plan(str(mockerfile), str(context_dir), host, variables, build_args,
                 base_env, hashing=True, cache=cache)
    cache.save()
    return plan


def _plan(mockerfile, context_dir, host, variables, build_args, base_env,
          hashing, cache=None) -> BuildPlan:
    """Render, parse, resolve and walk the sources for one host."""
    if not os.path.isdir(context_dir):
        raise MockerfileError(f"{mockerfile}: build context {context_dir} is not a "
                              "directory")
    text = render(mockerfile, variables or {}, build_args, host)
    instructions = resolve(parse(text, mockerfile), build_args, mockerfile, base_env)
    plan = BuildPlan(mockerfile, context_dir, instructions)
    walker = _ContextWalker(plan, hashing, cache)
    for index, ins in enumerate(instructions):
        where = f"{mockerfile}:{ins.line}"
        if ins.name == "COPY":
            plan.sources[index] = walker.add_sources(ins.args[:-1], where)
        elif ins.name == "FROM" and ins.flags.get("base") == "tarball":
            rel = walker.add_sources([ins.args[0]], where, what="FROM tarball")[0]
            entry = plan.context[rel]
            if entry["type"] != "file":
                raise MockerfileError(f"{where}: FROM {ins.args[0]} is not a file",
                                      hint="FROM a rootfs tarball: .tar, .tar.gz")
            plan.sources[index] = [rel]
            if hashing:
                plan.bases.append(entry["digest"])
    return plan


class _ContextWalker:
    """Collect context entries COPY sources name, refusing paths that leave it."""

    def __init__(self, plan: BuildPlan, hashing: bool, cache: DigestCache | None):
        self.plan = plan
        self.root = os.path.realpath(plan.context_dir)
        self.hashing = hashing
        self.cache = cache

    def add_sources(self, patterns: list[str], where: str,
                    what: str = "COPY source") -> list[str]:
        """Return the context paths patterns match, adding them to the manifest."""
        found = []
        for pattern in patterns:
            for rel in self.match(pattern, where, what):
                self.add_tree(rel, where)
                if rel not in found:
                    found.append(rel)
        return found

    def match(self, pattern: str, where: str, what: str) -> list[str]:
        """Return the context-relative paths pattern names (globs expanded)."""
        hint = f"sources are paths inside the build context {self.plan.context_dir}"
        if os.path.isabs(pattern):
            raise MockerfileError(f"{where}: {what} {pattern!r} is an absolute path",
                                  hint=hint)
        norm = os.path.normpath(pattern)
        if norm == ".." or norm.startswith("../"):
            raise MockerfileError(f"{where}: {what} {pattern!r} is outside the "
                                  "build context", hint=hint)
        if glob.has_magic(norm):
            matches = [os.path.join(self.root, m)
                       for m in sorted(glob.glob(norm, root_dir=self.root))]
        else:
            full = os.path.normpath(os.path.join(self.root, norm))
            matches = [full] if os.path.lexists(full) else []
        if not matches:
            raise MockerfileError(
                f"{where}: {what} {pattern!r} not found in the build context "
                f"{self.plan.context_dir}", hint=hint)
        out = []
        for match in matches:
            parent = os.path.realpath(os.path.dirname(match))
            if match != self.root and not _inside(parent, self.root):
                raise MockerfileError(
                    f"{where}: {what} {pattern!r} follows a symlink out of the build "
                    f"context to {parent}", hint=hint)
            rel = os.path.relpath(match, self.root) if match != self.root else "."
            if rel.startswith("../"):
                raise MockerfileError(f"{where}: {what} {pattern!r} is outside the "
                                      "build context", hint=hint)
            out.append(rel)
        return out

    def add_tree(self, rel: str, where: str) -> None:
        """Add rel and, for a directory, everything under it (links not followed)."""
        self.add_entry(rel, where)
        path = os.path.join(self.root, rel)
        if self.plan.context[rel]["type"] != "dir":
            return
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                full = os.path.join(dirpath, name)
                self.add_entry(os.path.relpath(full, self.root), where)

    def add_entry(self, rel: str, where: str) -> None:
        """Add one path's manifest entry: type, mode, digest or link target."""
        if rel in self.plan.context:
            return
        path = os.path.join(self.root, rel)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            entry = {"type": "symlink", "target": os.readlink(path)}
        elif stat.S_ISDIR(st.st_mode):
            entry = {"type": "dir", "mode": stat.S_IMODE(st.st_mode)}
        elif stat.S_ISREG(st.st_mode):
            entry = {"type": "file", "mode": stat.S_IMODE(st.st_mode),
                     "size": st.st_size}
            if self.hashing:
                try:
                    entry["digest"] = self.cache.digest(path, st)
                except OSError as exc:
                    raise MockerfileError(f"{where}: cannot read {rel}: "
                                          f"{exc.strerror}") from None
                self.plan.files[entry["digest"]] = path
        else:
            raise MockerfileError(
                f"{where}: {rel} in the build context is a special file (socket, "
                "fifo or device)", hint="move it out of the directory you COPY")
        self.plan.context[rel] = entry


def _inside(path: str, root: str) -> bool:
    """Return True when path is root or lies under it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


# -- talking to the host ------------------------------------------------------


async def upload_missing(session, plan: BuildPlan, *,
                         timeout: float = CALL_TIMEOUT) -> list[str]:
    """Upload the context blobs the host lacks; return their digests."""
    missing = await session.call(
        "blob.missing", {"digests": sorted(plan.files), "bases": plan.bases},
        timeout=timeout)
    for digest in missing:
        await _upload(session, digest, plan.files[digest], timeout)
    return missing


async def _upload(session, digest: str, path: str, timeout: float) -> None:
    """Send one file to the host's blob store in chunks of CHUNK bytes."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while True:
            chunk = await asyncio.to_thread(f.read, CHUNK)
            final = offset + len(chunk) >= size or not chunk
            await session.call("blob.put", {"digest": digest, "offset": offset,
                                            "final": final},
                               blob=chunk, timeout=timeout)
            offset += len(chunk)
            if final:
                return


async def build_image(session, mockerfile, context_dir, *, host: str,
                      variables: dict | None = None,
                      build_args: dict | None = None, tag: str | None = None,
                      no_cache: bool = False,
                      on_event: Callable[[str, Any, bytes], None] | None = None,
                      timeout: float = BUILD_TIMEOUT,
                      call_timeout: float = CALL_TIMEOUT,
                      cache: DigestCache | None = None) -> dict:
    """Build the Mockerfile on the host behind session and return the manifest."""
    plan = await _host_plan(session, mockerfile, context_dir, host, variables,
                            build_args, cache, call_timeout)
    missing = await upload_missing(session, plan, timeout=call_timeout)
    if on_event is not None:
        on_event("context", {"files": len(plan.files), "uploaded": len(missing)},
                 b"")

    params = {"steps": plan.steps(), "context": plan.context, "tag": tag,
              "no_cache": no_cache, "build_args": dict(build_args or {})}
    try:
        return await session.call("image.build", params, timeout=timeout,
                                  on_event=on_event)
    except AgentCallError as exc:
        failed = failed_step_error(plan, exc)
        if failed is None:
            raise
        raise failed from None


def failed_step_error(plan: BuildPlan, exc: AgentCallError) -> MockerfileError | None:
    """Return a failed RUN step as an error naming its Mockerfile file:line.

    The agent numbers steps from 1, one per instruction sent, so step n is
    ``plan.instructions[n - 1]``. Return None for any other agent error.
    """
    step = exc.details.get("step")
    if exc.kind != "command_failed" or not isinstance(step, int):
        return None
    if not 1 <= step <= len(plan.instructions):
        return None
    ins = plan.instructions[step - 1]
    instruction = exc.details.get("instruction") or ins.name
    message = (f"{plan.mockerfile}:{ins.line}: {instruction} exited "
               f"{exc.details.get('returncode')}")
    output = exc.details.get("output") or ""
    if output:
        message += f"; last output:\n{output}"
    return MockerfileError(message)


async def planned_image_id(session, mockerfile, context_dir, *, host: str,
                           variables: dict | None = None,
                           build_args: dict | None = None,
                           call_timeout: float = CALL_TIMEOUT,
                           cache: DigestCache | None = None) -> str | None:
    """Return the image id a build would give on the host; None if it needs layers."""
    plan = await _host_plan(session, mockerfile, context_dir, host, variables,
                            build_args, cache, call_timeout)
    result = await session.call(
        "image.plan", {"steps": plan.steps(), "context": plan.context,
                       "build_args": dict(build_args or {})},
        timeout=call_timeout)
    return result["id"]


async def _host_plan(session, mockerfile, context_dir, host, variables, build_args,
                     cache, call_timeout) -> BuildPlan:
    """Return the build plan for a host, with a FROM image's env from the host."""
    text = await asyncio.to_thread(render, str(mockerfile), variables or {},
                                   build_args, host)
    first = resolve(parse(text, str(mockerfile)), build_args, str(mockerfile))
    base = next(ins for ins in first if ins.name == "FROM")
    base_env = None
    if base_kind(base.args[0]) == "image":
        # $VAR in ENV and friends must see the base image's environment.
        image = await session.call("image.inspect", {"ref": base.args[0]},
                                   timeout=call_timeout)
        base_env = image["config"]["env"]
    return await asyncio.to_thread(
        plan_build, mockerfile, context_dir, host=host, variables=variables,
        build_args=build_args, base_env=base_env, cache=cache)
