"""Steady keep-alive traffic from threads, for tests that break things under load."""

from __future__ import annotations

import threading
from collections import Counter
from types import TracebackType

from tests.support.backends import build_request, connect, read_response


class SteadyLoad:
    """``clients`` keep-alive connections sending GET ``path`` until the block ends.

    ``answered`` counts answers by the X-Backend that gave them; ``failures`` lists
    every non-200 answer and every broken connection.
    """

    def __init__(self, port: int, clients: int = 6, path: str = "/") -> None:
        self.port = port
        self.path = path
        self.answered: Counter[str] = Counter()
        self.failures: list[str] = []
        self._done = threading.Event()
        self._progress = threading.Condition()
        #: Requests sent and answers read, per client.
        self._sent = [0] * clients
        self._read = [0] * clients
        self._threads = [
            threading.Thread(target=self._client, args=(index,)) for index in range(clients)
        ]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(10)

    def total(self) -> int:
        with self._progress:
            return sum(self.answered.values())

    def wait_for_total(self, count: int, timeout: float = 30.0) -> None:
        """Until ``count`` answers (of any status) came back in all."""
        with self._progress:
            reached = self._progress.wait_for(
                lambda: sum(self.answered.values()) >= count or self.failures, timeout
            )
        assert reached, f"only {self.total()} answers in {timeout}s"

    def wait_for(self, backend: str, count: int, timeout: float = 30.0) -> None:
        """Until ``backend`` gave ``count`` answers."""
        with self._progress:
            reached = self._progress.wait_for(lambda: self.answered[backend] >= count, timeout)
        assert reached, f"{backend} gave only {self.answered[backend]} answers"

    def wait_for_answers_to_sent(self, timeout: float = 30.0) -> None:
        """Until every request sent so far has its answer counted (answers the
        balancer already wrote may still be on their way when this is called)."""
        with self._progress:
            sent = list(self._sent)
            reached = self._progress.wait_for(
                lambda: all(r >= s for r, s in zip(self._read, sent, strict=True)) or self.failures,
                timeout,
            )
        assert reached, f"answers still missing after {timeout}s"

    def _client(self, index: int) -> None:
        try:
            with connect("127.0.0.1", self.port) as sock:
                while not self._done.is_set():
                    with self._progress:
                        self._sent[index] += 1
                    sock.sendall(build_request("GET", self.path))
                    response = read_response(sock)
                    with self._progress:
                        if response.status != 200:
                            self.failures.append(f"{response.status} {response.body!r}")
                        self.answered[response.header("X-Backend") or "?"] += 1
                        self._read[index] += 1
                        self._progress.notify_all()
        except OSError as exc:
            with self._progress:
                self.failures.append(repr(exc))
                self._progress.notify_all()
