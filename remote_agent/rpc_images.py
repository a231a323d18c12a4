"""Agent methods for blobs and images: upload, build, list, inspect, tag, rm, prune."""

from remote_agent import layers
from remote_agent.builder import Builder
from remote_agent.errors import InvalidRequest
from remote_agent.server import rpc


@rpc("blob.missing")
def blob_missing(ctx, digests, bases=()):
    """Return the digests this host lacks (bases: tarballs whose layer may exist)."""
    if not isinstance(digests, list):
        raise InvalidRequest("blob.missing takes a list of digests")
    for digest in digests:
        layers.check_digest(digest)
    return layers.missing_blobs(ctx.root, digests, set(bases or ()))


@rpc("blob.put")
def blob_put(ctx, digest, offset=0, final=True):
    """Append the call's blob at offset; on final, verify the digest and store it."""
    if not isinstance(offset, int) or offset < 0:
        raise InvalidRequest("blob.put offset must be a byte count, got %r" % (offset,))
    return layers.put_blob_chunk(ctx.root, layers.check_digest(digest), offset,
                                 ctx.blob, bool(final))


@rpc("image.build")
def image_build(ctx, steps, context=None, tag=None, no_cache=False,
                build_args=None, network="host", timeout=None):
    """Build an image from parsed steps; stream step and output events."""
    builder = Builder(ctx.root, steps, context, tag=tag, no_cache=no_cache,
                      build_args=build_args, emit=ctx.emit, cancel=ctx.cancelled,
                      network=network, timeout=timeout)
    manifest = builder.build()
    return dict(manifest, tags=_tags(ctx.root, manifest["id"]))


@rpc("image.plan")
def image_plan(ctx, steps, context=None, build_args=None):
    """Return {"id", "missing"}: the image id image.build would give, or None."""
    return Builder(ctx.root, steps, context, build_args=build_args).plan()


@rpc("image.list")
def image_list(ctx):
    """Return every image on this host, newest first."""
    return layers.list_images(ctx.root)


@rpc("image.inspect")
def image_inspect(ctx, ref):
    """Return the manifest and tags of the image ref names."""
    manifest = layers.resolve_image(ctx.root, ref)
    return dict(manifest, tags=_tags(ctx.root, manifest["id"]))


@rpc("image.tag")
def image_tag(ctx, ref, tag):
    """Point tag at the image ref names."""
    name = layers.tag_image(ctx.root, ref, tag)
    return {"tag": name, "id": layers.read_tags(ctx.root)[name]}


@rpc("image.rm")
def image_rm(ctx, ref):
    """Untag or remove an image; refused while a container uses it."""
    return layers.remove_image(ctx.root, ref)


@rpc("image.prune")
def image_prune(ctx, blobs=False):
    """Remove layers no image references (and uploaded blobs when asked)."""
    return layers.prune(ctx.root, blobs=bool(blobs))


def _tags(root, image):
    """Return the tags pointing at an image."""
    return layers.tags_of(layers.read_tags(root), image)
