"""The rendered delegate conf, kept per container so DEL replays exactly what ADD ran.

subnet.env may change between ADD and DEL (a new lease, another MTU); DEL must still release
the address from the range ADD took it from, so it uses the saved conf, not a fresh render.
"""

from __future__ import annotations

import json
import os
import tempfile

from weft.cni.errors import DECODING_FAILURE, INVALID_ENV, IO_FAILURE, CniError


def path_of(data_dir: str, container_id: str) -> str:
    if "/" in container_id or container_id in ("", ".", ".."):
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID {container_id!r} is not a valid id")
    return os.path.join(data_dir, container_id)


def save(data_dir: str, container_id: str, delegate: dict) -> None:
    """Write atomically (concurrent ADDs and a crash never leave half a file)."""
    path = path_of(data_dir, container_id)
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{container_id}.", dir=data_dir)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(delegate, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot save the delegate conf in {data_dir}: "
                                   f"{exc.strerror} (conf key dataDir)") from None


def load(data_dir: str, container_id: str) -> dict | None:
    """The saved delegate conf, None if there is none (never added, or already deleted)."""
    path = path_of(data_dir, container_id)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CniError(DECODING_FAILURE, f"{path} is not JSON ({exc}); remove it by hand "
                                         f"after cleaning up the container's network") from None


def remove(data_dir: str, container_id: str) -> None:
    try:
        os.unlink(path_of(data_dir, container_id))
    except FileNotFoundError:
        pass
