"""The host's content-addressed store: blobs, layers, images and tags.

    blobs/<sha256>          uploaded files, verified against their digest
    layers/<id>/fs/         a layer's files (an overlay lowerdir), whiteouts included
    layers/<id>/meta.json   id, parent, instruction, created, size, empty
    images/<id>.json        manifest: layers (bottom first), config, history
    tags.json               {"name:tag": image id}, written under locks/tags.lock

A layer's id is the sha256 of what it was made from (see layer_id), so an id that
exists is reused, never rebuilt. Layers are built in tmp/ and committed by one
rename. Builds hold locks/store.lock shared; prune takes it exclusive, so it never
removes a layer a running build is about to use.
"""

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time

from remote_agent.errors import Conflict, InvalidRequest, NotFound
from remote_agent.util import file_lock, fsync_dir, read_json, write_json

DIGEST = re.compile(r"[0-9a-f]{64}\Z")
HEX = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})\Z")
TAG = re.compile(r"[a-z0-9][a-z0-9._/-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?\Z")
CHUNK = 1024 * 1024
RENAME_EXCHANGE = 2
AT_FDCWD = -100
OPAQUE_XATTR = "trusted.overlay.opaque"


def canonical(obj):
    """Return obj as canonical JSON bytes: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def digest_of(obj):
    """Return the sha256 hex digest of obj's canonical JSON."""
    return hashlib.sha256(canonical(obj)).hexdigest()


def file_digest(path):
    """Return the sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def tmp_dir(root):
    """Return the store's temporary directory (same filesystem as layers/)."""
    path = os.path.join(root, "tmp")
    os.makedirs(path, exist_ok=True)
    return path


@contextlib.contextmanager
def store_lock(root, exclusive=False):
    """Hold the store lock: shared while building, exclusive (or fail) to prune."""
    path = os.path.join(root, "locks", "store.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if exclusive:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict("a build is running on this host; prune again "
                               "when it has finished")
        else:
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


# -- blobs --------------------------------------------------------------------


def check_digest(digest):
    """Return digest if it is a sha256 hex digest, else raise InvalidRequest."""
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise InvalidRequest("bad blob digest %r: expected 64 lowercase hex digits"
                             % (digest,))
    return digest


def blob_path(root, digest):
    """Return where the blob with this digest is stored."""
    return os.path.join(root, "blobs", check_digest(digest))


def missing_blobs(root, digests, bases=()):
    """Return the digests (in order, once each) the host does not have.

    A digest in bases is a base rootfs tarball: it is not missing when its
    extracted base layer exists, even if the blob itself was pruned.
    """
    missing = []
    for digest in digests:
        if digest in missing or os.path.exists(blob_path(root, digest)):
            continue
        if digest in bases and layer_exists(root, tarball_layer_id(digest)):
            continue
        missing.append(digest)
    return missing


def put_blob_chunk(root, digest, offset, data, final):
    """Append data at offset to a partial blob; verify and store it when final."""
    dest = blob_path(root, digest)
    if os.path.exists(dest):
        return {"digest": digest, "stored": True, "size": os.path.getsize(dest)}
    part = os.path.join(tmp_dir(root), "blob-%s.part" % digest)
    with file_lock(os.path.join(root, "locks", "blob-%s.lock" % digest)):
        size = os.path.getsize(part) if os.path.exists(part) else 0
        if offset == 0:
            size = 0
        elif offset != size:
            raise InvalidRequest(
                "blob %s: chunk at offset %d but %d bytes received so far; "
                "restart the upload from offset %d" % (digest[:12], offset, size, size),
                received=size,
            )
        with open(part, "r+b" if size else "wb") as f:
            f.seek(offset)
            f.truncate()
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not final:
            return {"digest": digest, "stored": False, "size": offset + len(data)}

        actual = file_digest(part)
        if actual != digest:
            os.unlink(part)
            raise InvalidRequest(
                "blob upload corrupted: expected sha256 %s, got %s; upload it again"
                % (digest, actual), expected=digest, actual=actual,
            )
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.chmod(part, 0o644)
        os.rename(part, dest)
        fsync_dir(os.path.dirname(dest))
        return {"digest": digest, "stored": True, "size": os.path.getsize(dest)}


