"""The audit trail: chained records of every event, and DICOM audit messages to syslog."""
