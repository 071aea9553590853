"""`weft cni install` refuses interpreters a shebang cannot name, and (without --force) Python
or weft files that someone other than root could change: the runtime runs the plugin as root.

The trees here are fakes under tmp_path, made root's alone (or, run as another user, that
user's, who is then trusted in their place); each test breaks one thing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from weft.cli import main as cli
from weft.cni import install

ME = os.geteuid()
TRUSTED = (0, ME)  # as root: (0, 0)
OTHER_UID = 65534  # nobody


class Tree:
    """A Python with weft installed: py/bin/python, py/lib/site/{x.pth, weft/cni/plugin.py}."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "py" / "bin" / "python"
        self.site = root / "py" / "lib" / "site"
        self.package = self.site / "weft"
        (self.package / "cni").mkdir(parents=True)
        self.python.parent.mkdir(parents=True)
        for path, mode in [(self.python, 0o755), (self.site / "x.pth", 0o644),
                           (self.package / "__init__.py", 0o644),
                           (self.package / "cni" / "plugin.py", 0o644)]:
            path.write_text("")
            path.chmod(mode)
        for directory in (root, root / "py", self.python.parent, root / "py" / "lib", self.site,
                          self.package, self.package / "cni"):
            directory.chmod(0o755)

    def problems(self, python: Path | None = None, trusted=TRUSTED) -> list[str]:
        return install.unsafe_paths(str(python or self.python), str(self.package),
                                    [str(self.site), str(self.root / "py" / "lib" / "py.zip")],
                                    trusted_uids=trusted)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path / "t")


def flagged(problems: list[str], path: Path) -> list[str]:
    return [p for p in problems if p.startswith(f"{path} ")]


def test_a_tree_that_is_root_s_alone_is_fine(tree: Tree) -> None:
    assert tree.problems() == []  # /tmp above it is world-writable, but sticky: fine


def test_the_real_interpreter_and_weft_pass(tmp_path: Path) -> None:
    """The tests install into this Python (tests/netns/test_cni.py too): it must be clean."""
    assert install.shebang_problem(sys.executable) is None
    package_dir, path = install.launcher_paths(sys.executable)
    assert os.path.isfile(os.path.join(package_dir, "cni", "plugin.py"))
    if ME == 0:
        assert install.unsafe_paths(sys.executable, package_dir, path) == []


# --- the shebang ----------------------------------------------------------------------------

@pytest.mark.parametrize(("python", "words"), [
    ("python3", "not absolute"),
    ("", "not absolute"),
    ("bin/python3", "not absolute"),
    ("/opt/my python/bin/python", "whitespace"),
    ("/opt/py\tthon/bin/python", "whitespace"),
    ("/opt/py\n/bin/python", "newline"),
    ("/opt/py\0/bin/python", "NUL"),
    ("/opt/py\udcff/bin/python", "not UTF-8"),
])
def test_paths_a_shebang_cannot_hold_are_refused(python: str, words: str) -> None:
    assert words in (install.shebang_problem(python, limit=256) or "")


def test_the_whole_shebang_line_must_fit_the_kernel_s_buffer() -> None:
    fits = "/" + "p" * (256 - len("#!/ -I\n"))  # "#!<path> -I\n" is exactly 256 bytes
    assert install.shebang_problem(fits, limit=256) is None
    problem = install.shebang_problem(fits + "p", limit=256)
    assert problem and "257 bytes" in problem and "256" in problem
    assert install.shebang_problem(fits, limit=128) is not None


@pytest.mark.parametrize(("release", "limit"), [
    ("6.18.44-fc-v857", 256), ("5.1.0", 256), ("5.10.0-28-amd64", 256),
    ("5.0.21", 128), ("4.19.0-26-amd64", 128), ("garbage", 128),
])
def test_the_limit_is_binprm_buf_size_of_the_running_kernel(release: str, limit: int) -> None:
    assert install.shebang_limit(release) == limit


# --- who can change the interpreter and weft ------------------------------------------------

def give_away(path: Path) -> tuple[int, ...]:
    """Make `path` someone else's; the uids to trust afterwards. Without root we cannot chown:
    then our own files are the untrusted ones (everything of ours is flagged, `path` too)."""
    if ME == 0:
        os.chown(path, OTHER_UID, -1)
        return TRUSTED
    return (0,)


@pytest.mark.parametrize("part", ["python", "bin", "site", "plugin", "cni"])
def test_a_part_owned_by_another_user_is_flagged(tree: Tree, part: str) -> None:
    path = {"python": tree.python, "bin": tree.python.parent, "site": tree.site,
            "plugin": tree.package / "cni" / "plugin.py", "cni": tree.package / "cni"}[part]
    trusted = give_away(path)
    assert flagged(tree.problems(trusted=trusted), path) == [
        f"{path} is owned by uid {path.stat().st_uid}, not root"]


@pytest.mark.parametrize(("mode", "words"), [(0o775, "writable by group"),
                                             (0o757, "world-writable")])
