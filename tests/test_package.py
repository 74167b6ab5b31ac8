"""wsthreads is an installable package: what lands in site-packages, and which way imports point."""

from __future__ import annotations

import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_nothing_else(tmp_path: Path) -> None:
    """No common.py, no demo script in site-packages; the page and py.typed are inside.

    Built from a copy: setuptools writes build/ and the egg-info into the source tree, and
    CI builds on two Pythons at once.
    """
    source = tmp_path / "source"
    junk = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=junk)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(source)],
        cwd=tmp_path,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("wsthreads-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert all(n.startswith(("wsthreads/", "wsthreads-")) for n in names), names
    assert {"wsthreads/page.html", "wsthreads/py.typed", "wsthreads/connection.py"} <= set(names)


def test_import_works_from_any_directory_and_has_a_version(tmp_path: Path) -> None:
    code = "import sys, wsthreads; print(wsthreads.__version__); assert 'common' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert re.fullmatch(r"\d+\.\d+\.\d+\n", result.stdout), result.stderr


def test_imports_point_one_way_the_package_never_imports_the_programs() -> None:
    for module in (ROOT / "wsthreads").glob("*.py"):
        source = module.read_text()
        assert not re.search(r"^\s*(from|import) (common|sync_server|sync_client)\b", source, re.M), module


def test_examples_import_the_package_without_sys_path_edits() -> None:
    for example in (ROOT / "examples").glob("*.py"):
        assert "sys.path" not in example.read_text(), example


def test_every_public_exception_crosses_a_process_as_it_was() -> None:
    """A Celery task or a process pool pickles what it raised: each comes back with its fields."""
    import wsthreads

    raised = [
        wsthreads.Closed(wsthreads.CloseCode.GOING_AWAY, "bye", by_peer=False),
        wsthreads.ConnectError("cannot connect to ws://h/ws: connection refused", retryable=True),
        wsthreads.NotConnected("not connected to ws://h/ws"),
        wsthreads.Reject(429, "slow down", {"Retry-After": "3"}),
        wsthreads.BrokerError("the broker at redis://h:6379/0 is unavailable"),
    ]
    public = {name for name in wsthreads.__all__ if isinstance(getattr(wsthreads, name), type)}
    assert {type(error).__name__ for error in raised} == {
        name for name in public if issubclass(getattr(wsthreads, name), Exception)
    }
    for error in raised:
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error) and vars(again) == vars(error)
