"""What to index: folders, file lists and webdataset tar shards -> ``Source`` records.

Each PATH is one of
- a folder: searched recursively for images (jpg, jpeg, png, webp, bmp, tif, tiff, gif);
- an image file;
- a ``.tar`` shard (webdataset): an image member plus optional ``.txt`` / ``.json`` caption under the same key;
- a text file listing image paths, one a line, with an optional tab-separated caption
  (relative paths are relative to the list file; blank lines and ``#`` comments are skipped).
An image file's caption may also come from a sidecar ``name.txt`` beside it.
"""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass

from ..retrieval.errors import SourceError
from ..retrieval.images import IMAGE_EXTENSIONS
from ..retrieval.tar_members import member_key

MAX_CAPTION = 2000


@dataclass(frozen=True)
class Source:
    """One image to index. ``key`` is its stable identity (absolute path, or ``TAR::member``).

    For a tar member, ``offset`` is where its bytes start in the shard, so workers read it with one seek.
    ``size`` is -1 when the file could not be stat'ed (it is then recorded as a failure).
    """
    key: str
    size: int
    mtime_ns: int
    caption: str | None = None
    offset: int = -1

    @property
    def file(self) -> str:
        return self.key.split("::", 1)[0] if self.offset >= 0 else self.key


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def iter_sources(paths) -> list[Source]:
    """All sources named by ``paths``, in a stable order. SourceError for a PATH that does not exist."""
    for path in paths:
        if not os.path.exists(path):
            raise SourceError(f"no such file or directory: {path}")
        if not (os.path.isdir(path) or os.path.isfile(path)):  # a FIFO would block, a device read forever
            raise SourceError(f"not a regular file or folder: {path}")
    out: list[Source] = []
    for path in paths:
        path = os.path.abspath(path)
        if os.path.isdir(path):
            out.extend(_folder(path))
        elif path.lower().endswith(".tar"):
            out.extend(_tar(path))
        elif is_image_name(path):
            out.append(_file(path, None))
        else:
            out.extend(_file_list(path))
    return out


def _file(path: str, caption: str | None) -> Source:
    try:
        st = os.stat(path)
    except OSError:
        return Source(path, -1, 0, caption)
    if caption is None:
        caption = _sidecar_caption(path)
    return Source(path, st.st_size, st.st_mtime_ns, caption)


def _sidecar_caption(path: str) -> str | None:
    sidecar = os.path.splitext(path)[0] + ".txt"
    if not os.path.isfile(sidecar):
        return None
    try:
        with open(sidecar, encoding="utf-8", errors="replace") as f:
            text = f.read(MAX_CAPTION).strip()
    except OSError:
        return None
    return text or None


def _folder(root: str) -> list[Source]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if is_image_name(name) and not name.startswith("."):
                out.append(_file(os.path.join(dirpath, name), None))
    return out


def _file_list(path: str) -> list[Source]:
    base = os.path.dirname(path)
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise SourceError(f"{path} is neither a folder, an image, a .tar shard nor a UTF-8 list of image paths") from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc}") from None
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, caption = line.partition("\t")
        image_path = os.path.normpath(os.path.join(base, name.strip()))
        out.append(_file(image_path, caption.strip()[:MAX_CAPTION] or None))
    return out


def _tar(path: str) -> list[Source]:
    try:
        tar = tarfile.open(path, "r:")  # uncompressed only: members must be seekable by offset
    except (tarfile.TarError, OSError) as exc:
        raise SourceError(f"cannot read tar shard {path}: {exc}") from None
    mtime = os.stat(path).st_mtime_ns
    images: dict[str, tarfile.TarInfo] = {}
    captions: dict[str, str] = {}
    with tar:
        for member in tar:
            if not member.isfile():
                continue
            # webdataset key: the member path up to the first dot of its base name
            directory, base = os.path.split(member.name)
            key = os.path.join(directory, base.split(".", 1)[0])
            ext = os.path.splitext(base)[1].lower()
            if ext in IMAGE_EXTENSIONS and key not in images:
                images[key] = member
            elif ext in (".txt", ".json") and key not in captions:
                captions[key] = _tar_caption(tar, member, ext)
    return [Source(member_key(path, m.name), m.size, mtime, captions.get(k) or None, m.offset_data)
            for k, m in images.items()]


def _tar_caption(tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str) -> str:
    text = tar.extractfile(member).read(1 << 20).decode("utf-8", errors="replace")
    if ext == ".json":
        try:
            meta = json.loads(text)
        except json.JSONDecodeError:
            return ""
        text = str(meta.get("caption") or meta.get("text") or "") if isinstance(meta, dict) else ""
    return text.strip()[:MAX_CAPTION]
