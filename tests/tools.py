"""What the suite needs from the machine, and what a test does when it is not there.

On a developer's machine a test whose tool (or Python package) is missing is skipped, with a
message naming it and the package that brings it. In CI (the C{CI} variable set to anything but
false, 0, no, off or nothing: .ci/run runs with C{CI=true}) the same test fails instead: CI
installs everything the suite needs, so a missing tool there is a broken set-up, which skipped
tests would hide behind a green run.

Use L{require_tool} for executables and L{require_module} for Python modules, in a test or a
fixture, instead of C{pytest.skip}, C{skipif(shutil.which(...) is None)} or
C{pytest.importorskip}.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import Mapping, NoReturn

import pytest

# Values of CI that mean "not in CI".
NOT_CI = frozenset({"", "0", "false", "no", "off"})


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Does the suite run in CI (C{CI} set, to anything but a false value)?"""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in NOT_CI


def missing(what: str, install: str) -> NoReturn:
    """C{what} is not installed (C{install} says how to get it): skip the test, or, in CI, fail it."""
    message = f"{what} is not installed: {install}"
    if in_ci():
        pytest.fail(f"{message} (CI={os.environ.get('CI')}: in CI a missing tool fails the run, never skips)", pytrace=False)
    pytest.skip(message)


def require_tool(name: str, package: str, *, pip: bool = False, why: str = "") -> str:
    """The path of the executable C{name}. Missing: skip, or fail in CI, naming the package to
    install: C{package} from Debian (C{apt-get install -y}), or from PyPI with C{pip}. C{why}
    (what the tool is for) goes into the message."""
    found = shutil.which(name)
    if found is None:
        install = f"python3 -m pip install {package}" if pip else f"apt-get install -y {package}"
        missing(f"{name}{f' ({why})' if why else ''}", install)
    return found


def require_module(name: str, package: str) -> ModuleType:
    """The Python module C{name}, imported. Missing: skip, or fail in CI, naming the PyPI
    C{package} that brings it (C{pytest.importorskip} that fails in CI)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        missing(f"the Python module {name} ({e})", f"python3 -m pip install {package}")
