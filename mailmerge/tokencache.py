"""msal's token cache on disk: one per tenant and app, encrypted where the platform can, owner-only always.

A refresh token is as good as a password for as long as it lives, so where it is kept matters:

- **Encrypted** through msal-extensions where the platform offers it: DPAPI on Windows, the Keychain
  on macOS, libsecret on Linux (which needs PyGObject, libsecret and a running keyring service; a
  server or a container rarely has them). Whether it works is found out by trying, once.
- Otherwise a **plain file** the user alone can read: 0600, in a 0700 folder, never through a
  symlink another user planted (the file is replaced by an atomic rename of a private temp file).

Several runs may share one cache (two campaigns of the same app, a resume next to ``auth status``).
Every change is made under an exclusive file lock, on top of what is on disk at that moment, and
written back before the lock is released; reads reload the file whenever another process changed it.
Torn reads cannot happen with the plain file (rename is atomic); the encrypted stores are reread.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import filelock
import msal

from mailmerge.errors import AuthError, ConfigError

ENV_FOLDER = "MAILMERGE_TOKEN_CACHE_DIR"
LOCK_TIMEOUT_SECONDS = 30.0
READ_ATTEMPTS = 3
Encryption = Literal["auto", "required", "off"]


def default_folder() -> Path:
    """``$MAILMERGE_TOKEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/mailmerge``, else ``~/.cache/mailmerge``."""
    override = os.environ.get(ENV_FOLDER)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mailmerge"


def cache_file_name(tenant: str, client_id: str) -> str:
    """The cache file of one app in one tenant (names made safe for any file system)."""

    def safe(text: str) -> str:
        return re.sub(r"[^a-z0-9._-]+", "_", text.lower()).strip("._") or "_"

    return f"msal-{safe(tenant)}-{safe(client_id)}.json"


def ensure_private_folder(folder: Path) -> None:
    """Create ``folder`` (0700) if needed; refuse one that other users may write into.

    The file in it is 0600 anyway, so a folder others can *list* leaks nothing; one others can
    *write* would let them replace the cache under us.
    """
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o700, exist_ok=True)
        with suppress(OSError):
            folder.chmod(0o700)  # mkdir's mode is filtered by the umask
        return
    if not folder.is_dir():
        raise ConfigError(f"the token cache folder {folder} is not a folder", hint="point it at a folder")
    if os.name == "posix":
        mode = folder.stat().st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(
                f"the token cache folder {folder} can be written by other users "
                f"(mode {stat.S_IMODE(mode):04o})",
                hint=f"chmod 700 {folder}, or choose another folder with [auth] token_cache",
            )


class CacheStore(Protocol):
    """Where the serialized cache lives."""

    path: Path
    encrypted: bool
    description: str

    def version(self) -> object:
        """Changes whenever the stored cache changes (None when there is none yet)."""
        ...

    def load(self) -> str | None: ...

    def save(self, text: str) -> None: ...


class PlainFile:
    """A JSON file only its owner can read, replaced atomically on every save."""

    encrypted = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = "plain file, readable only by you (0600)"
        ensure_private_folder(path.parent)
        if os.name == "posix" and path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:  # copied in by hand, or written by an older tool: tighten it
                path.chmod(0o600)

    def version(self) -> object:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def load(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def save(self, text: str) -> None:
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".msal-", suffix=".tmp")  # 0600
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with suppress(OSError):
                os.unlink(temporary)
            raise


class EncryptedStore:
    """msal-extensions' encrypted persistence (DPAPI, Keychain or libsecret)."""

    encrypted = True

    def __init__(self, path: Path, persistence: Any) -> None:
        self.path = path
        self._persistence = persistence
        self.description = f"encrypted ({type(persistence).__name__.removesuffix('Persistence')})"

    def version(self) -> object:
        try:
            info = os.stat(self._persistence.get_location())
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def load(self) -> str | None:
        from msal_extensions.persistence import PersistenceNotFound

        try:
            return str(self._persistence.load())
        except PersistenceNotFound:
            return None

    def save(self, text: str) -> None:
        self._persistence.save(text)


def _encrypted_persistence(path: Path) -> Any:
    """Try the platform's encrypted store; raises whatever the platform lacks."""
    from msal_extensions import build_encrypted_persistence

    return build_encrypted_persistence(str(path))


