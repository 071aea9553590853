"""The suite's own rules, checked on a throwaway project that uses this repository's pytest
configuration (pyproject.toml) and tests/conftest.py: under CI=true a skip fails the run, and
the summary always lists the skips."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

SKIPPING = """
import pytest

def test_runs():
    pass

def test_gap():
    pytest.skip("resource missing")
"""


@pytest.fixture
def project(pytester):
    pytester.makefile(".toml", pyproject=(ROOT / "pyproject.toml").read_text())
    tests = pytester.mkdir("tests")
    (tests / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tests / "unit").mkdir()
    (tests / "unit" / "test_skipping.py").write_text(SKIPPING)
    return pytester


def test_a_skip_fails_the_run_under_ci(project, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = project.runpytest_subprocess()
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*CI=true: 1 test(s) skipped; under CI a skip fails the run*",
        "SKIPPED [[]1[]] tests/unit/test_skipping.py:*: resource missing",  # -rs from addopts
    ])


def test_outside_ci_a_skip_is_reported_but_passes(project, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = project.runpytest_subprocess()
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] tests/unit/test_skipping.py:*: resource missing"])
    result.stdout.no_fnmatch_line("*CI=true*")


def test_a_run_without_skips_passes_under_ci(project, monkeypatch):
    monkeypatch.setenv("CI", "true")
    passing_only = SKIPPING.split("def test_gap")[0]
    (project.path / "tests" / "unit" / "test_skipping.py").write_text(passing_only)
    result = project.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
