"""Results into the study: a DICOM SR (TID 1500) and a Key Object Selection per model and series,
delivered to PACS by C-STORE through a durable queue (docs/RESULTS.md).

``content`` (what a model said, derived UIDs), ``study`` (the original study's header),
``sr`` and ``kos`` (the objects, via highdicom), ``queue`` (``pacs.sqlite3``),
``sender`` (pynetdicom C-STORE, back-off, dead letters) and ``delivery`` (the
part the agent starts and stops).
"""
