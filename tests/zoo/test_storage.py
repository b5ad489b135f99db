from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from zoo.storage import BlobStore


def test_content_addressed_and_deduplicated(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    sha, size, new = store.put_bytes(b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest() and size == 5 and new
    assert store.path(sha).read_bytes() == b"hello"
    assert store.put_bytes(b"hello") == (sha, 5, False)
    assert store.all() == {sha}


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)

    def chunks():
        yield b"partial"
        raise OSError("disk gone")

    with pytest.raises(OSError):
        store.put_stream(chunks())
    assert store.all() == set()
    assert list((tmp_path / "tmp").iterdir()) == []
