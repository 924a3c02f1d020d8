"""Ray's storage filesystem for a local or shared `results_dir`: every file appears whole or not at all.

Ray writes its experiment state on the driver's local disk, then copies it into `results_dir`
with pyarrow, truncating the old copy first. A driver killed during that copy (SIGKILL, a lost
node) leaves an empty or half-written `experiment_state-*.json` or searcher state, and the
search could not continue. Through this filesystem each file is written beside its final name
and renamed over it when complete (a rename is atomic on POSIX filesystems, NFS included), so a
kill leaves the previous complete copy. Object stores (s3://) publish whole objects anyway.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

PARTIAL = ".esam-partial-"  # a file being written: <name>.esam-partial-<pid>; never read, swept at start

LOCAL_TYPE = "esam-atomic-local"  # this filesystem's type name: results_dir knows a local path by it



class _AtomicFile:
    """A binary writer that publishes its file under the real name only when closed."""

    def __init__(self, path: str):
        self.path = path
        self.partial = f"{path}{PARTIAL}{os.getpid()}"
        self._file = open(self.partial, "wb")  # noqa: SIM115 - closed by close(), called by pyarrow
        self.closed = False

    def write(self, data) -> int:
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._file.close()
            os.replace(self.partial, self.path)


class AtomicLocalHandler(pafs.FileSystemHandler):
    """pyarrow's local filesystem, except that output streams are atomic (see the module doc)."""

    def __init__(self):
        self.local = pafs.LocalFileSystem()

    def __reduce__(self):  # Ray pickles the filesystem into every trial: rebuild it there
        return (AtomicLocalHandler, ())

    def __eq__(self, other):
        return isinstance(other, AtomicLocalHandler)

    def __ne__(self, other):
        return not self == other

    def get_type_name(self):
        return LOCAL_TYPE

    def normalize_path(self, path):
        return self.local.normalize_path(path)

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("esam's results filesystem never empties the root directory")

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self.local.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(_AtomicFile(path), mode="w")

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path, metadata=metadata)


def atomic_local_filesystem() -> pafs.PyFileSystem:
    """A pyarrow filesystem over local paths whose written files appear complete or not at all."""
    return pafs.PyFileSystem(AtomicLocalHandler())


def sweep_partial_files(directory: Path) -> int:
    """Remove files a killed writer left half-written below `directory`; how many were removed."""
    removed = 0
    for path in Path(directory).rglob(f"*{PARTIAL}*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed
