"""Taking turns at the error budget's look ahead: first come first served, a slice at a
time, and a stop ends a wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ingestor import pipeline
from ingestor.app import ingest_folder_once
from ingestor.errors import Interrupted
from ingestor.ledger import FileState
from ingestor.simulator import Simulator
from ingestor.turns import Turns
from tests.conftest import api_key, make_folder, settings_for

NEVER = threading.Event()


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition another thread brings about (one with no event of its own)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


class Taker(threading.Thread):
    """Takes a turn (or passes one), says so, and ends it when told."""

    def __init__(self, turns: Turns, name: str, order: list[str], passing: bool = False) -> None:
        super().__init__(daemon=True)
        self.turns, self.label, self.order, self.passing = turns, name, order, passing
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.passing:
                self.turns.pass_turn(NEVER)
            else:
                self.turns.acquire(NEVER)
            self.order.append(self.label)
            self.done.wait()
            self.turns.release()
        except BaseException as exc:
            self.error = exc


def test_waiters_are_served_in_the_order_they_came() -> None:
    turns, order = Turns(1), []
    turns.acquire(NEVER)
    takers = []
    for index, name in enumerate("bcd"):
        taker = Taker(turns, name, order)
        taker.start()
        until(lambda index=index: turns.waiting == index + 1)
        takers.append(taker)
    turns.release()
    for taker in takers:
        until(lambda taker=taker: taker.label in order)
        assert order[-1] == taker.label  # nobody else went meanwhile
        taker.done.set()
        taker.join()
    assert order == ["b", "c", "d"]
    turns.acquire(NEVER)  # every slot came back


def test_passing_a_turn_lets_the_first_waiter_go_and_queues_behind_it() -> None:
    turns, order = Turns(1), []
    turns.acquire(NEVER)  # the test holds the only slot, as a long look ahead would
    waiter = Taker(turns, "waiter", order)
    waiter.start()
    until(lambda: turns.waiting == 1)
    passed = threading.Thread(target=lambda: (turns.pass_turn(NEVER), order.append("back")))
    passed.start()
    until(lambda: order == ["waiter"])
    assert turns.waiting == 1  # the one that passed now waits behind it
    waiter.done.set()
    passed.join(10)
    assert order == ["waiter", "back"]
    turns.release()


def test_passing_with_nobody_waiting_keeps_the_turn() -> None:
    turns = Turns(1)
    turns.acquire(NEVER)
    turns.pass_turn(NEVER)  # returns at once: nobody to let go first
    assert turns.waiting == 0
    turns.release()


def test_a_stop_ends_a_wait_and_loses_no_slot() -> None:
    turns, stop = Turns(1), threading.Event()
    turns.acquire(NEVER)
    caught: list[BaseException] = []

    def wait() -> None:
        try:
            turns.acquire(stop)
        except Interrupted as exc:
            caught.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    until(lambda: turns.waiting == 1)
    stop.set()
    waiter.join(10)
    assert len(caught) == 1 and turns.waiting == 0
    turns.release()
    turns.acquire(NEVER)  # the slot is free again
    turns.release()


def test_a_file_waits_for_its_turn_before_it_is_read_whole(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While other files hold every turn, a fresh file neither reads ahead nor sends; given
    a turn, it goes on as ever."""
    turns = Turns(1)
    monkeypatch.setattr(pipeline, "READ_AHEAD", turns)
    folder = make_folder(tmp_path / "drop")
    (folder / "a.jsonl").write_bytes(b"".join(b'{"id": %d}\n' % i for i in range(50)))
    turns.acquire(NEVER)  # another file's turn
    result: list[FileState] = []
    worker = threading.Thread(
        target=lambda: result.append(
            ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s"))
            .files[0]
            .run.state
        )
    )
    worker.start()
    until(lambda: turns.waiting == 1)
    assert not any(r.path.endswith("bulk-create-jobs") for r in sim.state.requests)
    turns.release()
    worker.join(30)
    assert result == [FileState.DONE]
    assert sum(1 for r in sim.state.requests if r.path.endswith("bulk-create-jobs")) == 1


@pytest.mark.parametrize("sending", [True, False])
def test_the_look_ahead_rests_as_long_as_it_works_only_while_other_lanes_send(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sending: bool
) -> None:
    rests: list[float] = []
    monkeypatch.setattr(pipeline, "ROWS_A_REST", 100)
    monkeypatch.setattr(pipeline, "others_sending", lambda: sending)
    monkeypatch.setattr(pipeline, "_rest", lambda stop, seconds: rests.append(seconds))
    folder = make_folder(tmp_path / "drop")
    (folder / "a.jsonl").write_bytes(b"".join(b'{"id": %d}\n' % i for i in range(20_000)))
    result = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s"))
    assert result.files[0].run.state is FileState.DONE
    if sending:  # a rest at least every block read ahead, each as long as the work before it
        assert len(rests) >= 5 and all(0 <= rest < 1 for rest in rests)
    else:
        assert rests == []


def test_a_stop_while_passing_a_turn_gives_back_no_slot_it_does_not_hold() -> None:
    """The holder lets a waiter go, then is stopped while it waits to go on: it holds no
    slot, so leaving its turn must not free one (the slots would then grow past one)."""
    turns, stop, order = Turns(1), threading.Event(), []
    caught: list[BaseException] = []
    entered = threading.Event()

    def holder() -> None:
        try:
            with turns.turn(stop) as turn:
                entered.set()
                until(lambda: turns.waiting == 1)
                turn.pass_on()
        except Interrupted as exc:
            caught.append(exc)

    first = threading.Thread(target=holder)
    first.start()
    assert entered.wait(10)  # the holder has the only slot
    waiter = Taker(turns, "waiter", order)
    waiter.start()
    until(lambda: order == ["waiter"])  # the holder passed its turn and waits behind it
    stop.set()
    first.join(10)
    assert len(caught) == 1
    waiter.done.set()
    waiter.join(10)
    turns.acquire(NEVER)  # the one slot is back...
    with pytest.raises(Interrupted):
        turns.acquire(stop)  # ...and only one: a second waits, and the stop ends the wait
    turns.release()
