"""The thread hand-off: the capture's work is done by the thread that waits for a response.

pynetdicom reads a response on the association's DUL thread, which also sends
the next request's PDUs: whatever it does there delays every C-STORE. And the
thread that sends the requests is busy until it waits for the response in
``dimse.get_msg`` (``pynetdicom_internals.wrap_get_msg``). So the handlers only
note what was sent and what arrived, and that thread records a request once it
starts waiting for the response, and spools the response's event on waking,
before ``get_msg`` returns the response: before the node acts on it or sends
anything more. A response that nobody waits for (one after the DIMSE timeout)
is spooled by the DUL thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pynetdicom.association import Association

from dimsebus.services.node import pynetdicom_internals
from dimsebus.services.node.jobs import AssociationState


def spool_while_waiting(
    assoc: Association,
    state_of: Callable[[Association], AssociationState | None],
    catch_up: Callable[[AssociationState], object],
) -> None:
    """Make ``assoc``'s ``get_msg`` ``catch_up`` its state before and after each wait."""

    def spooling(take: Callable[..., Any]) -> Callable[..., Any]:
        def get_msg(block: bool = False) -> Any:
            state = state_of(assoc)
            if state is None:
                return take(block)
            if block:
                state.awaited = True
                if state.sent:
                    catch_up(state)
            try:
                return take(block)
            finally:
                if block:
                    state.awaited = False
                if state.arrived or state.sent:
                    catch_up(state)

        return get_msg

    pynetdicom_internals.wrap_get_msg(assoc, spooling)
