"""The ``nearsight`` command line. Every command is a thin layer over the Python API."""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading

import click

from ..retrieval.errors import Interrupted, NearsightError

COLLECTION = click.option("-c", "--collection", "collection", required=True, type=click.Path(file_okay=False),
                          help="Collection directory.")


class _Group(click.Group):
    """Turns nearsight's own errors into one-line messages and exit status 1 (no tracebacks)."""

    def invoke(self, ctx):
        previous = _terminate_as_interrupt()
        try:
            return super().invoke(ctx)
        except NearsightError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see _terminate_as_interrupt)
            click.echo(str(exc) if isinstance(exc, Interrupted) else "interrupted; re-run the same command to finish",
                       err=True)
            sys.exit(128 + _signals_seen[-1] if _signals_seen else 130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


_signals_seen: list[int] = []


def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt, so a stopped command takes the same clean way out as Ctrl-C (workers
    stopped, lock released, one line) instead of dying mid-write. Returns the previous handler to restore."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        _signals_seen.append(signum)
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


@click.group(cls=_Group)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="nearsight")
def main(verbose: int) -> None:
    """nearsight: index photos, search them by image, text, id or vector."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _open(directory: str):
    """Open a collection for this command; closed when the command ends (tests run many in one process)."""
    from ..retrieval.collection import Collection

    coll = Collection.open(directory)
    click.get_current_context().call_on_close(coll.close)
    return coll


def parse_options(pairs) -> dict[str, dict[str, object]]:
    """``-o clip.pretrained=/ckpt.pt`` -> {"clip": {"pretrained": "/ckpt.pt"}} (JSON values where they parse)."""
    out: dict[str, dict[str, object]] = {}
    for pair in pairs:
        name, dot, rest = pair.partition(".")
        key, eq, value = rest.partition("=")
        if not (dot and eq and name and key):
            raise click.BadParameter(f"{pair!r}; expected ENCODER.KEY=VALUE, e.g. clip.model=ViT-B-32")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(name, {})[key] = parsed
    return out


@main.command()
@click.argument("paths", nargs=-1, required=True)
@COLLECTION
@click.option("--encoders", default="tiny", show_default=True, help="Comma-separated encoder names.")
@click.option("-o", "--option", "options", multiple=True, help="Encoder setting ENCODER.KEY=VALUE (repeatable).")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decode processes (default: all cores; 0 = none).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--flush-every", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Items per durable commit.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=100_000_000, show_default=True,
              help="Decompression-bomb guard: larger images are recorded as failures.")
@click.option("--no-index", is_flag=True, help="Do not build or update the ANN indexes afterwards.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: decode processes on this machine; ray: Ray Data actors on a Ray cluster "
                   "(pip install 'nearsight[ray]'; --workers does not apply).")
@click.option("--address", help="With --engine ray: the cluster's head as HOST:PORT, or 'auto' for the cluster "
                                "this machine belongs to (default: start Ray on this machine).")
def index(paths, collection, encoders, options, workers, batch_size, flush_every, device, max_pixels, no_index, quiet,
          engine, address):
    """Index PATHS (folders, image files, lists of image paths, webdataset .tar shards) into a collection."""
    from ..indexer.ingest import IngestConfig, index_paths

    names = tuple(n.strip() for n in encoders.split(",") if n.strip())
    opts = parse_options(options)
    config = IngestConfig(encoders=names, encoder_options=tuple((k, tuple(v.items())) for k, v in opts.items()),
                          batch_size=batch_size, flush_every=flush_every, device=device, max_pixels=max_pixels,
                          progress=not quiet, **({"workers": workers} if workers is not None else {}))
    if address and engine != "ray":
        raise click.UsageError("--address goes with --engine ray")
    if engine == "ray":
        from ..indexer.ray_engine import RayConfig, index_paths_ray

        if logging.getLogger().level >= logging.WARNING:  # Ray Data's own run chatter only with -v
            os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
        summary = index_paths_ray(collection, list(paths), config, RayConfig(address=address))
    else:
        summary = index_paths(collection, list(paths), config)
    click.echo(summary.line())
    if not no_index:

        coll = _open(collection)
        for name in coll.encoder_names:
            _echo_index_report(coll.build_index(name))


def _echo_index_report(r: dict) -> None:
    recall = r.get("recall_at_k")
    click.echo(f"index {r['encoder']}: {r['action']} {r['factory']} ({r['ntotal']} vectors, "
               f"{r['bytes_per_vector']} B/vector), recall@{r['k']} "
               f"{recall if recall is None else format(recall, '.3f')} at {r.get('latency_ms') or 0:.2f} ms/query"
               + (f"; {r['reason']}" if r.get("reason") else ""))
    for warning in r.get("warnings") or []:        # where the index falls short of what was asked
        click.echo(f"  warning: {warning}")


@main.command("build-index")
@COLLECTION
@click.option("--encoder", required=True)
@click.option("--factory", help="A FAISS index factory key (Flat, HNSW32, IVF4096,PQ32x4fs, LSHr, ...).")
@click.option("--auto", is_flag=True, help="Choose the index from (n, d, metric, memory budget) [default].")
@click.option("--mode", type=click.Choice(["auto", "speed", "compact", "lsh"]), default="auto", show_default=True,
              help="With --auto: speed = HNSW whenever it fits, compact = at most 64 B/vector, lsh = training-free "
                   "binary codes.")
@click.option("--target-recall", type=click.FloatRange(0.01, 1.0), default=0.95, show_default=True)
@click.option("-k", "--k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--max-memory", help="Memory budget of the index, e.g. 2G (default: half the RAM).")
@click.option("--rebuild", is_flag=True, help="Build afresh even if the saved index could be updated.")
@click.option("--json", "as_json", is_flag=True)
def build_index_command(collection, encoder, factory, auto, mode, target_recall, k, max_memory, rebuild, as_json):
    """Build or update an encoder's ANN index, tuned until recall@k reaches the target on held-out vectors."""

    if factory and auto:
        raise click.UsageError("give --factory or --auto, not both")
    report = _open(collection).build_index(encoder, factory=factory, mode=mode, target_recall=target_recall,
                                                     k=k, max_memory=max_memory, rebuild=rebuild)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        _echo_index_report(report)


