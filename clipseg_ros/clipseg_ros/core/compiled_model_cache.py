"""
A folder of converted models on disk, one entry per key, never trusted unchecked. No ROS.

An entry is a folder named by the hash of its key fields (model weights, config, input size,
runtime versions) holding the model files and a manifest with the key fields and each file's
SHA-256. An entry is written under a temporary name and renamed into place, so a reader sees
a whole entry or none; one whose manifest, key or checksums disagree is deleted and rebuilt.
"""

from collections.abc import Callable, Mapping
import hashlib
import json
import logging
import os
from pathlib import Path
import shutil
import tempfile
import time

MANIFEST = 'manifest.json'
# Oldest-used entries beyond this many are deleted (each full-size one is ~600 MB).
MAX_ENTRIES = 6
# Entries are written under this prefix and renamed into place; such a folder older than
# STALE_SECONDS was left by a process that died while writing it (writing takes seconds).
STAGING_PREFIX = '.incomplete-'
STALE_SECONDS = 3600.0
_CHUNK = 1 << 22

_LOGGER = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def key_digest(fields: Mapping[str, str]) -> str:
    """The entry name for ``fields``: SHA-256 of their sorted JSON, 40 hex digits."""
    text = json.dumps(dict(fields), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class CompiledModelCache:
    """Entries under ``folder``; see the module docstring. Failures to write only log."""

    def __init__(self, folder: Path, max_entries: int = MAX_ENTRIES) -> None:
        self.folder = Path(folder)
        self.max_entries = max_entries

    def entry(self, fields: Mapping[str, str]) -> Path:
        """The folder an entry for ``fields`` lives in (whether or not it exists)."""
        return self.folder / key_digest(fields)

    def lookup(self, fields: Mapping[str, str]) -> Path | None:
        """The verified entry folder for ``fields``, or None (a bad entry is deleted)."""
        entry = self.entry(fields)
        if not entry.is_dir():
            return None
        problem = self._problem(entry, fields)
        if problem is not None:
            _LOGGER.warning('compiled model cache: %s in %s; rebuilding it', problem, entry)
            self.discard(fields)
            return None
        os.utime(entry / MANIFEST)  # most recently used: pruned last
        return entry

    def store(self, fields: Mapping[str, str],
              write: Callable[[Path], None]) -> Path | None:
        """
        Let ``write(folder)`` put the model files into a fresh folder, then publish it as the
        entry for ``fields``. Returns the entry, or None when the cache could not be written.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.folder))
        except OSError as error:
            _LOGGER.warning('compiled model cache %s not writable: %s', self.folder, error)
            return None
        try:
            write(staging)
            files = {path.name: file_sha256(path) for path in sorted(staging.iterdir())}
            manifest = {'key': dict(fields), 'files': files}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            entry = self.entry(fields)
            if entry.is_dir() and self._problem(entry, fields) is None:
                # Another process published it while this one converted: keep theirs, whose
                # files a third process may be reading.
                shutil.rmtree(staging, ignore_errors=True)
                return entry
            shutil.rmtree(entry, ignore_errors=True)  # a bad entry that lookup did not see
            os.rename(staging, entry)
        except OSError as error:  # disk full, or another process published it first
            _LOGGER.warning('compiled model cache: could not store an entry in %s: %s',
                            self.folder, error)
            shutil.rmtree(staging, ignore_errors=True)
            return None
        self._prune()
        return entry

    def discard(self, fields: Mapping[str, str]) -> None:
        """Delete the entry for ``fields`` if there is one."""
        shutil.rmtree(self.entry(fields), ignore_errors=True)

    def _problem(self, entry: Path, fields: Mapping[str, str]) -> str | None:
        """Why ``entry`` cannot be used for ``fields``, or None when every check passes."""
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            if manifest.get('key') != dict(fields):
                return 'the manifest names another key'
            files = manifest['files']
            present = {path.name for path in entry.iterdir()} - {MANIFEST}
            if set(files) != present:
                return 'the files differ from the manifest'
            for name, checksum in files.items():
                if file_sha256(entry / name) != checksum:
                    return f'{name} does not match its checksum'
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            return f'unreadable manifest ({error})'
        return None

    def _prune(self) -> None:
        """Delete the least recently used entries beyond ``max_entries``, and folders left
        half-written by a process that died (older than ``STALE_SECONDS``)."""
        entries = []
        for path in self.folder.iterdir():
            try:
                if path.name.startswith(STAGING_PREFIX):
                    if time.time() - path.stat().st_mtime > STALE_SECONDS:
                        shutil.rmtree(path, ignore_errors=True)
                    continue  # younger: another process may be writing it now
                entries.append(((path / MANIFEST).stat().st_mtime, path))
            except OSError:
                continue  # not an entry, or deleted meanwhile
        entries.sort(reverse=True)
        for _, path in entries[self.max_entries:]:
            shutil.rmtree(path, ignore_errors=True)
