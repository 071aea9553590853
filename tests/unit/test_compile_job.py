"""weft.drivers.compile_job: each stage compiles once per version, whoever asks at the same time;
markers name the stamp of the code they were compiled from."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from weft import jitcache
from weft.drivers import compile_job


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    return tmp_path


def _fake_compilers(monkeypatch: pytest.MonkeyPatch, seconds: float = 0.0) -> list[str]:
    calls: list[str] = []

    def compiler(stage: str):
        def run() -> None:
            calls.append(stage)
            time.sleep(seconds)
        return run

    monkeypatch.setattr(compile_job, "_COMPILERS",
                        {stage: compiler(stage) for stage in compile_job.STAGES})
    return calls


def test_a_stage_compiles_once_then_is_found_in_the_cache(cache: Path, monkeypatch) -> None:
    calls = _fake_compilers(monkeypatch)
    ready: list[str] = []
    took = compile_job.compile_datapath(on_ready=ready.append)
    assert calls == list(compile_job.STAGES) == ready
    assert set(took) == set(compile_job.STAGES)
    assert compile_job.is_compiled(compile_job.STEPS) and compile_job.is_compiled()
    assert compile_job.compile_datapath() == dict.fromkeys(compile_job.STAGES, 0.0)
    assert calls == list(compile_job.STAGES)  # nothing compiled the second time


def test_processes_asking_together_compile_each_stage_once(cache: Path, monkeypatch) -> None:
    calls = _fake_compilers(monkeypatch, seconds=0.3)
    said: list[str] = []
    # flock excludes open file descriptions, so threads that each open the lock contend as
    # processes would.
    askers = [threading.Thread(target=compile_job.compile_datapath, args=(said.append,))
              for _ in range(3)]
    for t in askers:
        t.start()
    for t in askers:
        t.join()
    assert sorted(calls) == sorted(compile_job.STAGES)
    assert any("another process is compiling" in line for line in said), said


def test_an_edited_source_makes_the_stage_cold_again(cache: Path, monkeypatch,
                                                     tmp_path: Path) -> None:
    _fake_compilers(monkeypatch)
    source = tmp_path / "kernel.py"
    source.write_text("x = 1\n")
    monkeypatch.setattr(jitcache, "stamp_files", lambda path: (str(source),))
    compile_job.compile_datapath()
    assert compile_job.is_compiled()
    source.write_text("x = 22\n")  # another size (and mtime): what numba's staleness sees
    assert not compile_job.is_compiled()


def test_no_writable_cache_compiles_unshared_and_marks_nothing(monkeypatch,
                                                               tmp_path: Path) -> None:
    calls = _fake_compilers(monkeypatch)
    monkeypatch.setattr(compile_job, "marker_dir", lambda: None)
    compile_job.compile_datapath()
    compile_job.compile_datapath()
    assert calls == list(compile_job.STAGES) * 2
    assert not compile_job.is_compiled()


def test_the_cache_root_follows_numba_cache_dir(cache: Path, monkeypatch) -> None:
    assert jitcache.cache_root() == str(cache)
    assert compile_job.marker_dir() == str(cache)
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert jitcache.cache_root() == os.path.join(jitcache.package_root(), "__pycache__")
