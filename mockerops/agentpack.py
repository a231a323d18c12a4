"""Pack remote_agent/ into one zipapp whose name is its content hash.

Python cannot write bytecode caches into a zip, so an agent shipped as source
alone would be compiled on every start. The archive therefore also carries
bytecode compiled here, as unchecked hash-based .pyc files (PEP 552): a host
whose Python has the same bytecode magic loads them directly, and any other
Python finds the magic wrong and falls back to the .py beside them.
"""

import functools
import hashlib
import importlib.util
import io
import marshal
import zipfile
from pathlib import Path

import remote_agent

ZIP_DATE = (2020, 1, 1, 0, 0, 0)
BOOT = "import sys\nfrom remote_agent.__main__ import main\nsys.exit(main())\n"
# PEP 552 flags: bit 0 hash-based, bit 1 check_source (off: never re-hashed).
UNCHECKED_HASH_PYC = (1).to_bytes(4, "little")


def _pyc(source: bytes, name: str) -> bytes:
    """Return an unchecked hash-based .pyc of source for this Python."""
    code = compile(source, name, "exec", dont_inherit=True)
    return (
        importlib.util.MAGIC_NUMBER
        + UNCHECKED_HASH_PYC
        + importlib.util.source_hash(source)
        + marshal.dumps(code)
    )


@functools.lru_cache(maxsize=1)
def agent_zipapp() -> tuple[str, bytes]:
    """Return (hash, bytes) of the agent zipapp, built once per process."""
    source = Path(remote_agent.__file__).parent
    files = sorted(source.glob("*.py"))
    # The name hashes the sources and this Python's bytecode magic, not the
    # archive: marshal's output is not guaranteed to be byte-identical across
    # processes, and the name must not change while the agent does not.
    digest = hashlib.sha256(importlib.util.MAGIC_NUMBER)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("__main__.py", ZIP_DATE), BOOT)
        for path in files:
            data = path.read_bytes()
            digest.update(path.name.encode() + b"\0" + data + b"\0")
            for name, body in (
                (f"remote_agent/{path.name}", data),
                (f"remote_agent/{path.stem}.pyc", _pyc(data, f"remote_agent/{path.name}")),
            ):
                info = zipfile.ZipInfo(name, ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, body)
    return digest.hexdigest()[:20], buf.getvalue()
