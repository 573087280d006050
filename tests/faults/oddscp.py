"""A misbehaving Storage SCP (pynetdicom), for what dcmtk's storescp cannot be made to do.

    python -m tests.faults.oddscp --port 11113 --mode no-status --log answers.log

Modes: ``unknown-status`` answers 0xD123 (in no table of PS3.4 or PS3.7);
``no-status`` sends a C-STORE-RSP without Status; ``wrong-uid`` names another
SOP instance in the response; ``silent`` accepts and never answers;
``random-abort`` aborts the association instead of answering, now and then
(seeded). Each response sent is one line of ``--log``: the request's SOP
instance UID, so the tests know exactly what was answered.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE

UNKNOWN_STATUS = 0xD123
MODES = ("unknown-status", "no-status", "wrong-uid", "silent", "random-abort")


def misbehave(mode: str) -> None:
    """Patch pynetdicom's DIMSE sender so C-STORE responses go out as ``mode`` wants."""
    send = DIMSEServiceProvider.send_msg

    def send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
        if isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None:
            if mode == "no-status":
                primitive.Status = None
            elif mode == "wrong-uid":
                primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.999999"
        send(self, primitive, context_id)

    DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--abort-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    misbehave(args.mode)
    draw = random.Random(args.seed)
    lock = threading.Lock()
    answers = args.log.open("a", buffering=1)

    def on_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if args.mode == "silent":
            time.sleep(3600)
        with lock:
            abort = args.mode == "random-abort" and draw.random() < args.abort_rate
            if not abort:
                answers.write(uid + "\n")
        if abort:
            event.assoc.abort()
            return 0xA700  # never sent: the association is gone
        return UNKNOWN_STATUS if args.mode == "unknown-status" else 0x0000

    ae = AE(ae_title="ODDSCP")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.maximum_associations = 32
    ae.start_server(("127.0.0.1", args.port), evt_handlers=[(evt.EVT_C_STORE, on_store)])


if __name__ == "__main__":
    main()
