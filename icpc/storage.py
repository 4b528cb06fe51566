"""One storage layer for every location: local paths, ``file://`` and fsspec URLs (``s3://``, ``gs://``, ...).

Everything the system reads or writes (inputs, shards, index tables, manifests, checkpoints,
thresholds) goes through these functions, so that a location is always a string and never a
``pathlib.Path`` (``Path("s3://b/x") / "y"`` silently becomes ``s3:/b/x/y``).

- Local paths and ``file://`` URLs use the operating system directly (``os.pread`` for range
  reads, temp file + fsync + rename for atomic writes).
- Any other scheme goes through fsspec (``s3fs`` for ``s3://``, ``gcsfs`` for ``gs://``; install
  the one you need). Endpoints and credentials come the standard way: ``AWS_ENDPOINT_URL``,
  ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE``, or the cloud SDK's own
  configuration, so one command works against AWS, GCS, MinIO or a test server.
- An object store has no rename: a write becomes visible in one piece when its single PUT (or
  multipart upload) completes, which is the atomicity a reader needs. Large objects are staged in
  a local temp file first and uploaded only when complete, so a crash never leaves half an object.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from typing import IO, Iterator, Sequence
from urllib.parse import urlparse

LOCAL_SCHEMES = ("", "file")


# ----------------------------------------------------------------------------- names


def scheme(location: str) -> str:
    """``"s3"`` for ``s3://b/k``; ``""`` for a plain path (a Windows drive letter is not a scheme)."""
    location = os.fspath(location)
    if "://" not in location:
        return ""
    return urlparse(location).scheme.lower()


def is_local(location: str) -> bool:
    return scheme(location) in LOCAL_SCHEMES


def local_path(location: str) -> str:
    """The OS path of a local location (``file:///x`` -> ``/x``); raises for a remote URL."""
    location = os.fspath(location)
    if scheme(location) == "file":
        return urlparse(location).path
    if scheme(location):
        raise ValueError(f"{location} is not a local path")
    return location


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a path or a URL (``join("s3://b/x", "y")`` -> ``"s3://b/x/y"``)."""
    base = os.fspath(base)
    if is_local(base) and not scheme(base):
        return os.path.join(base, *parts)
    out = base.rstrip("/")
    for p in parts:
        out += "/" + str(p).strip("/")
    return out


def basename(location: str) -> str:
    return os.fspath(location).rstrip("/").rsplit("/", 1)[-1]


def parent(location: str) -> str:
    location = os.fspath(location).rstrip("/")
    if is_local(location) and not scheme(location):
        return os.path.dirname(location) or "."
    return location.rsplit("/", 1)[0]


def absolute(location: str) -> str:
    """An absolute form of ``location`` that every process can open (local paths made absolute)."""
    location = os.fspath(location)
    return os.path.abspath(location) if not scheme(location) else location


def display(location: str) -> str:
    return os.fspath(location)


# ----------------------------------------------------------------------------- file systems


def filesystem(location: str):
    """(fsspec filesystem, path within it) of a remote URL."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(location)
    except ImportError as exc:
        raise ValueError(f"cannot open {location}: {exc} (e.g. pip install s3fs for s3://, gcsfs for gs://)") from None
    return fs, path


def exists(location: str) -> bool:
    if is_local(location):
        return os.path.exists(local_path(location))
    fs, path = filesystem(location)
    return fs.exists(path)


def is_dir(location: str) -> bool:
    if is_local(location):
        return os.path.isdir(local_path(location))
    fs, path = filesystem(location)
    return fs.isdir(path)


def is_file(location: str) -> bool:
    if is_local(location):
        return os.path.isfile(local_path(location))
    fs, path = filesystem(location)
    return fs.isfile(path)


def size(location: str) -> int:
    """Bytes of one file or object."""
    if is_local(location):
        return os.path.getsize(local_path(location))
    fs, path = filesystem(location)
    return int(fs.size(path))


def makedirs(location: str) -> None:
    """Create a folder (and its parents); nothing to do on an object store (prefixes need no creation)."""
    if is_local(location):
        os.makedirs(local_path(location), exist_ok=True)


def list_dir(location: str) -> list[str]:
    """Names (not paths) directly inside a folder or prefix, sorted; [] when it does not exist."""
    if is_local(location):
        path = local_path(location)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs, path = filesystem(location)
    try:
        return sorted(basename(p["name"]) for p in fs.ls(path, detail=True))
    except FileNotFoundError:
        return []


