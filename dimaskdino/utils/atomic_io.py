"""Crash-safe file writing: write to a temporary file beside the target, flush it to disk, then
rename it into place, so that a kill at any moment leaves either the old file or the new one under
the real name, never a truncated one.

``os.replace`` is atomic on POSIX and Windows when both names are in the same folder, which is why
the temporary file is created next to the target. A kill during the write leaves only the hidden
temporary file (``.<name>.<random>.tmp``), which :func:`remove_stale_temporaries` deletes later.
"""
import glob
import os
import tempfile

__all__ = ["AtomicPathManager", "AtomicWriter", "TEMP_SUFFIX", "remove_stale_temporaries"]

TEMP_SUFFIX = ".tmp"


class AtomicWriter:
    """A writable file object for ``path``; the data appears under ``path`` only when the object is
    closed without an exception (use it as a context manager, as ``torch.save`` callers do).

    Args:
        path: the final file name (a local path)
        mode: "w", "wb" (text or binary; appending is not supported)
    """

    def __init__(self, path: str, mode: str = "wb"):
        if "a" in mode or "+" in mode:
            raise ValueError(f"AtomicWriter writes whole files; mode {mode!r} is not supported")
        self.path = path
        folder, name = os.path.split(os.path.abspath(path))
        fd, self.temp_path = tempfile.mkstemp(prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=folder)
        self._file = os.fdopen(fd, mode)

    def __getattr__(self, name):  # write, tell, seek, fileno, ... of the temporary file
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.close()
        else:
            self.discard()
        return False

    def close(self) -> None:
        """Flush to disk and rename into place (once)."""
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.temp_path, self.path)
        _fsync_folder(os.path.dirname(os.path.abspath(self.path)))

    def discard(self) -> None:
        """Drop what was written; the file under ``path`` is left as it was."""
        if not self._file.closed:
            self._file.close()
        if os.path.exists(self.temp_path):
            os.remove(self.temp_path)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicPathManager:
    """Wraps an iopath/detectron2 ``PathManager``: local files opened for writing become
    :class:`AtomicWriter` objects; every other call goes to the wrapped manager unchanged."""

    def __init__(self, path_manager):
        self._wrapped = path_manager

    def open(self, path: str, mode: str = "r", **kwargs):
        if "w" in mode and "://" not in str(path):
            return AtomicWriter(path, mode)
        return self._wrapped.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self._wrapped, name)


def remove_stale_temporaries(folder: str, pattern: str = "*") -> list:
    """Delete temporary files that a killed writer left in ``folder``; returns their paths."""
    stale = glob.glob(os.path.join(folder, f".{pattern}.*{TEMP_SUFFIX}"))
    for path in stale:
        os.remove(path)
    return stale
