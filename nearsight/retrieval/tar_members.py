"""Source keys of images inside tar shards (webdataset): ``/abs/shard.tar::member/name.jpg``."""
from __future__ import annotations

import tarfile

SEPARATOR = "::"


def member_key(tar_path: str, member: str) -> str:
    return f"{tar_path}{SEPARATOR}{member}"


def split_key(key: str) -> tuple[str, str]:
    tar_path, _, member = key.partition(SEPARATOR)
    return tar_path, member


def is_member_key(key: str) -> bool:
    tar_path, member = split_key(key)
    return bool(member) and tar_path.lower().endswith(".tar")


def read_member(key: str) -> bytes:
    """The bytes of one tar member; KeyError if the shard no longer holds it."""
    tar_path, member = split_key(key)
    with tarfile.open(tar_path, "r:*") as tar:
        f = tar.extractfile(member)
        if f is None:
            raise KeyError(f"{member} in {tar_path} is not a regular file")
        return f.read()