def _id_list(value: str | None, hint: str):
    if value is None:
        return None
    try:
        return [int(x) for x in value.replace(",", " ").split()]
    except ValueError:
        raise click.BadParameter(f"{value!r}; expected item ids like 3,17,42", param_hint=hint) from None


@main.command()
@COLLECTION
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False),
              help="Query image file (repeat for a batch: one result list per image).")
@click.option("--text", help="Query text (encoders with a text tower).")
@click.option("--id", "item_ids", type=int, multiple=True,
              help="Query by the embedding of an item already in the collection (repeatable).")
@click.option("--vector", type=click.Path(dir_okay=False),
              help="Query vector(s): a .npy file of shape (d,), or (n, d) for a batch.")
@click.option("--encoder", help="Encoder to search with (default: the best the collection holds for the query).")
@click.option("-k", type=click.IntRange(1, 10000), default=10, show_default=True)
@click.option("--prefilter", type=click.IntRange(min=1), default=None,
              help="Shortlist N items in the encoder's PCA space (see fit-pca), then re-rank exactly.")
@click.option("--path-prefix", help="Only items whose file path starts with this (a folder).")
@click.option("--caption", "caption_words", help="Only items whose caption has all these words.")
@click.option("--min-width", type=click.IntRange(min=0))
@click.option("--max-width", type=click.IntRange(min=0))
@click.option("--min-height", type=click.IntRange(min=0))
@click.option("--max-height", type=click.IntRange(min=0))
@click.option("--added-after", help="Only items indexed at or after this date (ISO 8601 or unix seconds).")
@click.option("--added-before", help="Only items indexed before this date.")
@click.option("--only-ids", help="Only these item ids (comma-separated allow-list).")
@click.option("--exclude", help="Never these item ids (comma-separated deny-list).")
@click.option("--min-score", type=float, help="Drop results scoring below this (raw score).")
@click.option("--min-similarity", type=click.FloatRange(0, 1), help="Drop results below this similarity (0..1).")
@click.option("--collapse", is_flag=True, help="One result per group of near-copies, with the group's size "
                                                 "(copies by the threshold measured for the encoder).")
