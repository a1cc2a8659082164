"""The layer store: layer blobs kept on disk between builds, found again by what made them.

Layout under the store's root directory:

- ``blobs/sha256/<hex>``: layer blobs, content-addressed and immutable (an OCI layout's blob
  directory, so images hard-link from it);
- ``layers/<settings key>/<layer key>.json``: one record per layer, naming its blob: diff_id,
  size, digest, blob_size, media_type and its store paths;
- ``customisation/<settings key>/<store path name>``: the customisation-layer entries of one
  contents store path, encoded (``nixlayer.customisation.Fragments``).

A record is written only after its blob is in place, both by atomic rename, so a killed build
leaves no record without its blob, and two builders writing the same layer at once both end
with the same complete entry. The settings key covers every setting that changes a layer's
bytes (owner, mtime, compression, store directory), so a changed setting never reuses a layer.

A writer killed outright leaves its temporary blob ``blobs/sha256/.blob.tmp-*``; writers remove
those untouched for ``nixlayer.atomic.STALE_TEMP_SECONDS`` (10 minutes), at most once per
process every 10 minutes, so one scan of the blob directory serves many layers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import BinaryIO, Callable, Sequence

from nixlayer.atomic import STALE_TEMP_SECONDS, atomic_file, remove_stale_temporaries
from nixlayer.compression import Compression
from nixlayer.customisation import FRAGMENT_FORMAT
from nixlayer.errors import NixlayerError
from nixlayer.image import ImageLayer
from nixlayer.layer import LayerBlob, LayerSettings
from nixlayer.oci_layout import blob_path, put_blob
from nixlayer.storepath import hash_part


@dataclass(frozen=True)
class LayerRecord:
    """What the layer store knows of one layer: its blob and the store paths it holds."""

    blob: LayerBlob
    store_paths: tuple[str, ...]
    comment: str

    def to_json(self) -> bytes:
        return json.dumps(
            {**asdict(self.blob), "store_paths": list(self.store_paths), "comment": self.comment},
            sort_keys=True, indent=1,
        ).encode()

    @staticmethod
    def from_json(data: bytes) -> "LayerRecord":
        raw = json.loads(data)
        blob = LayerBlob(**{k: raw[k] for k in LayerBlob.__dataclass_fields__})
        return LayerRecord(blob, tuple(raw["store_paths"]), raw["comment"])


BLOB_TEMP_PREFIX = ".blob.tmp-"

# Blob directory -> time.monotonic() of this process's last sweep of abandoned blob temporaries.
_swept: dict[str, float] = {}


def _sweep_blob_temporaries(blobs: str, temp: str) -> None:
    """Remove abandoned ``.blob.tmp-*`` files in ``blobs`` unless this process just did."""
    last = _swept.get(blobs)
    if last is None or time.monotonic() - last >= STALE_TEMP_SECONDS:
        remove_stale_temporaries(blobs, BLOB_TEMP_PREFIX, temp)
        _swept[blobs] = time.monotonic()


def settings_key(settings: LayerSettings, compression: Compression, store_dir: str) -> str:
    """A directory name (16 hex digits) naming every setting that changes a layer's bytes."""
    text = json.dumps([asdict(settings), compression.key, store_dir])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def store_path_layer_key(store_path: str) -> str:
    """The record name of a one-store-path layer: the store path's hash part."""
    return hash_part(store_path)


def paths_layer_key(kind: str, store_paths: Sequence[str]) -> str:
    """The record name of a layer of several store paths (overflow, customisation).

    ``kind`` plus the sha256 of the ordered store paths: a different order is another layer.
    """
    return f"{kind}-" + hashlib.sha256("\n".join(store_paths).encode()).hexdigest()[:32]


class LayerStore:
    """A layer store rooted at ``root`` (created on first write)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))

    def record_path(self, settings_dir: str, layer_key: str) -> str:
        return os.path.join(self.root, "layers", settings_dir, layer_key + ".json")

    def fragments_dir(self, settings: LayerSettings, store_dir: str) -> str:
        """Where the customisation fragments of contents in ``store_dir`` encoded with
        ``settings`` are kept (a file per store path name; the store directory is in the key,
        as the symlink targets name it)."""
        text = json.dumps([asdict(settings), store_dir, FRAGMENT_FORMAT])
        return os.path.join(self.root, "customisation", hashlib.sha256(text.encode()).hexdigest()[:16])

    def blob_path(self, digest: str) -> str:
        """Where the blob ``digest`` lives in this store."""
        return blob_path(self.root, digest)

    def read(self, record_path: str) -> LayerRecord:
        """Read a record. Raises NixlayerError if it is unreadable or its blob is missing."""
        try:
            with open(record_path, "rb") as f:
                record = LayerRecord.from_json(f.read())
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise NixlayerError(f"layer store record {record_path} is unreadable: {e}") from None
        if not self.has_blob(record.blob):
            raise NixlayerError(f"layer store record {record_path} names a missing blob {record.blob.digest}")
        return record

    def has_blob(self, blob: LayerBlob) -> bool:
        """True if the blob is present with its recorded size."""
        try:
            return os.stat(self.blob_path(blob.digest)).st_size == blob.blob_size
        except OSError:
            return False

    def is_complete(self, record_path: str) -> bool:
        """True if the record exists, reads, and its blob is present with the right size."""
        try:
            self.read(record_path)
        except NixlayerError:
            return False
        return True

    def write(
        self,
        record_path: str,
        store_paths: Sequence[str],
        comment: str,
        write_blob: Callable[[BinaryIO], LayerBlob],
    ) -> LayerRecord:
        """Write a layer: ``write_blob(file)`` writes the blob bytes and returns its digests.

        The blob goes to a temporary file, is renamed to ``blobs/sha256/<hex>``, then the record
        is written atomically. On any error nothing is left behind. Temporary blobs abandoned by
        killed writers are removed (see the module docstring). Raises NixlayerError naming the
        layer store when it cannot be written (not writable, full), and whatever ``write_blob``
        raises.
        """
        blobs = os.path.join(self.root, "blobs", "sha256")
        try:
            os.makedirs(blobs, exist_ok=True)
            os.makedirs(os.path.dirname(record_path), exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=BLOB_TEMP_PREFIX, dir=blobs)
        except OSError as e:
            raise NixlayerError(f"cannot write to layer store {self.root}: {e.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                _sweep_blob_temporaries(blobs, temp)
                blob = write_blob(f)
            os.chmod(temp, 0o444)
            os.replace(temp, self.blob_path(blob.digest))
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise NixlayerError(f"cannot write to layer store {self.root}: {e.strerror or e}") from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        record = LayerRecord(blob, tuple(store_paths), comment)
        # No sweep: a record directory holds thousands of records, listing it for every record
        # would cost more than the few hundred bytes a killed writer can leave there.
        with atomic_file(record_path, sweep=False) as f:
            f.write(record.to_json())
        return record

    def put_bytes(self, data: bytes) -> str:
        """Keep ``data`` (a config or manifest) as a blob; return its path. Atomic, idempotent."""
        return put_blob(self.root, data)

    def image_layer(self, record: LayerRecord) -> ImageLayer:
        """The record as an ImageLayer ready to assemble."""
        return ImageLayer(record.blob, self.blob_path(record.blob.digest), record.comment)
