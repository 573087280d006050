"""The broker's close reason, read from what aiormq raises, and which reasons are final."""

from __future__ import annotations

from aiormq.exceptions import ConnectionClosed, ConnectionNotAllowed, ProbableAuthenticationError

from dimsebus.services.bus.connection import close_reason, describe, masked, refusal


def test_a_refused_login_is_final_and_says_why() -> None:
    exc = ProbableAuthenticationError("ACCESS_REFUSED - Login was refused")
    assert close_reason(exc) == (403, "ACCESS_REFUSED - Login was refused")
    assert (
        refusal(exc) == "the broker refused the connection: 403 ACCESS_REFUSED - Login was refused"
    )


def test_a_vhost_not_found_is_final() -> None:
    exc = ConnectionNotAllowed("NOT_ALLOWED - vhost x not found")  # as aiormq raises it
    assert refusal(exc) == "the broker refused the connection: 530 NOT_ALLOWED - vhost x not found"


def test_a_forced_close_is_described_but_not_final() -> None:
    exc = ConnectionClosed(320, "CONNECTION_FORCED - broker forced connection closure")
    assert refusal(exc) is None
    assert describe(exc) == (
        "the broker closed the connection: 320 CONNECTION_FORCED - broker forced connection closure"
    )


def test_anything_else_is_its_type_and_message() -> None:
    assert describe(ConnectionRefusedError(111, "Connect call failed")) == (
        "ConnectionRefusedError: [Errno 111] Connect call failed"
    )
    assert refusal(ConnectionRefusedError()) is None


def test_a_url_is_shown_without_its_password_and_with_its_vhost() -> None:
    assert masked("amqp://guest:secret@host:5672/v%2F1") == "amqp://guest:***@host:5672/v%2F1"
    assert masked("amqp://host") == "amqp://host/"