@click.option("--collapse-threshold", type=click.FloatRange(0, 1, min_open=True),
              help="With --collapse: results at least this similar (0..1, as printed) are copies, instead of "
                   "the encoder's measured threshold.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def search(collection, images, text, item_ids, vector, encoder, k, prefilter, path_prefix, caption_words, min_width,
           max_width, min_height, max_height, added_after, added_before, only_ids, exclude, min_score,
           min_similarity, collapse, collapse_threshold, as_json):
    """Search a collection by --image, --text, --id or --vector (images, ids and vectors may be batches)."""
    import numpy as np

    given = [name for name, v in (("--image", images), ("--text", text), ("--id", item_ids), ("--vector", vector))
             if v is not None and v != ()]
    if len(given) != 1:
        raise click.UsageError(f"give exactly one kind of --image, --text, --id, --vector (got {', '.join(given) or 'none'})")
    if collapse_threshold is not None and not collapse:
        raise click.UsageError("--collapse-threshold needs --collapse")
    if vector is not None:
        try:
            vectors = np.load(vector, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"cannot read {vector} as a .npy array: {exc}", param_hint="--vector")
        queries = [{"vector": v} for v in vectors] if np.ndim(vectors) == 2 else [{"vector": vectors}]
    else:
        queries = ([{"image": p} for p in images] or [{"id": i} for i in item_ids] or [{"text": text}])
    dates = {name: (float(v) if v.replace(".", "", 1).isdigit() else v)
             for name, v in (("added_after", added_after), ("added_before", added_before)) if v is not None}
    flt = {"path_prefix": path_prefix, "caption": caption_words, "min_width": min_width, "max_width": max_width,
           "min_height": min_height, "max_height": max_height, "ids": _id_list(only_ids, "--only-ids"), **dates}
    coll = _open(collection)
    batches = coll.search_batch(queries, encoder=encoder, k=k, prefilter=prefilter,
                                filter={n: v for n, v in flt.items() if v is not None},
                                exclude=_id_list(exclude, "--exclude") or (), min_score=min_score,
                                min_similarity=min_similarity,
                                collapse=collapse_threshold if collapse and collapse_threshold else collapse)
    if as_json:
        doc = {"results": [r.to_dict() for r in batches[0]]} if len(batches) == 1 else {
            "batch": [{"results": [r.to_dict() for r in b]} for b in batches]}
        click.echo(json.dumps(doc, indent=1))
        return
    for n, results in enumerate(batches):
        if len(batches) > 1:
            click.echo(f"# query {n + 1}: {next(iter(queries[n].values())) if 'vector' not in queries[n] else 'vector'}")
        for rank, r in enumerate(results, 1):
            caption = f"  {r.caption}" if r.caption else ""
            copies = f"  (+{r.group_size - 1} near-copies)" if r.group_size > 1 else ""
            click.echo(f"{rank:3d}  {r.id:8d}  {r.similarity:6.1%}  {r.score:9.4f}  {r.sha256[:12]}  {r.path}{copies}{caption}")


