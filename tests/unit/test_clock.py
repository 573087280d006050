"""Event ids: UUIDv7, unique across threads and across a fork."""

from __future__ import annotations

import os
import threading
import time

from dimsebus.services.clock import new_id


def test_ids_are_version_7_and_carry_the_time() -> None:
    before = time.time_ns() // 1_000_000
    found = new_id()
    after = time.time_ns() // 1_000_000
    assert found.version == 7
    assert before <= found.int >> 80 <= after


def test_ids_are_unique_within_and_across_threads() -> None:
    per_thread: list[list[str]] = []

    def draw() -> None:
        per_thread.append([str(new_id()) for _ in range(5_000)])

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    draw()
    every = [each for ids in per_thread for each in ids]
    assert len(set(every)) == len(every) == 25_000


def test_a_forked_child_does_not_repeat_the_ids_its_parent_goes_on_with() -> None:
    new_id()  # the parent's pool holds bytes for the ids to come
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write, b"".join(new_id().bytes for _ in range(100)))
        os._exit(0)
    os.waitpid(child, 0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 4096):
        data += chunk
    os.close(read)
    random_parts = {data[at + 6 : at + 16] for at in range(0, len(data), 16)}
    assert len(random_parts) == 100
    assert not random_parts & {new_id().bytes[6:] for _ in range(100)}