def glob(location: str, pattern: str) -> list[str]:
    """Locations of the entries directly inside ``location`` whose names match ``pattern``."""
    return [join(location, n) for n in list_dir(location) if fnmatch.fnmatchcase(n, pattern)]


def walk_files(location: str) -> Iterator[tuple[str, int]]:
    """(path relative to ``location`` with ``/`` separators, bytes) of every file below it, sorted."""
    if is_local(location):
        root = local_path(location)
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    yield os.path.relpath(path, root).replace(os.sep, "/"), os.path.getsize(path)
        return
    fs, path = filesystem(location)
    prefix = path.rstrip("/") + "/"
    for name, info in sorted(fs.find(path, detail=True).items()):
        if info.get("type") != "directory" and name.startswith(prefix):
            yield name[len(prefix):], int(info.get("size") or 0)


# ----------------------------------------------------------------------------- reading


def read_bytes(location: str, max_bytes: int | None = None) -> bytes:
    """The whole file; refused before reading when it is empty or over ``max_bytes`` (given)."""
    if max_bytes is not None:
        n = size(location)
        if n == 0:
            raise ValueError("file is empty")
        if n > max_bytes:
            raise ValueError(f"file has {n} bytes, over max_input_bytes={max_bytes}")
    if is_local(location):
        with open(local_path(location), "rb") as f:
            return f.read()
    fs, path = filesystem(location)
    return fs.cat_file(path)


def read_text(location: str) -> str:
    return read_bytes(location).decode("utf-8")


def open_read(location: str) -> IO[bytes]:
    """A seekable binary file object (for pyarrow, tarfile, torch.load)."""
    if is_local(location):
        return open(local_path(location), "rb")
    fs, path = filesystem(location)
    return fs.open(path, "rb")


def arrow_file(location: str):
    """A pyarrow ``NativeFile`` to read ``location`` with pyarrow (Parquet): Arrow's own file for a local path,
    the object's bytes in a ``BufferReader`` for a URL. Never a Python file object: Arrow wraps one in a C++
    object whose destructor takes the GIL, and when an Arrow I/O thread drops the last reference while the
    interpreter is finalizing, CPython ends that thread with ``pthread_exit`` inside a ``noexcept`` destructor:
    the script aborts after its last line ("terminate called without an active exception", status 134).
    """
    import pyarrow as pa

    if is_local(location):
        return pa.OSFile(local_path(location), "r")
    return pa.BufferReader(read_bytes(location))


