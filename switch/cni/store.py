"""The rendered delegate conf, kept per container so DEL replays exactly what ADD ran.

subnet.env may change between ADD and DEL (a new lease, another MTU); DEL must still release
the address from the range ADD took it from, so it uses the saved conf, not a fresh render.

Files in dataDir: <id> (the saved conf), .<id>.lock (the container's lock, see `locked`) and,
for a moment during a save, .<id>.<random> (the temp file). A container id starts with a letter
or digit, so no id's conf can collide with another's lock or temp file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator

from weft.cni import safejson
from weft.cni.errors import DECODING_FAILURE, INVALID_ENV, IO_FAILURE, CniError, shown

# The spec's container id: a letter or digit, then letters, digits, _ . -; so never a path.
CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# Runtimes use 64 hex digits; the cap keeps ".<id>.lock" and the temp file's name within
# NAME_MAX (255), so a long id is refused here rather than failing half-way through an ADD.
MAX_ID_LENGTH = 200


def path_of(data_dir: str, container_id: str) -> str:
    if len(container_id) > MAX_ID_LENGTH or not CONTAINER_ID.fullmatch(container_id):
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID {shown(container_id)!r} is not a valid "
                                    f"container id (a letter or digit, then letters, digits, "
                                    f"_ . -; at most {MAX_ID_LENGTH} characters)")
    return os.path.join(data_dir, container_id)


@contextlib.contextmanager
def locked(data_dir: str, container_id: str) -> Iterator[None]:
    """Hold the container's lock for the body: ADD, DEL and CHECK of one container run one at a
    time (a DEL racing an ADD would otherwise remove the conf the ADD just saved, leaving its
    interface and address behind with nothing to undo them).

    A lock file lives as long as its container's conf: on the way out, a holder that sees no
    conf (after DEL, a failed ADD, a CHECK of an unknown id) removes the lock file while still
    holding the lock, so lock files do not pile up. That is safe because `_acquire` checks,
    once it holds a lock, that the file it locked is still the one at the path: a waiter that
    opened the file before it was removed retries on the new one instead of running beside
    whoever locked that.
    """
    path = path_of(data_dir, container_id)
    lock_path = os.path.join(data_dir, f".{container_id}.lock")
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        fd = _acquire(lock_path)
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot lock {lock_path}: {exc.strerror} "
                                   f"(conf key dataDir)") from None
    try:
        yield
    finally:
        try:
            if not os.path.lexists(path):
                with contextlib.suppress(OSError):  # cleanup only: the lock is still correct
                    os.unlink(lock_path)
        finally:
            os.close(fd)


def _acquire(lock_path: str) -> int:
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_at(fd, lock_path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # locked a file the previous holder removed: lock the current one


def _is_at(fd: int, path: str) -> bool:
    held = os.fstat(fd)
    try:
        there = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def save(data_dir: str, container_id: str, delegate: dict) -> None:
    """Write atomically and durably: a crash never leaves half a file, and once ADD has
    answered the conf survives a power cut (else DEL would find nothing and leak the
    address). Temp file written and fsynced, renamed over, then the directory fsynced so the
    rename itself is on disk."""
    path = path_of(data_dir, container_id)
    text = json.dumps(delegate)
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{container_id}.", dir=data_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(data_dir)
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot save the delegate conf in {data_dir}: "
                                   f"{exc.strerror} (conf key dataDir)") from None


def load(data_dir: str, container_id: str) -> dict | None:
    """The saved delegate conf, None if there is none (never added, or already deleted)."""
    path = path_of(data_dir, container_id)
    try:
        with open(path, "rb") as f:
            saved = safejson.loads(f.read())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise _damaged(path, f"is not JSON ({shown(str(exc), 200)})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("type"), str) \
            or not saved["type"]:
        raise _damaged(path, "is not a saved delegate conf (a JSON object with a type)")
    return saved


def _damaged(path: str, what: str) -> CniError:
    return CniError(DECODING_FAILURE, f"{path} {what}; remove it by hand after cleaning up "
                                      f"the container's network")


def remove(data_dir: str, container_id: str) -> None:
    """Remove durably: once DEL has answered, the conf stays gone after a power cut too."""
    try:
        os.unlink(path_of(data_dir, container_id))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot remove the delegate conf in {data_dir}: "
                                   f"{exc.strerror}") from None
    try:
        _fsync_dir(data_dir)
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot sync {data_dir}: {exc.strerror}") from None


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
