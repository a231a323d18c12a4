"""Run the lab's tools (ip, sshd, ssh-keygen, nsenter) and check they are here.

Every command is an argument list, never a shell line, run with a deadline; a
failure becomes a LabError naming the command, and a missing tool names the
Debian package that provides it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterable

from mockerops.errors import LabError

log = logging.getLogger(__name__)

CMD_TIMEOUT = 30.0

# Root's PATH from a login shell or sudo may lack the sbin directories sshd lives in.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_PACKAGES = {"ip": "iproute2", "sshd": "openssh-server", "ssh-keygen": "openssh-client"}


def _search_path(path: str | None) -> str:
    """Return PATH, or the PATH to search for tools: ours plus the sbin dirs."""
    if path is not None:
        return path
    return os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN_DIRS])


def missing_requirements(
    *,
    euid: int | None = None,
    path: str | None = None,
    tools: Iterable[str] = _PACKAGES,
) -> list[str]:
    """Return one line per missing requirement: root and each tool with its package."""
    missing = []
    if (os.geteuid() if euid is None else euid) != 0:
        missing.append("root: namespaces, links and sshd need uid 0 (run as root)")
    for tool in tools:
        if not shutil.which(tool, path=_search_path(path)):
            package = _PACKAGES[tool]
            missing.append(f"{tool}: not found (apt-get install {package})")
    return missing


def check_requirements(*, tools: Iterable[str] = _PACKAGES) -> None:
    """Raise LabError naming everything the lab lacks on this machine."""
    missing = missing_requirements(tools=tools)
    if not missing:
        return
    packages = [_PACKAGES[m.split(":")[0]] for m in missing if not m.startswith("root")]
    hint = "run it as root, e.g. with sudo" if not packages else (
        f"on Debian: apt-get install {' '.join(packages)}"
    )
    raise LabError("the lab cannot run here: " + "; ".join(missing), hint=hint)


def tool_path(name: str) -> str:
    """Return the absolute path of a tool (sshd re-executes itself, so it must be)."""
    found = shutil.which(name, path=_search_path(None))
    if not found:
        raise LabError(f"{name}: not found", hint=f"apt-get install {_PACKAGES[name]}")
    return os.path.abspath(found)


def run(
    args: list[str], *, check: bool = True, timeout: float = CMD_TIMEOUT
) -> subprocess.CompletedProcess:
    """Run a command (an argument list, never a shell); raise LabError if it fails."""
    log.debug("run %s", args)
    found = shutil.which(args[0], path=_search_path(None))
    if found and "/" not in args[0]:
        args = [found, *args[1:]]
    try:
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise LabError(
            f"{args[0]}: not found", hint=f"apt-get install {_PACKAGES.get(args[0])}"
        ) from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(args)} gave no answer in {timeout:g} s") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
        raise LabError(f"{' '.join(args)} failed: {detail}")
    return result