def read_ranges(location: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The bytes ``[start, end)`` of each range; object stores fetch them concurrently (one GET each)."""
    if not ranges:
        return []
    if is_local(location):
        fd = os.open(local_path(location), os.O_RDONLY)
        try:
            return [os.pread(fd, end - start, start) for start, end in ranges]
        finally:
            os.close(fd)
    fs, path = filesystem(location)
    return fs.cat_ranges([path] * len(ranges), [s for s, _ in ranges], [e for _, e in ranges])


class RangeReader:
    """Range reads from many files, keeping local files open (an LRU of descriptors).

    A DataLoader worker keeps one of these: reading a sample is one ``pread`` on a local or NFS
    file, one ranged GET on an object store. ``bytes_read`` counts what was fetched (the read
    amplification benchmarks and metrics use it).
    """

    def __init__(self, max_open: int = 64):
        self.max_open, self.bytes_read, self.requests = max_open, 0, 0
        self._fds: dict[str, int] = {}

    def read(self, location: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return self.read_many([(location, start, end) for start, end in ranges])

    def read_many(self, requests: Sequence[tuple[str, int, int]]) -> list[bytes]:
        """``[start, end)`` of each ``(location, start, end)``, in order; remote ones in one concurrent batch."""
        out: list[bytes | None] = [None] * len(requests)
        remote = [i for i, (loc, _, _) in enumerate(requests) if not is_local(loc)]
        for i, (loc, start, end) in enumerate(requests):
            if i not in remote:
                out[i] = os.pread(self._fd(local_path(loc)), end - start, start)
        if remote:
            fs, _ = filesystem(requests[remote[0]][0])
            paths = [filesystem(requests[i][0])[1] for i in remote]
            blobs = fs.cat_ranges(paths, [requests[i][1] for i in remote], [requests[i][2] for i in remote])
            for i, blob in zip(remote, blobs):
                if isinstance(blob, Exception):
                    raise OSError(f"reading {requests[i][0]} bytes {requests[i][1]}-{requests[i][2]}: {blob}")
                out[i] = blob
        self.requests += len(requests)
        self.bytes_read += sum(len(b) for b in out)
        return out  # type: ignore[return-value]

    def _fd(self, path: str) -> int:
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            if len(self._fds) >= self.max_open:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[path] = fd  # most recently used last
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:  # a DataLoader worker exits without calling close()
        with contextlib.suppress(Exception):
            self.close()


# ----------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_write(location: str) -> Iterator[IO[bytes]]:
    """A binary file that appears at ``location`` only when the block completes without error.

    Local: ``.NAME.tmp-PID`` beside it, fsync, rename. Remote: a local temp file, uploaded when
    complete (a single PUT or a completed multipart upload, visible in one piece). On an error
    nothing is left at ``location`` and the temp file is removed.
    """
    if is_local(location):
        path = local_path(location)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return
    with tempfile.NamedTemporaryFile(prefix="icpc-upload-", delete=False) as f:
        tmp = f.name
    try:
        with open(tmp, "wb") as f:
            yield f
        fs, path = filesystem(location)
        fs.put_file(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(location: str, data: bytes) -> None:
    """Write ``data`` atomically (see ``atomic_write``)."""
    if not is_local(location):
        fs, path = filesystem(location)
        fs.pipe_file(path, data)  # one PUT: the object appears whole or not at all
        return
    with atomic_write(location) as f:
        f.write(data)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def upload_file(local: str, location: str) -> None:
    """Copy a complete local file to ``location`` (atomically: rename locally, one upload remotely)."""
    if is_local(location):
        with open(local, "rb") as src, atomic_write(location) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return
    fs, path = filesystem(location)
    fs.put_file(local, path)


# ----------------------------------------------------------------------------- conditional writes

# Stores whose PUT honours If-None-Match: * and If-Match: ETag (AWS S3 since 2024-08 and 2024-11, MinIO,
# the moto test server). Elsewhere (gs:// through gcsfs, plain HTTP) a conditional write is refused.
CONDITIONAL_SCHEMES = ("s3", "s3a")


class PreconditionFailed(FileExistsError):
    """A conditional write found the object not as required: created meanwhile, or changed since it was read."""


def has_conditional_writes(location: str) -> bool:
    return scheme(location) in CONDITIONAL_SCHEMES


def create_new(location: str, data: bytes) -> str:
    """Write ``data`` only if no object exists at ``location`` (S3 ``If-None-Match: *``, one atomic step).

    Returns the object's version tag (ETag); ``PreconditionFailed`` when an object is there.
    """
    return _conditional_put(location, data, mode="create")


def replace_version(location: str, data: bytes, tag: str) -> str:
    """Overwrite the object only while it is still at version ``tag`` (S3 ``If-Match``); returns the new tag."""
    return _conditional_put(location, data, IfMatch=tag)


def version_tag(location: str) -> str:
    """The current version tag (ETag) of an object on a store with conditional writes."""
    fs, path = filesystem(location)
    return fs.info(path, refresh=True)["ETag"]


def _conditional_put(location: str, data: bytes, **condition) -> str:
    if not has_conditional_writes(location):
        raise ValueError(f"{location}: conditional writes need one of {CONDITIONAL_SCHEMES}")
    fs, path = filesystem(location)
    try:
        out = fs.pipe_file(path, data, **condition)  # s3fs: one put_object with the condition's header
    except OSError as exc:  # s3fs raises FileExistsError (If-None-Match) or OSError(EINVAL) (If-Match) for a 412
        code = getattr(exc.__cause__, "response", {}).get("Error", {}).get("Code", "")
        if isinstance(exc, FileExistsError) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise PreconditionFailed(f"{location}: {code or 'object exists'} ({exc})") from None
        raise
    return out["ETag"]


def remove(location: str) -> None:
    """Delete one file or object; nothing when it does not exist."""
    if is_local(location):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local_path(location))
        return
    fs, path = filesystem(location)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def remove_tree(location: str) -> None:
    """Delete a folder or prefix and everything below it; nothing when it does not exist."""
    if is_local(location):
        shutil.rmtree(local_path(location), ignore_errors=True)
        return
    fs, path = filesystem(location)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)
