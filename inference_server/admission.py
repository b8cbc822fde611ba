"""A bounded queue in front of the engine's slots: beyond `queue_size` waiting, refuse at once."""

from __future__ import annotations

import asyncio


class QueueFull(Exception):
    pass


class Admission:
    def __init__(self, slots: int, queue_size: int) -> None:
        self.slots = slots
        self.queue_size = queue_size
        self.waiting = 0
        self._free = asyncio.Semaphore(slots)

    @property
    def active(self) -> int:
        return self.slots - self._free._value

    async def acquire(self) -> None:
        """Wait for a slot; raise QueueFull if the queue is already at its bound."""
        if self._free.locked() and self.waiting >= self.queue_size:
            raise QueueFull(f"server busy: {self.slots} generating, {self.waiting} waiting")
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._free.release()
