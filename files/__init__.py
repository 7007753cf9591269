"""Files and images of rooms: a blob store chosen by URL (``files.blobstore``: a directory or
an S3 bucket), the files' metadata beside the blobs (``files.catalog``), uploads made safe
(``files.service``, ``files.images``, ``files.sniff``) and signed URLs (``files.signing``).

It knows nothing of rooms' state or of HTTP: ``gateway.files`` serves it, and maps its errors
(``files.errors``) to statuses.
"""
