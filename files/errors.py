"""Errors raised by the files package.

The tree::

    FileError
    ├── FileTooLarge      the upload passed ``max_file_bytes`` (nothing of it is kept)
    ├── QuotaExceeded     the user's stored files would pass ``max_user_storage_bytes``
    ├── EmptyFile         the upload had no byte
    ├── UploadStalled     no byte came for ``upload_idle_timeout`` seconds
    ├── BadName           the file name given is not one we keep (empty, too long, control chars)
    ├── ImageTooLarge     an image's pixel count passes ``max_image_pixels`` (decompression bomb)
    ├── BadImage          its bytes say JPEG/PNG/WebP/GIF but it does not decode (truncated...)
    ├── FileNotFound      no such file (or not in this room)
    ├── NotAttachable     ``attach`` refused: another room, another message, or too late
    └── BlobStoreError    the blob store failed (disk, S3) or is closed

Only the gateway turns these into HTTP statuses (``gateway.files``).
"""

from __future__ import annotations


class FileError(Exception):
    """Base class of every error of the files package; ``str()`` is a sentence for people."""


class FileTooLarge(FileError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than the limit of {limit} bytes")
        self.limit = limit

    def __reduce__(self) -> tuple[type, tuple[int]]:
        return type(self), (self.limit,)


class QuotaExceeded(FileError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"storing this file would pass your storage quota of {limit} bytes; "
                         "delete messages with files first")
        self.limit = limit

    def __reduce__(self) -> tuple[type, tuple[int]]:
        return type(self), (self.limit,)


class EmptyFile(FileError):
    pass


class BadName(FileError):
    pass


class ImageTooLarge(FileError):
    """``pixels``: how many the image has (None: more than Pillow itself opens)."""

    def __init__(self, pixels: int | None, limit: int) -> None:
        counted = f"{pixels} pixels" if pixels is not None else "too many pixels to count"
        super().__init__(f"the image has {counted}, more than the limit of {limit}")
        self.pixels = pixels
        self.limit = limit

    def __reduce__(self) -> tuple[type, tuple[int | None, int]]:
        # It comes back from an image worker process pickled: unpickling calls the class
        # with these (the default would pass the message alone, and the pool would break).
        return type(self), (self.pixels, self.limit)


class BadImage(FileError):
    pass


class FileNotFound(FileError):
    pass


class NotAttachable(FileError):
    pass


class BlobStoreError(FileError):
    pass


class UploadStalled(FileError):
    """No byte of the upload came for ``upload_idle_timeout`` seconds."""
