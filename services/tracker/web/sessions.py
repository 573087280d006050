"""Pure: the web page's sign-in sessions, CSRF tokens and same-origin check.

A person proves the token once; the page then holds a signed, expiring session
cookie. Every key is derived from the token (HMAC), so every copy of the tracker
(active or standby) accepts the same cookie, and a new token ends every session.
Time and randomness come in as arguments; comparisons of secrets take constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

COOKIE = "dimsebus_session"
_COOKIE_VALUE = re.compile(r"^([0-9a-f]{32})\.([0-9]{1,12})\.([0-9a-f]{64})$")


def signing_key(token: str) -> bytes:
    """The key that signs sessions and CSRF tokens, derived from the sign-in token."""
    return hmac.new(token.encode(), b"dimsebus web session v1", hashlib.sha256).digest()


def token_matches(expected: str, given: str) -> bool:
    """Whether ``given`` is the token, in time that depends on neither (digests compared)."""
    want = hashlib.sha256(expected.encode()).digest()
    got = hashlib.sha256(given.encode()).digest()
    return hmac.compare_digest(want, got)


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in person's session: a random id, and when it ends (seconds since 1970)."""

    id: str
    expires: int

    @property
    def public_id(self) -> str:
        """A name for the session that the log may show: it reveals nothing of the id."""
        return hashlib.sha256(f"dimsebus session {self.id}".encode()).hexdigest()[:16]


def new_session(random_hex: str, now: float, lifetime: float) -> Session:
    """A session with id ``random_hex`` (32 hex digits from a CSPRNG) that ends after
    ``lifetime`` seconds."""
    if not re.fullmatch(r"[0-9a-f]{32}", random_hex):
        raise ValueError("a session id is 32 lowercase hex digits")
    return Session(random_hex, int(now + lifetime))


def _sign(key: bytes, purpose: str, text: str) -> str:
    return hmac.new(key, f"{purpose}:{text}".encode(), hashlib.sha256).hexdigest()


def cookie_value(key: bytes, session: Session) -> str:
    """The cookie that carries ``session``: id, end and their signature."""
    body = f"{session.id}.{session.expires}"
    return f"{body}.{_sign(key, 'session', body)}"


def read_cookie(key: bytes, value: str | None, now: float) -> Session | None:
    """The session a cookie carries, if its signature is ours and it has not ended."""
    found = _COOKIE_VALUE.match(value or "")
    if found is None:
        return None
    session_id, expires, signature = found.groups()
    body = f"{session_id}.{expires}"
    if not hmac.compare_digest(signature, _sign(key, "session", body)):
        return None
    session = Session(session_id, int(expires))
    return session if now < session.expires else None


def csrf_token(key: bytes, session: Session) -> str:
    """The session's synchronizer token: each form of the page carries it."""
    return _sign(key, "csrf", session.id)


def csrf_matches(key: bytes, session: Session, given: str) -> bool:
    """Whether a form's token is its session's."""
    return hmac.compare_digest(csrf_token(key, session).encode(), given.encode())


def same_origin(origin: str | None, referer: str | None, host: str) -> bool:
    """Whether a POST came from a page of this server (``host``: the request's Host).

    The browser's Origin header says where the form was; without it (older browsers),
    the Referer; a request with neither is refused.
    """
    claimed = origin if origin and origin != "null" else referer
    if not claimed:
        return False
    parts = urlsplit(claimed)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


@dataclass(slots=True)
class Attempts:
    """Failed sign-ins over the last ``window`` seconds: after ``limit`` of them, none is
    tried until the oldest is older than the window (a token cannot be guessed fast)."""

    limit: int = 5
    window: float = 60.0
    failures: deque[float] = field(default_factory=deque)

    def allowed(self, now: float) -> bool:
        """Whether a sign-in may be tried now."""
        while self.failures and self.failures[0] <= now - self.window:
            self.failures.popleft()
        return len(self.failures) < self.limit

    def failed(self, now: float) -> None:
        """Count a wrong token given at ``now``."""
        self.failures.append(now)
