"""Stage `prepare`: load the source, split it, write the splits, validate them, publish data/prepared.

    python -m tasks.prepare --out data/prepared [--params params.yaml] [--chunk N]

Each split is written a chunk of images at a time and validated (Great Expectations)
from its memory-mapped file, so no split is ever whole in memory. All of it happens in
a temporary folder beside the output: a failed check exits non-zero and leaves the
previous output untouched.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from slimline.data.dataset import SPLITS, Split
from slimline.data.split import build_splits, normalization, write_plans
from slimline.errors import StageError
from slimline.io import atomic_dir, write_json
from slimline.params import Params
from slimline.report import markdown_table, write_report
from slimline.stage import main

SECTIONS = ("data",)  # the params it reads: dvc.yaml's `params` for this stage


def prepare(params: Params, args: argparse.Namespace) -> None:
    out = Path(args.out)
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Decoded image folders go to a scratch folder beside the output, on its disk (a /tmp
        # in memory would defeat the point); it is removed however the stage ends.
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.scratch-") as scratch, \
                atomic_dir(out) as tmp:
            _prepare(params.data, Path(scratch), tmp, getattr(args, "chunk", None), out)
    except BaseException:
        for folder in made:  # a failed first run leaves no trace, not even an empty data/
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _prepare(cfg, scratch: Path, tmp: Path, chunk: int | None, out: Path) -> None:
    raw, plans, dropped, source_meta = build_splits(cfg, scratch)
    write_plans(plans, tmp, chunk)
    sources = raw.files
    del raw, plans  # from here on only the written files are read, memory-mapped
    splits = {name: Split(tmp / f"{name}.safetensors") for name in SPLITS}
    labels = {name: split.y for name, split in splits.items()}
    num_classes = cfg.num_classes or max((int(y.max()) for y in labels.values() if len(y)), default=-1) + 1
    mean, std = normalization(cfg, splits["train"].x)  # before validation's per-image table exists

    from slimline.data.validate import validate_splits

    report = validate_splits(splits, num_classes=num_classes, min_per_class=cfg.min_per_class,
                             pixel_min=0.0, pixel_max=cfg.pixel_max,
                             min_rows=num_classes * cfg.min_per_class)
    print(report.summary(), flush=True)
    if not report.success:  # the temporary folder goes; the previous output stays
        raise StageError(f"data validation failed; {out} was not changed.\n{report.summary()}")

    counts = {name: {str(c): int((y == c).sum()) for c in range(num_classes)}
              for name, y in labels.items()}
    # File names only: absolute paths (a venv, a checkout) would make identical data hash differently.
    meta = {"source": cfg.source, "files": [Path(f).name for f in sources],
            "input_shape": list(splits["train"].x.shape[1:]),
            "num_classes": num_classes, "mean": mean, "std": std, "counts": counts,
            "sizes": {k: len(y) for k, y in labels.items()}, "duplicates_dropped": dropped,
            **source_meta,  # image folders: class names, channels, size (predict applies them)
            **({"normalize": cfg.normalize.model_dump()} if cfg.normalize else {}),
            # the checks this data passed, kept with it: the model card cites them
            "checks": [{"name": c.name, "message": c.message} for c in report.checks]}
    write_json(tmp / "meta.json", meta)

    rows = [{"split": k, "images": len(y), **{f"class {c}": counts[k][str(c)] for c in range(num_classes)}}
            for k, y in labels.items()]
    checks = [{"check": c.name, "passed": c.success, "detail": c.message} for c in report.checks]
    md = (f"## prepare\n\nSource `{cfg.source}` ({', '.join(sources) or 'packaged'}), "
          f"input {meta['input_shape']}, {num_classes} classes, {dropped} exact duplicates "
          f"dropped"
          + (f"; classes {', '.join(source_meta['classes'])}, {source_meta['skipped_files']} file(s) "
             f"skipped for their extension" if source_meta else "")
          + f".\n\nTrain mean {meta['mean']}, std {meta['std']} (raw pixel units).\n\n"
          f"{markdown_table(rows)}\n\n### Validation (Great Expectations)\n\n"
          f"{markdown_table(checks)}\n")
    write_report("prepare", {**{k: meta[k] for k in ("source", "input_shape", "num_classes",
                                                      "mean", "std", "sizes", "counts",
                                                      "duplicates_dropped")},
                             "validation": report.to_dict()}, md)
    print(f"prepare: wrote {out} ({meta['sizes']})", flush=True)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of images >= 1")
    return int(text)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--chunk", type=_positive, default=None,
                   help="images read and written at a time (default: 16 MiB of them); bounds "
                        "the stage's memory and never changes its output")


if __name__ == "__main__":
    main("prepare", prepare, _args, SECTIONS)
