"""``x-request-id`` values for requests that come without one, as Envoy makes them: random UUID v4."""

from __future__ import annotations

import os

# Random bytes for request ids are read from the OS this many ids at a time (a system call per request
# was a measurable part of one): Envoy, too, draws its ids from a buffer of random bytes.
REQUEST_IDS_PER_READ = 256
_ID_BYTES = 16
_random_ids = memoryview(b"")


def new_request_id() -> str:
    """A random x-request-id in UUID v4 form, as Envoy makes one (uuid.uuid4 builds an object first)."""
    global _random_ids
    if not _random_ids:
        _random_ids = memoryview(os.urandom(_ID_BYTES * REQUEST_IDS_PER_READ))
    raw = bytearray(_random_ids[:_ID_BYTES])
    _random_ids = _random_ids[_ID_BYTES:]
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
