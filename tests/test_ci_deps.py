"""CI fails loudly on a missing optional test dependency; a developer without one gets a clear skip."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ci_deps import ENV, missing

HERE = os.path.dirname(os.path.abspath(__file__))
QUICK = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}   # the venv's pytest plugins take seconds to load; none is needed
NEEDS_A_MODULE = 'import pytest\nmod = pytest.importorskip("nearsight_no_such_module")\n\n\ndef test_x():\n    pass\n'


def run_pytest(tmp_path, require: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_needs_a_module.py").write_text(NEEDS_A_MODULE)
    env = {**os.environ, "PYTHONPATH": HERE, "NEARSIGHT_NO_BROWSER": "1", **QUICK}
    env.pop(ENV, None)
    if require:
        env[ENV] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "ci_deps", "-p", "no:cacheprovider",
                           "test_needs_a_module.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def test_missing_lists_what_is_absent_and_what_installs_it(tmp_path, monkeypatch):
    monkeypatch.delenv("NEARSIGHT_NO_BROWSER", raising=False)
    gone = missing({"json": "stdlib", "nearsight_no_such_module": "extra [x]"}, chromium=str(tmp_path / "chromium"))
    assert gone[0] == "nearsight_no_such_module (extra [x])" and "chromium" in gone[1] and len(gone) == 2
    monkeypatch.setenv("NEARSIGHT_NO_BROWSER", "1")
    assert missing({"json": "stdlib"}, chromium=str(tmp_path / "chromium")) == []


def test_a_developer_gets_a_skip(tmp_path):
    done = run_pytest(tmp_path, require=False)
    assert done.returncode in (0, 5) and "1 skipped" in done.stdout, done.stdout + done.stderr   # 5: nothing ran


def test_ci_fails_instead_of_skipping(tmp_path):
    if missing():
        pytest.skip(f"this environment lacks {missing()}: the session check would stop first")
    done = run_pytest(tmp_path, require=True)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "skipped" not in out, out
    assert f"{ENV}=1 and a test dependency is missing" in out and "nearsight_no_such_module" in out, out


def test_ci_stops_at_once_when_a_listed_dependency_is_missing(tmp_path):
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    pass\n")
    (tmp_path / "conftest.py").write_text('import ci_deps\nci_deps.MODULES["nearsight_no_such_module"] = "extra [x]"\n')
    env = {**os.environ, "PYTHONPATH": HERE, ENV: "1", "NEARSIGHT_NO_BROWSER": "1", **QUICK}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "ci_deps", "-p", "no:cacheprovider"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 4 and "nearsight_no_such_module (extra [x])" in out and "1 passed" not in out, out
