"""The suite's own rules.

Checked on a throwaway project that uses this repository's pytest configuration
(pyproject.toml) and tests/conftest.py: under CI=true a skip fails the run, and the summary
always lists the skips. Checked on the suite's source: no test that cannot fail (one that
asserts nothing, compares an expression with itself or asserts a constant).
"""

from __future__ import annotations

import ast
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


# -- no test that cannot fail ------------------------------------------------------------------

# Calls that check: pytest's raises/warns/fail, any assert* method (result.assert_outcomes,
# mock.assert_called_with), and pytester's line matchers.
CHECKING_CALLS = {"raises", "warns", "fail", "deprecated_call", "fnmatch_lines",
                  "no_fnmatch_line", "re_match_lines"}


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _checks(node: ast.AST, helpers: dict[str, ast.AST], seen: set[str]) -> bool:
    """Whether `node` asserts, directly or through a function of its own module it calls."""
    for child in ast.walk(node):
        if isinstance(child, ast.Assert):
            return True
        if isinstance(child, ast.Raise) and child.exc is not None:
            raised = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
            if getattr(raised, "id", "") == "AssertionError":
                return True
        if isinstance(child, ast.Call):
            name = _called_name(child)
            if name in CHECKING_CALLS or name.startswith("assert"):
                return True
            if name in helpers and name not in seen:
                seen.add(name)
                if _checks(helpers[name], helpers, seen):
                    return True
    return False


def weak_tests(source: str) -> list[str]:
    """Tests in `source` that cannot fail: no assertion of any kind, or one comparing an
    expression with itself or asserting a constant."""
    tree = ast.parse(source)
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    helpers: dict[str, ast.AST] = {}
    for function in functions:
        helpers.setdefault(function.name, function)
    weak = []
    for function in functions:
        if not function.name.startswith("test"):
            continue
        if not _checks(function, helpers, {function.name}):
            weak.append(f"{function.name} (line {function.lineno}): asserts nothing")
        for node in ast.walk(function):
            if not isinstance(node, ast.Assert):
                continue
            if isinstance(node.test, ast.Constant) and node.test.value:
                weak.append(f"{function.name} (line {node.lineno}): asserts a constant")
            if isinstance(node.test, ast.Compare):
                sides = [node.test.left, *node.test.comparators]
                for left, right in zip(sides, sides[1:], strict=False):
                    if ast.dump(left) == ast.dump(right):
                        weak.append(f"{function.name} (line {node.lineno}): compares "
                                    f"{ast.unparse(left)} with itself")
    return weak


def test_every_test_in_the_suite_can_fail():
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        found += [f"{path.relative_to(ROOT)}: {why}" for why in weak_tests(path.read_text())]
    assert found == [], "tests that cannot fail:\n" + "\n".join(found)


def test_the_scan_finds_tests_that_cannot_fail():
    source = '''
import pytest

def _checked(x):
    assert x

def _quiet(x):
    return x

def test_prints():
    print(_quiet(1))

def test_through_a_helper():
    _checked(1)

def test_raises():
    with pytest.raises(ValueError):
        int("x")

def test_itself():
    value = _quiet(2)
    assert value == value

def test_constant():
    assert True

def test_outcomes(result):
    result.assert_outcomes(passed=1)
'''
    assert weak_tests(source) == [
        "test_prints (line 10): asserts nothing",
        "test_itself (line 22): compares value with itself",
        "test_constant (line 25): asserts a constant",
    ]
