"""Several broker URLs in one ``amqp_url``, and which one a client tries next (pure).

``amqp_url`` holds one URL or several, comma-separated: the nodes of one RabbitMQ
cluster. A long-lived client (the relay, every consumer) keeps a ``Rotation`` over them:
it connects to the current one, and moves to the next, round-robin, when a connection
fails or is lost. It backs off only once a whole round has failed, so that moving from
a dead broker to a live one costs no wait. The shell is ``connection.Brokers``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

_SCHEME = re.compile(r"^amqps?://", re.IGNORECASE)
_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]+@")


def parse_urls(text: str) -> tuple[str, ...]:
    """The URLs of a comma-separated ``amqp_url``; ``ValueError`` naming the first bad one."""
    urls = tuple(part.strip() for part in text.split(","))
    if not any(urls):
        raise ValueError("no AMQP URL given")
    for url in urls:
        check_url(url)
    return urls


def check_url(url: str) -> str:
    """``url`` if it is an AMQP URL with a host (and a numeric port, if any), else ValueError."""
    shown = _PASSWORD.sub(r"\1***@", url)  # as written, but for the password
    if not url:
        raise ValueError("an empty URL in the list (two commas, or one at an end)")
    if not _SCHEME.match(url):
        raise ValueError(f"{shown!r} is not an AMQP URL: it must start with amqp:// or amqps://")
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"{shown!r} names no host")
    try:
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        raise ValueError(f"{shown!r} has a port that is not a number from 0 to 65535") from None
    return url


def masked(url: str) -> str:
    """``url`` without its password, and its vhost named (``/`` when none is given)."""
    parts = urlsplit(url)
    user = f"{unquote(parts.username)}:***@" if parts.username else ""
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: the URL is shown as far as it reads
        port = ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path or '/'}"


def masked_all(text: str) -> str:
    """A comma-separated ``amqp_url`` with every password masked."""
    return ",".join(masked(part.strip()) for part in text.split(","))


@dataclass(frozen=True, slots=True)
class Rotation:
    """Which of several broker URLs a client uses now, and how many tries failed in a row."""

    urls: tuple[str, ...]
    index: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("a rotation needs at least one URL")

    @property
    def current(self) -> str:
        """The URL to connect to now."""
        return self.urls[self.index]

    def failed(self) -> Rotation:
        """A try on the current URL failed: the next one is current."""
        return replace(self, index=self._next, failures=self.failures + 1)

    def lost(self) -> Rotation:
        """A connection that had worked was lost: the next URL is current, tried at once."""
        return replace(self, index=self._next, failures=0)

    def connected(self) -> Rotation:
        """The current URL answered."""
        return replace(self, failures=0)

    @property
    def round_failed(self) -> bool:
        """Whether the last ``len(urls)`` tries all failed: time to back off before the next."""
        return self.failures > 0 and self.failures % len(self.urls) == 0

    @property
    def _next(self) -> int:
        return (self.index + 1) % len(self.urls)