@main.command()
@COLLECTION
@click.option("--json", "as_json", is_flag=True)
@click.option("--failures", is_flag=True, help="List the sources that could not be indexed, with the reason.")
def info(collection, as_json, failures):
    """Item count, encoders with dims, sizes on disk, failures."""

    coll = _open(collection)
    data = coll.info()
    if failures:
        data["failure_list"] = [{"source": s, "reason": r} for s, r in coll.store.failures()]
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    b = data["bytes"]
    click.echo(f"collection {data['path']}")
    click.echo(f"  items {data['items']}  sources {data['sources']}  failures {data['failures']}")
    click.echo(f"  on disk: store {_size(b['store'])}, embeddings {_size(b['embeddings'])}, indexes {_size(b['indexes'])}")
    for e in data["encoders"]:
        line = f"  encoder {e['name']:10s} dim {e['dim']:5d}  {e['metric']}  {'+'.join(e['modalities'])}  embedded {e['embedded']}"
        index = e.get("index")
        if index:
            recall = index.get("recall_at_k")
            line += (f"  index {index.get('factory')} recall@{index.get('k', 10)} "
                     f"{'?' if recall is None else format(recall, '.3f')} {index.get('latency_ms') or 0:.2f} ms")
        click.echo(line)
        for warning in (index or {}).get("warnings") or []:
            click.echo(f"    warning: {warning}")
        training = e.get("training")
        if training:
            pairs = ", ".join(f"{n} {k}" for k, n in (training.get("pairs") or {}).items())
            figures = ", ".join(f"{k} {v:.3f}" for k, v in (training.get("validation") or {}).items())
            click.echo(f"    trained {training.get('trained', '?')} over {e['config'].get('base')} "
                       f"({training.get('negatives')} negatives) on {training.get('train_pairs')} pairs ({pairs}); "
                       f"validation on {training.get('val_queries')} held out: {figures}")
    for f in data.get("failure_list", []):
        click.echo(f"  FAILED {f['source']}: {f['reason']}")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@main.command("fit-pca")
@COLLECTION
@click.option("--encoder", required=True)
@click.option("--dim", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--shortlist", type=click.IntRange(min=1), default=100, show_default=True,
              help="Shortlist size used to measure the pre-filter's recall@10.")
def fit_pca_command(collection, encoder, dim, shortlist):
    """Fit a PCA projection of an encoder's embeddings, stored with the collection, for `search --prefilter`."""
    from ..retrieval.pca import prefilter_recall

    coll = _open(collection)
    pca = coll.fit_pca(encoder, dim)
    recall = prefilter_recall(coll, encoder, k=10, shortlist=shortlist)
    click.echo(f"PCA {coll.encoder_spec(encoder)['dim']} -> {dim} dims keeps {pca.explained.sum():.1%} of the variance; "
               f"pre-filter recall@10 with a {shortlist}-item shortlist: {recall:.3f}")


@main.command()
@COLLECTION
@click.option("--name", default="text", show_default=True, help="Name of the trained encoder in the collection.")
@click.option("--image-encoder", default="cnn", show_default=True,
              help="The frozen image encoder whose stored embeddings the image head reads.")
@click.option("--dim", type=click.IntRange(min=2), default=256, show_default=True, help="Shared embedding size.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True,
              help="At most this many (training stops early when validation recall stalls).")
@click.option("--patience", type=click.IntRange(min=1), default=4, show_default=True,
              help="Stop after this many epochs without a better validation mAP.")
@click.option("--negatives", type=click.Choice(["hardest", "semihard", "random"]), default="semihard",
              show_default=True,
              help="Which in-batch and collection-mined negatives (semihard measured best: scripts/bench_train.py).")
@click.option("--margin", type=click.FloatRange(0, 2, min_open=True, max_open=True), default=0.2, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=2e-4, show_default=True)
@click.option("--sources", default="captions,labels,weak,feedback", show_default=True,
              help="Where (text, image) pairs come from.")
@click.option("--pairs", "pair_kinds", default="text", show_default=True,
              help="text: (text, image) pairs; augment: (augmented copy, original) image pairs, so copies rank "
                   "first; text,augment: both.")
