"""Mutation check: break what the suite must notice, one thing at a time, and see it fail.

    python tests/mutation_check.py            # every mutation, kernels run as Python
    python tests/mutation_check.py --jit      # the kernels compiled, as in production
    python tests/mutation_check.py ttl-decrement

Each mutation replaces one snippet of the source (found by its text, wherever it lives now
under switch/ or backends/, so it follows the code when files move) and runs the test files
that must catch it, each on its own: "caught" when pytest reports failures, "survived" when
everything passes. Before any mutation, those files must pass on the unmutated tree. The source
is restored afterwards, modification time included (numba's cache keys on it), whatever
happens. It edits the checkout in place: run nothing else from this tree meanwhile.

Not collected by pytest (no test_ prefix); a tool for whoever changes the kernels, the
backends or the registry, and for the closing note of a refactor. Exit status 0 when every
mutation is caught, 1 otherwise (2 when a mutation no longer applies: update it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("switch", "backends")
# The kernels against their twins and scapy, and the two-host test through a whole path.
# (test_packet checks the twins, which these mutations leave alone.)
KERNEL_TESTS = ("tests/unit/test_fastpath.py", "tests/unit/test_two_hosts.py")


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    original: str  # exact text, found exactly once under SOURCES
    mutated: str
    tests: tuple[str, ...]  # each must fail with the mutation


MUTATIONS = (
    Mutation(
        "vni-check",
        "VXLAN ingress accepts any VNI",
        "    if (_u32(b, h + 4) >> 8) != cfg[CFG_VNI]:\n        return _DROP, _WRONG_VNI,",
        "    if False:\n        return _DROP, _WRONG_VNI,",
        KERNEL_TESTS,
    ),
    Mutation(
        "vni-encap",
        "VXLAN egress writes the VNI off by one",
        "    b[x + 6] = vni & 0xFF\n",
        "    b[x + 6] = (vni + 1) & 0xFF\n",
        KERNEL_TESTS,
    ),
    Mutation(
        "lease-vni-check",
        "the vxlan backend programs a peer whose lease has another VNI",
        "    if lease.attrs.vni not in (None, vni):",
        "    if False:",
        ("tests/unit/test_two_hosts.py",),
    ),
    Mutation(
        "ttl-decrement",
        "the udp kernels forward without taking one from the TTL",
        "    b[ip + 8] = ttl - 1\n",
        "    b[ip + 8] = ttl\n",
        KERNEL_TESTS,
    ),
    Mutation(
        "etcd-create-txn",
        "creating a lease no longer checks that the key is absent (overwrites another's)",
        "compare=[tx.version(key) == 0],\n            success=[tx.put(key, attrs.to_json(), "
        "lease=grant.id)],",
        "compare=[],\n            success=[tx.put(key, attrs.to_json(), lease=grant.id)],",
        ("tests/etcd/test_etcd_contract.py", "tests/etcd/test_etcd_registry.py"),
    ),
)


class NotApplicable(RuntimeError):
    pass


def locate(snippet: str) -> Path:
    """The one source file holding `snippet`, which it holds once."""
    found = []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            found += [path] * path.read_text().count(snippet)
    if len(found) != 1:
        where = ", ".join(str(p.relative_to(ROOT)) for p in found) or "nowhere"
        raise NotApplicable(f"the snippet occurs {len(found)} times ({where}): "
                            f"{snippet.splitlines()[0].strip()!r}")
    return found[0]


def run_tests(path: str, jit: bool, first_failure: bool = True) -> tuple[int, list[str]]:
    """pytest's exit status on one test file, and the tests that failed."""
    env = {**os.environ, "NUMBA_DISABLE_JIT": "0" if jit else "1"}
    env.pop("CI", None)  # a test that skips itself here (compiled-only) is not a failure
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", path,
         *(["-x"] if first_failure else [])],
        cwd=ROOT, env=env, capture_output=True, text=True)
    failed = [line.split(" - ")[0] for line in result.stdout.splitlines()
              if line.startswith(("FAILED ", "ERROR "))]
    return result.returncode, failed


def verdict(code: int) -> str:
    return {0: "survived", 1: "caught"}.get(code, f"error (pytest exit {code})")


def check(mutation: Mutation, jit: bool, every_failure: bool) -> bool:
    path = locate(mutation.original)
    text = path.read_text()
    stat = path.stat()
    print(f"{mutation.name}: {mutation.what}\n  in {path.relative_to(ROOT)}", flush=True)
    path.write_text(text.replace(mutation.original, mutation.mutated))
    try:
        caught = False
        for tests in mutation.tests:
            started = time.monotonic()
            code, failed = run_tests(tests, jit, first_failure=not every_failure)
            caught |= code == 1
            print(f"  {verdict(code):<9} {tests}  ({time.monotonic() - started:.0f} s)",
                  flush=True)
            for name in failed:
                print(f"              {name}")
    finally:
        path.write_text(text)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    print(f"  => {'CAUGHT' if caught else 'SURVIVED'}")
    return caught


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all): "
                        + ", ".join(m.name for m in MUTATIONS))
    parser.add_argument("--jit", action="store_true",
                        help="run the kernels compiled (slower: each mutation recompiles)")
    parser.add_argument("--every-failure", action="store_true",
                        help="run each file to the end and list every test that fails "
                        "(default: stop at the first)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
    try:
        for mutation in chosen:
            locate(mutation.original)
    except NotApplicable as exc:
        print(f"mutation no longer applies: {exc}", file=sys.stderr)
        return 2
    for tests in sorted({t for m in chosen for t in m.tests}):
        code, _ = run_tests(tests, args.jit)
        if code != 0:
            print(f"{tests} fails before any mutation ({verdict(code)}): fix that first",
                  file=sys.stderr)
            return 1
    results = {m.name: check(m, args.jit, args.every_failure) for m in chosen}
    survived = [name for name, caught in results.items() if not caught]
    print(f"\n{len(results) - len(survived)} of {len(results)} mutations caught"
          + (f"; survived: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
