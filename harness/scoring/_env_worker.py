"""The worker a scorer with an environment runs in: ``main([ENTRY, LOCATIONS_JSON])`` in the environment's Python.

It runs inside the scorer's own environment (``harness.scoring.environments``), so it needs only the standard
library and Pillow.  The protocol, on the child's stdin and stdout: each message is a 4-byte big-endian length, a
UTF-8 JSON header of that length, then the binary blobs whose lengths the header lists under ``"blobs"``.
- worker -> harness, once: ``{"ready": true}`` after ``ENTRY(**LOCATIONS)`` built the scorer, else ``{"error": ...}``;
- harness -> worker: ``{"prompts": [...]}`` with one PNG blob per prompt; the answer ``{"scores": [...]}`` or
  ``{"error": "one line"}``.  End of input ends the worker.
Everything the scorer prints goes to stderr (the worker's log), never into the protocol.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import struct
import sys
import threading
import time
import traceback
from typing import BinaryIO

from PIL import Image

MAX_HEADER = 1 << 24  # a larger length is not a header: the stream is garbage
_LENGTH = struct.Struct(">I")

# The protocol's output stream while the worker runs (stand-in scorers in tests write garbage to it).
CHANNEL: BinaryIO | None = None


class ProtocolError(Exception):
    """The other side sent something that is not a message."""


def write_message(stream: BinaryIO, header: dict, blobs: list[bytes] = ()) -> None:
    """Send ``header`` (JSON) and ``blobs`` as one message and flush."""
    data = json.dumps({**header, "blobs": [len(blob) for blob in blobs]}).encode()
    stream.write(_LENGTH.pack(len(data)) + data + b"".join(blobs))
    stream.flush()


def parse_header(data: bytes) -> tuple[dict, list[int]]:
    """The JSON header of a message and its blobs' lengths; ``ProtocolError`` if it is not one."""
    try:
        header = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not JSON ({exc})") from None
    sizes = header.get("blobs") if isinstance(header, dict) else None
    if not isinstance(sizes, list) or not all(isinstance(size, int) and size >= 0 for size in sizes):
        raise ProtocolError(f"not a message header: {data[:80]!r}")
    return header, sizes


def header_length(prefix: bytes) -> int:
    """The header length a 4-byte prefix announces; ``ProtocolError`` past ``MAX_HEADER``."""
    (length,) = _LENGTH.unpack(prefix)
    if length > MAX_HEADER:
        raise ProtocolError(f"a header of {length} bytes announced (the stream starts with {prefix!r})")
    return length


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    if not data and n:
        return None
    if len(data) != n:
        raise ProtocolError(f"the stream ended inside a message ({len(data)} of {n} bytes)")
    return data


def read_message(stream: BinaryIO) -> tuple[dict, list[bytes]] | None:
    """The next message (header, blobs) from a blocking stream; None at end of input."""
    prefix = _read_exact(stream, _LENGTH.size)
    if prefix is None:
        return None
    header, sizes = parse_header(_read_exact(stream, header_length(prefix)) or b"")
    return header, [_read_exact(stream, size) or b"" for size in sizes]


def _exit_with_parent(parent: int) -> None:
    """End this process when the harness that started it is gone, even in the middle of a batch (no orphans)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def main(argv: list[str]) -> int:
    """Build the scorer ``argv[0]`` (``module:callable``) with the JSON keywords ``argv[1]``, then serve batches."""
    global CHANNEL
    parent = int(os.environ.get("HARNESS_ENV_PARENT", os.getppid()))
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    # The protocol keeps the real stdout; fd 1 (C libraries' prints too) goes to the log.
    CHANNEL = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    source = sys.stdin.buffer
    entry, keywords = argv[0], json.loads(argv[1])
    try:
        module_name, _, attribute = entry.partition(":")
        scorer = getattr(importlib.import_module(module_name), attribute)(**keywords)
    except Exception as exc:
        print(f"building {entry} failed", file=sys.stderr)
        traceback.print_exc()
        write_message(CHANNEL, {"error": f"{entry}: {_first_line(exc)}"})
        return 1
    write_message(CHANNEL, {"ready": True})
    while (message := read_message(source)) is not None:
        header, blobs = message
        try:
            images = [Image.open(io.BytesIO(blob)).convert("RGB") for blob in blobs]
            scores = [float(value) for value in scorer.score(images, list(header["prompts"]))]
        except Exception as exc:
            traceback.print_exc()
            write_message(CHANNEL, {"error": _first_line(exc)})
            continue
        write_message(CHANNEL, {"scores": scores})
    return 0
