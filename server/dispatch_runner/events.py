"""Typed events and the bus that carries them: bounded, non-blocking fan-out emitters.

The bus carries events only; actions are typed requests (actions.py) a surface hands to the
runner. Publishing never blocks: each subscriber has a bounded buffer, and what does not fit is
dropped and counted (reference 001's ChannelEmitter + MultiEmitter).
"""

from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .model import EVENT_TYPES, TERMINAL_EVENTS, Event

__all__ = ["EVENT_TYPES", "TERMINAL_EVENTS", "Bus", "ChannelEmitter", "Event", "MultiEmitter"]


@dataclass(frozen=True, slots=True)
class BusStatistics:
    """A snapshot of the bus (anyio's `statistics()` style): read by status and by tests."""

    subscribers: int  # event subscribers now
    published: int  # events published since the bus was made
    dropped: int  # events a full subscriber could not take (its reader was too slow)


class ChannelEmitter:
    """A bounded, non-blocking subscriber buffer: a slow reader never blocks the runner."""

    def __init__(self, max_buffer: int = 256) -> None:
        self._send: MemoryObjectSendStream[Event]
        self._recv: MemoryObjectReceiveStream[Event]
        self._send, self._recv = anyio.create_memory_object_stream[Event](max_buffer)
        self.dropped = 0

    def emit(self, event: Event) -> bool:
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self.dropped += 1
            return False
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    @property
    def receive(self) -> MemoryObjectReceiveStream[Event]:
        return self._recv

    def close(self) -> None:
        self._send.close()
        self._recv.close()


class MultiEmitter:
    """Fan-out to every subscriber; one full subscriber does not affect the others."""

    def __init__(self) -> None:
        self._subscribers: list[ChannelEmitter] = []
        self._closed_drops = 0
        self.published = 0

    def subscribe(self, max_buffer: int = 256) -> ChannelEmitter:
        emitter = ChannelEmitter(max_buffer)
        self._subscribers.append(emitter)
        return emitter

    def unsubscribe(self, emitter: ChannelEmitter) -> None:
        if emitter in self._subscribers:
            self._subscribers.remove(emitter)
            self._closed_drops += emitter.dropped
            emitter.close()

    def emit(self, event: Event) -> None:
        self.published += 1
        for emitter in list(self._subscribers):
            emitter.emit(event)

    @property
    def dropped(self) -> int:
        return self._closed_drops + sum(e.dropped for e in self._subscribers)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        for emitter in list(self._subscribers):
            self.unsubscribe(emitter)


class Bus:
    """Events fanned out to bounded subscribers."""

    def __init__(self) -> None:
        self.events = MultiEmitter()

    def publish(self, event: Event) -> None:
        self.events.emit(event)

    def subscribe(self, max_buffer: int = 256) -> ChannelEmitter:
        return self.events.subscribe(max_buffer)

    def unsubscribe(self, emitter: ChannelEmitter) -> None:
        self.events.unsubscribe(emitter)

    @property
    def dropped(self) -> int:
        return self.events.dropped

    def statistics(self) -> BusStatistics:
        return BusStatistics(
            subscribers=self.events.subscribers, published=self.events.published, dropped=self.events.dropped
        )

    def close(self) -> None:
        """Close every subscriber's stream (their readers see end-of-stream)."""
        self.events.close()