@click.option("--copies", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Augmented copies per image for --pairs augment.")
@click.option("--copy-items", type=click.IntRange(min=1), default=None,
              help="With --pairs augment: make copies of at most this many items (a random sample).")
@click.option("--no-mining", is_flag=True, help="In-batch negatives only (no collection-wide mining).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--no-index", is_flag=True, help="Do not build the ANN index of the trained encoder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the training report as JSON.")
def train(collection, name, image_encoder, dim, epochs, patience, negatives, margin, batch_size, lr, sources, pair_kinds, copies,
          copy_items, no_mining, seed, device, no_index, quiet, as_json):
    """Train a text + image encoder on the collection's captions, labels, weak captions and search feedback."""
    from ..indexer.install_model import install_model
    from ..indexer.train import TrainConfig, train_heads
    from ..retrieval.collection import Collection

    config = TrainConfig(name=name, image_encoder=image_encoder, dim=dim, epochs=epochs, patience=patience,
                         negatives=negatives,
                         margin=margin, batch_size=batch_size, lr=lr, mine_collection=not no_mining, seed=seed,
                         sources=tuple(s.strip() for s in sources.split(",") if s.strip()), device=device,
                         pairs=tuple(s.strip() for s in pair_kinds.split(",") if s.strip()), copies=copies,
                         copy_items=copy_items,
                         progress=not quiet)
    coll = Collection.open(collection)
    try:
        result = train_heads(coll, config)
    finally:
        coll.close()
    install_model(collection, config, result, build_index=not no_index)
    report = result.report
    if as_json:
        click.echo(json.dumps(report))
        return
    v = report["validation"]
    what = (f"{report['train_pairs']} pairs ({', '.join(f'{n} {k}' for k, n in report['pairs'].items())})"
            if "text" in config.pairs else f"{report['copies']['train']} augmented copies")
    held = "held-out texts" if "text" in config.pairs else "held-out copies"
    click.echo(f"trained {name!r} on {what}; best epoch {report['best_epoch']}; validation on "
               f"{report['val_queries']} {held}: " + ", ".join(f"{k} {x:.3f}" for k, x in v.items())
               + f"; {report['seconds']:.0f}s")
    if report.get("copies"):
        c = report["copies"]
        click.echo(f"copy detection on {c['val']} held-out copies, R@1: trained {c['trained']['R@1']:.3f}, "
                   f"frozen {image_encoder} {c['frozen']['R@1']:.3f}")
    if "text" in config.pairs:
        click.echo(f"text search: nearsight search -c {collection} --text \"...\"")


def _check_output(out: str) -> None:
    """Refuse an output name PIL cannot write, or a folder that does not exist, before any work is done."""
    import os

    from PIL import Image

    from ..retrieval.errors import InvalidQuery

    Image.init()
    if os.path.splitext(out)[1].lower() not in Image.registered_extensions():
        raise InvalidQuery(f"cannot tell the image format from {out!r}; use .jpg, .png or .webp")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise InvalidQuery(f"cannot write {out}: no such folder {os.path.dirname(os.path.abspath(out))}")


def _save_image(image, out: str) -> None:
    """Write a PIL image; a clear error for a path that cannot be written or has no image extension."""
    import os

    from ..retrieval.errors import InvalidQuery

    try:
        image.save(out)
    except (ValueError, KeyError):
        raise InvalidQuery(f"cannot tell the image format from {out!r}; use .jpg, .png or .webp") from None
    except OSError as exc:
        raise InvalidQuery(f"cannot write {out}: {exc}") from None
    click.echo(f"wrote {os.path.abspath(out)}")


@main.command()
@COLLECTION
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--mask", required=True, type=click.Path(dir_okay=False), help="Mask image: white = the hole to fill.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Folder for the composites (completion-01.jpg, ...) and results.json.")
@click.option("-n", type=click.IntRange(1, 200), default=20, show_default=True, help="How many composites.")
def complete(collection, image, mask, outdir, n):
    """Scene completion (Hays & Efros 2007): fill the masked hole from the collection's photos (needs gist)."""
    import os

    from PIL import Image

    import hashlib

    from ..retrieval.complete import complete_scene_report
    from ..retrieval.images import load_image

    query = load_image(image)
    hole = load_image(mask).convert("L")
    with open(image, "rb") as f:  # the photo's own item (same content hash) never completes it
        sha256 = hashlib.sha256(f.read()).hexdigest()
    report = complete_scene_report(_open(collection), query, hole, n=n, query_sha256=sha256)
    completions = report.completions
    skipped = report.excluded + report.near_duplicates + report.crops
    if skipped:
        click.echo(f"left out {len(skipped)} cop{'y' if len(skipped) == 1 else 'ies'} of the photo found in the "
                   f"collection: items {', '.join(map(str, skipped))}"
                   + (f" ({len(report.crops)} cropped)" if report.crops else ""))
    os.makedirs(outdir, exist_ok=True)
    summary = []
    for rank, c in enumerate(completions, 1):
        name = f"completion-{rank:02d}.jpg"
        Image.fromarray(c.image).save(os.path.join(outdir, name), quality=92)
        summary.append({"rank": rank, "file": name, **c.to_dict()})
        click.echo(f"{rank:3d}  item {c.id:8d}  score {c.score:8.3f}  {name}")
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump({"image": os.path.abspath(image), "mask": os.path.abspath(mask), "completions": summary,
                   "skipped": report.skipped}, f, indent=1)
    click.echo(f"wrote {len(completions)} composites to {os.path.abspath(outdir)}")


@main.command()
@COLLECTION
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="Output image file (.jpg, .png).")
@click.option("-n", "--neighbors", type=click.IntRange(1, 64), default=8, show_default=True)
def colorize(collection, image, output, neighbors):
    """Colour a grayscale or sepia photo from its nearest neighbours (gist-gray, tiny-gray)."""
    from ..retrieval.colorize import colorize as colorize_image

    _check_output(output)
    result = colorize_image(_open(collection), image, n_neighbors=neighbors)
    for warning in result.warnings:
        click.echo(f"note: {warning}", err=True)
    click.echo("chroma from items " + ", ".join(f"{i} ({u:.0%})" for i, u in zip(result.neighbor_ids, result.usage) if u > 0))
    _save_image(result.image(), output)


