"""The agent's store: blobs, layer ids, commits, whiteouts, images, tags, prune."""

import hashlib
import json
import os
import tempfile

import pytest

from remote_agent import layers
from remote_agent.errors import Conflict, InvalidRequest, NotFound


@pytest.fixture
def root():
    """Yield a fresh state root and remove it afterwards, whatever it holds."""
    path = tempfile.mkdtemp(prefix="mockerops-test-store-")
    try:
        yield path
    finally:
        layers.remove_tree(path)


def sha(data):
    """Return the sha256 hex digest of bytes."""
    return hashlib.sha256(data).hexdigest()


def make_layer(root, files, parent="", instruction=None):
    """Commit a layer holding files {relpath: bytes} and return its id."""
    instruction = instruction or {"name": "RUN", "args": [repr(sorted(files))]}
    layer = layers.layer_id(parent, instruction)
    build = layers.new_build_dir(root)
    for rel, data in files.items():
        path = os.path.join(build, "fs", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    layers.commit_layer(root, layer, build, {"parent": parent,
                                             "instruction": instruction})
    return layer


# -- blobs --------------------------------------------------------------------


def test_blob_upload_in_chunks_and_missing(root):
    data = b"x" * 1000
    digest = sha(data)
    assert layers.missing_blobs(root, [digest, digest]) == [digest]
    assert not layers.put_blob_chunk(root, digest, 0, data[:400], False)["stored"]
    assert layers.put_blob_chunk(root, digest, 400, data[400:], True)["stored"]
    with open(layers.blob_path(root, digest), "rb") as f:
        assert f.read() == data
    assert layers.missing_blobs(root, [digest]) == []
    assert os.listdir(layers.tmp_dir(root)) == []


def test_blob_digest_mismatch_is_rejected_and_leaves_nothing(root):
    digest = sha(b"expected")
    with pytest.raises(InvalidRequest, match="blob upload corrupted"):
        layers.put_blob_chunk(root, digest, 0, b"something else", True)
    assert not os.path.exists(layers.blob_path(root, digest))
    assert os.listdir(layers.tmp_dir(root)) == []


def test_blob_chunk_at_wrong_offset_is_rejected(root):
    digest = sha(b"abcdef")
    layers.put_blob_chunk(root, digest, 0, b"abc", False)
    with pytest.raises(InvalidRequest, match="restart the upload from offset 3"):
        layers.put_blob_chunk(root, digest, 5, b"f", True)


@pytest.mark.parametrize("digest", ["", "abc", "A" * 64, "../" + "a" * 61, None])
def test_bad_digests_are_refused(root, digest):
    with pytest.raises(InvalidRequest):
        layers.blob_path(root, digest)


def test_base_tarball_counts_as_present_once_extracted(root):
    digest = sha(b"tarball")
    make_layer(root, {}, instruction=None)
    build = layers.new_build_dir(root)
    layers.commit_layer(root, layers.tarball_layer_id(digest), build, {})
    assert layers.missing_blobs(root, [digest], bases={digest}) == []
    assert layers.missing_blobs(root, [digest]) == [digest]


# -- layer ids and commits ----------------------------------------------------

LAYER_ID_CASES = [
    # (what changes, kwargs a, kwargs b, same id?)
    ("nothing", {}, {}, True),
    ("parent", {"parent": "p1"}, {"parent": "p2"}, False),
    ("instruction", {"instruction": {"name": "RUN", "args": ["a"]}},
     {"instruction": {"name": "RUN", "args": ["b"]}}, False),
    ("file digest", {"files": [["/f", "d1", 420, "file", ""]]},
     {"files": [["/f", "d2", 420, "file", ""]]}, False),
    ("file mode", {"files": [["/f", "d1", 420, "file", ""]]},
     {"files": [["/f", "d1", 493, "file", ""]]}, False),
    ("symlink target", {"files": [["/l", "", None, "symlink", "a"]]},
     {"files": [["/l", "", None, "symlink", "b"]]}, False),
    ("RUN env", {"env": {"c": "1"}}, {"env": {"c": "2"}}, False),
    ("env key order", {"env": {"a": "1", "b": "2"}}, {"env": {"b": "2", "a": "1"}},
     True),
]


@pytest.mark.parametrize("what, a, b, same", LAYER_ID_CASES,
                         ids=[case[0] for case in LAYER_ID_CASES])
def test_layer_id(what, a, b, same):
    base = {"parent": "p", "instruction": {"name": "RUN", "args": ["x"]}}
    assert (layers.layer_id(**dict(base, **a)) == layers.layer_id(**dict(base, **b))) \
        == same


def test_commit_is_one_rename_and_keeps_the_first(root):
    first = make_layer(root, {"a": b"1"}, instruction={"name": "X"})
    build = layers.new_build_dir(root)
    with open(os.path.join(build, "fs", "a"), "wb") as f:
        f.write(b"2")
    assert layers.commit_layer(root, first, build, {}) is False
    with open(os.path.join(layers.layer_fs(root, first), "a"), "rb") as f:
        assert f.read() == b"1"
    assert os.listdir(layers.tmp_dir(root)) == []
    meta = layers.layer_meta(root, first)
    assert meta["id"] == first and meta["empty"] is False and meta["size"] > 0


def test_commit_replace_swaps_atomically(root):
    first = make_layer(root, {"a": b"1"}, instruction={"name": "X"})
    build = layers.new_build_dir(root)
    with open(os.path.join(build, "fs", "a"), "wb") as f:
        f.write(b"2")
    assert layers.commit_layer(root, first, build, {}, replace=True) is True
    with open(os.path.join(layers.layer_fs(root, first), "a"), "rb") as f:
        assert f.read() == b"2"
    assert os.listdir(layers.tmp_dir(root)) == []


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts are device nodes: root")
def test_lookup_honours_whiteouts_and_opaque_dirs(root):
    low = make_layer(root, {"etc/a": b"a", "etc/b": b"b", "d/x": b"x", "keep": b"k"})
    up = layers.new_build_dir(root)
    fs = os.path.join(up, "fs")
    os.makedirs(os.path.join(fs, "etc"))
    os.mknod(os.path.join(fs, "etc", "a"), 0o020000, os.makedev(0, 0))
    os.makedirs(os.path.join(fs, "d"))
    os.setxattr(os.path.join(fs, "d"), layers.OPAQUE_XATTR, b"y")
    stack = [fs, layers.layer_fs(root, low)]
    assert layers.lookup(stack, "etc/a") is None
    assert layers.lookup(stack, "etc/b").startswith(layers.layer_fs(root, low))
    assert layers.lookup(stack, "d/x") is None
    assert layers.lookup(stack, "d") == os.path.join(fs, "d")
    assert layers.lookup(stack, "keep") is not None
    assert layers.lookup(stack, "nothing") is None
    layers.remove_tree(up)


# -- images and tags ----------------------------------------------------------


def save(root, layer_list, **config):
    """Store an image over layer_list and return its manifest."""
    return layers.save_image(root, layer_list, dict({"env": {}}, **config), layer_list)


def test_image_id_is_content_and_stable(root):
    layer = make_layer(root, {"a": b"1"})
    one = save(root, [layer])
    two = save(root, [layer])
    assert one == two
    body = {k: one[k] for k in ("layers", "config", "history")}
    assert one["id"] == layers.digest_of(body)
    assert save(root, [layer], user="app")["id"] != one["id"]


RESOLVE_CASES = [
    ("app:v1", "one"),
    ("app", "two"),          # no tag means :latest
    ("app:latest", "two"),
    ("one-id", "one"),
    ("one-prefix", "one"),
    ("sha256:one-prefix", "one"),
]


@pytest.mark.parametrize("ref, which", RESOLVE_CASES)
def test_resolve_image(root, ref, which):
    images = {"one": save(root, [make_layer(root, {"a": b"1"})]),
              "two": save(root, [make_layer(root, {"b": b"2"})])}
    layers.tag_image(root, images["one"]["id"], "app:v1")
    layers.tag_image(root, images["two"]["id"], "app")
    one = images["one"]["id"]
    ref = {"one-id": one, "one-prefix": one[:12],
           "sha256:one-prefix": "sha256:" + one[:12]}.get(ref, ref)
    assert layers.resolve_image(root, ref)["id"] == images[which]["id"]


def test_resolve_image_unknown_and_ambiguous(root):
    with pytest.raises(NotFound, match="no image 'nope'"):
        layers.resolve_image(root, "nope")
    # 17 images: two of them must share their first hex digit.
    ids = [save(root, [make_layer(root, {str(n): b""})])["id"] for n in range(17)]
    firsts = [i[0] for i in ids]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    with pytest.raises(InvalidRequest, match="ambiguous"):
        layers.resolve_image(root, shared)
    with pytest.raises(InvalidRequest, match="bad tag"):
        layers.tag_image(root, ids[0], "Bad Tag")


def test_list_images(root):
    image = save(root, [make_layer(root, {"a": b"1"})])
    layers.tag_image(root, image["id"], "app:v1")
    listing = layers.list_images(root)
    assert [(i["id"], i["tags"], i["layers"]) for i in listing] == [
        (image["id"], ["app:v1"], 1)]


def use_image(root, name, image):
    """Write a container config that uses image, as the container code does."""
    path = os.path.join(root, "containers", name, "config.json")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"name": name, "image_id": image}, f)


