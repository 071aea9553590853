"""The installed shape: one import package, `weft`, from a wheel as from the editable install.

setuptools maps the repository's folders onto `weft` with package-dir and an explicit package
list; a subpackage missing from that list would work in the editable install (which maps whole
folders) and be silently absent from a wheel. These tests build the wheel and import from it.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _folder_packages() -> set[str]:
    """Every folder with an __init__.py under the mapped folders, as its `weft...` name."""
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *rel)))
    return found


def test_every_package_folder_is_listed() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    assert listed == _folder_packages()


def test_console_script_points_into_weft() -> None:
    assert _pyproject()["project"]["scripts"] == {"weft": "weft.cli:main",
                                                  "weft-cni": "weft.cni.plugin:main"}


@pytest.fixture(scope="module")
def wheel_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(dist), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("weft-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    return target


def test_wheel_installs_weft_and_no_generic_names(wheel_target: Path) -> None:
    top = sorted(p.name for p in wheel_target.iterdir() if not p.name.endswith(".dist-info"))
    assert top == ["bin", "weft"] or top == ["weft"], top
    probe = (
        "import importlib, weft, weft.cli, weft.daemon, weft.backends.vxlan, weft.tools.replay, "
        "weft.tools.lab.demo, weft.cni.plugin\n"
        "print(weft.__file__)\n"
        "for name in ('switch', 'backends', 'tools'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        print('absent', name)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=wheel_target.parent, timeout=120,
                         env={"PYTHONPATH": str(wheel_target), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert Path(lines[0]).is_relative_to(wheel_target)
    assert lines[1:] == ["absent", "switch", "absent", "backends", "absent", "tools"]


def test_the_cli_loads_no_compiler_until_a_command_needs_it():
    """`weft status`, `weft leases` and the others build every subcommand's parser; numba (and
    LLVM, ~60 MB) must load only with the commands that run the pipeline."""
    code = ("import sys; from weft.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('numba', 'llvmlite', 'scapy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"
