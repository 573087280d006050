"""The DICOM node: pynetdicom roles, the capture of every C-STORE-RSP, the archive, the outbox."""
