"""Which models the quantize stage makes variants of (slimline.compress.variants)."""
from __future__ import annotations


import pytest



def test_quantize_takes_pruned_models_from_params_not_from_stale_folders(tmp_path):
    from slimline.errors import StageError
    from slimline.compress.variants import find_models

    for name in ("baseline", "student", "pruned/layer", "pruned/structured"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "structure.json").write_text("{}")
    found = find_models(tmp_path, ["structured"])
    assert sorted(found) == ["baseline", "prune_structured", "student"]  # the old `layer` is ignored
    with pytest.raises(StageError, match=r"prune@unstructured"):
        find_models(tmp_path, ["structured", "unstructured"])
