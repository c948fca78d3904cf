"""Training in process: bit-identical reruns, augmentation, checkpoint I/O (atomic, no pickle),
resume keys, and imported weights used as they are."""
import os

import torch

from slimline.params import NetworkParams, Structure, TrainParams
from slimline.training.checkpoint import CheckpointStore
from slimline.training.loop import random_shift
from slimline.training.trainer import model_spec, train_network
from tests.support.tiny import tiny_prepared


def train_once(tmp_path, out, **train):
    cfg = TrainParams(epochs=3, batch_size=16, num_threads=1, device="cpu", **train)
    s = Structure(conv_channels=[4], hidden=[8], dropout=0.2)
    prep = tiny_prepared()
    return train_network("t", model_spec(s, prep), cfg, prep, tmp_path / out, key_params={"o": out},
                         deps=[])


def test_two_cpu_runs_give_bit_identical_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = train_once(tmp_path, "a")
    b = train_once(tmp_path, "b")
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert a.results == b.results
    c = train_once(tmp_path, "c", seed=1)  # and the seed really matters
    assert c.results["test_loss"] != a.results["test_loss"]


def test_random_shift_moves_content_and_fills_zeros():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    gen = torch.Generator().manual_seed(0)
    shifted = [random_shift(x, 2, gen) for _ in range(20)]
    assert all(s.sum() == 1.0 for s in shifted)  # shifts by <= 2 keep the centre pixel inside
    assert len({tuple(s.nonzero()[0].tolist()) for s in shifted}) > 3
    assert torch.equal(random_shift(x, 0, gen), x)


def test_checkpoint_store_atomic_keep_and_fallback(tmp_path):
    store = CheckpointStore(tmp_path / "ck", keep=2)
    assert store.latest() is None
    for epoch in (1, 2, 3):
        store.save(epoch, {"w": torch.full((2,), float(epoch)), "history": [{"epoch": epoch}]})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["epoch-0002.pt", "epoch-0003.pt"]
    assert store.latest()["epoch"] == 3
    # a damaged newest checkpoint falls back to the previous one, never crashes
    (tmp_path / "ck/epoch-0003.pt").write_bytes(b"\x00garbage")
    state = store.latest()
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.full((2,), 2.0))
    store.clear()
    assert not (tmp_path / "ck").exists()


def test_checkpoint_refuses_pickled_objects(tmp_path):
    """weights_only loading: a checkpoint smuggling an arbitrary object is not executed."""
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "ck" / "epoch-0001.pt"
    path.parent.mkdir()
    torch.save({"epoch": 1, "x": Evil()}, path)
    assert CheckpointStore(tmp_path / "ck").latest() is None


def test_changed_params_never_resume_a_stale_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from slimline.paths import resume_dir

    dep = tmp_path / "dep.bin"
    dep.write_bytes(b"a")
    base = resume_dir("s", {"lr": 0.1}, [dep])
    assert resume_dir("s", {"lr": 0.2}, [dep]) != base
    dep.write_bytes(b"b")
    assert resume_dir("s", {"lr": 0.1}, [dep]) != base


def test_imported_weights_with_skip_training_are_used_as_they_are(tmp_path, monkeypatch):
    """baseline.weights + skip_training: the imported model is evaluated and saved, not trained."""
    import torch

    from slimline.model import build_model, load_model
    from slimline.weights import weights_init

    monkeypatch.chdir(tmp_path)
    prep = tiny_prepared()
    spec = model_spec(NetworkParams(model="python:slimline.examples.tiny_resnet:build", kwargs={"width": 8}),
                      prep)
    torch.manual_seed(5)
    trained = build_model(spec)[1].state_dict()
    torch.save(trained, tmp_path / "w.pt")
    cfg = TrainParams(epochs=3, batch_size=16, num_threads=1, device="cpu")
    t = train_network("t", spec, cfg, prep, tmp_path / "out", key_params={}, deps=[],
                      init=weights_init(tmp_path / "w.pt", spec.model), train=False)
    assert t.results["epochs"] == 0 and t.fit.history[0]["epoch"] == 0
    loaded, saved = load_model(tmp_path / "out")
    assert saved.model == spec.model and saved.kwargs == {"width": 8}
    for k, v in loaded[1].state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_evaluation_batches_shrink_with_the_image_so_their_activations_stay_bounded():
    from slimline.training.loop import eval_batch_size

    assert eval_batch_size((1, 28, 28)) == 1000  # the digits: the batch the committed metrics used
    assert eval_batch_size((3, 64, 64)) == 341
    assert eval_batch_size((3, 224, 224)) == 32
