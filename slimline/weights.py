"""Importing a checkpoint the user brings: safetensors, or a PyTorch state dict read with
torch.load(weights_only=True). Nothing is ever unpickled: a file that needs pickle code
objects (a whole pickled model, custom classes) is refused with the fix."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from slimline.errors import StageError

WRAPPERS = ("state_dict", "model")  # {"state_dict": {...}} as Lightning and many scripts save
SHOWN = 5  # mismatched keys named in an error


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise StageError(f"weights file {path} not found: fix the `weights` path in params.yaml")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - truncated or not safetensors at all
            raise StageError(f"{path} is not a readable safetensors file ({err})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise StageError(
            f"{path} needs pickle code to load ({str(err).splitlines()[0][:160]}); Slimline never "
            f"unpickles. Save a plain state dict instead: torch.save(model.state_dict(), path), or "
            f"safetensors.torch.save_file(model.state_dict(), path)") from None
    except Exception as err:  # noqa: BLE001 - truncated zip, not a torch file
        raise StageError(f"{path} is not a readable PyTorch weights file ({type(err).__name__}: "
                         f"{err})") from None
    for key in WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise StageError(f"{path} holds {type(obj).__name__}, not a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def load_weights(net: nn.Module, path: str | Path) -> None:
    """Load a checkpoint into `net` (the user's module, without Slimline's normalisation
    layer). Every key must match by name and shape; the error lists the first few that do not."""
    state = read_state_dict(path)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs the model's {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > SHOWN else ""
            problems.append(f"{what}: {', '.join(keys[:SHOWN])}{more}")
    if problems:
        raise StageError(f"{path} does not fit the model: " + "; ".join(problems)
                         + ". Check the model spec, its kwargs and num_classes against the checkpoint")
    net.load_state_dict(state)


def weights_init(path: str | Path, model_kind: str):
    """An init hook for slimline.training.trainer.train_network: load `path` into the
    freshly built model (a zoo or python model's own module, or a whole saved cnn)."""
    def init(model: nn.Module) -> nn.Module:
        load_weights(model if model_kind == "cnn" else model[1], path)
        return model
    return init