# -- layers -------------------------------------------------------------------


def layer_id(parent, instruction, files=None, env=None):
    """Return the id of the layer made by instruction on top of parent.

    files are COPY's entries [dest, digest, mode, type, target] and env the
    variables a RUN sees; neither carries mtimes, so ids never depend on them.
    """
    key = {"parent": parent or "", "instruction": instruction}
    if files is not None:
        key["files"] = files
    if env is not None:
        key["env"] = env
    return digest_of(key)


def tarball_layer_id(digest):
    """Return the id of the base layer extracted from the tarball blob digest."""
    return digest_of({"tarball": digest})


def layer_dir(root, layer):
    """Return the directory of a layer."""
    return os.path.join(root, "layers", layer)


def layer_fs(root, layer):
    """Return the directory holding a layer's files (its overlay lowerdir)."""
    return os.path.join(root, "layers", layer, "fs")


def layer_exists(root, layer):
    """Return True when the layer is committed (only a rename makes meta.json)."""
    return os.path.exists(os.path.join(layer_dir(root, layer), "meta.json"))


def layer_meta(root, layer):
    """Return a committed layer's meta.json, or None."""
    return read_json(os.path.join(layer_dir(root, layer), "meta.json"))


def new_build_dir(root, prefix="build-"):
    """Return a fresh directory in tmp/ with an empty fs/ to build a layer in."""
    path = tempfile.mkdtemp(prefix=prefix, dir=tmp_dir(root))
    os.mkdir(os.path.join(path, "fs"), 0o755)
    return path


def tree_size(path):
    """Return the bytes of the files under path (links and dirs counted once)."""
    total, seen = 0, set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def commit_layer(root, layer, build_dir, meta, replace=False):
    """Move a finished build_dir to layers/<layer>; return False if one existed.

    With replace, the new layer takes the old one's place in one atomic exchange
    and the old one is retired (deleted, or kept in tmp/ while a container runs on
    an image holding it).
    """
    fs = os.path.join(build_dir, "fs")
    meta = dict(meta, id=layer, size=tree_size(fs), empty=not os.listdir(fs),
                created=meta.get("created") or now())
    write_json(os.path.join(build_dir, "meta.json"), meta)
    dest = layer_dir(root, layer)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        os.rename(build_dir, dest)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        if not replace:
            remove_tree(build_dir)  # another build committed it first
            return False
        exchange(build_dir, dest)
        retire_layer(root, layer, build_dir)
    fsync_dir(os.path.dirname(dest))
    return True


def exchange(a, b):
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is None:  # glibc < 2.28: two renames, with a moment of absence
        spare = a + ".swap"
        os.rename(b, spare)
        os.rename(a, b)
        os.rename(spare, a)
        return
    if func(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "renameat2(%s, %s, RENAME_EXCHANGE): %s"
                      % (a, b, os.strerror(err)))


def retire_layer(root, layer, old_dir):
    """Delete a replaced layer's old copy unless a container may have it mounted."""
    if layer in layers_in_use(root):
        # An overlay mounted on it keeps using these very inodes: keep them
        # until prune finds no container on an image holding the layer.
        os.rename(old_dir, os.path.join(tmp_dir(root), "retired-%s-%d-%d" % (
            layer, os.getpid(), int(time.time() * 1000))))
        return
    remove_tree(old_dir)


def remove_tree(path):
    """Remove a directory tree, whatever its modes (overlay work dirs are 000)."""
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.lexists(path):
        shutil.rmtree(path, onerror=_force_remove)


def _force_remove(func, path, exc_info):
    """Retry a failed removal after opening up the parent's permissions."""
    parent = os.path.dirname(path)
    os.chmod(parent, 0o700)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)
        shutil.rmtree(path)
    else:
        func(path)


