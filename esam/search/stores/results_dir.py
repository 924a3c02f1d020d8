"""Where Ray keeps a search's experiments: a local or shared path, or a URI pyarrow understands.

`results_dir` may be `s3://bucket/prefix` (or `gs://`, `abfs://`, `file://`): Ray then writes its
experiment states and trial checkpoints there, every node reading and writing the same objects,
and esam finds the trials' checkpoints through the same pyarrow filesystem. A path keeps
all of it on a filesystem every node mounts. Local files are written through
esam.search.stores.atomic_writes, so a killed copy never leaves half a file.

No key stays in a URI: Ray pickles the storage's filesystem and URI into tuner.pkl and its search
state (in the store and in its session folder), and a pyarrow filesystem built with a key pickles
it. An s3:// key (s3://KEY:SECRET@bucket) therefore moves into this process's environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), which the local Ray's workers inherit, and the
filesystem reads it from there; other schemes' secrets in a URI are refused.
"""
from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from esam.errors import ConfigError, first_line
from esam.search.stores.atomic_writes import LOCAL_TYPE, atomic_local_filesystem

_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
PROBE_TIMEOUT_S = 60.0  # how long the first write to an object store may take before the search gives up
SECRET_OPTIONS = ("client_secret", "sig")  # abfs:// query options that are secrets (a client's, a SAS token's)


def is_uri(location: str) -> bool:
    return bool(_URI.match(str(location)))


@dataclass(frozen=True)
class StoragePath:
    """A file or directory in Ray's storage: a pyarrow filesystem and a path in it."""
    fs: object  # pyarrow.fs.FileSystem, holding no key
    path: str  # inside fs, without a scheme
    shown: str  # the path, or the URI without its key: what Ray is given
    key_id: str = ""  # an s3:// URI's access key, now in the environment: str() shows it as KEY:***@

    @classmethod
    def of(cls, location: str | Path) -> StoragePath:
        """A local path, or a URI (its filesystem is resolved here: s3:// may ask the store its region).

        A key in an s3:// URI moves into this process's environment (see the module's docstring).
        """
        import pyarrow.fs as pafs

        text = str(location)
        if not is_uri(text):
            local = str(Path(text).expanduser().resolve())
            return cls(atomic_local_filesystem(), local, local)
        text, key_id = _key_to_environment(text)
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except Exception as err:  # noqa: BLE001 - pyarrow raises ValueError/OSError/ArrowInvalid per scheme
            raise ConfigError(f"results_dir {_masked(text, key_id)} cannot be opened ({first_line(err, 150)}); "
                              f"give a path, or a URI pyarrow's filesystems understand (s3://, gs://, abfs://, "
                              f"file://)") from None
        if isinstance(fs, pafs.LocalFileSystem):
            fs = atomic_local_filesystem()
        return cls(fs, path.rstrip("/"), text.rstrip("/"), key_id)

    def __truediv__(self, name: str) -> StoragePath:
        joined = _in_path(self.shown, lambda p: posixpath.join(p, name))
        return StoragePath(self.fs, posixpath.join(self.path, name), joined, self.key_id)

    def __str__(self) -> str:
        """For messages and records: the URI as the user wrote it, its secret shown as ***."""
        return _masked(self.shown, self.key_id)

    @property
    def local(self) -> Path | None:
        """The local path, when this is on a local or mounted filesystem."""
        return Path(self.path) if self.fs.type_name.endswith(LOCAL_TYPE) else None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> StoragePath:
        return StoragePath(self.fs, posixpath.dirname(self.path), _in_path(self.shown, posixpath.dirname), self.key_id)

    def files(self, pattern: str) -> list[StoragePath]:
        """The files directly in this directory whose names match `pattern`, sorted by name."""
        import pyarrow.fs as pafs
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        names = sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)
        return [self / n for n in names if fnmatch.fnmatchcase(n, pattern)]

    def exists(self) -> bool:
        import pyarrow.fs as pafs
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def write_bytes(self, data: bytes) -> None:
        """Replace the file whole (renamed into place locally; an object store publishes whole objects)."""
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(data)

    def delete(self) -> None:
        self.fs.delete_file(self.path)


def _in_path(shown: str, change) -> str:
    """`shown` with `change` applied to its path: a URI's options stay after it (s3://b/p/x?region=...)."""
    if not is_uri(shown):
        return change(shown)
    parts = urlsplit(shown)
    return urlunsplit(parts._replace(path=change(parts.path).rstrip("/")))


def _key_to_environment(uri: str) -> tuple[str, str]:
    """(`uri` without its key, the access key); an s3:// key goes into this process's environment.

    The environment then holds the one key pyarrow would have used: a session token there belongs
    to another key. Other schemes would keep a secret in the URI, and Ray would write it: refused.
    """
    parts = urlsplit(uri)
    userinfo, at, host = parts.netloc.rpartition("@")
    if parts.scheme.lower() != "s3":
        secret = ":" in userinfo or any(k.lower() in SECRET_OPTIONS for k, _ in parse_qsl(parts.query))
        if secret:
            raise ConfigError(f"results_dir {parts.scheme}://{host}{parts.path} carries a secret in its URI, which "
                              f"Ray would write into its files; give the store's credentials through its "
                              f"environment instead, on this machine and on every node")
        return uri, ""
    if not at:
        return uri, ""
    key_id, _, secret = userinfo.partition(":")
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = unquote(key_id), unquote(secret)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    return urlunsplit(parts._replace(netloc=host)), key_id


def _masked(shown: str, key_id: str) -> str:
    """A URI whose key moved to the environment as the user wrote it, the secret as *** (s3://KEY:***@bucket)."""
    if not key_id:
        return shown
    scheme, _, rest = shown.partition("://")
    return f"{scheme}://{key_id}:***@{rest}"


def storage_path(location: StoragePath | str | Path) -> StoragePath:
    return location if isinstance(location, StoragePath) else StoragePath.of(location)


def check_storage_writable(root: StoragePath) -> None:
    """Ray's storage takes a file now, before the search creates anything (one line otherwise)."""
    probe = root / ".esam_write_probe"

    def write_and_delete() -> None:
        root.fs.create_dir(root.path, recursive=True)
        probe.write_bytes(b"esam")
        probe.delete()

    try:
        if root.local:
            write_and_delete()
        else:
            _within(PROBE_TIMEOUT_S, write_and_delete)
    except TimeoutError:
        raise ConfigError(f"results_dir {root.parent} did not answer within {PROBE_TIMEOUT_S:g} s; check the "
                          f"network and the store's credentials on this machine and on every node") from None
    except Exception as err:  # noqa: BLE001 - OSError locally, pyarrow's errors for object stores
        raise ConfigError(f"results_dir {root.parent} is not writable ({first_line(err, 150)}); "
                          f"check the path or the store's credentials on this machine and on every node") from None


def _within(seconds: float, work) -> None:
    """Run `work` and return or raise as it does; TimeoutError if it is still running after `seconds`.

    An object store's client can wait minutes on an unreachable endpoint or a credentials lookup
    (gs:// with no network retries silently): the search says so instead. The thread is a daemon, so
    a request still hanging does not keep the command from exiting.
    """
    outcome: list = []

    def run() -> None:
        try:
            work()
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - handed to the caller as it was
            outcome.append(err)

    thread = threading.Thread(target=run, name="esam-storage-probe", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise TimeoutError
    if outcome[0] is not None:
        raise outcome[0]
