"""dimsebus: DICOM C-STORE responses as validated events on RabbitMQ.

The code lives in the repository's ``services/`` and ``schemas/`` folders; this package
holds them (as ``dimsebus.services`` and ``dimsebus.schemas``, through the two links
beside this file) so that nothing generic is installed at the top of site-packages.
"""