@dataclass(frozen=True)
class StoreChoice:
    store: CacheStore
    fallback_reason: str | None  # why the cache is not encrypted, when encryption was wanted


def choose_store(path: Path, encryption: Encryption = "auto") -> StoreChoice:
    """The encrypted store when the platform offers one (and ``encryption`` allows), else the plain file."""
    ensure_private_folder(path.parent)
    reason = None
    if encryption != "off":
        try:
            return StoreChoice(EncryptedStore(path, _encrypted_persistence(path)), None)
        except Exception as exc:  # ImportError (no PyGObject), no keyring service, unsupported platform...
            first_line = (str(exc).strip().splitlines() or [""])[0]
            reason = f"no encrypted store on this machine ({exc.__class__.__name__}: {first_line})"
            if encryption == "required":
                raise ConfigError(
                    f"the token cache must be encrypted, but {reason}",
                    context="[auth] token_cache_encryption",
                    hint="on Linux install PyGObject and libsecret (gir1.2-secret-1) and run a keyring "
                    'service, or set token_cache_encryption = "auto" to accept an owner-only file',
                ) from exc
    return StoreChoice(PlainFile(path), reason)


class PersistentTokenCache(msal.SerializableTokenCache):
    """An msal cache that other processes can share: reads reload, writes lock, merge and save."""

    def __init__(self, store: CacheStore, *, lock_timeout: float = LOCK_TIMEOUT_SECONDS) -> None:
        super().__init__()
        self.store = store
        self._file_lock = filelock.FileLock(f"{store.path}.lock", timeout=lock_timeout, mode=0o600)
        self._version: object = None
        self._depth = 0

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def encrypted(self) -> bool:
        return self.store.encrypted

    def _reload(self) -> None:
        """Take in what another process wrote since we last looked."""
        for attempt in range(1, READ_ATTEMPTS + 1):
            version = self.store.version()
            if version == self._version:
                return
            try:
                text = self.store.load()
                self.deserialize(text)
            except ValueError as exc:  # an encrypted store caught mid-write, or a damaged file
                if attempt < READ_ATTEMPTS:
                    time.sleep(0.05 * attempt)
                    continue
                raise AuthError(
                    f"the token cache {self.store.path} cannot be read: it is damaged",
                    hint="delete it and sign in again (`mailmerge auth login CAMPAIGN`)",
                ) from exc
            except OSError as exc:
                raise AuthError(
                    f"the token cache {self.store.path} cannot be read ({exc.strerror or exc})",
                    hint="check the file's owner and permissions",
                ) from exc
            self._version = version
            return

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the file lock: reload, let the caller change the cache, save once at the end."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            try:
                self._file_lock.acquire()
            except filelock.Timeout as exc:
                raise AuthError(
                    f"the token cache {self.store.path} stayed locked for {self._file_lock.timeout:g} s",
                    hint="another mailmerge process holds it; if none runs, delete "
                    f"{self._file_lock.lock_file}",
                ) from exc
            try:
                self._reload()
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0
                if self.has_state_changed:
                    self._save()
            finally:
                self._file_lock.release()

    def _save(self) -> None:
        try:
            self.store.save(self.serialize())
        except OSError as exc:
            raise AuthError(
                f"the token cache {self.store.path} cannot be written ({exc.strerror or exc})",
                hint="check the folder's owner, permissions and free space",
            ) from exc
        self._version = self.store.version()

    # msal's hooks: everything msal reads goes through search(), everything it writes through
    # add() and modify().
    def search(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._reload()
        return super().search(*args, **kwargs)

    def add(self, event: Any, **kwargs: Any) -> None:
        with self.writing():
            super().add(event, **kwargs)

    def modify(self, credential_type: Any, old_entry: Any, new_key_value_pairs: Any = None) -> None:
        with self.writing():
            super().modify(credential_type, old_entry, new_key_value_pairs)


def open_cache(path: Path, encryption: Encryption = "auto") -> tuple[PersistentTokenCache, str | None]:
    """The shared cache at ``path`` and, when it is a plain file although encryption was wanted, why."""
    choice = choose_store(path, encryption)
    return PersistentTokenCache(choice.store), choice.fallback_reason
