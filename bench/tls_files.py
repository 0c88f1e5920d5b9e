"""One certificate for the https scenario, the same for every proxy, made with openssl."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.tools import require

# ECDSA P-256: the common modern choice, and the cheapest signature per handshake.
CERTIFICATE_NAME = "bench.test"


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    combined: Path  # certificate then key in one file, as HAProxy's "crt" wants it


def generate(workdir: Path) -> TlsFiles:
    files = TlsFiles(workdir / "bench-cert.pem", workdir / "bench-key.pem", workdir / "bench.pem")
    subprocess.run(
        [
            require("openssl"),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(files.key),
            "-out",
            str(files.cert),
            "-days",
            "7",
            "-subj",
            f"/CN={CERTIFICATE_NAME}",
            "-addext",
            f"subjectAltName=DNS:{CERTIFICATE_NAME},IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    files.combined.write_bytes(files.cert.read_bytes() + files.key.read_bytes())
    return files
