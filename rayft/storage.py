"""Storage locations for runs, checkpoints and the adapter store: a local path or any pyarrow filesystem URI.

A location is a local path (``runs``, ``/mnt/nfs/runs``) or a URI that :func:`pyarrow.fs.FileSystem.from_uri`
understands (``s3://bucket/runs``, ``gs://bucket/runs``, ``hdfs://...``). S3 options go in the query string,
exactly as pyarrow reads them, e.g. an S3-compatible server (MinIO, Ceph, a local test server)::

    s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http

Credentials come from the usual places (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, instance roles); they
are never written into a location. Everything written here is published atomically: a local folder is written
under a temporary name and renamed; on object stores, where there is no rename, a small marker file (the
manifest or the summary) is written last, and readers only trust folders that have it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from rayft.errors import RayftError


def _is_uri(location: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` locations other than ``file://`` (those are plain local paths).

    Callers use :func:`resolve` (a :class:`Location` knows whether it is local) rather than forking on this."""
    scheme = urlsplit(str(location)).scheme
    return len(scheme) > 1 and scheme != "file"  # one letter: a Windows drive


def is_relative_path(location: str | os.PathLike[str]) -> bool:
    """True for a relative local path: it names a different folder in each working directory."""
    return not _is_uri(location) and not str(location).startswith("file://") and not Path(location).is_absolute()


@dataclass(frozen=True)
class Location:
    """A folder on some filesystem: ``fs`` + prefix-stripped ``path``; ``uri()`` rebuilds a full location."""

    fs: pafs.FileSystem
    path: str
    scheme: str = ""
    query: str = ""

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> "Location":
        return Location(self.fs, "/".join([self.path.rstrip("/"), *parts]), self.scheme, self.query)

    def uri(self, path: str | None = None) -> str:
        """A string that :func:`resolve` maps back to this folder (or to ``path`` on the same filesystem)."""
        path = self.path if path is None else path
        if self.local:
            return path
        return f"{self.scheme}://{path}" + (f"?{self.query}" if self.query else "")

    def exists(self, name: str | None = None) -> bool:
        target = self.child(name).path if name else self.path
        return self.fs.get_file_info(target).type != pafs.FileType.NotFound

    def is_file(self, name: str) -> bool:
        return self.fs.get_file_info(self.child(name).path).type == pafs.FileType.File

    def read_text(self, name: str) -> str:
        with self.fs.open_input_stream(self.child(name).path) as fh:
            return fh.read().decode()

    def write_text(self, name: str, text: str) -> None:
        """Write one file so that readers see the old content or the new one, never a part."""
        target = self.child(name).path
        if self.local:
            Path(self.path).mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
            Path(tmp).write_text(text)
            os.replace(tmp, target)
            return
        with self.fs.open_output_stream(target) as fh:  # an object PUT is atomic
            fh.write(text.encode())

    def subdirs(self) -> list[str]:
        """Names of the folders directly inside (empty if this folder does not exist)."""
        if not self.exists():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def delete(self, name: str | None = None) -> None:
        target = self.child(name).path if name else self.path
        info = self.fs.get_file_info(target)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(target)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(target)

    def upload(self, local_dir: str | os.PathLike[str], name: str) -> None:
        """Copy a local folder to ``name`` inside this folder (files only; the caller publishes)."""
        target = self.child(name).path
        self.fs.create_dir(target, recursive=True)
        # Threaded uploads are unsafe with pyarrow's S3 (apache/arrow#32372); Ray uploads single-threaded too.
        pafs.copy_files(str(local_dir), target, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs, use_threads=self.local)

    def download(self, local_dir: str | os.PathLike[str]) -> Path:
        """Copy this folder to ``local_dir`` (replacing it, atomically); returns the local folder."""
        local = Path(local_dir)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
        try:
            pafs.copy_files(self.path, str(tmp), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
            if local.exists():
                shutil.rmtree(local)
            os.replace(tmp, local)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return local


def resolve(location: str | os.PathLike[str]) -> Location:
    """The filesystem and folder of a local path or URI.

    Raises:
        RayftError: if pyarrow cannot open the URI (unknown scheme, bad option, missing support).
    """
    text = str(location)
    if not _is_uri(text):
        if text.startswith("file://"):
            text = urlsplit(text).path
        return Location(pafs.LocalFileSystem(), str(Path(text).expanduser().resolve()))
    parts = urlsplit(text)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError, TypeError) as exc:
        raise RayftError(f"storage location {text!r} cannot be opened: {exc}") from None
    return Location(fs, path.rstrip("/"), parts.scheme, parts.query)


SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")  # the remote filesystems pyarrow ships


def check_location(location: str) -> str | None:
    """Why ``location`` is unusable (a message naming what is expected), or None.

    Only the form is checked: nothing is contacted, so a config validates offline.
    """
    if not _is_uri(location):
        return None
    parts = urlsplit(location)
    if parts.scheme not in SCHEMES:
        return f"a local path or a URI with one of the schemes {', '.join(SCHEMES)} (pyarrow filesystems)"
    if not parts.netloc:
        return f"a bucket or host after {parts.scheme}:// (e.g. {parts.scheme}://bucket/runs)"
    return None


def local_copy(location: str, cache_key: str) -> Path:
    """A local folder with the content of ``location``: the folder itself when local, else a cached download."""
    loc = resolve(location)
    if loc.local:
        return Path(loc.path)
    from rayft.paths import cache_dir

    return loc.download(cache_dir("remote") / cache_key)