def is_whiteout(st):
    """Return True for an overlayfs whiteout: a character device 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path):
    """Return True for a directory overlayfs marked opaque (hides lower layers)."""
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def lookup(lowerdirs, relpath):
    """Return the on-disk path relpath shows in the merged view, or None.

    lowerdirs are layer fs dirs, top first, as overlayfs stacks them. Whiteouts
    and opaque directories hide what lies below them; symlinks in the path are
    not followed (callers resolve them with the image's root in mind).
    """
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if not parts:
        return lowerdirs[0] if lowerdirs else None
    for base in lowerdirs:
        path, hides_below = base, False
        for index, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                break
            if is_whiteout(st):
                return None
            if index == len(parts) - 1:
                return path
            if not stat.S_ISDIR(st.st_mode):
                return None  # a file over what lower layers had as a directory
            if is_opaque(path):
                hides_below = True
        if hides_below:
            return None
    return None


# -- images and tags ----------------------------------------------------------


def now():
    """Return the current UTC time as an ISO 8601 string."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def image_path(root, image):
    """Return the manifest path of an image id."""
    return os.path.join(root, "images", image + ".json")


def save_image(root, layers, config, history):
    """Store an image manifest and return it; the same content keeps its id."""
    body = {"layers": list(layers), "config": config, "history": list(history)}
    image = digest_of(body)
    path = image_path(root, image)
    old = read_json(path)
    manifest = dict(body, id=image, created=(old or {}).get("created") or now())
    if old != manifest:
        write_json(path, manifest)
    return manifest


def load_image(root, image):
    """Return the manifest of an image id, or None."""
    return read_json(image_path(root, image))


def image_ids(root):
    """Return the ids of every stored image."""
    try:
        names = os.listdir(os.path.join(root, "images"))
    except FileNotFoundError:
        return []
    return sorted(n[:-5] for n in names if n.endswith(".json") and DIGEST.match(n[:-5]))


def normalize_tag(ref):
    """Return ref as name:tag (name alone means name:latest), or None if invalid."""
    if not TAG.match(ref or ""):
        return None
    if ":" not in ref.rsplit("/", 1)[-1]:
        ref += ":latest"
    return ref


def read_tags(root):
    """Return {"name:tag": image id}."""
    return read_json(os.path.join(root, "tags.json"), {}) or {}


@contextlib.contextmanager
def editing_tags(root):
    """Yield the tags dict under the tags lock and write it back atomically."""
    with file_lock(os.path.join(root, "locks", "tags.lock")):
        tags = read_tags(root)
        before = dict(tags)
        yield tags
        if tags != before:
            write_json(os.path.join(root, "tags.json"), tags)


def tag_image(root, ref, tag):
    """Point tag at the image ref names; return the normalized tag."""
    name = normalize_tag(tag)
    if name is None:
        raise InvalidRequest("bad tag %r: use name[:tag] with lowercase letters, "
                             "digits, '.', '_', '-' and '/'" % (tag,))
    manifest = resolve_image(root, ref)
    with editing_tags(root) as tags:
        tags[name] = manifest["id"]
    return name


def tags_of(tags, image):
    """Return the sorted tags pointing at image."""
    return sorted(name for name, target in tags.items() if target == image)


def resolve_image(root, ref):
    """Return the manifest ref names: name:tag, name (:latest), id or id prefix."""
    tags = read_tags(root)
    name = normalize_tag(ref)
    if name is not None and name in tags:
        manifest = load_image(root, tags[name])
        if manifest is None:
            raise NotFound("tag %s points at image %s, which is missing; "
                           "build it again" % (name, tags[name][:12]))
        return manifest
    match = HEX.match(ref or "")
    if match:
        found = [i for i in image_ids(root) if i.startswith(match.group(1))]
        if len(found) > 1:
            raise InvalidRequest("image id prefix %r is ambiguous (%d images); give "
                                 "more digits" % (ref, len(found)))
        if found:
            return load_image(root, found[0])
    raise NotFound("no image %r on this host; see `mockerops images` for what "
                   "is there, or build it"
                   % (ref,))


def list_images(root):
    """Return a summary of every image, newest first."""
    tags = read_tags(root)
    out = []
    for image in image_ids(root):
        manifest = load_image(root, image)
        if manifest is None:
            continue
        size = sum((layer_meta(root, l) or {}).get("size", 0)
                   for l in manifest["layers"])
        out.append({"id": image, "tags": tags_of(tags, image),
                    "created": manifest.get("created"),
                    "layers": len(manifest["layers"]), "size": size})
    out.sort(key=lambda i: (i["created"] or "", i["id"]), reverse=True)
    return out


def containers_using(root):
    """Return {image id: [container names]} from containers/*/config.json."""
    users = {}
    base = os.path.join(root, "containers")
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return users
    for name in names:
        config = read_json(os.path.join(base, name, "config.json")) or {}
        image = config.get("image_id")
        if image:
            users.setdefault(image, []).append(config.get("name") or name)
    return users


def layers_in_use(root):
    """Return the ids of layers of images that containers use."""
    used = set()
    for image in containers_using(root):
        manifest = load_image(root, image) or {}
        used.update(manifest.get("layers", []))
    return used


def remove_image(root, ref, in_use_check=None):
    """Remove a tag, or the image when ref is its last tag or its id.

    in_use_check(image_id) returns the containers using the image; by default
    they are read from containers/*/config.json. An image in use is refused.
    """
    check = in_use_check or (lambda image: containers_using(root).get(image, []))
    manifest = resolve_image(root, ref)
    image = manifest["id"]
    name = normalize_tag(ref)
    with editing_tags(root) as tags:
        mine = tags_of(tags, image)
        if name in mine and len(mine) > 1:
            del tags[name]
            return {"untagged": [name], "deleted": []}
        users = check(image)
        if users:
            raise Conflict("image %s is used by container %s; remove the container "
                           "first" % (image[:12], ", ".join(users)),
                           containers=list(users))
        for tag in mine:
            del tags[tag]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(image_path(root, image))
    return {"untagged": mine, "deleted": [image]}


def prune(root, blobs=False):
    """Remove layers no image references, leftovers in tmp/ and, if asked, blobs."""
    removed, freed = [], 0
    with store_lock(root, exclusive=True):
        keep = set()
        for image in image_ids(root):
            manifest = load_image(root, image) or {}
            keep.update(manifest.get("layers", []))
            keep.update(manifest.get("history", []))
        in_use = layers_in_use(root)
        layers_root = os.path.join(root, "layers")
        for layer in sorted(os.listdir(layers_root)) if os.path.isdir(
                layers_root) else []:
            if layer in keep or layer in in_use:
                continue
            path = layer_dir(root, layer)
            freed += tree_size(path)
            # Rename first: a half-deleted layer must never look committed.
            doomed = os.path.join(tmp_dir(root), "prune-" + layer)
            os.rename(path, doomed)
            remove_tree(doomed)
            removed.append(layer)

        for name in os.listdir(tmp_dir(root)):
            match = re.match(r"retired-([0-9a-f]{64})-", name)
            if match and match.group(1) in in_use:
                continue
            path = os.path.join(tmp_dir(root), name)
            if name.endswith(".part") and os.path.getmtime(path) > time.time() - 3600:
                continue  # an upload may be under way: blob.put holds no store lock
            remove_tree(path)

        blob_count = 0
        blob_root = os.path.join(root, "blobs")
        if blobs and os.path.isdir(blob_root):
            for name in os.listdir(blob_root):
                freed += os.path.getsize(os.path.join(blob_root, name))
                os.unlink(os.path.join(blob_root, name))
                blob_count += 1
    return {"layers": removed, "blobs": blob_count, "bytes": freed}
