"""Results into the study: a DICOM SR (TID 1500) and a Key Object Selection per model and series,
delivered to PACS by C-STORE, C-STORE over DICOM TLS or STOW-RS through a durable queue (docs/RESULTS.md).

``content`` (what a model said, derived UIDs), ``study`` (the original study's header),
``sr`` and ``kos`` (the objects, via highdicom), ``queue`` (``pacs.sqlite3``),
``destination`` (the three destination forms), ``sender`` (the per-destination thread, back-off, dead
letters; pynetdicom C-STORE, plain or TLS), ``stow`` (STOW-RS, dicomweb-client), ``tls`` (the client TLS
context and what a failed handshake means) and ``delivery`` (the part the agent starts and stops).
"""
