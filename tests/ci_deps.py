"""Optional test dependencies: skipped with a clear reason on a developer's machine, a hard failure in CI.

A test file that starts with ``pytest.importorskip("ray")`` skips silently when ray is missing: in CI that is
a whole file of tests that stopped running with the run still green. With NEARSIGHT_REQUIRE_TEST_DEPS=1
(``.ci/run`` sets it) the session stops at once naming every missing dependency, and an ``importorskip`` of a
module this list does not know yet fails its file instead of skipping it.
"""
from __future__ import annotations

import importlib.util
import os

import pytest

ENV = "NEARSIGHT_REQUIRE_TEST_DEPS"
CHROMIUM = "/usr/bin/chromium"

# import name -> what installs it (scripts/setup.sh installs the extras [test,bench,ray,fast])
MODULES = {
    "torch": "torch (a dependency)",
    "open_clip": "open-clip-torch (a dependency)",
    "skimage": "scikit-image (extra [test])",
    "playwright": "playwright (extra [test])",
    "schemathesis": "schemathesis (extra [test])",
    "jsonschema": "jsonschema (extra [test])",
    "openapi_spec_validator": "openapi-spec-validator (extra [test])",
    "psutil": "psutil (extra [test])",
    "sentence_transformers": "sentence-transformers (extra [test])",
    "ray": "ray[data] (extra [ray])",
    "granian": "granian (extra [fast])",
}


def required() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def missing(modules: dict[str, str] = MODULES, chromium: str = CHROMIUM) -> list[str]:
    """What the suite needs that this environment lacks, one "name (what installs it)" each."""
    gone = [f"{name} ({why})" for name, why in modules.items() if importlib.util.find_spec(name) is None]
    if os.environ.get("NEARSIGHT_NO_BROWSER") != "1" and not os.path.exists(chromium):
        gone.append(f"{chromium} (Debian package chromium; NEARSIGHT_NO_BROWSER=1 runs without the browser tests)")
    return gone


_importorskip = pytest.importorskip


def _strict_importorskip(modname, *args, **kwargs):
    try:
        return _importorskip(modname, *args, **kwargs)
    except pytest.skip.Exception as exc:
        pytest.fail(f"{ENV}=1 and a test dependency is missing: {exc.msg}", pytrace=False)


def pytest_configure(config):
    if required():
        pytest.importorskip = _strict_importorskip


def pytest_sessionstart(session):
    if required():
        gone = missing()
        if gone:
            pytest.exit(f"{ENV}=1 and test dependencies are missing (scripts/setup.sh installs them): "
                        + "; ".join(gone), returncode=4)
