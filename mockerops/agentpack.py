"""Pack remote_agent/ into one zipapp whose name is its content hash."""

import functools
import hashlib
import io
import zipfile
from pathlib import Path

import remote_agent

ZIP_DATE = (2020, 1, 1, 0, 0, 0)
BOOT = "import sys\nfrom remote_agent.__main__ import main\nsys.exit(main())\n"


@functools.lru_cache(maxsize=1)
def agent_zipapp() -> tuple[str, bytes]:
    """Return (hash, bytes) of the agent zipapp, built once per process."""
    source = Path(remote_agent.__file__).parent
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        # Fixed dates and sorted names make the archive, and so its hash,
        # depend on the agent's source alone.
        zf.writestr(zipfile.ZipInfo("__main__.py", ZIP_DATE), BOOT)
        for path in sorted(source.glob("*.py")):
            info = zipfile.ZipInfo(f"remote_agent/{path.name}", ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    data = buf.getvalue()
    return hashlib.sha256(data).hexdigest()[:20], data
