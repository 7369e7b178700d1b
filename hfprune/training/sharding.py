"""Training sharded models: what `PruningCallback` supports, and how it reads and ends a sharded model.

Under FSDP2 (`torch.distributed.fsdp.fully_shard`, what `accelerate launch` with `fsdp_version: 2` applies) every
parameter and gradient of the model is a `DTensor`, each process holding one slice (`Shard(0)`) of it. The gates
(`SoftMasks`) are not parameters: they scale activations, which FSDP2 leaves whole, so gates and the Fisher/Taylor
scores read from them work as under DDP. What reads the weights (magnitude, movement) gets DTensors back and
turns them into whole tensors (`whole`), identical on every process. At train end the model is gathered site by
site, each site cut as soon as it is whole, and turned back into a plain module (`gather_and_cut`), so the saved
checkpoint is a normal, unsharded one. The default teacher for distillation is sharded like the student
(`sharded_copy`).

Other ways of splitting a model across processes are refused at train begin (`check_sharding`) with an error that
names what is supported, rather than pruning each process's slice on its own: FSDP1 (`FullyShardedDataParallel`,
flat parameters), DeepSpeed ZeRO-3 (partitioned parameters), DTensors on more than one mesh dimension, on a mesh
that leaves processes out, or not sharded along dim 0 (tensor parallelism, HSDP), and FSDP2 with CPU offloading.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..core.sites import AttentionSite, resolve_sites
from ..core.surgery import remove_heads, remove_neurons
from ..errors import UnsupportedTrainingError

SUPPORTED = (
    "PruningCallback supports a whole model on each process (one process, DDP via torchrun / accelerate launch) "
    "and FSDP2 (torch.distributed.fsdp.fully_shard, accelerate's fsdp_version: 2) on a 1-D device mesh"
)


def _dtensor_class():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return None
    return DTensor


def is_dtensor(tensor) -> bool:
    dtensor = _dtensor_class()
    return dtensor is not None and isinstance(tensor, dtensor)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as a plain tensor: a DTensor is gathered (a collective: every process calls it, in the same order);
    anything else is returned as it is."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def check_sharding(model: nn.Module, args=None) -> bool:
    """Refuse what the callback cannot prune correctly; say whether `model` is sharded by FSDP2.

    Args:
        model: the model the Trainer trains (after `accelerator.prepare`, i.e. at `on_train_begin`).
        args: the `TrainingArguments`, if at hand: a DeepSpeed ZeRO-3 config is refused even before its
            parameters are partitioned.

    Returns:
        True for an FSDP2 model, False for a whole one.

    Raises:
        UnsupportedTrainingError: FSDP1, DeepSpeed ZeRO-3, or DTensors laid out otherwise than FSDP2 on one mesh
            dimension.
    """
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        FullyShardedDataParallel = ()  # noqa: N806
    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()) or any(
        getattr(p, "_is_flat_param", False) for p in model.parameters()
    ):
        raise UnsupportedTrainingError(
            f"the model is wrapped by FSDP1 (FullyShardedDataParallel, flat parameters): {SUPPORTED}. With "
            "accelerate, set fsdp_version: 2 (see scripts/examples/accelerate_fsdp2.yaml)"
        )
    if any(hasattr(p, "ds_id") for p in model.parameters()) or _zero_stage(args) == 3:
        raise UnsupportedTrainingError(
            f"DeepSpeed ZeRO-3 partitions the parameters, which the callback cannot gate or cut: {SUPPORTED}. "
            "ZeRO stages 1 and 2 keep whole parameters on every process and work as DDP does"
        )
    sharded = [(name, p) for name, p in model.named_parameters() if is_dtensor(p)]
    for name, parameter in sharded:
        placements, mesh = tuple(parameter.placements), parameter.device_mesh
        if mesh.ndim != 1 or not _is_fsdp_placement(placements[0]):
            raise UnsupportedTrainingError(
                f"parameter {name} is a DTensor with placements {placements} on a {mesh.ndim}-D mesh (tensor "
                f"parallelism or HSDP): {SUPPORTED}"
            )
        # Gate gradients are averaged over all processes: they must all be the data-parallel ranks of one mesh.
        world = torch.distributed.get_world_size()
        if mesh.size() != world:
            raise UnsupportedTrainingError(
                f"parameter {name} is sharded over {mesh.size()} of the {world} processes (FSDP2 mixed with "
                f"another kind of parallelism): {SUPPORTED} spanning every process"
            )
    if sharded and _offloaded(model):
        # The gates live where the parameters are (the CPU, with offloading), the activations they scale on the
        # accelerator: every forward would fail deep inside the model.
        raise UnsupportedTrainingError(
            f"FSDP2 with CPU offloading (CPUOffloadPolicy) is not supported yet: {SUPPORTED}, without offloading"
        )
    return bool(sharded)


def _offloaded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            group = module._get_fsdp_state()._fsdp_param_group
            if group is not None and isinstance(group.offload_policy, CPUOffloadPolicy):
                return True
    return False


def _is_fsdp_placement(placement) -> bool:
    from torch.distributed.tensor import Replicate, Shard

    return isinstance(placement, Replicate) or (isinstance(placement, Shard) and placement.dim == 0)


def _zero_stage(args) -> int | None:
    config = getattr(args, "hf_deepspeed_config", None)
    if config is None:
        return None
    stage = getattr(config, "config", {}).get("zero_optimization", {}).get("stage")
    return int(stage) if stage is not None else None


@torch.no_grad()
def sharded_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of an FSDP2 `model`, sharded the same way (the default teacher: FSDP2 modules refuse
    `copy.deepcopy`, and a model that needs sharding to train rarely fits whole beside it).

    The copy is built on the meta device, `fully_shard` is applied to the same modules (and groups of modules)
    over the same mesh, and each process copies its own shards into it: nothing is gathered. Every process calls
    it."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    cls = _plain_class(type(model))
    with torch.device("meta"):
        copy = cls(model.config)
    paths = {module: name for name, module in model.named_modules()}
    mesh = next(p for p in model.parameters() if is_dtensor(p)).device_mesh
    groups = []  # FSDP2 states in the order of their modules, children before parents as fully_shard wants
    for module in reversed(list(model.modules())):
        if isinstance(module, FSDPModule):
            members = module._get_fsdp_state()._modules
            if members not in groups:
                groups.append(members)
    for members in groups:
        targets = [copy.get_submodule(paths[m]) for m in members]
        fully_shard(targets if len(targets) > 1 else targets[0], mesh=mesh, reshard_after_forward=True)
    copy.to_empty(device=next(model.parameters()).device)
    for (name, mine), (_, theirs) in zip(copy.named_parameters(), model.named_parameters(), strict=True):
        if getattr(mine, "_local_tensor", mine).shape != getattr(theirs, "_local_tensor", theirs).shape:
            raise UnsupportedTrainingError(f"cannot shard the teacher like the model: {name} is sharded otherwise "
                                           f"(a custom shard_placement_fn?); pass PruningCallback(teacher=...)")
        getattr(mine, "_local_tensor", mine).copy_(getattr(theirs, "_local_tensor", theirs))
    for name, buffer in model.named_buffers():  # FSDP2 leaves buffers whole (rotary frequencies included)
        copy.get_buffer(name).copy_(buffer)
    return copy.requires_grad_(False)


@torch.no_grad()
def unshard_in_place(model: nn.Module) -> None:
    """Turn an FSDP2 `model` back into the plain module it was: gather every parameter whole on every process, and
    take FSDP2's hooks, state and wrapper classes off, so it computes and saves as a normal model. A collective:
    every process calls it."""
    gather_and_cut(model, {}, {})


@torch.no_grad()
def gather_and_cut(model: nn.Module, heads: dict[str, list[int]], neurons: dict[str, list[int]]) -> None:
    """Remove `heads` and `neurons` (as `remove_heads` / `remove_neurons` take them) from an FSDP2 `model`, and
    leave it a plain module, whole on every process.

    One site at a time is gathered whole and cut at once, so a process never holds more than the pruned model,
    the weights outside the sites (embeddings, norms, head) and one dense site. A collective: every process calls
    it, with the same requests.
    """
    from torch.distributed.fsdp import FSDPModule

    fsdp_modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in fsdp_modules:
        module.reshard()  # an evaluation pass may have left a group gathered; its DTensors are the parameters again
    gathered: dict[nn.Parameter, nn.Parameter] = {}  # tied weights stay tied
    for name, site in resolve_sites(model).items():  # the same order on every process, as the collectives need
        if isinstance(site, AttentionSite):
            # The output projection may live outside the attention module (BERT's sits in BertSelfOutput).
            _gather([*site.module.modules(), site.q, site.k, site.v, site.o], gathered)
            remove_heads(model, {name: heads.get(name, [])})
        else:
            _gather([*site.inputs, site.output], gathered)
            remove_neurons(model, {name: neurons.get(name, [])})
    _gather(model.modules(), gathered)
    _strip_fsdp(model, fsdp_modules)


def _gather(modules, gathered: dict) -> None:
    """Swap the DTensor parameters of `modules` for whole, plain parameters (the same one for a tied weight)."""
    for module in modules:
        for key, parameter in module._parameters.items():
            if parameter is None or not is_dtensor(parameter):
                continue
            if parameter not in gathered:
                gathered[parameter] = nn.Parameter(parameter.full_tensor().detach().clone(),
                                                   requires_grad=parameter.requires_grad)
            module._parameters[key] = gathered[parameter]


def _strip_fsdp(model: nn.Module, fsdp_modules: list[nn.Module]) -> None:
    """Take FSDP2's forward hooks, state, instance methods and wrapper classes off `model`'s modules."""
    from torch.distributed._composable.contract import REGISTRY_KEY, STATE_KEY
    from torch.distributed._composable_state import _module_state_mapping

    for module in fsdp_modules:
        state = module._get_fsdp_state()
        for handle in {state._pre_forward_hook_handle, state._post_forward_hook_handle}:
            handle.remove()
        _module_state_mapping.pop(module, None)
        for key in (STATE_KEY, REGISTRY_KEY):
            module.__dict__.pop(key, None)
        # register_fsdp_forward_method (the Trainer registers `generate`) puts a wrapper on the instance.
        for name, value in list(module.__dict__.items()):
            function = getattr(value, "__func__", None)
            if function is not None and hasattr(function, "__wrapped__") and function.__name__ == name:
                del module.__dict__[name]
        module.__class__ = _plain_class(type(module))
    for module in model.modules():
        for flag in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
            module.__dict__.pop(flag, None)


def _plain_class(cls: type) -> type:
    """The model's own class under FSDP2's dynamic `FSDP<Class>` wrapper class."""
    from torch.distributed.fsdp import FSDPModule

    if issubclass(cls, FSDPModule):
        return next(base for base in cls.__bases__ if base is not FSDPModule)
    return cls
