"""Fully sharded training (FSDP2) of the student: shard it, and gather it back whole.

``trainer=fsdp`` selects Lightning's ``ModelParallelStrategy``, which runs the LightningModule's
``configure_model`` hook; that hook calls :func:`shard_student`. Sharding uses torch's FSDP2
(``torch.distributed.fsdp.fully_shard``): each decoder layer is one unit whose parameters are
all-gathered before its forward and freed after it (FULL_SHARD), so every BitLinear computes its
absmean scale on the full weight, never on a shard (tested in tests/train/test_scale.py).

Lightning's ``FSDPStrategy`` (FSDP1) is not used: it refuses CPU accelerators and torch's FSDP1
needs a GPU, so it could not be tested here; FSDP2 runs on CPU with gloo. FSDP2 gradients are
DTensors, so ZClip's total gradient norm is the global norm without extra code.

The teacher is not an ``nn.Module`` of the LightningModule: it is never sharded; every rank keeps
a full replica (see docs/scaling.md for the memory this costs).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a transformers model (each is one FSDP unit).

    transformers 5 decoder layers (Llama, Qwen2/3, Mistral, ...) all subclass
    ``GradientCheckpointingLayer``, so no per-architecture class list is needed.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise TypeError(f"{type(model).__name__} has no transformers decoder layers "
                        "(GradientCheckpointingLayer) to shard; FSDP needs a transformers decoder")
    return layers


def is_sharded(model: nn.Module) -> bool:
    return is_sharded_class(type(model))


def is_sharded_class(cls: type) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return issubclass(cls, FSDPModule)


def shard_student(student: nn.Module, device_type: str) -> None:
    """Shard ``student`` in place over all ranks: one FSDP2 unit per decoder layer, plus the
    root (embeddings, final norm, head). Idempotent (Lightning may call it more than once)."""
    if is_sharded(student):
        return
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for layer in decoder_layers(student):
        fully_shard(layer, mesh=mesh)
    fully_shard(student, mesh=mesh)


def gathered_student(student: nn.Module, device: torch.device | str = "cpu") -> nn.Module | None:
    """The student as one plain (unsharded) model on rank 0 and None on other ranks; ``student``
    itself when it is not sharded. Collective: every rank must call it.

    The copy is rebuilt from the recorded conversion options (as ``load_bitnet`` does) and loaded
    with the full state dict, so ``save_pretrained`` and evaluation see ordinary tensors.
    """
    if not is_sharded(student):
        return student
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from wrinklefree.convert import build_bitnet

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(student, options=options)  # full on rank 0, {} elsewhere
    if dist.get_rank() != 0:
        return None
    config = copy.deepcopy(student.config)
    # fully_shard swapped the class for FSDP<Class>: rebuild the model class it wraps
    config.architectures = [next(c.__name__ for c in type(student).__mro__
                                 if issubclass(c, nn.Module) and not is_sharded_class(c))]
    plain = build_bitnet(config)
    plain.load_state_dict(state)
    plain.requires_grad_(False)
    return plain.to(device)
