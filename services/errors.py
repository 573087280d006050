"""The one error hierarchy of dimsebus; every message names the field or thing that failed."""

from __future__ import annotations


class DimsebusError(Exception):
    """Base of every error dimsebus raises on purpose."""


class ConfigError(DimsebusError):
    """A configuration file, environment variable or flag has a bad value."""


class TopologyError(DimsebusError):
    """The broker holds an exchange or queue that differs from the contract."""


class TopologyNotAllowed(TopologyError):
    """The broker user may not declare the topology (no configure permission)."""


class InvalidEvent(DimsebusError):
    """A message body is not a valid event of the contract."""


class PublishError(DimsebusError):
    """The broker did not take an event."""


class UnroutableEvent(PublishError):
    """The broker returned a mandatory message: no queue is bound for its routing key."""


class EventNacked(PublishError):
    """The broker answered a publish with basic.nack (e.g. a queue refused it)."""


class PublishInterrupted(PublishError):
    """The connection was lost before the broker confirmed, and did not come back in time."""


class Unprocessable(DimsebusError):
    """A valid event that a consumer can never handle; it is parked, not retried."""
