"""docs/params.md is generated from the schema: it must be current, and the schema,
its descriptions and params.yaml must cover the same keys."""
import re

import yaml

from slimline.params import Params
from slimline.params_doc import render, submodel, walk
from tests.support.project import ROOT


def sections():
    for name, field in Params.model_fields.items():
        yield name, submodel(field)


def yaml_keys(raw: dict, model, prefix: str = "") -> set[str]:
    # Only where the schema nests a model: a mapping value (search.overrides) is a leaf.
    keys = set()
    for key, value in (raw or {}).items():
        keys.add(prefix + key)
        field = model.model_fields.get(key)
        sub = submodel(field) if field is not None else None
        if sub is not None and isinstance(value, dict):
            keys |= yaml_keys(value, sub, f"{prefix}{key}.")
    return keys


def row(md: str, section: str, key: str) -> list[str]:
    """The cells of `key`'s row in `section`'s table."""
    part = md.split(f"## `{section}`\n", 1)[1].split("\n## ", 1)[0]
    line = next(ln for ln in part.splitlines() if ln.startswith(f"| `{key}` |"))
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_docs_params_md_is_current():
    assert (ROOT / "docs" / "params.md").read_text() == render(ROOT / "params.yaml"), \
        "docs/params.md is stale: run `make docs`"


def test_params_yaml_and_schema_have_the_same_keys():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    in_yaml = yaml_keys(raw, Params)
    in_schema = {name for name, _ in sections()}
    in_schema |= {f"{name}.{key}" for name, model in sections() for key, _ in walk(model)}
    problems = [f"params.yaml key {k} is missing from the schema (slimline/params.py)"
                for k in sorted(in_yaml - in_schema)]
    problems += [f"schema key {k} is missing from params.yaml" for k in sorted(in_schema - in_yaml)]
    assert not problems, "\n".join(problems)


def test_every_schema_field_has_a_description():
    missing = [f"{name}.{key}" for name, model in sections() for key, field in walk(model)
               if not (field.description or "").strip()]
    assert not missing, f"fields without description= in slimline/params.py: {missing}"


def test_render_shows_allowed_values_and_the_params_yaml_value(tmp_path):
    md = render(ROOT / "params.yaml")
    assert row(md, "train", "optimizer")[1] == "sgd \\| adamw"
    assert row(md, "baseline", "dropout")[2] == "`0.3`"  # Params().baseline, not Structure()
    assert row(md, "search", "space.hidden")[2] == "`[[128], [128, 64]]`"

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert raw["train"]["epochs"] != 3
    raw["train"]["epochs"] = 3
    changed = tmp_path / "params.yaml"
    changed.write_text(yaml.safe_dump(raw))
    cells = row(render(changed), "train", "epochs")
    assert cells[2] == f"`{Params().train.epochs}`" and cells[3] == "`3`", cells
