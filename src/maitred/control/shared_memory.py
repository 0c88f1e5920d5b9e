"""Memory shared by the supervisor and its worker processes.

The supervisor creates each region as a memfd (anonymous, sized once, pages
allocated only when first touched) and keeps it open; a worker maps it by
opening ``/proc/<supervisor pid>/fd/<fd>``. That path, unlike a file
descriptor inherited at spawn, lets running workers map a region created
later (a reload that needs a bigger rate limit table), and unlike a named
file in /dev/shm nothing is left behind when maitred dies: the memory goes
with the last process that maps it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RegionAddress:
    """How a worker finds a region: a path it can open, and the region's size."""

    path: str
    size: int

    def to_message(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size}

    @classmethod
    def from_message(cls, message: dict[str, object]) -> RegionAddress:
        return cls(str(message["path"]), int(str(message["size"])))


class SharedRegion:
    """One mapped region; ``fd`` stays open while the region is in use (fcntl locks use it)."""

    def __init__(self, fd: int, size: int, path: str) -> None:
        self.fd = fd
        self.size = size
        self.path = path
        self.memory = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    @classmethod
    def create(cls, name: str, size: int) -> SharedRegion:
        """A new zero-filled region (in the supervisor)."""
        fd = os.memfd_create(f"maitred-{name}", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls(fd, size, f"/proc/{os.getpid()}/fd/{fd}")

    @classmethod
    def attach(cls, address: RegionAddress) -> SharedRegion:
        """Map a region the supervisor created (in a worker)."""
        fd = os.open(address.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size < address.size:
                raise ValueError(f"shared region {address.path} is smaller than announced")
            return cls(fd, address.size, address.path)
        except BaseException:
            os.close(fd)
            raise

    @property
    def address(self) -> RegionAddress:
        return RegionAddress(self.path, self.size)

    def close(self) -> None:
        # Views cast from the mapping must be released first (mmap refuses otherwise).
        with contextlib.suppress(BufferError):  # a view still alive keeps the mapping
            self.memory.close()
        os.close(self.fd)
