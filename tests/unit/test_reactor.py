"""The reactor checkpoint: a pause returns only once the reactor is really paused."""

from __future__ import annotations

import select
import socket
import threading
import time

from dimsebus.services.node import reactor
from dimsebus.services.node.reactor import ReactorCheckpoint


def test_clear_waits_for_the_reactor_to_reach_its_checkpoint() -> None:
    # given a reactor thread in the middle of an iteration (past wait(), not back yet)
    checkpoint = ReactorCheckpoint()
    inside, leave, stop = threading.Event(), threading.Event(), threading.Event()
    iterations: list[float] = []

    def reactor() -> None:
        while not stop.is_set():
            checkpoint.wait()
            inside.set()
            leave.wait()
            iterations.append(time.monotonic())

    thread = threading.Thread(target=reactor, daemon=True)
    thread.start()
    assert inside.wait(5)
    # when a sender pauses it
    paused_at: list[float] = []

    def pause() -> None:
        checkpoint.clear()
        paused_at.append(time.monotonic())

    sender = threading.Thread(target=pause)
    sender.start()
    # then the pause has not returned while the reactor is still inside its iteration
    sender.join(0.1)
    assert sender.is_alive()
    assert not paused_at
    leave.set()
    sender.join(5)
    # and returns once the iteration ended, with the reactor blocked at the checkpoint
    assert paused_at
    assert paused_at[0] >= iterations[0]
    count = len(iterations)
    time.sleep(0.05)
    assert len(iterations) == count
    stop.set()
    checkpoint.set()
    thread.join(5)


def test_the_reactor_itself_and_an_ended_reactor_never_block_a_pause() -> None:
    checkpoint = ReactorCheckpoint()
    done = threading.Event()

    def reactor() -> None:
        checkpoint.wait()
        checkpoint.clear()  # a handler on the reactor thread sending on its own association
        done.set()

    thread = threading.Thread(target=reactor)
    thread.start()
    thread.join(5)
    assert done.is_set()
    checkpoint.set()
    started = time.monotonic()
    checkpoint.clear()  # the reactor thread has ended
    assert time.monotonic() - started < 1


def test_a_reactor_done_with_its_iteration_is_paused_without_waiting_for_its_sleep() -> None:
    # given a reactor that parks after its work, then sleeps before its checkpoint (as
    # pynetdicom's does: 1 ms per iteration)
    paused: list[bool] = []
    checkpoint = ReactorCheckpoint(on_pause=lambda: paused.append(True))
    parked, slept, stop = threading.Event(), threading.Event(), threading.Event()
    worked: list[float] = []

    def reactor() -> None:
        while not stop.is_set():
            checkpoint.wait()
            worked.append(time.monotonic())
            checkpoint.parked()
            parked.set()
            time.sleep(0.3)
            slept.set()  # back at its checkpoint next

    thread = threading.Thread(target=reactor, daemon=True)
    thread.start()
    assert parked.wait(5)
    # when a sender pauses it during that sleep
    started = time.monotonic()
    checkpoint.clear()
    # then the pause returns at once, says the association is paused
    assert time.monotonic() - started < 0.25
    assert paused
    # and the reactor, back at its checkpoint after the sleep, does no more work until
    # it is let go
    count = len(worked)
    assert slept.wait(5)
    stop.wait(0.1)  # its next iteration would start now, were it not paused
    assert len(worked) == count
    stop.set()
    checkpoint.set()
    thread.join(5)
    assert len(worked) == count + 1


def _sleeping_dul(sock: socket.socket, seconds: float) -> tuple[threading.Thread, list[float]]:
    """A thread that sleeps as a node's DUL thread does (``wake_on_data``), once."""
    slept: list[float] = []

    def run() -> None:
        started = time.monotonic()
        reactor._DulClock.sleep(seconds)
        slept.append(time.monotonic() - started)

    thread = threading.Thread(target=run)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    reactor._POLLERS[thread] = poller
    return thread, slept


def test_a_dul_thread_wakes_from_its_idle_sleep_when_the_peer_sends() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        thread, slept = _sleeping_dul(ours, 5.0)
        thread.start()
        time.sleep(0.05)
        peer.send(b"\x02")  # a C-STORE-RSP's first byte
        thread.join(5)
        assert slept
        assert slept[0] < 1.0


def test_a_closed_socket_makes_no_busy_loop_and_other_threads_sleep_plainly() -> None:
    ours, peer = socket.socketpair()
    peer.close()
    with ours:
        thread, slept = _sleeping_dul(ours, 0.2)
        ours.close()  # the descriptor is now invalid
        thread.start()
        thread.join(5)
        assert slept
        assert slept[0] >= 0.19
    started = time.monotonic()
    reactor._DulClock.sleep(0.05)  # not a DUL thread of the node
    assert time.monotonic() - started >= 0.049
