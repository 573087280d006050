"""The dimsebus event contract: DICOM value types, the status table and the events.

This package imports pydantic and the standard library only, so that any
subscriber can depend on it without pulling in a DICOM stack or a broker client.
"""
