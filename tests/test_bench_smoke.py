"""Keep the benchmark script working: a smoke pass (N = 2, one run) end to end.

Benchmarks are not tests: no timing is asserted. This checks that every scenario
ran (or said why it was skipped) and that the report it writes is complete.
Needs root and sshd for its own lab (CI is root).
"""

import glob
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab]

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"
SCENARIOS = [
    "## 1. Fan-out", "## 2. Ten steps", "## 3. Unchanged deploy",
    "## 4. Container start", "## 5. Image size", "## 6. Build cache",
    "## 7. Controller memory",
]


def podman_parents():
    """Return podman's parent cgroups that exist now."""
    return set(glob.glob("/sys/fs/cgroup/*/libpod_parent"))


def test_bench_smoke_pass_writes_every_scenario(tmp_path):
    out = tmp_path / "RESULTS.md"
    parents_before = podman_parents()
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text()
    for heading in SCENARIOS:
        assert heading in report, heading
    assert "| mockerops" in report or "mockerops " in report
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not Path("/tmp/mockerops-bench").exists(), "the bench's work dir is left"
    assert podman_parents() <= parents_before, "podman's cgroups are left"
