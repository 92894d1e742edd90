"""The one error hierarchy of nearsight. Validate at the edge; raise with the bad value in the message."""


class NearsightError(Exception):
    """Base of every error nearsight raises on purpose."""


class NotACollection(NearsightError):
    """A directory that does not hold a nearsight collection."""


class SourceError(NearsightError):
    """A PATH to index that does not exist or cannot be read as a folder, file list, image or tar shard."""


class UnknownEncoder(NearsightError):
    """An encoder name that is not registered, or not part of a collection."""


class UnsupportedModality(NearsightError):
    """A query of a kind the encoder cannot embed (text on an image-only encoder)."""


class ImageError(NearsightError):
    """A file or upload that cannot be used as an image (corrupt, empty, not an image)."""


class ImageTooLarge(ImageError):
    """An image over the pixel limit (decompression-bomb guard)."""


class UnknownItem(NearsightError):
    """An item id that the collection does not hold."""


class InvalidQuery(NearsightError):
    """A malformed or impossible query (wrong shape, no terms, bad k)."""


class WeightsUnavailable(NearsightError):
    """Model weights that cannot be loaded (offline with no local checkpoint)."""


class CollectionBusy(NearsightError):
    """A collection another writer holds, or one open read-only in this process when a write is asked."""


class InvalidFilter(InvalidQuery):
    """A search filter on a field that does not exist, or with a value of the wrong kind (HTTP 422)."""


class InvalidMask(InvalidQuery):
    """A completion mask that marks nothing, or (nearly) the whole photo (HTTP 422)."""


class IndexFilesChanged(NearsightError):
    """Saved index files that keep disagreeing with their ``<encoder>.json``: a save still renaming them, or one
    a crash interrupted (the next build rebuilds the index)."""


class StorageError(NearsightError):
    """A collection that cannot be written: disk full, read-only file system, permissions."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a write, after the collection was left consistent; says what was committed.

    A KeyboardInterrupt, not a NearsightError: code that stops on Ctrl-C keeps doing so, and the CLI turns it
    into its one ``interrupted; ...`` line.
    """


class ClusterUnreachable(NearsightError):
    """A Ray cluster address with no cluster behind it (nothing listening, or not a Ray head)."""
