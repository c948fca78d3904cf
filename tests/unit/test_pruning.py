"""Pruning: unstructured sparsity, Torch-Pruning channel removal, greedy layer removal,
and that every result round-trips through structure_of / save_model / load_model."""
import pytest
import torch
from torch import nn

from slimline.compress.pruning import (
    PRUNERS,
    Pruned,
    PruneJob,
    prune_layers,
    prune_structured,
    prune_unstructured,
    structure_of,
)
from slimline.compress.sparsity import sparsity
from slimline.errors import StageError
from slimline.model import ModelSpec, build_model, count_params, load_model, save_model
from slimline.params import PRUNE_METHODS, PruneParams, Structure
from tests.support.pruning_models import CLASSES, SHAPE, Recorder, make


def sgd_steps(model, epochs):
    """A real (tiny) fine-tune, to show masks survive optimisation."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    torch.manual_seed(1)
    x, y = torch.rand(16, *SHAPE), torch.randint(0, CLASSES, (16,))
    model.train()
    for _ in range(epochs * 3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def weight_sparsity(model):
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def assert_roundtrip(model, spec, base, tmp_path):
    """structure_of describes the model: save_model -> load_model gives the same logits."""
    model = model.cpu().eval()
    out_spec = ModelSpec(structure=structure_of(model, base).model_dump(), input_shape=spec.input_shape,
                         num_classes=spec.num_classes, mean=spec.mean, std=spec.std)
    rebuilt = build_model(out_spec)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    save_model(model, out_spec, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    x = torch.rand(5, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("batch_norm", [False, True])
def test_unstructured_reaches_amount_and_keeps_masks_through_finetuning(batch_norm, tmp_path):
    model, spec, base = make(batch_norm=batch_norm)
    seen = []

    def finetune(m, epochs):
        seen.append((epochs, weight_sparsity(m)))
        sgd_steps(m, epochs)

    out = prune_unstructured(model, amount=0.6, steps=3, finetune=finetune, epochs_per_step=2)
    assert [e for e, _ in seen] == [2, 2, 2]
    # Cumulative schedule 1 - 0.4^(k/3): sparsity grows every step and ends at the amount.
    assert seen[0][1] < seen[1][1] < seen[2][1]
    assert weight_sparsity(out) == pytest.approx(0.6, abs=0.01)  # still sparse after training
    assert not any(k.endswith(("_orig", "_mask")) for k in out.state_dict())
    nonzero, total = sparsity(out)
    assert total == count_params(out) and nonzero < total
    assert structure_of(out, base) == base  # unstructured pruning keeps every shape
    assert out(torch.rand(2, *SHAPE)).shape == (2, CLASSES)
    assert_roundtrip(out, spec, base, tmp_path)


def test_sparsity_counts_masked_weights_mid_pruning():
    model, _, _ = make()
    lin = model[1][0]
    torch.nn.utils.prune.l1_unstructured(lin, "weight", amount=0.5)
    nonzero, total = sparsity(model)
    assert total == count_params(build_model(make()[1]))  # weight_orig counted once, as weight
    assert total - nonzero >= lin.weight.numel() // 2


@pytest.mark.parametrize("structure", [{}, {"batch_norm": True, "dropout": 0.2, "activation": "gelu"}])
def test_structured_halves_every_width_but_the_classes(structure, tmp_path):
    model, spec, base = make(**structure)
    before = count_params(model)
    mean, std = model[0][0].mean.clone(), model[0][0].std.clone()
    finetune = Recorder()
    out = prune_structured(model, torch.rand(1, *SHAPE), amount=0.5, steps=2,
                           finetune=finetune, epochs_per_step=3)
    assert finetune.calls == [3, 3]
    s = structure_of(out, base)
    assert s.conv_channels == [4, 4] and s.hidden == [8, 8]
    assert [m for m in out.modules() if isinstance(m, nn.Linear)][-1].out_features == CLASSES
    assert 3 <= before / count_params(out) <= 4.5
    assert torch.equal(out[0][0].mean, mean) and torch.equal(out[0][0].std, std)
    assert out.eval()(torch.rand(2, *SHAPE)).shape == (2, CLASSES)
    assert_roundtrip(out, spec, base, tmp_path)


def identity_second_hidden():
    """hidden=[16, 16] whose second Linear is exactly the identity: ReLU outputs are >= 0,
    so ReLU(I x) = x and removing that layer leaves the function unchanged."""
    model, spec, base = make(conv_channels=[4], hidden=[16, 16])
    with torch.no_grad():
        lin = [m for m in model.modules() if isinstance(m, nn.Linear)][1]
        lin.weight.copy_(torch.eye(16))
        lin.bias.zero_()
    return model.eval(), spec, base


def test_layer_pruning_finds_the_identity_layer(tmp_path):
    model, spec, base = identity_second_hidden()
    x = torch.rand(64, *SHAPE)
    with torch.no_grad():
        reference = model(x)

    def agreement(m):
        with torch.no_grad():
            return float((m.eval()(x).argmax(1) == reference.argmax(1)).float().mean())

    finetune = Recorder()
    out, out_spec, table = prune_layers(model, spec, n_remove=1, evaluate=agreement,
                                        finetune=finetune, ablation_epochs=0)
    assert [r["removed"] for r in table] == ["hidden[0]", "hidden[1]", "conv_channels[0]"]
    assert finetune.calls == [0, 0, 0]
    chosen = [r for r in table if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["removed"] == "hidden[1]"
    assert chosen[0]["val_accuracy"] == 1.0 and chosen[0]["round"] == 1
    assert chosen[0]["structure"] == {"hidden": [16], "conv_channels": [4]}
    assert chosen[0]["params"] == count_params(out) < count_params(model)
    assert Structure.model_validate(out_spec.structure).hidden == [16]
    with torch.no_grad():
        torch.testing.assert_close(out.eval()(x), reference)
    assert_roundtrip(out, out_spec, base, tmp_path)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_layer_pruning_keeps_later_layers_by_ordinal(batch_norm):
    # Removing conv block 0 shifts every Sequential index; the second conv (now the first)
    # cannot keep its weight (in_channels 6 -> 1) but keeps its bias, and the classifier
    # (same shape) must be carried over although its state_dict name changed.
    model, spec, _ = make(conv_channels=[8, 6], hidden=[16], batch_norm=batch_norm)
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_()

    def evaluate(m):  # favour the candidate without the first conv block
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
        return 1.0 if [c.out_channels for c in convs] == [6] else 0.5

    out, _, table = prune_layers(model, spec, 1, evaluate, Recorder(), 0)
    assert [r["removed"] for r in table if r["chosen"]] == ["conv_channels[0]"]
    old_convs = [c for c in model.modules() if isinstance(c, nn.Conv2d)]
    new_conv = [c for c in out.modules() if isinstance(c, nn.Conv2d)][0]
    assert torch.equal(new_conv.bias, old_convs[1].bias)
    assert torch.equal(out[1][-1].weight, model[1][-1].weight)  # classifier carried over
    if batch_norm:  # the second BatchNorm2d's statistics follow its conv
        old_bn = [b for b in model.modules() if isinstance(b, nn.BatchNorm2d)][1]
        new_bn = next(b for b in out.modules() if isinstance(b, nn.BatchNorm2d))
        assert torch.equal(new_bn.running_mean, old_bn.running_mean)
    assert out.eval()(torch.rand(2, *SHAPE)).shape == (2, CLASSES)


def test_layer_pruning_ties_prefer_smaller_and_rounds_accumulate(tmp_path):
    model, spec, base = make(conv_channels=[4], hidden=[32, 8])
    out, out_spec, table = prune_layers(model, spec, n_remove=2, evaluate=lambda m: 0.5,
                                        finetune=Recorder(), ablation_epochs=1)
    round1 = [r for r in table if r["round"] == 1]
    assert len(round1) == 3 and sum(r["chosen"] for r in round1) == 1
    best = min(round1, key=lambda r: r["params"])
    assert best["chosen"]
    round2 = [r for r in table if r["round"] == 2]
    assert sum(r["chosen"] for r in round2) == 1
    s = Structure.model_validate(out_spec.structure)
    assert len(s.hidden) + len(s.conv_channels) == 1
    assert_roundtrip(out, out_spec, base, tmp_path)


def test_layer_pruning_never_empties_the_network():
    model, spec, _ = make(conv_channels=[], hidden=[16])
    with pytest.raises(StageError, match="n_remove"):
        prune_layers(model, spec, n_remove=1, evaluate=lambda m: 1.0, finetune=Recorder(),
                     ablation_epochs=0)


def test_layer_pruning_after_structured_pruning_reads_widths_from_the_model(tmp_path):
    model, spec, base = make()
    model = prune_structured(model, torch.rand(1, *SHAPE), 0.5, 1, Recorder(), 0)
    out, out_spec, table = prune_layers(model, spec, 1, lambda m: 1.0, Recorder(), 0)
    assert all(r["structure"]["hidden"] in ([8], [8, 8]) for r in table)
    assert_roundtrip(out, out_spec, base, tmp_path)


@pytest.mark.parametrize("amount, steps", [(1.0, 1), (-0.1, 1), (0.5, 0)])
def test_bad_amount_or_steps_rejected(amount, steps):
    model, _, _ = make()
    with pytest.raises(ValueError):
        prune_unstructured(model, amount, steps, Recorder(), 1)


@pytest.mark.parametrize("method", PRUNE_METHODS)
def test_every_schema_method_runs_through_the_registry(method, tmp_path):
    """Each prune.methods name maps to code with one signature and one result type, and
    every method gets the same fine-tuning budget (finetune_epochs per step)."""
    model, spec, base = make()
    cfg = PruneParams(methods=[method], amount=0.5, steps=2, finetune_epochs=3, ablation_epochs=1)
    finetune = Recorder()
    job = PruneJob(cfg, example=torch.rand(2, *SHAPE), finetune=finetune, evaluate=lambda m: 0.5)
    out = PRUNERS[method](model, spec, job)
    assert isinstance(out, Pruned) and isinstance(out.model, nn.Module)
    assert (out.ablation != []) == (method == "layer")
    assert sum(e for e in finetune.calls) - (len(out.ablation) if method == "layer" else 0) == 6
    assert_roundtrip(out.model, out.spec, base, tmp_path)
