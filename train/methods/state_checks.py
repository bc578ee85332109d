"""Checks of a saved training state against the run loading it, before any of it is used.

A checkpoint is a file someone may have edited, and ``torch.load(weights_only=True)`` loads
whatever plain data it holds; one of the wrong structure must fail with its fault named
(:class:`CheckpointMismatch`), never train on (or publish) a model it does not describe.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

# The layout of every method's state (the keys of :meth:`Method.state`); a checkpoint of another
# format is refused rather than guessed at.
STATE_FORMAT = 1


class CheckpointMismatch(ValueError):
    """A saved training state that does not fit the run loading it; the message says what differs."""


def require(condition: bool, problem: str) -> None:
    if not condition:
        raise CheckpointMismatch(problem)


def shown(value, limit: int = 40) -> str:
    """A short description of a checkpoint value: small plain values as written, others by type."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        text = repr(value)
        if len(text) <= limit:
            return text
    return f"a {type(value).__name__}"


def check_tensor(value, template: torch.Tensor, name: str) -> None:
    """``value`` must be a tensor of ``template``'s shape and dtype."""
    require(isinstance(value, torch.Tensor), f"{name} is a {type(value).__name__}, expected a tensor")
    require(value.shape == template.shape and value.dtype == template.dtype,
            f"{name} is a {value.dtype} tensor of shape {list(value.shape)}, the run's is {template.dtype} "
            f"{list(template.shape)}")


def check_entry(state: Mapping, name: str, kind: type, owner: str = ""):
    """``state[name]``, which must exist and be a ``kind`` (an ``int`` is never a ``bool`` here)."""
    where = f"{owner} {name}".strip()
    require(name in state, f"{owner + ' ' if owner else ''}has no {name!r} entry")
    value = state[name]
    described = {int: "a whole number", bool: "true or false", list: "a list", dict: "a dict"}
    require(isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool),
            f"{where} is {shown(value)}, expected {described.get(kind, kind.__name__)}")
    return value


def check_identity(state, method: str) -> int:
    """The checks every method makes first: a dict of this format and method; returns ``completed``."""
    require(isinstance(state, Mapping), f"holds a {type(state).__name__}, expected a training state dict")
    state_format, state_method = state.get("format"), state.get("method")
    require(isinstance(state_format, int) and state_format == STATE_FORMAT,
            f"has state format {shown(state_format)}, this version reads {STATE_FORMAT}")
    require(isinstance(state_method, str) and state_method == method,
            f"was saved by a {shown(state_method)} run, this run trains {method!r}")
    completed = check_entry(state, "completed", int)
    require(completed >= 0, f"claims {completed} finished epochs; a count cannot be negative")
    return completed


def check_module_state(value, model: torch.nn.Module, name: str) -> None:
    """``value`` must be a state dict of ``model``: the same names, shapes and dtypes."""
    require(isinstance(value, Mapping), f"{name} is a {type(value).__name__}, expected a model state dict")
    template = model.state_dict()
    missing = [key for key in template if key not in value]
    unexpected = [str(key) for key in value if key not in template]
    require(not missing, f"{name} lacks {len(missing)} of the model's tensors "
                         f"(first: {missing[0] if missing else ''})")
    require(not unexpected, f"{name} has {len(unexpected)} tensors the model does not "
                            f"(first: {unexpected[0] if unexpected else ''})")
    for key, tensor in template.items():
        check_tensor(value[key], tensor, f"{name} {key}")


# Optimiser hyper-parameters come from the run's configuration; a checkpoint must not change them.
_OPTIMISER_SETTINGS = ("lr", "weight_decay", "betas", "eps", "amsgrad", "maximize")


def check_optimiser_state(value, optimiser: torch.optim.Optimizer, name: str) -> None:
    """``value`` must be a state dict of ``optimiser``: its parameters, settings and moment shapes."""
    require(isinstance(value, Mapping), f"{name} is a {type(value).__name__}, expected an optimiser state dict")
    template = optimiser.state_dict()
    groups = check_entry(value, "param_groups", list, owner=name)
    require(len(groups) == len(template["param_groups"]),
            f"{name} has {len(groups)} parameter groups, the run's optimiser {len(template['param_groups'])}")
    for stored, expected in zip(groups, template["param_groups"]):
        require(isinstance(stored, Mapping), f"{name} has a parameter group that is a {type(stored).__name__}")
        params = stored.get("params")
        require(isinstance(params, list) and params == expected["params"],
                f"{name} is for {len(params) if isinstance(params, list) else shown(params)} parameters, "
                f"the run's optimiser has {len(expected['params'])}")
        for setting in _OPTIMISER_SETTINGS:
            if setting in expected:
                have, want = stored.get(setting), expected[setting]
                if isinstance(have, (list, tuple)) and isinstance(want, (list, tuple)):
                    have, want = list(have), list(want)
                # A tensor never equals a setting: comparing one would give a tensor, not a bool.
                require(not isinstance(have, torch.Tensor) and have == want,
                        f"{name} {setting} is {shown(have)}, the run's is {want!r}")
    parameters = [parameter for group in optimiser.param_groups for parameter in group["params"]]
    moments = value.get("state")
    require(isinstance(moments, Mapping), f"{name} state is a {type(moments).__name__}, expected a dict")
    for index, entries in moments.items():
        require(isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(parameters),
                f"{name} has state for parameter {shown(index)}, the run's optimiser has {len(parameters)}")
        require(isinstance(entries, Mapping), f"{name} state of parameter {index} is a {type(entries).__name__}")
        for key, tensor in entries.items():
            where = f"{name} {key} of parameter {index}"
            if key == "step":  # a scalar count (a tensor in current torch, a number in old ones)
                require(isinstance(tensor, (int, float, torch.Tensor)) and not isinstance(tensor, bool)
                        and (not isinstance(tensor, torch.Tensor) or tensor.numel() == 1),
                        f"{where} is not a count")
                continue
            check_tensor(tensor, parameters[index].detach(), where)


def check_history(state: Mapping, completed: int) -> None:
    history = check_entry(state, "history", list)
    require(all(isinstance(record, Mapping) for record in history), "history holds something other than records")
    require(len(history) == completed,
            f"history has {len(history)} epoch records but the checkpoint claims {completed} finished epochs")