def test_remove_image_refused_while_in_use(root):
    image = save(root, [make_layer(root, {"a": b"1"})])
    layers.tag_image(root, image["id"], "app:v1")
    use_image(root, "web-1", image["id"])
    with pytest.raises(Conflict, match="used by container web-1"):
        layers.remove_image(root, "app:v1")
    assert layers.resolve_image(root, "app:v1")["id"] == image["id"]
    layers.remove_tree(os.path.join(root, "containers", "web-1"))
    assert layers.remove_image(root, "app:v1") == {"untagged": ["app:v1"],
                                                   "deleted": [image["id"]]}
    with pytest.raises(NotFound):
        layers.resolve_image(root, image["id"])


def test_remove_one_of_several_tags_only_untags(root):
    image = save(root, [make_layer(root, {"a": b"1"})])
    layers.tag_image(root, image["id"], "app:v1")
    layers.tag_image(root, image["id"], "app:v2")
    assert layers.remove_image(root, "app:v1") == {"untagged": ["app:v1"],
                                                   "deleted": []}
    assert layers.resolve_image(root, "app:v2")["id"] == image["id"]


def test_remove_image_takes_a_custom_in_use_check(root):
    image = save(root, [make_layer(root, {"a": b"1"})])
    with pytest.raises(Conflict, match="used by container x"):
        layers.remove_image(root, image["id"], in_use_check=lambda i: ["x"])


def test_prune_removes_only_unreferenced_layers(root):
    kept = make_layer(root, {"a": b"1"})
    history_only = make_layer(root, {}, parent=kept, instruction={"name": "ENV"})
    orphan = make_layer(root, {"b": b"2"})
    layers.save_image(root, [kept], {"env": {}}, [kept, history_only])
    os.mkdir(os.path.join(layers.tmp_dir(root), "build-leftover"))
    result = layers.prune(root)
    assert result["layers"] == [orphan]
    assert layers.layer_exists(root, kept) and layers.layer_exists(root, history_only)
    assert not os.path.exists(layers.layer_dir(root, orphan))
    assert os.listdir(layers.tmp_dir(root)) == []


def test_prune_refuses_while_a_build_holds_the_store(root):
    with layers.store_lock(root):
        with pytest.raises(Conflict, match="a build is running"):
            layers.prune(root)