@main.command()
@COLLECTION
@click.argument("photo", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="Output image file (.jpg, .png).")
@click.option("--like", "like_id", type=int, help="Take the colours of this collection item.")
@click.option("--reference", type=click.Path(dir_okay=False), help="Take the colours of this image file.")
@click.option("-n", "--neighbors", type=click.IntRange(1, 64), default=5, show_default=True,
              help="Without --like/--reference: the mean colours of this many nearest neighbours.")
@click.option("--per-region", is_flag=True, help="Transfer per cell of a 3x3 grid of aligned regions.")
def recolor(collection, photo, output, like_id, reference, neighbors, per_region):
    """Reinhard colour transfer toward a reference, an item, or the photo's own nearest neighbours."""
    from ..retrieval.colorize import recolor as recolor_image

    _check_output(output)
    coll = None if reference is not None else _open(collection)
    result = recolor_image(coll, photo, like_id=like_id, reference=reference, n_neighbors=neighbors,
                           per_region=per_region)
    for warning in result.warnings:
        click.echo(f"note: {warning}", err=True)
    if result.reference_ids:
        click.echo("colours of items " + ", ".join(map(str, result.reference_ids)))
    _save_image(result.image(), output)


@main.group("encoders", invoke_without_command=True)
@click.pass_context
def encoders_group(ctx):
    """List the registered encoders (or remove one from a collection: `encoders remove`)."""
    if ctx.invoked_subcommand is None:
        from ..retrieval.encoders import encoder_class, list_encoders

        for name in list_encoders():
            cls = encoder_class(name)
            click.echo(f"{name:10s} {cls.metric}  {'+'.join(sorted(cls.modalities))}")


