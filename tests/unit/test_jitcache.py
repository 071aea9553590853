"""weft.jitcache: a compiled function's cache is stale when any weft file it depends on changed."""

from __future__ import annotations

import os
import re
from pathlib import Path

from weft import jitcache

ROOT = Path(jitcache.__file__).resolve().parent  # switch/, the weft package


def _rel(paths) -> set[str]:
    return {str(Path(p).relative_to(ROOT)) for p in paths}


def test_every_cached_kernel_module_installs_the_locator_first() -> None:
    """numba picks the locator when @njit(cache=True) runs: a module that does not import
    weft.jitcache before its first one would be stamped with its own file only."""
    decorator = re.compile(r"^@njit\(.*cache=True", re.M)
    modules = [path for path in ROOT.rglob("*.py") if decorator.search(path.read_text())]
    assert len(modules) >= 10  # fastpath, steps, wirebytes, the offload kernels, the loops
    for path in modules:
        text = path.read_text()
        first = decorator.search(text)
        assert "from weft import jitcache" in text[: first.start()], path


def test_the_compiled_loops_depend_on_everything_compiled_into_them() -> None:
    deps = _rel(jitcache.dependencies(str(ROOT / "drivers" / "compiled_loops.py")))
    assert {"drivers/compiled_loops.py", "drivers/libc.py", "drivers/loop_syscalls.py",
            "drivers/udpgso.py", "dev/udpopts.py", "packet/pipeline_steps.py", "packet/fastpath.py",
            "packet/headers.py", "packet/table.py", "packet/reasons.py", "packet/wirebytes.py",
            "packet/offload/tso_split.py", "packet/offload/gro_coalesce.py",
            "packet/offload/udp_gro.py",
            "packet/offload/tunnel.py", "packet/offload/tso.py",
            "packet/offload/vnet_hdr.py"} <= deps


def test_a_kernel_does_not_depend_on_what_it_does_not_import() -> None:
    """An edit of a twin, the slow path or the drivers recompiles no fastpath kernel."""
    deps = _rel(jitcache.dependencies(str(ROOT / "packet" / "fastpath.py")))
    assert "packet/headers.py" in deps and "packet/table.py" in deps
    assert not any(d.startswith("drivers/") for d in deps), deps
    assert not {"packet/fastpath_twin.py", "packet/slowpath.py", "packet/pipeline.py"} & deps
    tunnel = _rel(jitcache.dependencies(str(ROOT / "packet" / "offload" / "tunnel.py")))
    assert "packet/fastpath.py" in tunnel  # its kernels run the fastpath's on a first segment
    assert "packet/offload/tunnel_twin.py" not in tunnel


def test_a_name_a_package_reexports_counts_the_whole_package(tmp_path: Path) -> None:
    user = tmp_path / "user.py"
    user.write_text("def f():\n    from weft.packet.offload import (split_super,\n"
                    "        coalesce)\n")
    deps = _rel(jitcache._imported(str(user)))
    assert {"packet/offload/tso_split.py", "packet/offload/gro_coalesce.py",
            "packet/offload/__init__.py"} <= deps


def test_kernels_are_stamped_with_their_dependencies() -> None:
    from weft.packet.offload import tunnel

    locator = tunnel.encap_super._cache._impl._locator
    assert isinstance(locator, jitcache._DependentStamp)
    stamp = locator.get_source_stamp()
    files = jitcache.stamp_files(os.path.abspath(tunnel.__file__))
    assert set(jitcache.dependencies(os.path.abspath(tunnel.__file__))) <= set(files)
    assert [entry[0] for entry in stamp] == [os.path.relpath(f, ROOT) for f in files]
    assert all(entry[1:] == (os.stat(f).st_mtime, os.stat(f).st_size)
               for entry, f in zip(stamp, files, strict=True))


def test_argument_groups_are_in_every_stamp() -> None:
    """numba keys its cache by a NamedTuple's class name and field types, not field names: a
    swap of two int64 arrays in IngressIO must still recompile the loops that take it."""
    groups = _rel(jitcache.argument_groups())
    assert {"packet/pipeline_steps.py", "drivers/loop_args.py"} <= groups
    assert "control/lease_manager.py" not in groups  # a NamedTuple, but no arrays for numba
    loops = _rel(jitcache.stamp_files(str(ROOT / "drivers" / "compiled_loops.py")))
    gro = _rel(jitcache.stamp_files(str(ROOT / "packet" / "offload" / "udp_gro.py")))
    assert "drivers/loop_args.py" in loops and "drivers/loop_args.py" in gro


def test_an_index_naming_a_module_that_is_gone_is_stale(monkeypatch):
    """After a rename (weft.drivers.scratch -> loop_args) an old cache index unpickles classes
    from a module that no longer exists: that must mean "compile again", not a crash."""
    from numba.core import caching

    from weft import jitcache

    assert caching.IndexDataCacheFile._load_index is jitcache._load_index_or_stale

    def gone(_self):
        raise ModuleNotFoundError("No module named 'weft.drivers.scratch'")

    monkeypatch.setattr(jitcache, "_load_index", gone)
    assert jitcache._load_index_or_stale(object()) == {}
    monkeypatch.setattr(jitcache, "_load_index", lambda _self: {"sig": "entry"})
    assert jitcache._load_index_or_stale(object()) == {"sig": "entry"}
