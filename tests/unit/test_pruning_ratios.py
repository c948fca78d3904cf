"""Sensitivity-guided structured pruning: the scan measures each layer alone, the per-layer
widths spend uniform pruning's FLOPs budget where it costs least, and the stage's path
(PRUNERS['structured']) prunes to them and reports each layer."""
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from slimline.compress import pruning_ratios
from slimline.compress.pruning import PRUNERS, PruneJob, classifier, structure_of
from slimline.model import count_flops
from slimline.params import PruneParams
from tests.support.pruning_models import SHAPE, Recorder, make

SENSITIVE = "0.4"  # the second conv block's conv: make(...) nests each block in a Sequential


def width_score(model: nn.Module) -> float:
    """A stand-in for validation accuracy that only the sensitive conv's width moves: it loses
    0.4 per fraction of that conv's channels removed, so the scan finds exactly that."""
    return 1.0 - 0.4 * (1 - dict(model.named_modules())[SENSITIVE].out_channels / 32)


def reduction(flops, base):
    return 1 - flops / base


def test_per_layer_ratios_reach_the_uniform_flops_reduction_within_2pct(tmp_path):
    model, spec, base = make(conv_channels=[16, 32], hidden=[32])
    before = count_flops(model, SHAPE)
    cfg = PruneParams(ratios="sensitivity", amount=0.5, steps=2)
    finetune = Recorder()
    out = PRUNERS["structured"](model, spec, PruneJob(cfg, torch.rand(2, *SHAPE), finetune, width_score))
    layers = {row["layer"]: row for row in out.layers}
    assert list(layers) == ["0.1", SENSITIVE, "1.0"]  # the classifier is never a group
    # The scan saw the sensitive conv and nothing else.
    assert layers[SENSITIVE]["drop@0.5"] == pytest.approx(0.2)
    assert all(row["drop@0.9"] == 0 for name, row in layers.items() if name != SENSITIVE)
    # The budget went to the insensitive layers: the sensitive conv keeps more than uniform's
    # half, the first conv (which sets its FLOPs) keeps less, and the FLOPs reduction equals
    # uniform's within 2%.
    assert layers[SENSITIVE]["kept"] > 16 and layers["0.1"]["kept"] < 8
    a = out.allocation
    got = count_flops(out.model, SHAPE)
    assert got == a["flops"] and a["base_flops"] == before
    assert reduction(got, before) == pytest.approx(reduction(a["target_flops"], before), rel=0.02)
    # What the report says is what the model is, and it trained after each of the 2 steps.
    s = structure_of(out.model, base)
    assert s.conv_channels == [layers["0.1"]["kept"], layers[SENSITIVE]["kept"]]
    assert s.hidden == [layers["1.0"]["kept"]] and finetune.calls == [2, 2]
    assert out.model.eval()(torch.rand(2, *SHAPE)).shape == (2, 3)


def test_uniform_ratios_report_every_layer_without_a_scan():
    model, spec, _ = make(conv_channels=[16, 32], hidden=[32])
    out = PRUNERS["structured"](model, spec, PruneJob(PruneParams(amount=0.5, steps=1), torch.rand(2, *SHAPE),
                                                      Recorder(),
                                                      lambda m: pytest.fail("no scan for uniform")))
    assert [(r["layer"], r["kept"], r["ratio"]) for r in out.layers] == \
        [("0.1", 8, 0.5), (SENSITIVE, 16, 0.5), ("1.0", 16, 0.5)]
    assert out.allocation is None


def test_an_unreachable_budget_returns_the_most_the_scan_can_remove():
    model, _, _ = make(conv_channels=[16, 32], hidden=[32])
    layers = [pruning_ratios.Layer(n, c, {0.25: 0.0}) for n, c in
              pruning_ratios.groups(model, torch.rand(2, *SHAPE), [classifier(model)]).items()]
    a = pruning_ratios.allocate(model, torch.rand(2, *SHAPE), [], layers, 0.75, SHAPE)
    assert a.kept == {"0.1": 12, SENSITIVE: 24, "1.0": 24} and a.flops > a.target_flops
    assert 0 < a.short_by() == (a.flops - a.target_flops) / (a.base_flops - a.target_flops) < 1


@pytest.mark.parametrize("bad, says", [
    ({"scan_ratios": [0.5, 0.25]}, "increasing fractions"),
    ({"scan_ratios": [0.5, 1.0]}, "increasing fractions"),
    ({"ratios": "sensitivity", "amount": 0.8, "scan_ratios": [0.25, 0.5]}, "add a ratio of at least 0.8"),
    ({"ratios": "greedy"}, "'uniform' or 'sensitivity'"),
])
def test_bad_ratio_params_are_rejected_by_name(bad, says):
    with pytest.raises(ValidationError, match=says):
        PruneParams(**bad)
