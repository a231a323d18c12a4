"""Framing shared by the agent and the controller.

A frame is two big-endian u32 lengths, a JSON header and an optional binary blob:

    >II  header_len blob_len | header (UTF-8 JSON object) | blob

Bulk data (build context files, base image tarballs, log and exec output) travels
in blobs, so it is never base64-encoded. The agent announces itself with MAGIC
before its first frame; the controller discards anything earlier, which is how a
noisy shell start-up file on the host is kept from breaking the stream.

Headers the controller sends:
    {"id": N, "op": "call", "method": M, "params": {...}}   + blob (request data)
    {"id": N, "op": "stdin"}                                 + blob (empty = EOF)
    {"id": N, "op": "cancel"}
Headers the agent sends:
    {"id": N, "event": E, "data": ...}                       + blob (streamed)
    {"id": N, "ok": true, "result": ...}
    {"id": N, "ok": false, "error": {"kind": K, "message": S, "details": {...}}}
"""

import json
import struct

MAGIC = b"\x00MOCKEROPS-AGENT\x00"
HEAD = struct.Struct(">II")
MAX_HEADER = 16 * 1024 * 1024
MAX_BLOB = 64 * 1024 * 1024


class ProtocolError(Exception):
    """The byte stream is not made of valid frames."""


def encode(header, blob=b""):
    """Return one frame holding header and blob."""
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return HEAD.pack(len(raw), len(blob)) + raw + bytes(blob)


def decode_lengths(prefix):
    """Return (header_len, blob_len) from an 8-byte prefix, checking bounds."""
    header_len, blob_len = HEAD.unpack(prefix)
    if header_len > MAX_HEADER or blob_len > MAX_BLOB:
        raise ProtocolError(
            "frame too large (header %d, blob %d bytes)" % (header_len, blob_len)
        )
    return header_len, blob_len


def decode_header(raw):
    """Return the JSON header of a frame as a dict."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise ProtocolError("bad frame header: %s" % exc)
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not an object")
    return header


def read_frame(stream):
    """Read one frame from a blocking binary stream; return None at EOF."""
    prefix = _read_exact(stream, HEAD.size)
    if prefix is None:
        return None
    header_len, blob_len = decode_lengths(prefix)
    raw = _read_exact(stream, header_len)
    blob = _read_exact(stream, blob_len) if blob_len else b""
    if raw is None or blob is None:
        raise ProtocolError("stream ended inside a frame")
    return decode_header(raw), blob


def _read_exact(stream, size):
    """Read exactly size bytes; None when the stream ends before the first byte."""
    chunks = []
    got = 0
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            if got == 0:
                return None
            raise ProtocolError("stream ended inside a frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
