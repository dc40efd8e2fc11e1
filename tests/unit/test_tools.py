"""tests/tools.py: a missing tool skips a test on a developer's machine and fails it in CI."""

from __future__ import annotations

import shutil
import sys

import pytest

from tests.tools import in_ci, require_module, require_tool

NO_TOOL = "trow-test-no-such-tool-8c41f2"
NO_MODULE = "trow_test_no_such_module_8c41f2"


@pytest.mark.parametrize("value", [None, "", "false", "False", "0", "no", "off"])
def test_a_missing_tool_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """CI unset or false: a test that needs a missing tool is skipped, and the reason names the
    tool, what it is for and the Debian package to install."""
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_tool(NO_TOOL, "no-such-package", why="for this test")
    assert str(skipped.value) == f"{NO_TOOL} (for this test) is not installed: apt-get install -y no-such-package"


@pytest.mark.parametrize("value", ["true", "1", "yes", "True", "github-actions"])
def test_a_missing_tool_fails_in_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """CI set (true, as .ci/run runs, or any other value a CI system sets): the same test fails,
    with the same message, so a missing install step cannot hide behind skipped tests."""
    monkeypatch.setenv("CI", value)
    assert in_ci()
    with pytest.raises(pytest.fail.Exception) as failed:
        require_tool(NO_TOOL, "no-such-package")
    message = str(failed.value)
    assert message.startswith(f"{NO_TOOL} is not installed: apt-get install -y no-such-package")
    assert f"CI={value}" in message


def test_pip_packages_are_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tool from PyPI is named with the pip command that installs it."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_tool(NO_TOOL, "'.[test]'", pip=True)
    assert str(skipped.value) == f"{NO_TOOL} is not installed: python3 -m pip install '.[test]'"


@pytest.mark.parametrize("ci", [None, "true"])
def test_a_present_tool_is_found_in_and_out_of_ci(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    """A tool that is there gives its path, whatever CI says."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert require_tool("sh", "dash") == shutil.which("sh")


def test_a_missing_module_skips_outside_ci_and_fails_in_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """require_module is importorskip that fails in CI, naming the PyPI package."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_module(NO_MODULE, "no-such-dist")
    assert str(skipped.value).endswith("is not installed: python3 -m pip install no-such-dist")
    assert NO_MODULE in str(skipped.value)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_module(NO_MODULE, "no-such-dist")
    assert require_module("json", "json") is sys.modules["json"]
