"""Which models the quantize stage makes variants of (slimline.compress.variants)."""
from __future__ import annotations

import pytest


def test_quantize_takes_pruned_models_from_params_not_from_stale_folders(tmp_path):
    from slimline.compress.variants import find_models
    from slimline.errors import StageError

    for name in ("baseline", "student", "pruned/layer", "pruned/structured"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "structure.json").write_text("{}")
    found = find_models(tmp_path, ["structured"])
    assert sorted(found) == ["baseline", "prune_structured", "student"]  # the old `layer` is ignored
    with pytest.raises(StageError, match=r"prune@unstructured"):
        find_models(tmp_path, ["structured", "unstructured"])


def test_a_method_that_could_not_apply_is_skipped_not_an_error(tmp_path):
    from slimline.compress.pruning import write_not_applicable
    from slimline.compress.variants import find_models

    for name in ("baseline", "pruned/structured"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "structure.json").write_text("{}")
    report = write_not_applicable(tmp_path / "pruned" / "layer", "layer", "no residual block")
    assert report == {"method": "layer", "status": "not_applicable", "reason": "no residual block"}
    assert sorted(find_models(tmp_path, ["layer", "structured"])) == ["baseline", "prune_structured"]
