"""files.sha256_while: a backup's checksum computed in a thread beside its verification (issue
12 figure 4) gives what sha256_of gives, keeps the lease while the hash outlasts the work, and
stops when the work fails or its result is not wanted, leaving no thread behind."""

from __future__ import annotations

import threading

import pytest

import pggit_supervisor.files as files
from pggit_supervisor.files import sha256_of, sha256_while


def hashing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sha256"]


def test_the_digest_beside_the_work_is_sha256_ofs_for_a_file_and_a_tree(tmp_path):
    single = tmp_path / "dump"
    single.write_bytes(b"x" * (3 << 20) + b"tail")
    tree = tmp_path / "base"
    (tree / "global").mkdir(parents=True)
    (tree / "PG_VERSION").write_text("15\n")
    (tree / "global" / "pg_control").write_bytes(bytes(range(256)) * 64)
    for path in (single, tree):
        result, digest = sha256_while(str(path), None, lambda: "verified", lambda r: r == "verified")
        assert result == "verified"
        assert digest == sha256_of(str(path))
    assert hashing_threads() == []


def test_the_lease_is_kept_while_the_hash_outlasts_the_work(tmp_path, monkeypatch):
    big = tmp_path / "big"
    big.write_bytes(b"y" * (96 << 20))
    monkeypatch.setattr(files, "_THREAD_WAIT_SECONDS", 0.001)
    calls = []
    _, digest = sha256_while(str(big), lambda: calls.append(1), lambda: None, lambda _: True)
    assert digest == sha256_of(str(big))
    assert calls, "no checkpoint while waiting for the hash"


def test_an_unwanted_result_stops_the_hash_and_gives_no_digest(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"z" * (64 << 20))
    result, digest = sha256_while(str(big), None, lambda: "truncated", lambda r: r == "verified")
    assert (result, digest) == ("truncated", None)
    assert hashing_threads() == []


def test_a_failing_work_or_checkpoint_stops_the_hash_and_raises(tmp_path, monkeypatch):
    big = tmp_path / "big"
    big.write_bytes(b"w" * (64 << 20))

    def work():
        raise RuntimeError("pg_restore could not start")

    with pytest.raises(RuntimeError, match="could not start"):
        sha256_while(str(big), None, work, lambda _: True)
    assert hashing_threads() == []

    monkeypatch.setattr(files, "_THREAD_WAIT_SECONDS", 0.0001)

    def cancelled():
        raise KeyboardInterrupt  # what a stop looks like inside the worker's checkpoint

    with pytest.raises(KeyboardInterrupt):
        sha256_while(str(big), cancelled, lambda: None, lambda _: True)
    assert hashing_threads() == []
