"""The one path layer: every file the project reads or writes goes through here.

A path is a string: a local path, or a URL such as `gs://bucket/dir/file`. Local paths
take the same `os`/`open` calls as before this layer existed; a URL goes through
`etils.epath` (the path type orbax uses), whose `gs://` backend here is fsspec's gcsfs.

Why gcsfs and not TensorFlow's file system: TF's GCS client has its endpoints compiled in,
so nothing can point it at a GCS emulator, and the tests prove every `gs://` read and write
against one (tests/gcs_emulator.py). `EPATH_USE_TF=false` is set before epath picks its
backend, so orbax's own file operations take the same, tested client; a user who sets
`EPATH_USE_TF=true` gets TF's client for orbax's file operations instead.

A path with a scheme never becomes a local path: `absolute` leaves URLs alone and
`os.path` never sees one.

Object stores have no rename and no append. `write_bytes`/`write_text` are atomic
everywhere: locally a temp file renamed into place; on an object store the object is
written under its final name and appears only when its upload completes. A unit of
several files is complete when a marker written last exists (see `data build`, orbax's
`commit_success.txt`).
"""

from __future__ import annotations

import contextlib
import glob as _glob
import io
import logging
import os
import posixpath
import shutil
import socket
import urllib.parse
from collections.abc import Iterator
from typing import IO, Any

from contrastive_jax.errors import ConfigError, InputNotFoundError

# Before etils picks its backend (read once, on the first URL it resolves): see above.
os.environ.setdefault("EPATH_USE_TF", "false")
# fsspec logs one INFO line per file it opens (its read-ahead cache): noise in a run's log.
logging.getLogger("fsspec").setLevel(logging.WARNING)


def is_url(path: str) -> bool:
    """Whether `path` has a scheme (gs://, s3://, ...): an object-store path."""
    return "://" in str(path)


def _epath(path: str):
    from etils import epath

    return epath.Path(path)