def test_a_writable_interpreter_is_flagged(tree: Tree, mode: int, words: str) -> None:
    tree.python.chmod(mode)
    [problem] = tree.problems()
    assert problem.startswith(f"{tree.python} ") and words in problem


@pytest.mark.parametrize("level", [1, 2, 3])
def test_a_writable_directory_above_the_interpreter_is_flagged(tree: Tree, level: int) -> None:
    """bin, py, or the tree's root: whoever can write there can swap what lies below."""
    directory = tree.python.parents[level - 1]
    directory.chmod(0o777)
    assert flagged(tree.problems(), directory) != []


def test_a_sticky_directory_on_the_way_is_fine_but_not_as_an_import_dir(tree: Tree) -> None:
    tree.root.chmod(0o1777)  # like /tmp: nobody can replace py/ in it
    assert tree.problems() == []
    tree.site.chmod(0o1777)  # but anyone could add a module or a .pth file to site-packages
    assert flagged(tree.problems(), tree.site) != []


def test_a_symlinked_interpreter_is_judged_where_the_link_lies_and_where_it_points(
        tree: Tree) -> None:
    venv = tree.root / "venv" / "bin"
    venv.mkdir(parents=True)
    link = venv / "python"
    link.symlink_to(tree.python)
    assert tree.problems(link) == []
    venv.chmod(0o777)  # the link could be pointed elsewhere
    assert flagged(tree.problems(link), venv) != []
    venv.chmod(0o755)
    tree.python.parent.chmod(0o777)  # the target could be replaced
    assert flagged(tree.problems(link), tree.python.parent) != []


@pytest.mark.parametrize("part", ["plugin", "cni", "pth"])
def test_writable_weft_files_and_import_dirs_are_flagged(tree: Tree, part: str) -> None:
    path = {"plugin": tree.package / "cni" / "plugin.py", "cni": tree.package / "cni",
            "pth": tree.site / "x.pth"}[part]
    path.chmod(0o777 if path.is_dir() else 0o666)
    assert flagged(tree.problems(), path) != []


def test_whoever_can_create_a_missing_import_path_is_flagged(tree: Tree) -> None:
    """py/lib/py.zip is on sys.path but absent (as python3XX.zip usually is): anyone who can
    create it runs code at the next start, sticky directory or not."""
    lib = tree.root / "py" / "lib"
    lib.chmod(0o1777)
    assert flagged(tree.problems(), lib) != []


# --- install and the CLI --------------------------------------------------------------------

def test_install_refuses_an_unsafe_tree_unless_forced(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(install, "unsafe_paths", lambda *a, **k: ["/x is world-writable"])
    with pytest.raises(install.InstallRefused, match="(?s)/x is world-writable.*--force"):
        install.install(str(tmp_path / "net.d"), str(tmp_path / "bin"))
    assert not (tmp_path / "bin").exists() and not (tmp_path / "net.d").exists()
    warnings: list[str] = []
    install.install(str(tmp_path / "net.d"), str(tmp_path / "bin"), force=True,
                    warn=warnings.append)
    assert warnings == ["/x is world-writable (installing anyway: --force)"]
    assert os.access(tmp_path / "bin" / "weft", os.X_OK)


def test_install_refuses_a_bad_shebang_even_when_forced(tmp_path: Path) -> None:
    with pytest.raises(install.InstallRefused, match="whitespace"):
        install.install(str(tmp_path / "net.d"), str(tmp_path / "bin"), python="/a b/python",
                        force=True)
    assert not (tmp_path / "bin").exists()


def test_install_refuses_a_python_that_cannot_import_weft(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'No module named weft' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(install.InstallRefused, match="cannot import weft.cni.plugin"):
        install.install(str(tmp_path / "net.d"), str(tmp_path / "bin"), python=str(fake),
                        force=True)


def cni_install(tmp_path: Path, *extra: str) -> int:
    return cli(["cni", "install", "--conf-dir", str(tmp_path / "c"), "--bin-dir",
                str(tmp_path / "b"), *extra])


def test_cli_exits_2_on_an_interpreter_path_a_shebang_cannot_hold(tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    monkeypatch.setattr(sys, "executable", "/opt/my python/bin/python3")
    assert cni_install(tmp_path) == 2
    assert "whitespace" in capsys.readouterr().err
    assert cni_install(tmp_path, "--force") == 2  # --force cannot make it work


def test_cli_exits_2_on_an_unsafe_tree_and_force_installs_with_warnings(
        tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(install, "unsafe_paths", lambda *a, **k: ["/venv is owned by uid 1000"])
    assert cni_install(tmp_path) == 2
    err = capsys.readouterr().err
    assert "/venv is owned by uid 1000" in err and "--force" in err
    assert not (tmp_path / "b").exists()
    assert cni_install(tmp_path, "--force") == 0
    assert "warning: /venv is owned by uid 1000" in capsys.readouterr().err
    assert os.access(tmp_path / "b" / "weft", os.X_OK)