@encoders_group.command("remove")
@click.argument("name")
@COLLECTION
def remove_encoder_command(name, collection):
    """Remove encoder NAME from a collection, with its embeddings, PCA and index (items stay)."""
    from ..retrieval.collection import Collection

    coll = Collection.open(collection, readonly=False)
    click.get_current_context().call_on_close(coll.close)
    coll.remove_encoder(name)
    click.echo(f"removed encoder {name}; the collection now has: {', '.join(coll.encoder_names) or 'no encoders'}")


@main.command()
@COLLECTION
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 opens the server to the network (set a token then).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0 picks a free port.")
@click.option("--threads", type=click.IntRange(min=1), default=8, show_default=True,
              help="Request threads (of each process).")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes on the one port: one answers one request at a time (Python's GIL), so more "
                   "processes use more cores. Each opens the collection and maps the same index files; image jobs "
                   "(--heavy-workers, --job-queue) are per process.")
@click.option("--token", envvar="NEARSIGHT_TOKEN",
              help="Bearer token required on the API [env NEARSIGHT_TOKEN]. On the command line it shows in `ps`: "
                   "prefer the variable or --token-file.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="Read the bearer token from this file's first line.")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="Host name the server answers for besides localhost/127.0.0.1/::1 and --host (repeatable; "
                   "'*' = any). Other Host headers are refused, against DNS rebinding.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=20.0, show_default=True,
              help="Largest uploaded image file.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=100_000_000, show_default=True,
              help="Decompression-bomb guard for uploaded images.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--blas-threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads each request's numpy/torch math may use; more than 1 oversubscribes the cores "
                   "when several requests run at once (unless OMP_NUM_THREADS etc. are set).")
@click.option("--heavy-workers", type=click.IntRange(min=1), default=None,
              help="Worker processes for complete/colorize/recolor jobs (default: all cores but one, at least 1).")
@click.option("--job-queue", type=click.IntRange(min=0), default=8, show_default=True,
              help="Image jobs that may wait for a worker; past that the server answers 503 with Retry-After.")