def join(path: str, *parts: str) -> str:
    """`path`/`parts`, with '/' for URLs and the OS's rules for local paths."""
    return posixpath.join(path, *parts) if is_url(path) else os.path.join(path, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_url(path) else os.path.dirname(path)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def absolute(path: str) -> str:
    """A local path made absolute; a URL as it is."""
    return path if is_url(path) else os.path.abspath(path)


def check_reachable(path: str, what: str) -> None:
    """For a URL: a one-line user error when its bucket does not exist or cannot be read
    (called at start-up, before anything is compiled); a local path passes."""
    if not is_url(path):
        return
    scheme, rest = path.split("://", 1)
    if scheme != "gs":
        raise ConfigError(f"{what} {path}: the scheme {scheme}:// is not supported "
                          "(use gs:// or a local path)")
    bucket = f"gs://{rest.split('/', 1)[0]}"
    _check_endpoint(path, what, bucket)
    gcsfs_log = logging.getLogger("gcsfs")
    level = gcsfs_log.level
    # gcsfs logs each request it gives up on with a traceback; the line below says it all.
    gcsfs_log.setLevel(logging.CRITICAL)
    try:
        found = _epath(bucket).exists()
    except OSError as e:  # PermissionError, a refused connection, ...
        raise ConfigError(f"{what} {path}: cannot reach {bucket}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    finally:
        gcsfs_log.setLevel(level)
    if not found:
        raise InputNotFoundError(f"{what} {path}: the bucket {bucket} does not exist")


def _check_endpoint(path: str, what: str, bucket: str) -> None:
    """ConfigError within seconds when the storage endpoint cannot be connected to (no
    network, a wrong STORAGE_EMULATOR_HOST): gcsfs retries a failed connection like a
    transient error, six tries with backoff, which is a minute and a half at start-up.
    Errors once connected (404, 403, 5xx) are left to gcsfs and its bounded retries."""
    try:
        from gcsfs.core import _location  # the endpoint gcsfs would use
    except ImportError:  # without gcsfs the request below says what is missing
        return
    endpoint = urllib.parse.urlsplit(_location())
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as e:  # a name that does not resolve, a refused or timed-out connection
        raise ConfigError(f"{what} {path}: cannot reach {bucket}: no connection to "
                          f"{endpoint.scheme}://{endpoint.netloc} ({type(e).__name__}: "
                          f"{e})") from e


_CONNECT_TIMEOUT_S = 5


def is_absolute(path: str) -> bool:
    return is_url(path) or os.path.isabs(path)


def exists(path: str) -> bool:
    return _epath(path).exists() if is_url(path) else os.path.exists(path)


def isfile(path: str) -> bool:
    return _epath(path).is_file() if is_url(path) else os.path.isfile(path)


def isdir(path: str) -> bool:
    return _epath(path).is_dir() if is_url(path) else os.path.isdir(path)


def has_magic(pattern: str) -> bool:
    return _glob.has_magic(pattern)


def glob(pattern: str) -> list[str]:
    """Sorted paths matching `pattern` (`*`, `?`, `[..]` in any component; `**` locally
    only: on an object store it would list the whole bucket)."""
    if not is_url(pattern):
        return sorted(_glob.glob(pattern))
    parts = pattern.split("/")
    first = next((i for i, p in enumerate(parts) if _glob.has_magic(p)), None)
    if first is None:
        return [pattern] if exists(pattern) else []
    root = "/".join(parts[:first])
    return sorted(str(p) for p in _epath(root).glob("/".join(parts[first:])))


def listdir(path: str) -> list[str]:
    """Names of the entries of directory `path`, sorted."""
    if is_url(path):
        return sorted(p.name for p in _epath(path).iterdir())
    return sorted(os.listdir(path))


def makedirs(path: str) -> None:
    """Creates directory `path` and its parents; nothing to do on an object store, where a
    directory exists while an object lies under it."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def open_file(path: str, mode: str = "r", **kwargs: Any) -> IO:
    """`open(path, mode)`; on an object store mode is one of r, rb, w, wb (no append)."""
    if not is_url(path):
        return open(path, mode, **kwargs)  # noqa: SIM115 - the caller closes it
    if mode not in ("r", "rb", "w", "wb"):
        raise ValueError(f"mode {mode!r} is not supported on an object store: {path}")
    if "b" in mode:
        return _epath(path).open(mode)
    # Text: our own wrapper over the binary object, so `encoding`, `errors` and `newline`
    # mean what they mean for `open`.
    return io.TextIOWrapper(_epath(path).open(mode + "b"), encoding=kwargs.get(
        "encoding", "utf-8"), errors=kwargs.get("errors"), newline=kwargs.get("newline"))


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    with open_file(path, "r", encoding="utf-8") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Writes `path` all-or-nothing: a reader sees the old content or the new, never part
    (see `atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[IO[bytes]]:
    """A binary file to stream `path`'s content into, all-or-nothing: it appears (or
    replaces the old one) only if the block ends without an exception. Locally a temp file
    renamed into place; on an object store an upload whose object is created on close,
    and cancelled on an exception."""
    if is_url(path):
        f = open_file(path, "wb")
        try:
            yield f
        except BaseException:
            f.discard()  # fsspec's buffered file: drop the upload, create nothing
            raise
        f.close()
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # One writer per file (process 0): a fixed temp name, so a rerun after a kill
    # overwrites the leftover instead of leaving it beside the file for good.
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def remove(path: str) -> None:
    if is_url(path):
        _epath(path).unlink()
    else:
        os.remove(path)


def rmtree(path: str) -> None:
    if is_url(path):
        _epath(path).rmtree()
    else:
        shutil.rmtree(path)


def files_under(directory: str) -> list[str]:
    """Every file under `directory` (recursively; locally as glob's `**`, which skips
    hidden names), sorted."""
    if not is_url(directory):
        found = _glob.glob(os.path.join(directory, "**", "*"), recursive=True)
        return sorted(f for f in found if os.path.isfile(f))
    found = []
    for entry in _epath(directory).iterdir():
        found += files_under(str(entry)) if entry.is_dir() else [str(entry)]
    return sorted(found)


def copy(src: str, dst: str) -> None:
    """Copies file `src` to `dst` (either may be a URL); `dst` is written all-or-nothing."""
    if not is_url(src) and not is_url(dst):
        directory = os.path.dirname(os.path.abspath(dst))
        os.makedirs(directory, exist_ok=True)
        shutil.copyfile(src, dst)
        return
    write_bytes(dst, read_bytes(src))


def copytree(src: str, dst: str) -> None:
    """Copies every file under directory `src` to the same place under `dst`."""
    prefix = src.rstrip("/") + "/"
    for path in files_under(src):
        copy(path, join(dst, path[len(prefix):]))


def move(src: str, dst: str) -> None:
    """Moves file or directory `src` to `dst`. Locally a rename (atomic); an object store
    has none, so there it is a copy of every object, then a delete of the source."""
    if not is_url(src) and not is_url(dst):
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        os.rename(src, dst)
        return
    if isdir(src):
        copytree(src, dst)
        rmtree(src)
    else:
        copy(src, dst)
        remove(src)


def cache_dir(name: str) -> str:
    """The local cache folder `name` (created): $CONTRASTIVE_JAX_CACHE, else
    $XDG_CACHE_HOME/contrastive_jax, else ~/.cache/contrastive_jax. The only local place
    a run on gs:// paths writes to (docs/multihost.md names what goes there)."""
    base = os.environ.get("CONTRASTIVE_JAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "contrastive_jax")
    path = os.path.join(base, name)
    os.makedirs(path, exist_ok=True)
    return path


def read_errors() -> tuple[type[BaseException], ...]:
    """What a read raises once the storage client's own bounded retries are spent (gcsfs:
    6 tries per request with exponential backoff, on 5xx, 408, 429 and dropped
    connections), besides OSError: readers of shards count it like a truncated shard."""
    errors: tuple[type[BaseException], ...] = (OSError, EOFError)
    try:
        import aiohttp
        from gcsfs.retry import HttpError
    except ImportError:  # without gcsfs there is no gs:// read to fail
        return errors
    return (*errors, HttpError, aiohttp.ClientError, TimeoutError)
