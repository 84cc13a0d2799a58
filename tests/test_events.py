"""Typed events and the bus: bounded non-blocking emitters, fan-out (DESIGN §2)."""

from collections.abc import Iterator

import anyio
import pytest

from dispatch_runner.events import (
    EVENT_TYPES,
    TERMINAL_EVENTS,
    Bus,
    ChannelEmitter,
    Event,
    MultiEmitter,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def closing() -> Iterator[list[ChannelEmitter]]:
    """Emitters to close after the test (an unclosed memory stream warns, and warnings fail)."""
    emitters: list[ChannelEmitter] = []
    yield emitters
    for emitter in emitters:
        emitter.close()


def ev(n: int, type_: str = "AgentCompleted") -> Event:
    return Event(type=type_, workspace=f"w{n}", at=float(n), id=n)


def drain(emitter: ChannelEmitter) -> list[Event]:
    out: list[Event] = []
    while True:
        try:
            out.append(emitter.receive.receive_nowait())
        except anyio.WouldBlock:
            return out


# ---- events -----------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", ["AgentDone", "agentcompleted", "", "runner.dispatch"])
def test_event_rejects_unknown_types(type_: str) -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        Event(type=type_)


def test_every_design_event_type_is_known() -> None:
    design = {
        "AgentQueued",
        "AgentStarted",
        "AgentCompleted",
        "AgentFailed",
        "AgentKilled",
        "AgentLost",
        "TaskDeadLettered",
        "QueueFrozen",
        "QueueUnfrozen",
        "PoolBackoff",
        "ChannelPush",
    }
    assert design <= set(EVENT_TYPES)
    for type_ in EVENT_TYPES:
        assert Event(type=type_).type == type_
    assert TERMINAL_EVENTS == {
        "AgentCompleted",
        "AgentFailed",
        "AgentKilled",
        "AgentLost",
        "TaskDeadLettered",
    }


def test_event_defaults_and_immutability() -> None:
    event = Event(type="AgentQueued")
    assert (event.workspace, event.at, event.origin, dict(event.data), event.id) == (None, 0.0, None, {}, 0)
    with pytest.raises(AttributeError):
        event.type = "AgentStarted"  # type: ignore[misc]  # frozen dataclass: the point of the test


# ---- ChannelEmitter ---------------------------------------------------------------------------


def test_channel_emitter_is_bounded_never_blocks_and_counts_drops(closing: list[ChannelEmitter]) -> None:
    emitter = ChannelEmitter(max_buffer=2)
    closing.append(emitter)
    assert [emitter.emit(ev(n)) for n in range(5)] == [True, True, False, False, False]
    assert emitter.dropped == 3
    assert drain(emitter) == [ev(0), ev(1)]
    # room again once the reader caught up
    assert emitter.emit(ev(5)) is True
    assert drain(emitter) == [ev(5)]
    assert emitter.dropped == 3


def test_closed_channel_emitter_refuses_without_counting_a_drop() -> None:
    emitter = ChannelEmitter(max_buffer=1)
    emitter.close()
    assert emitter.emit(ev(1)) is False
    assert emitter.dropped == 0


@pytest.mark.anyio
async def test_a_subscriber_receives_events_in_order(closing: list[ChannelEmitter]) -> None:
    emitter = ChannelEmitter(max_buffer=8)
    closing.append(emitter)
    for n in range(3):
        emitter.emit(ev(n))
    with anyio.fail_after(1):
        got = [await emitter.receive.receive() for _ in range(3)]
    assert got == [ev(0), ev(1), ev(2)]


# ---- MultiEmitter -----------------------------------------------------------------------------


def test_multi_emitter_fans_out_and_a_full_subscriber_does_not_affect_others(
    closing: list[ChannelEmitter],
) -> None:
    multi = MultiEmitter()
    slow = multi.subscribe(max_buffer=1)
    fast = multi.subscribe(max_buffer=10)
    closing += [slow, fast]
    for n in range(4):
        multi.emit(ev(n))
    assert drain(fast) == [ev(0), ev(1), ev(2), ev(3)]
    assert drain(slow) == [ev(0)]
    assert (slow.dropped, fast.dropped, multi.dropped) == (3, 0, 3)


def test_unsubscribed_emitter_gets_nothing_and_its_drops_stay_counted(closing: list[ChannelEmitter]) -> None:
    multi = MultiEmitter()
    gone = multi.subscribe(max_buffer=1)
    stays = multi.subscribe(max_buffer=10)
    closing.append(stays)
    multi.emit(ev(1))
    multi.emit(ev(2))
    multi.unsubscribe(gone)
    multi.emit(ev(3))
    assert drain(stays) == [ev(1), ev(2), ev(3)]
    assert multi.dropped == 1
    multi.unsubscribe(gone)  # twice is harmless
    assert multi.dropped == 1


# ---- Bus --------------------------------------------------------------------------------------


def test_bus_publishes_to_every_subscriber_and_sums_their_drops(closing: list[ChannelEmitter]) -> None:
    bus = Bus()
    a = bus.subscribe(max_buffer=1)
    b = bus.subscribe(max_buffer=2)
    c = bus.subscribe(max_buffer=10)
    closing += [b, c]
    for n in range(4):
        bus.publish(ev(n))
    assert (a.dropped, b.dropped, c.dropped) == (3, 2, 0)
    assert bus.dropped == 5
    assert drain(c) == [ev(0), ev(1), ev(2), ev(3)]
    bus.unsubscribe(a)
    assert bus.dropped == 5
