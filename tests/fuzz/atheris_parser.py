"""Coverage-guided fuzzing of maitred's request parsing with atheris, on demand.

    pip install atheris
    python tests/fuzz/atheris_parser.py -runs=200000 -max_len=2048 [CORPUS_DIR]

Each input's first byte chooses how the bytes arrive (a pooled server
connection or one opened on the next loop turn, and where the input is cut in
two); the rest is what a client sends. The properties are those of the
hypothesis differential test (tests/fuzz/checks.py): maitred never raises or
logs an error, never forwards what h11 refuses, forwards only well-formed
requests, and what it forwards means the same as what came in. A failure
stops the run with the input saved as ``crash-*`` by libFuzzer.

Not run in CI (atheris is not a test dependency); CI runs the hypothesis tests.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["maitred"]):
    from tests.fuzz.checks import ErrorLog, check_against_reference
    from tests.fuzz.harness import InMemoryProxy

PROXY: InMemoryProxy | None = None
ERRORS = ErrorLog()

# Starting points (first byte: pooled, cut in the middle), and the words of the protocol.
SEEDS = [
    b"\x81GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\x80POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"\x41POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\x21GET http://a/x?q HTTP/1.0\r\nConnection: keep-alive, X-H\r\nX-H: 1\r\n\r\n",
    b"\x01PUT /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
]
WORDS = [
    b"GET ",
    b"POST ",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b"Host: ",
    b"Content-Length: ",
    b"Transfer-Encoding: ",
    b"chunked",
    b"Connection: ",
    b"close",
    b"keep-alive",
    b"Upgrade: ",
    b"Expect: 100-continue",
    b"\r\n\r\n",
    b"0\r\n\r\n",
    b"http://",
    b"X-Forwarded-For: ",
]


def with_default_corpus(argv: list[str]) -> list[str]:
    """Add a seeded corpus directory and a dictionary unless the caller gave them."""
    work = Path(tempfile.mkdtemp(prefix="maitred-atheris-"))
    extra = []
    if not any(not arg.startswith("-") for arg in argv[1:]):
        corpus = work / "corpus"
        corpus.mkdir()
        for index, seed in enumerate(SEEDS):
            (corpus / f"seed-{index}").write_bytes(seed)
        extra.append(str(corpus))
    if not any(arg.startswith("-dict=") for arg in argv):
        dictionary = work / "http.dict"
        dictionary.write_text("".join(f'"{_escape(word)}"\n' for word in WORDS))
        extra.insert(0, f"-dict={dictionary}")
    return [argv[0], *extra[:1], *argv[1:], *extra[1:]]


def _escape(word: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in word)


def one_input(data: bytes) -> None:
    global PROXY
    if PROXY is None:
        PROXY = InMemoryProxy()
        for name in ("maitred", "asyncio"):
            logging.getLogger(name).addHandler(ERRORS)
    if not data:
        return
    control, raw = data[0], data[1:]
    cut = (control >> 1) * len(raw) // 128
    pieces = [piece for piece in (raw[:cut], raw[cut:]) if piece]
    outcome = PROXY.run(pieces or [b""], pooled=bool(control & 1))
    check_against_reference(raw, outcome, ERRORS)


def main() -> None:
    logging.disable(logging.WARNING)  # rejections are logged at INFO/WARNING: noise here
    atheris.Setup(with_default_corpus(sys.argv), one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
