"""The readers-writer lock: readers share, a writer is alone, waiting writers block new readers."""

from __future__ import annotations

import threading
import time

import pytest

from edit_serve import ReadWriteLock


def test_readers_share_and_writer_waits_for_them() -> None:
    lock = ReadWriteLock()
    lock.acquire_read()
    lock.acquire_read()
    assert lock.readers == 2
    got = threading.Event()

    def writer() -> None:
        with lock.write():
            got.set()

    t = threading.Thread(target=writer)
    t.start()
    assert not got.wait(0.1), "writer entered while readers held the lock"
    lock.release_read()
    assert not got.wait(0.05)
    lock.release_read()
    assert got.wait(5)
    t.join()
    assert lock.readers == 0 and not lock.writing


def test_waiting_writer_blocks_new_readers() -> None:
    lock = ReadWriteLock()
    lock.acquire_read()
    order: list[str] = []
    w = threading.Thread(target=lambda: (lock.acquire_write(), order.append("w"), lock.release_write()))
    w.start()
    while True:  # wait until the writer is queued
        with lock._cond:
            if lock._writers_waiting:
                break
        time.sleep(0.001)
    r = threading.Thread(target=lambda: (lock.acquire_read(), order.append("r"), lock.release_read()))
    r.start()
    time.sleep(0.05)
    assert order == []
    lock.release_read()
    w.join(5)
    r.join(5)
    assert order == ["w", "r"]


def test_unbalanced_release_is_an_error() -> None:
    lock = ReadWriteLock()
    with pytest.raises(RuntimeError):
        lock.release_read()
    with pytest.raises(RuntimeError):
        lock.release_write()
