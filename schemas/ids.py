"""Time-ordered event ids: UUID version 7 (RFC 9562 5.7), built from given inputs."""

from __future__ import annotations

from uuid import UUID

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62


def uuid7_from(unix_ms: int, random_bits: int) -> UUID:
    """Build a UUIDv7 from a Unix time in milliseconds and 74 random bits."""
    if not 0 <= unix_ms < 1 << 48:
        raise ValueError(f"{unix_ms} is not a valid unix_ms: it does not fit 48 bits")
    rand_a = (random_bits >> 62) & 0xFFF
    rand_b = random_bits & ((1 << 62) - 1)
    return UUID(int=(unix_ms << 80) | _VERSION_7 | (rand_a << 64) | _VARIANT_RFC | rand_b)
