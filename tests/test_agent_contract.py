"""The agent's contract: stdlib only, Python 3.8 syntax, framed replies only."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mockerops.agentpack import agent_zipapp
from remote_agent import protocol

AGENT_DIR = Path(__file__).resolve().parent.parent / "remote_agent"
AGENT_FILES = sorted(AGENT_DIR.glob("*.py"))


def imported_modules(tree):
    """Yield the top-level names of every module a tree imports."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


@pytest.mark.parametrize("path", AGENT_FILES, ids=lambda p: p.name)
def test_agent_imports_only_stdlib(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    allowed = set(sys.stdlib_module_names) | {"remote_agent"}
    bad = [(m, line) for m, line in imported_modules(tree) if m not in allowed]
    assert bad == [], f"{path.name} imports outside the standard library: {bad}"


@pytest.mark.parametrize("path", AGENT_FILES, ids=lambda p: p.name)
def test_agent_parses_as_python38(path):
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))


@pytest.mark.parametrize(
    "construct",
    [".removeprefix(", ".removesuffix(", "functools.cache(", "@cache\n", "| None"],
)
def test_agent_avoids_post_38_apis(construct):
    users = [p.name for p in AGENT_FILES if construct in p.read_text()]
    assert users == [], f"{construct!r} needs Python > 3.8: {users}"


def test_zipapp_is_deterministic_and_named_by_hash():
    digest, data = agent_zipapp()
    agent_zipapp.cache_clear()
    digest2, data2 = agent_zipapp()
    assert (digest, data) == (digest2, data2)
    assert len(digest) == 20 and int(digest, 16) >= 0


def frames(raw):
    """Split the agent's stdout after the magic into (header, blob) pairs."""
    start = raw.index(protocol.MAGIC) + len(protocol.MAGIC)
    rest = raw[start:]
    out = []
    while rest:
        hlen, blen = protocol.decode_lengths(rest[:8])
        header = protocol.decode_header(rest[8 : 8 + hlen])
        out.append((header, rest[8 + hlen : 8 + hlen + blen]))
        rest = rest[8 + hlen + blen :]
    return out


def test_agent_answers_every_request_in_frames(tmp_path):
    _, data = agent_zipapp()
    pyz = tmp_path / "agent.pyz"
    pyz.write_bytes(data)
    requests = b"".join(
        [
            protocol.encode({"id": 1, "op": "call", "method": "agent.ping"}),
            protocol.encode({"id": 2, "op": "call", "method": "no.such"}),
            protocol.encode(
                {"id": 3, "op": "call", "method": "agent.ping", "params": {"bogus": 1}}
            ),
        ]
    )
    proc = subprocess.run(
        [sys.executable, str(pyz), "serve", str(tmp_path / "root")],
        input=requests,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    got = frames(proc.stdout)
    assert got[0][0]["event"] == "hello"
    replies = {h["id"]: h for h, _ in got[1:]}
    assert replies[1]["ok"] is True
    assert replies[1]["result"]["agent_version"] >= 1
    assert replies[2]["ok"] is False and "no.such" in replies[2]["error"]["message"]
    assert replies[3]["ok"] is False and replies[3]["error"]["kind"] == "invalid"


@pytest.mark.parametrize(
    "header_len, blob_len, ok",
    [
        (10, 0, True),
        (protocol.MAX_HEADER + 1, 0, False),
        (10, protocol.MAX_BLOB + 1, False),
    ],
)
def test_frame_bounds(header_len, blob_len, ok):
    prefix = protocol.HEAD.pack(header_len, blob_len)
    if ok:
        assert protocol.decode_lengths(prefix) == (header_len, blob_len)
    else:
        with pytest.raises(protocol.ProtocolError):
            protocol.decode_lengths(prefix)
