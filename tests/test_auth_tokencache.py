"""The token cache on disk: owner-only, encrypted when possible (and says which), safe to share."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import msal
import pytest

from mailmerge import tokencache
from mailmerge.errors import AuthError, ConfigError
from mailmerge.tokencache import PersistentTokenCache, PlainFile, choose_store, open_cache

ENDPOINT = "https://login.example/contoso/oauth2/v2.0/token"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def app_token_event(name: str) -> dict[str, Any]:
    """What msal hands the cache after an app-only token answer (one AT entry per distinct scope)."""
    return {
        "client_id": "app-1",
        "scope": [f"api://{name}/.default"],
        "token_endpoint": ENDPOINT,
        "response": {"access_token": f"token-{name}", "expires_in": 3600, "token_type": "Bearer"},
        "data": {},
        "grant_type": "client_credentials",
    }


def access_tokens(cache: msal.TokenCache) -> set[str]:
    return {entry["secret"] for entry in cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)}


@pytest.fixture
def no_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's answer made explicit: no encrypted store (as on a server without a keyring)."""

    def unavailable(path: Path) -> Any:
        raise ImportError("Unable to import module 'gi'")

    monkeypatch.setattr(tokencache, "_encrypted_persistence", unavailable)


def test_plain_file_is_owner_only_in_an_owner_only_folder(tmp_path: Path, no_keyring: None) -> None:
    path = tmp_path / "deep" / "cache" / "msal.json"
    cache, reason = open_cache(path)
    cache.add(app_token_event("a"))
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    assert mode_of(Path(f"{path}.lock")) == 0o600
    assert cache.encrypted is False
    assert reason is not None and "no encrypted store" in reason and "gi" in reason
    assert cache.store.description == "plain file, readable only by you (0600)"
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left


def test_a_loose_cache_file_is_tightened_and_a_shared_folder_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    path = folder / "msal.json"
    path.write_text("{}", encoding="utf-8")
    path.chmod(0o644)
    PlainFile(path)
    assert mode_of(path) == 0o600
    folder.chmod(0o777)
    with pytest.raises(ConfigError, match="can be written by other users") as caught:
        PlainFile(path)
    assert f"chmod 700 {folder}" in str(caught.value)


def test_saving_replaces_the_file_atomically(tmp_path: Path, no_keyring: None) -> None:
    path = tmp_path / "msal.json"
    cache, _ = open_cache(path)
    cache.add(app_token_event("a"))
    before = path.stat().st_ino
    cache.add(app_token_event("b"))
    assert path.stat().st_ino != before  # a new file was renamed over the old one, never rewritten in place
    assert len(json.loads(path.read_text())["AccessToken"]) == 2


def test_encryption_is_used_when_the_platform_offers_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from msal_extensions import FilePersistence

    class FakeKeyring(FilePersistence):  # stands in for DPAPI / Keychain / libsecret
        is_encrypted = True

    monkeypatch.setattr(tokencache, "_encrypted_persistence", lambda path: FakeKeyring(str(path)))
    cache, reason = open_cache(tmp_path / "msal.json")
    assert (cache.encrypted, reason) == (True, None)
    assert cache.store.description == "encrypted (FakeKeyring)"
    cache.add(app_token_event("a"))
    other, _ = open_cache(tmp_path / "msal.json")
    assert access_tokens(other) == {"token-a"}


def test_required_encryption_without_a_keyring_is_a_config_error(tmp_path: Path, no_keyring: None) -> None:
    with pytest.raises(ConfigError, match="must be encrypted") as caught:
        choose_store(tmp_path / "msal.json", "required")
    assert "libsecret" in str(caught.value)
    assert choose_store(tmp_path / "msal.json", "off").fallback_reason is None


def test_a_second_cache_object_sees_what_the_first_wrote(tmp_path: Path, no_keyring: None) -> None:
    first, _ = open_cache(tmp_path / "msal.json")
    second, _ = open_cache(tmp_path / "msal.json")
    first.add(app_token_event("a"))
    assert access_tokens(second) == {"token-a"}
    second.add(app_token_event("b"))
    first.add(app_token_event("c"))  # merged on top of b, not over it
    assert access_tokens(PersistentTokenCache(PlainFile(tmp_path / "msal.json"))) == {
        "token-a",
        "token-b",
        "token-c",
    }


def test_concurrent_writers_in_threads_lose_nothing(tmp_path: Path, no_keyring: None) -> None:
    path = tmp_path / "msal.json"
    per_thread, threads = 15, 4

    def writer(n: int) -> None:
        cache, _ = open_cache(path)  # each its own object and file descriptor, as separate runs have
        for i in range(per_thread):
            cache.add(app_token_event(f"t{n}-{i}"))

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    cache, _ = open_cache(path)
    assert len(access_tokens(cache)) == per_thread * threads


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mailmerge.tokencache import PersistentTokenCache, PlainFile
    cache = PersistentTokenCache(PlainFile(Path(sys.argv[1])))
    for i in range(int(sys.argv[3])):
        cache.add({
            "client_id": "app-1", "scope": [f"api://{sys.argv[2]}-{i}/.default"],
            "token_endpoint": "https://login.example/contoso/oauth2/v2.0/token",
            "response": {"access_token": f"{sys.argv[2]}-{i}", "expires_in": 3600}, "data": {},
        })
    """
)


def test_concurrent_runs_in_two_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "msal.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    runs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, "40"], env=env)
        for name in ("first", "second")
    ]
    assert [run.wait(timeout=60) for run in runs] == [0, 0]
    tokens = access_tokens(PersistentTokenCache(PlainFile(path)))
    assert len(tokens) == 80
    assert mode_of(path) == 0o600


def test_a_damaged_cache_is_an_auth_error_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "msal.json"
    path.write_text("{not json", encoding="utf-8")
    path.chmod(0o600)
    cache = PersistentTokenCache(PlainFile(path))
    with pytest.raises(AuthError, match="damaged") as caught:
        access_tokens(cache)
    assert "auth login" in str(caught.value)


def test_a_lock_held_too_long_is_reported(tmp_path: Path) -> None:
    import filelock

    path = tmp_path / "msal.json"
    holder = filelock.FileLock(f"{path}.lock")
    cache = PersistentTokenCache(PlainFile(path), lock_timeout=0.1)
    done = threading.Event()
    failures: list[BaseException] = []

    def hold_and_try() -> None:
        try:
            cache.add(app_token_event("a"))
        except AuthError as exc:
            failures.append(exc)
        done.set()

    with holder:  # another process's lock, as far as this cache object can tell
        thread = threading.Thread(target=hold_and_try)
        thread.start()
        done.wait(5)
        thread.join()
    assert failures and "stayed locked" in str(failures[0])
