"""A binary min-heap whose entries can change key in place (O(log n))."""

from __future__ import annotations

from typing import Generic, TypeVar

from maitred.balancing.base import LiveServer

#: (score, turn, order): lower wins; ``turn`` rotates ties, ``order`` makes keys unique.
Key = tuple[float, float, int]


class HeapEntry:
    __slots__ = ("server", "key", "position", "weight", "turn", "order")

    def __init__(self, server: LiveServer, weight: float, turn: float, order: int) -> None:
        self.server = server
        self.weight = weight
        self.turn = turn
        self.order = order
        self.key: Key = (0.0, turn, order)
        self.position = -1


EntryT = TypeVar("EntryT", bound=HeapEntry)


class IndexedHeap(Generic[EntryT]):
    """Entries ordered by ``entry.key``; each knows its ``position`` so it can be re-sifted."""

    def __init__(self, entries: list[EntryT]) -> None:
        self.entries = entries
        for position, entry in enumerate(entries):
            entry.position = position
        for position in reversed(range(len(entries) // 2)):
            self._sift_down(position)

    def top(self) -> EntryT | None:
        return self.entries[0] if self.entries else None

    def rekeyed(self, entry: EntryT) -> None:
        """``entry.key`` changed: restore the heap order around it."""
        position = entry.position
        if position > 0 and entry.key < self.entries[(position - 1) >> 1].key:
            self._sift_up(position)
        else:
            self._sift_down(position)

    def _sift_up(self, position: int) -> None:
        entries = self.entries
        entry = entries[position]
        key = entry.key
        while position > 0:
            parent_position = (position - 1) >> 1
            parent = entries[parent_position]
            if not key < parent.key:
                break
            entries[position] = parent
            parent.position = position
            position = parent_position
        entries[position] = entry
        entry.position = position

    def _sift_down(self, position: int) -> None:
        entries = self.entries
        size = len(entries)
        entry = entries[position]
        key = entry.key
        while True:
            child_position = 2 * position + 1
            if child_position >= size:
                break
            child = entries[child_position]
            right_position = child_position + 1
            if right_position < size and entries[right_position].key < child.key:
                child_position = right_position
                child = entries[right_position]
            if not child.key < key:
                break
            entries[position] = child
            child.position = position
            position = child_position
        entries[position] = entry
        entry.position = position
