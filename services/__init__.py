"""dimsebus services: the DICOM node, the bus, and the consumers of the event log."""