@click.option("--job-ttl", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds a finished image job's result is kept.")
@click.option("--job-max-side", type=click.IntRange(min=64), default=1024, show_default=True,
              help="Photos are reduced to this long side before an image job (bounds its memory).")
@click.option("--job-cores", type=click.Choice(["partition", "shared"]), default="partition", show_default=True,
              help="partition: while image jobs run, the workers have the last --heavy-workers cores and searches "
                   "the others; shared: workers run niced on every core (searches first, jobs may starve).")
@click.option("--feedback", is_flag=True, help="Record which result of a text search users open (and the ones above "
              "it they pass over) in the collection, for `nearsight train`.")
@click.option("--http", type=click.Choice(["waitress", "granian"]), default="waitress", show_default=True,
              help="HTTP server: granian (pip install 'nearsight[fast]') parses HTTP in Rust and costs ~0.5 ms less "
                   "CPU a request, for search-heavy serving; its own errors (unparsable HTTP) are plain text, and a "
                   "client that goes away does not cancel its image job.")
def serve(collection, host, port, threads, processes, token, token_file, allowed_hosts, max_upload_mb, max_pixels,
          device, blas_threads, heavy_workers, job_queue, job_ttl, job_max_side, job_cores, feedback, http):
    """Serve the web page and the JSON API (waitress or granian). New items appear without a restart; SIGHUP
    reloads."""
    import os

    # Before numpy or torch load: their thread pools size themselves from these at import.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(blas_threads))
    if "numpy" in sys.modules:
        logging.getLogger(__name__).warning("numpy was imported before serve; --blas-threads has no effect")

    from waitress import create_server

    from .app import ServerConfig, create_app, install_reload_signal, warm_text_search
    from .jobs import JobConfig

    jobs = JobConfig(queue=job_queue, ttl=job_ttl, max_side=job_max_side, partition=job_cores == "partition",
                     nice=0 if job_cores == "partition" else 10,  # on their own cores, workers need no lower priority
                     **({} if heavy_workers is None else {"workers": heavy_workers}))
    from .guard import use_json_errors

    if token_file:
        token = _read_token(token_file)
    bound = () if host in ("0.0.0.0", "::", "") else (host,)  # a wildcard bind names no host
    config = ServerConfig(collection, token=token or None, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                          max_pixels=max_pixels, device=device, jobs=jobs, allowed_hosts=tuple(allowed_hosts) + bound,
                          feedback=feedback)
    if not bound and not allowed_hosts:
        click.echo(f"note: serving on {host}; requests must name localhost unless you add --allowed-host NAME "
                   "(the name clients use)", err=True)
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host} with no token; anyone who can reach it can search", err=True)
    # A synchronous image request holds its thread while its job waits or runs: one more thread per worker
    # and queue slot keeps --threads free for searches. The lookahead lets waitress see a client that
    # went away, so its job is cancelled.
    server_options = dict(threads=threads + jobs.workers + jobs.queue, ident="nearsight",
                          max_request_body_size=config.max_request_bytes, channel_request_lookahead=1)
    if http == "granian":
        from .granian_http import check_installed
        check_installed()
    if processes > 1 or http == "granian":
        _serve_processes(config, processes, host, port, server_options, http)
        return
    app = create_app(config)
    install_reload_signal(app)
    warm_text_search(app)
    try:
        server = create_server(app, host=host, port=port, **server_options)
    except OSError as exc:  # port in use, no such interface, a port below 1024 without the right
        app.extensions["nearsight.jobs"].close()
        raise NearsightError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    use_json_errors(server)
    count = app.extensions["nearsight"].holder.collection.count
    click.echo(f"serving {count} items of {collection} at {_url(server.effective_host, server.effective_port)} "
               "(Ctrl-C stops)")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        app.extensions["nearsight.jobs"].close()


def _url(host, port) -> str:
    return f"http://{f'[{host}]' if ':' in str(host) else host}:{port}/"


def _serve_processes(config, processes: int, host: str, port: int, server_options: dict, http: str) -> None:
    """``serve --processes N`` (or ``--http granian``): the port bound here, N forked server processes answering on
    it (workers.py)."""
    import dataclasses
    import signal
    import threading

    from waitress import create_server

    from .app import create_app, install_reload_signal, warm_text_search
    from .guard import use_json_errors
    from .workers import Supervisor, listen

    public = listen(host, port)
    supervisor = Supervisor(processes)

    def run(index: int, ready) -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)         # until this process's own reload handler is in
        app = create_app(dataclasses.replace(config, process=index, peers=tuple(supervisor.private_ports)))
        install_reload_signal(app)
        warm_text_search(app)
        # under granian, waitress still answers the private port: image job requests passed on by other processes
        sockets = [supervisor.private_socket(index)] + ([public] if http == "waitress" else [])
        server = create_server(app, sockets=sockets, **server_options)
        use_json_errors(server)
        ready(app.extensions["nearsight"].holder.collection.count)
        try:
            if http == "waitress":
                server.run()
            else:
                from . import granian_http

                threading.Thread(target=server.run, name="private-port", daemon=True).start()
                granian_http.serve(app, public, server_options["threads"], worker_id=index + 1)
        finally:
            server.close()
            app.extensions["nearsight.jobs"].close()

    count = supervisor.start(run)
    effective_host, effective_port = public.getsockname()[:2]
    click.echo(f"serving {count} items of {config.collection} at {_url(effective_host, effective_port)} "
               f"({processes} process{'es' if processes > 1 else ''}, {http}; Ctrl-C stops)")
    supervisor.wait()


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--token-file") from None
    if not token:
        raise click.BadParameter(f"{path} holds no token on its first line", param_hint="--token-file")
    return token


if __name__ == "__main__":
    main()
