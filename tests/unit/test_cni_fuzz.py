"""weft-cni under hostile input: whatever a runtime (or a broken conf) hands it, the answer is
one CNI JSON object on stdout (a result, or an error with the spec's code) and an exit status
that matches, never a traceback. A runtime shows the plugin's stdout to the user and parses it;
a traceback there is an unparseable, unexplained failure.

No networking happens here: the delegates are tiny shell scripts in temp dirs (CNI_PATH points
only at those), the subnet file and dataDir are temp files, and every absolute path the
strategies produce lies under the temp dir.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.cni import plugin, subnet_file, versions
from weft.cni.errors import INTERNAL_ERROR, CniError

SUBNET_ENV = ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.15.1/24\nFLANNEL_MTU=1450\n"
              "FLANNEL_IPMASQ=false\n")
RESULT = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.15.2/24"}]}
ERROR_KEYS = {"cniVersion", "code", "msg", "details"}
# Delegates (all named bridge, the default delegate type), one bin dir each: a good one and
# ones whose answers are broken in the ways a plugin's can be.
DELEGATES = {
    "good": f"#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && echo '{json.dumps(RESULT)}'"
            "\nexit 0\n",
    "list": "#!/bin/sh\ncat >/dev/null\necho '[1, 2]'\n",
    "deep": "#!/bin/sh\ncat >/dev/null\nhead -c 100000 /dev/zero | tr '\\0' '['\n",
    "nan": "#!/bin/sh\ncat >/dev/null\necho '{\"cniVersion\": \"1.0.0\", \"mtu\": NaN}'\n",
    "bad-error": "#!/bin/sh\ncat >/dev/null\necho '{\"code\": 1e400, \"msg\": [1]}'\nexit 1\n",
    "deep-error": "#!/bin/sh\ncat >/dev/null\nhead -c 100000 /dev/zero | tr '\\0' '['\nexit 1\n",
    "silent-fail": "#!/bin/sh\nexit 3\n",
    "not-a-program": "\x7fELF garbage that no kernel can exec\n",
}
# Saved per-container confs a crash, a disk error or a hand edit can leave behind.
SAVED = {"saved-list": "[1]", "saved-broken": "{", "saved-notype": "{}",
         "saved-deep": "[" * 100_000, "saved-nan": '{"type": "bridge", "mtu": NaN}',
         "saved-badtype": '{"type": ["bridge"]}', "saved-latin1": b'{"type": "br\xe9"}'}


@dataclass(frozen=True)
class Sandbox:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def subnet(self) -> Path:
        return self.root / "subnet.env"

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    def reset_saved(self) -> None:
        for name, content in SAVED.items():
            path = self.data / name
            path.write_bytes(content if isinstance(content, bytes) else content.encode())


def make_sandbox(root: Path) -> Sandbox:
    box = Sandbox(root)
    box.subnet.write_text(SUBNET_ENV)
    (root / "latin1.env").write_bytes(SUBNET_ENV.encode() + b"FLANNEL_X=\xff\n")
    (root / "garbage.env").write_text("FLANNEL_SUBNET=10.1.15.1/99\n")
    (root / "huge.env").write_text("FLANNEL_MTU=" + "9" * 10_000 + "\n")
    (root / "adir").mkdir()
    (root / "afile").write_text("")
    (root / "bin" / "empty").mkdir(parents=True)
    for name, script in DELEGATES.items():
        box.bin(name).mkdir()
        (box.bin(name) / "bridge").write_text(script)
        (box.bin(name) / "bridge").chmod(0o755)
    box.data.mkdir()
    box.reset_saved()
    return box


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> Sandbox:
    return make_sandbox(tmp_path_factory.mktemp("cni-fuzz"))


# --- what the plugin must answer ------------------------------------------------------------

def strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def assert_cni_answer(command: object, code: int, out: str, err: str) -> dict | None:
    """The plugin's answer obeys CNI's exec protocol; returns the printed object, if any."""
    assert err == "", err
    assert code in (0, 1), code
    if code == 0 and out == "" and command in ("DEL", "CHECK"):
        return None  # success without a result: what DEL and CHECK print
    assert out.endswith("\n") and out.count("\n") == 1, out[:500]
    answer = strict_json(out)
    assert isinstance(answer, dict), answer
    assert isinstance(answer.get("cniVersion"), str), answer
    if code == 0:
        assert "code" not in answer and command in ("ADD", "VERSION"), (command, answer)
        return answer
    assert set(answer) <= ERROR_KEYS and {"cniVersion", "code", "msg"} <= set(answer), answer
    assert type(answer["code"]) is int and isinstance(answer["msg"], str) and answer["msg"]
    assert isinstance(answer.get("details", ""), str)
    # 999 is the last-resort catch: a well-known code is always the right answer to bad input.
    assert answer["code"] != INTERNAL_ERROR, answer
    return answer


def run_in_process(stdin: bytes, env: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = plugin.main(io.BytesIO(stdin), out, env)
    return code, out.getvalue(), err.getvalue()


PLUGIN = "import sys\nfrom weft.cni.plugin import main\nsys.exit(main())\n"


def run_subprocess(stdin: bytes, env: dict[str, str]) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-I", "-c", PLUGIN], input=stdin, env=env,
                          capture_output=True, timeout=60, check=False)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode(errors="replace")


# --- strategies -----------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
# An env variable is bytes: anything but NUL, decoded as os.environ decodes it.
ENV_TEXT = (st.binary(max_size=24).filter(lambda b: b"\0" not in b)
            .map(lambda b: b.decode("utf-8", "surrogateescape")))
COMMANDS = st.sampled_from(["ADD", "DEL", "CHECK", "VERSION"])
IDS = st.sampled_from(["c1", "c2", "0ab-9_x.y", *SAVED]) | st.sampled_from(
    ["", ".", "..", "../c1", "c1/x", "/c1", ".c1", "-c1", "c1\n", "x" * 300, "é"]) | ENV_TEXT


def relative_paths() -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="ascii", exclude_characters="/\0"), max_size=8)


def path_values(box: Sandbox, good: str, extra: list[str]) -> st.SearchStrategy[object]:
    """A path conf key: the good path, bad paths under the temp dir, relative ones, non-strings."""
    root = str(box.root)
    odd = [f"{root}/adir", f"{root}/afile", f"{root}/afile/below", f"{root}/missing/x",
           f"{root}/nul\0byte", f"{root}/lone\ud800surrogate", f"{root}/{'n' * 300}", *extra]
    return st.one_of(st.just(good), st.sampled_from(odd), relative_paths(), SCALARS, JSON)


def confs(box: Sandbox) -> st.SearchStrategy[dict]:
    root = str(box.root)
    subnet_files = [f"{root}/latin1.env", f"{root}/garbage.env", f"{root}/huge.env"]
    valid = {
        "cniVersion": st.sampled_from(versions.SUPPORTED) | JSON,
        "name": st.just("cbr0") | JSON,
        "type": st.sampled_from(["weft", "flannel"]) | JSON,
        "delegate": st.fixed_dictionaries({}, optional={
            "type": st.just("bridge") | JSON, "ipam": JSON, "mtu": JSON,
            "hairpinMode": st.booleans()}) | JSON,
        "ipam": st.fixed_dictionaries({}, optional={"routes": JSON, "type": JSON}) | JSON,
        "subnetFile": path_values(box, str(box.subnet), subnet_files),
        "runtimeConfig": st.just({"portMappings": []}) | JSON,
        "prevResult": st.just(RESULT) | JSON,
        "args": JSON,
    }
    # dataDir is always there: the default is the host's real /var/lib/cni/weft.
    return st.fixed_dictionaries({"dataDir": path_values(box, str(box.data), [])},
                                 optional=valid)


def stdins(box: Sandbox) -> st.SearchStrategy[bytes]:
    as_json = st.builds(lambda v: json.dumps(v).encode(), confs(box) | JSON)
    spliced = st.builds(lambda v, junk: json.dumps(v).encode()[:-1] + junk + b"}", confs(box),
                        st.binary(min_size=1, max_size=8))
    deep = st.builds(lambda n, open_: (open_ * n).encode(), st.integers(1, 3000),
                     st.sampled_from(["[", '{"a":', '{"delegate":']))
    return st.one_of(as_json, as_json, spliced, deep, st.binary(max_size=64))


def environs(box: Sandbox) -> st.SearchStrategy[dict]:
    bins = [str(box.bin(name)) for name in DELEGATES]
    cni_path = (st.sampled_from([str(box.bin("empty")), *bins, f"{box.bin('empty')}:{bins[0]}",
                                 f"/nonexistent:{box.root}/afile:{bins[0]}"]) | ENV_TEXT)

    def var(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
        return st.one_of(valid, valid, st.none(), st.just(""), ENV_TEXT)

    return st.fixed_dictionaries({
        "CNI_COMMAND": var(COMMANDS), "CNI_CONTAINERID": var(IDS),
        "CNI_NETNS": var(st.just("/var/run/netns/x")), "CNI_IFNAME": var(st.just("eth0")),
        "CNI_ARGS": var(st.just("IgnoreUnknown=1")), "CNI_PATH": var(cni_path),
    }).map(lambda env: {"PATH": "/usr/bin:/bin",
                        **{key: value for key, value in env.items() if value is not None}})


# --- the tests ------------------------------------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_any_stdin_and_environment_gets_a_cni_answer(box: Sandbox, tmp_path: Path) -> None:
    stdin_strategy, env_strategy = stdins(box), environs(box)

    @FUZZ
    @given(stdin=stdin_strategy, env=env_strategy)
    def check(stdin: bytes, env: dict[str, str]) -> None:
        box.reset_saved()
        code, out, err = run_in_process(stdin, env)
        assert_cni_answer(env.get("CNI_COMMAND"), code, out, err)

    # A relative dataDir or subnetFile must not land anywhere, whatever happens to it.
    with contextlib.chdir(tmp_path):
        check()
    assert [p.name for p in tmp_path.iterdir() if p.name != ".hypothesis"] == []


def test_a_good_conf_still_gets_a_result(box: Sandbox) -> None:
    """The fuzzing above must not pass by refusing everything: the good path answers."""
    conf = {"cniVersion": "1.0.0", "name": "cbr0", "type": "weft", "subnetFile": str(box.subnet),
            "dataDir": str(box.data)}
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "good1",
           "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0", "CNI_PATH": str(box.bin("good"))}
    code, out, err = run_in_process(json.dumps(conf).encode(), env)
    assert assert_cni_answer("ADD", code, out, err) == RESULT
    code, out, err = run_in_process(json.dumps(conf).encode(), {**env, "CNI_COMMAND": "DEL"})
    assert assert_cni_answer("DEL", code, out, err) is None and code == 0


def base_env(box: Sandbox, command: str = "ADD", container: str = "c1",
             bin_name: str = "good") -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container,
            "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
            "CNI_PATH": str(box.bin(bin_name))}


def good_conf(box: Sandbox, **over: object) -> dict:
    return {"cniVersion": "1.0.0", "name": "cbr0", "type": "weft",
            "subnetFile": str(box.subnet), "dataDir": str(box.data), **over}


@pytest.mark.parametrize(("stdin", "code"), [
    pytest.param(b"[" * 100_000, 6, id="deep-list"),
    pytest.param(b'{"a":' * 100_000, 6, id="deep-object"),
    pytest.param(b'{"cniVersion": "1.0.0", "name": "cbr0", "delegate": ' + b"[" * 100_000, 6,
                 id="deep-delegate"),
    pytest.param(b'{"cniVersion": "1.0.0", "name": "\xff\xfe"}', 6, id="not-utf-8"),
    pytest.param(b'{"cniVersion": "1.0.0", "name": "cbr0", "mtu": ' + b"9" * 10_000 + b"}", 6,
                 id="huge-int"),
    pytest.param(b'{"cniVersion": "1.0.0", "name": "cbr0", "mtu": 1e400}', 6, id="huge-float"),
    pytest.param(b'{"cniVersion": "1.0.0", "name": "cbr0", "mtu": NaN}', 6, id="nan"),
])
def test_hostile_stdin_in_a_real_process(box: Sandbox, stdin: bytes, code: int) -> None:
    """The real process: sys.stdin's bytes, the interpreter's own recursion limit and stderr."""
    status, out, err = run_subprocess(stdin, base_env(box))
    assert assert_cni_answer("ADD", status, out, err)["code"] == code


@pytest.mark.parametrize("depth", [200, 900, 990])
def test_a_conf_nested_just_below_the_json_limit(box: Sandbox, depth: int) -> None:
    """Deep enough to decode, deep enough to break whatever recurses on it later."""
    nested = "[" * depth + "]" * depth
    stdin = json.dumps(good_conf(box)).encode()[:-1] + f', "delegate": {{"x": {nested}}}}}'.encode()
    status, out, err = run_subprocess(stdin, base_env(box))
    assert assert_cni_answer("ADD", status, out, err)["code"] == 6


@pytest.mark.parametrize(("container", "code"), [
    ("saved-list", 6), ("saved-broken", 6), ("saved-notype", 6), ("saved-deep", 6),
    ("saved-nan", 6), ("saved-badtype", 6), ("saved-latin1", 6),
])
@pytest.mark.parametrize("command", ["DEL", "CHECK"])
def test_a_broken_saved_conf_is_a_decoding_failure(box: Sandbox, container: str, code: int,
                                                   command: str) -> None:
    box.reset_saved()
    stdin = json.dumps(good_conf(box)).encode()
    status, out, err = run_in_process(stdin, base_env(box, command, container))
    answer = assert_cni_answer(command, status, out, err)
    assert answer["code"] == code and container in answer["msg"], answer


@pytest.mark.parametrize(("bin_name", "code"), [
    ("list", 6), ("deep", 6), ("nan", 6), ("bad-error", 5), ("deep-error", 5),
    ("silent-fail", 5), ("not-a-program", 5),
])
def test_a_broken_delegate_is_reported_not_crashed_on(box: Sandbox, bin_name: str,
                                                      code: int) -> None:
    stdin = json.dumps(good_conf(box)).encode()
    status, out, err = run_in_process(stdin, base_env(box, "ADD", f"d-{bin_name}", bin_name))
    assert assert_cni_answer("ADD", status, out, err)["code"] == code


@pytest.mark.parametrize(("key", "value", "code"), [
    ("dataDir", "relative/dir", 7), ("dataDir", "/x\0y", 7), ("dataDir", 5, 7),
    ("subnetFile", "relative.env", 7), ("subnetFile", "/x\ud800", 7), ("subnetFile", [], 7),
    ("delegate", [], 7), ("delegate", 0, 7), ("ipam", "", 7), ("prevResult", [RESULT], 7),
    ("name", 7, 7), ("cniVersion", ["1.0.0"], 1),
])
def test_wrong_types_of_conf_keys_are_named(box: Sandbox, key: str, value: object,
                                            code: int, tmp_path: Path) -> None:
    command = "CHECK" if key == "prevResult" else "ADD"
    stdin = json.dumps(good_conf(box, **{key: value})).encode()
    with contextlib.chdir(tmp_path):  # where a relative path would land
        status, out, err = run_in_process(stdin, base_env(box, command, "typed"))
    assert list(tmp_path.iterdir()) == []
    answer = assert_cni_answer(command, status, out, err)
    assert answer["code"] == code and key in answer["msg"], answer


@pytest.mark.parametrize("container", ["", ".", "..", "../c1", "c1/x", ".hidden", "-x",
                                       pytest.param("x" * 300, id="long"), "é", "c1\n"])
def test_odd_container_ids_are_invalid_env(box: Sandbox, container: str) -> None:
    stdin = json.dumps(good_conf(box)).encode()
    before = set(box.data.iterdir())
    status, out, err = run_in_process(stdin, base_env(box, "ADD", container))
    answer = assert_cni_answer("ADD", status, out, err)
    assert answer["code"] == 4 and "CNI_CONTAINERID" in answer["msg"], answer
    assert set(box.data.iterdir()) == before and not (box.root / "c1").exists()


def test_any_subnet_file_parses_or_is_a_cni_error(box: Sandbox) -> None:
    path = box.root / "fuzzed.env"

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200) | st.builds(lambda extra: SUBNET_ENV.encode() + extra,
                                                st.binary(max_size=40)))
    def check(content: bytes) -> None:
        path.write_bytes(content)
        try:
            subnet_file.load(str(path))
        except CniError as err:
            assert err.code == 6 and err.msg

    check()


def test_a_bug_of_ours_is_still_a_cni_answer(box: Sandbox, monkeypatch) -> None:
    """The last resort: an exception nobody foresaw becomes error 999 (libcni's internal
    error) with where it happened, not a traceback."""
    def broken(conf: dict, env: object) -> dict:
        raise KeyError("surprise")

    monkeypatch.setattr(plugin.delegate, "render", broken)
    status, out, err = run_in_process(json.dumps(good_conf(box)).encode(),
                                      base_env(box, "ADD", "bug"))
    assert (status, err) == (1, "")
    answer = strict_json(out)
    assert answer["code"] == INTERNAL_ERROR and "KeyError" in answer["msg"], answer
    assert "in broken" in answer["details"], answer
