"""The on-disk weights cache of :meth:`lethe_client.Client.pull`.

Layout under the cache folder (``cache_dir``, ``LETHE_CACHE_DIR``, else
``$XDG_CACHE_HOME/lethe`` or ``~/.cache/lethe``)::

    blobs/<sha256>.safetensors            the weights, named by their content
    refs/<server>/<model>@<ref>.json      what a pull of MODEL at REF (a number, latest)
                                          last got from that server: version, sha256, ETag

``<server>`` is the first 16 hex digits of the sha256 of the base URL, so one cache serves
several servers. Blobs are content-addressed: two refs (``latest`` and ``3``) naming the
same weights share one file. Every file is written to a temporary name in its folder and
renamed into place, so a reader never sees half a file and concurrent pulls are safe.

A cached blob is trusted only after its sha256 is computed again and matches its name: a
changed or truncated file is dropped and downloaded again (``cache_repaired``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def default_cache_dir() -> Path:
    """``LETHE_CACHE_DIR``, else ``$XDG_CACHE_HOME/lethe``, else ``~/.cache/lethe``."""
    explicit = os.environ.get("LETHE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lethe"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedRef:
    """What the last pull of a model at a ref got."""

    model: str
    ref: str
    version: int
    sha256: str


class Download:
    """A body being received: written to a temporary file beside its destination, hashed
    and counted as it arrives; :meth:`reset` starts over (a retried download)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".part-", suffix=".safetensors", dir=folder)
        self.path = Path(name)
        self._fh: IO[bytes] = os.fdopen(fd, "wb")
        self._digest = hashlib.sha256()
        self.size = 0
        self._moved = False

    def reset(self) -> None:
        self._fh.seek(0)
        self._fh.truncate()
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._fh.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def discard(self) -> None:
        """Drop the temporary file (nothing once it was moved into place)."""
        if not self._fh.closed:
            self._fh.close()
        if not self._moved:
            self.path.unlink(missing_ok=True)

    def move_to(self, target: Path) -> Path:
        self.close()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, target)
        self._moved = True
        return target


class WeightsCache:
    """Content-addressed weights plus, per server, model and ref, the sha256 last pulled."""

    def __init__(self, root: Path, server: str) -> None:
        self.root = Path(root)
        self.server = hashlib.sha256(server.rstrip("/").encode()).hexdigest()[:16]

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    def blob_path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.blobs / f"{sha256}.safetensors"

    def _ref_path(self, model: str, ref: str) -> Path:
        # one path component whatever the model is called ("..", "a/b" included)
        name = f"{model}@{ref}.json".replace("/", "%2F")
        return self.root / "refs" / self.server / name

    def lookup(self, model: str, ref: str) -> CachedRef | None:
        path = self._ref_path(model, ref)
        try:
            data = json.loads(path.read_text())
            cached = CachedRef(
                model=model, ref=ref, version=int(data["version"]), sha256=str(data["sha256"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cached if _SHA256.match(cached.sha256) else None

    def remember(self, model: str, ref: str, version: int, sha256: str) -> None:
        path = self._ref_path(model, ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ref-", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump({"model": model, "ref": ref, "version": version, "sha256": sha256}, fh)
        os.replace(tmp, path)

    def forget(self, model: str, ref: str) -> None:
        self._ref_path(model, ref).unlink(missing_ok=True)

    def verified_blob(self, sha256: str) -> tuple[Path | None, bool]:
        """The cached blob of ``sha256`` if its bytes still hash to it; ``(None, True)`` when
        one was there but changed (it is deleted), ``(None, False)`` when none was."""
        path = self.blob_path(sha256)
        try:
            actual = file_sha256(path)
        except FileNotFoundError:
            return None, False
        except OSError:
            path.unlink(missing_ok=True)
            return None, True
        if actual != sha256:
            path.unlink(missing_ok=True)
            return None, True
        return path, False

    def start_download(self) -> Download:
        return Download(self.blobs)


def copy_out(source: Path, target: Path) -> Path:
    """Copy a verified file to ``target`` through a temporary file and a rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, CHUNK)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
