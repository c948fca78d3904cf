"""Each training path gives bit-identical weights when run twice from the same seed, in
process: every pruning method with its KD fine-tuning, and distillation. (The stages' own
outputs are compared end to end with tests/tiny.lock, on the shared tiny build.)"""
from __future__ import annotations

import pytest
import torch

from slimline.compress.kd import make_kd_loss
from slimline.compress.pruning import PRUNERS, PruneJob
from slimline.params import PRUNE_METHODS, DistillParams, PruneParams, Structure, TrainParams
from slimline.training.loop import evaluate, make_finetune, seed_everything
from slimline.training.trainer import model_spec, train_network
from tests.support.pruning_models import make
from tests.support.tiny import tiny_prepared

TRAIN = TrainParams(epochs=1, batch_size=16, num_threads=1, device="cpu")


def weights(model) -> dict[str, bytes]:
    return {k: v.detach().contiguous().numpy().tobytes() for k, v in model.state_dict().items()}


def prune_once(method: str) -> dict[str, bytes]:
    seed_everything(0, 1)
    data = tiny_prepared().splits
    teacher, _, _ = make(seed=1)
    model, spec, _ = make(seed=0)
    finetune = make_finetune(TRAIN, data, make_kd_loss(teacher, DistillParams()))
    job = PruneJob(PruneParams(amount=0.5, steps=2, finetune_epochs=1, ablation_epochs=1, layers_to_remove=1),
                   example=torch.from_numpy(data["train"][0][:2]).float(), finetune=finetune,
                   evaluate=lambda m: evaluate(m, data["val"])[1])
    return weights(PRUNERS[method](model, spec, job).model)


@pytest.mark.parametrize("method", PRUNE_METHODS)
def test_each_pruning_method_with_kd_finetuning_reruns_bit_identically(method):
    first = prune_once(method)
    assert prune_once(method) == first


def test_distillation_reruns_bit_identically(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prep = tiny_prepared()
    teacher, _, _ = make(seed=1)
    spec = model_spec(Structure(conv_channels=[4], hidden=[8]), prep)
    out = []
    for run in ("a", "b"):
        seed_everything(0, 1)
        t = train_network("kd", spec, TRAIN.model_copy(update={"epochs": 2}), prep, tmp_path / run,
                          key_params={"run": run}, deps=[], loss_fn=make_kd_loss(teacher, DistillParams()))
        out.append(((tmp_path / run / "model.safetensors").read_bytes(), t.results))
    assert out[0] == out[1]


@pytest.mark.parametrize("photos", [False, True])
def test_training_from_disk_with_0_or_2_loader_workers_matches_training_in_memory(tmp_path, monkeypatch,
                                                                                   photos):
    """The same batches reach the model in the same order however they are read: the
    arrays in memory, the memory-mapped files in this process, or two worker processes;
    with the photo augmentation too, which the workers apply."""
    from slimline.data.dataset import load_prepared, save_prepared
    from slimline.params import LoaderParams

    monkeypatch.chdir(tmp_path)
    in_memory = tiny_prepared()
    save_prepared(in_memory, tmp_path / "prepared")
    on_disk = load_prepared(tmp_path / "prepared")
    spec = model_spec(Structure(conv_channels=[4], hidden=[8], dropout=0.3), in_memory)
    out = []
    for prep, workers in ((in_memory, 0), (on_disk, 0), (on_disk, 2)):
        seed_everything(0, 1)
        augment = {"crop_scale": (0.5, 1.0), "hflip": True} if photos else {}
        cfg = TRAIN.model_copy(update={"epochs": 2, **augment})
        t = train_network("train", spec, cfg, prep, tmp_path / "model",
                          key_params={}, deps=[], loader=LoaderParams(workers=workers, prefetch=1), log=False)
        out.append(((tmp_path / "model" / "model.safetensors").read_bytes(), t.results))
    assert out[1] == out[0] and out[2] == out[0]
