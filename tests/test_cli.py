"""The CLI's contract without hosts: exit statuses and one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data" / "inventory"


def mockerops(*args, env=None):
    """Run the CLI; return CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "mockerops", *map(str, args)],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["--version"], 0, "mockerops "),
        ([], 0, "Usage"),
        (["ping", "--bogus", "all"], 5, "No such option"),
        (["ping"], 5, "Missing argument"),
        (["rm", "all"], 5, "Missing argument"),
        (["ping", "-i", "/nonexistent/hosts.yaml", "all"], 4, "/nonexistent/hosts.yaml"),
        (["ping", "-i", DATA / "patterns" / "hosts.yaml", "nosuch"], 4, "nosuch"),
        (["inventory", "-i", DATA / "patterns" / "hosts.yaml", "--hosts",
          "web:&prod:!db"], 0, "web1"),
        (["exec", "-i", DATA / "patterns" / "hosts.yaml", "web1", "api"], 5,
         "Missing argument"),
        (["exec", "-i", DATA / "patterns" / "hosts.yaml", "web1", "api", "--"], 4,
         "no command"),
        (["build", "-i", DATA / "patterns" / "hosts.yaml", "web1", "Mockerfile",
          "--build-arg", "novalue"], 4, "KEY=VALUE"),
    ],
)
def test_exit_status_and_message(args, code, needle):
    proc = mockerops(*args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out
    assert needle in out
    assert "Traceback" not in out


def test_default_inventory_missing_names_the_remedy(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mockerops", "ping", "all"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 4
    assert "mockerops lab up" in proc.stderr
