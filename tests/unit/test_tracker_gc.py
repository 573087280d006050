"""The tracker's process collects its youngest objects less often (issue 21)."""

from __future__ import annotations

import gc

from dimsebus.services.tracker.app import YOUNG_OBJECTS, collect_less_often


def test_only_the_youngest_generation_threshold_is_raised() -> None:
    before = gc.get_threshold()
    try:
        # when the tracker's process is set up
        collect_less_often()
        # then the youngest generation holds more objects; the older ones are as they were
        assert gc.get_threshold() == (YOUNG_OBJECTS, *before[1:])
    finally:
        gc.set_threshold(*before)
