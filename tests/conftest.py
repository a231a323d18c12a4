"""Shared fixtures: the session's local lab, torn down with a leak check."""

from __future__ import annotations

import os
import sys

import pytest

# labkit sits beside this file; tests/ is no package, so put it on the path here
# whatever pytest's import mode is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import labkit  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Skip lab tests, with the reason, when not root (CI runs as root)."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="lab tests need root for network namespaces and "
                                   "sshd; CI runs them as root")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """Yield a 3-host LabInfo of this session's own lab; fail teardown on leaks."""
    labkit.require_root()
    name = labkit.unique_name()
    info = labkit.start_lab(tmp_path_factory.mktemp(name), name)
    try:
        yield info
    finally:
        labkit.down_and_check(info)
