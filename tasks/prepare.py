"""Stage `prepare`: load the source, split it, validate it, write data/prepared.

    python -m tasks.prepare --out data/prepared [--params params.yaml]

Validation (Great Expectations) runs on the split in memory, before anything is
written: a failed check exits non-zero and leaves the previous output untouched.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from slimline.data.dataset import Prepared, save_prepared
from slimline.data.split import build_splits, normalization
from slimline.errors import StageError
from slimline.params import Params
from slimline.report import markdown_table, write_report
from slimline.stage import main

SECTIONS = ("data",)  # the params it reads: dvc.yaml's `params` for this stage


def prepare(params: Params, args: argparse.Namespace) -> None:
    cfg = params.data
    raw, splits, dropped, source_meta = build_splits(cfg)
    all_y = np.concatenate([y for _, y in splits.values()])
    num_classes = cfg.num_classes or int(all_y.max()) + 1

    from slimline.data.validate import validate_splits

    report = validate_splits(splits, num_classes=num_classes, min_per_class=cfg.min_per_class,
                             pixel_min=0.0, pixel_max=cfg.pixel_max,
                             min_rows=num_classes * cfg.min_per_class)
    print(report.summary(), flush=True)
    if not report.success:
        raise StageError(f"data validation failed; {args.out} was not changed.\n{report.summary()}")

    mean, std = normalization(cfg, splits["train"][0])
    counts = {name: {str(c): int((y == c).sum()) for c in range(num_classes)}
              for name, (_, y) in splits.items()}
    # File names only: absolute paths (a venv, a checkout) would make identical data hash differently.
    meta = {"source": cfg.source, "files": [Path(f).name for f in raw.files],
            "input_shape": list(splits["train"][0].shape[1:]),
            "num_classes": num_classes, "mean": mean, "std": std, "counts": counts,
            "sizes": {k: len(v[1]) for k, v in splits.items()}, "duplicates_dropped": dropped,
            **source_meta,  # image folders: class names, channels, size (predict applies them)
            **({"normalize": cfg.normalize.model_dump()} if cfg.normalize else {}),
            # the checks this data passed, kept with it: the model card cites them
            "checks": [{"name": c.name, "message": c.message} for c in report.checks]}
    save_prepared(Prepared(splits=splits, meta=meta), args.out)

    rows = [{"split": k, "images": len(v[1]), **{f"class {c}": counts[k][str(c)]
                                                 for c in range(num_classes)}}
            for k, v in splits.items()]
    checks = [{"check": c.name, "passed": c.success, "detail": c.message} for c in report.checks]
    md = (f"## prepare\n\nSource `{cfg.source}` ({', '.join(raw.files) or 'packaged'}), "
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
    print(f"prepare: wrote {args.out} ({meta['sizes']})", flush=True)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder")


if __name__ == "__main__":
    main("prepare", prepare, _args, SECTIONS)
