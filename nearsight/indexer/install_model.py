"""Install a trained model as an encoder of its collection, replacing an earlier one atomically.

Everything new is written beside what is in use, then one manifest write switches to it:

1. the model folder ``models/<name>/g<N>/`` (weights, model.json, report.json), fsynced;
2. the embeddings of every item, projected from the stored base embeddings (no image decoded), as
   fsynced shards under the new storage key ``<name>@g<N>``, recorded in one LMDB transaction;
3. the manifest entry of ``<name>`` pointing at the new model and storage key (an atomic rename);
4. then the old generation's shards, records, index and weights are deleted, and the index is built.

A kill before step 3 leaves the collection answering with the old model (the next install clears the
leftovers); after it, with the new one. Later ``index`` runs embed new items with it (``_Run._embed``).
"""
from __future__ import annotations

import os
import re
import shutil

import lmdb

from ..retrieval.collection import Collection, write_manifest
from ..retrieval.embeddings import write_part
from ..retrieval.errors import StorageError
from ..retrieval.encoders import create_encoder
from ..retrieval.encoders.triplet import save_model
from ..retrieval.writelock import write_lock
from .train import TrainConfig, TrainResult

SHARD_ROWS = 65536


def install_model(collection_dir: str, config: TrainConfig, result: TrainResult, build_index: bool = True) -> dict:
    """Make ``result`` the collection's encoder ``config.name``; returns its manifest entry."""
    import torch

    with write_lock(collection_dir):
        coll = Collection.open(collection_dir, device=config.device, readonly=False)
        try:
            name = config.name
            generation = _next_generation(coll, name)
            storage = f"{name}@g{generation}"
            model_rel = f"models/{name}/g{generation}"
            model_dir = os.path.join(coll.dir, model_rel)
            shutil.rmtree(model_dir, ignore_errors=True)  # a leftover of a killed install
            base_spec = coll.encoder_spec(config.image_encoder)
            meta = {"base": config.image_encoder, "base_dim": base_spec["dim"], "dim": config.dim,
                    "hidden": config.hidden, "bridge": bool(result.report.get("bridge"))}
            try:
                save_model(model_dir, result.heads, meta, result.report)

                encoder = create_encoder("triplet", device=config.device, base=base_spec.get("kind", config.image_encoder),
                                         base_config=base_spec["config"], dim=config.dim, hidden=config.hidden,
                                         model=model_rel, text="text" in config.pairs)
                encoder.name = name
                encoder.attach(coll.dir)
                coll.drop_storage(storage)
                matrix = coll.embedding_matrix(config.image_encoder)
                records = []
                with torch.inference_mode():
                    for i, start in enumerate(range(0, len(matrix), SHARD_ROWS)):
                        vectors = encoder.encode_features(matrix.vectors[start:start + SHARD_ROWS])
                        records.append(write_part(os.path.join(coll.dir, "embeddings", storage), i, vectors,
                                                  matrix.ids[start:start + SHARD_ROWS]))
                with coll.store.write() as w:
                    w.put_meta(f"parts/{storage}", records)

                spec = encoder.describe() | {"storage": storage}
                old = [s for s in coll.manifest["encoders"] if s["name"] == name]  # checked by TrainConfig.check
                coll.manifest["encoders"] = [s if s["name"] != name else spec for s in coll.manifest["encoders"]]
                if not old:
                    coll.manifest["encoders"].append(spec)
                write_manifest(coll.dir, coll.manifest)  # the switch
            except (OSError, lmdb.Error) as exc:  # a full disk, a read-only folder: nothing was switched
                coll.drop_storage(storage)
                shutil.rmtree(model_dir, ignore_errors=True)
                raise StorageError(f"cannot write the trained model to {collection_dir}: "
                                   f"{getattr(exc, 'strerror', None) or exc}; the collection is unchanged") from None

            for key in coll.storage_keys(name):
                if key != storage:
                    coll.drop_storage(key)
            models = os.path.join(coll.dir, "models", name)
            for folder in os.listdir(models):
                if folder != f"g{generation}":
                    shutil.rmtree(os.path.join(models, folder), ignore_errors=True)
            coll.refresh()
            if build_index:
                coll.build_index(name)
            return spec
        finally:
            coll.close()


def _next_generation(coll: Collection, name: str) -> int:
    """One more than any generation in use or left on disk by a killed install."""
    seen = [0]
    for key in coll.storage_keys(name):
        m = re.fullmatch(re.escape(name) + r"@g(\d+)", key)
        if m:
            seen.append(int(m.group(1)))
    models = os.path.join(coll.dir, "models", name)
    if os.path.isdir(models):
        seen += [int(f[1:]) for f in os.listdir(models) if re.fullmatch(r"g\d+", f)]
    return max(seen) + 1

