"""Explicit registry of prunable block families, keyed by module type.

A *handler* knows one family of residual blocks: it says whether a given block can become linear
(`check`, returning the reason when it cannot), what kind of shortcut it has, and builds the
block's pruned training form (`to_pruned`). Handlers are registered with a decorator:

    @register_block(timm.models.resnet.BasicBlock, family="resnet")
    class MyHandler(BlockHandler):
        ...

Lookup is by *exact* type: a subclass of a registered block may change `forward`, so it is not
matched silently; register it explicitly (the same handler can be registered for it if the
forward is the same). Users register their own blocks the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from updp.blocks.modules import LambdaModule, check_lam
from updp.core.errors import UnsupportedError

SHORTCUT_IDENTITY = "identity"
SHORTCUT_PROJECTION = "projection"
SHORTCUT_NONE = "none"


class PrunedBlock(nn.Module):
    """Base class of a block in its pruned training form.

    Subclasses register the original block's submodules under the *same attribute names* (shared
    objects, so the parameters are the same `Parameter`s and checkpoint keys are unchanged), add
    the new norms/λ-modules, and implement `forward_linear` (the block up to, excluding, its
    end-of-block nonlinearity) and `forward`.

    λ is a python float; `set_lam` propagates it to every λ-module of the block. It is saved in
    checkpoints as the block's extra state (a 0-d float64 tensor, loadable with `weights_only=True`).
    """

    family: str = ""

    def __init__(self, original: nn.Module, options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.base_type = f"{type(original).__module__}.{type(original).__qualname__}"
        self.options = dict(options or {})
        self.lam = 0.0

    def _lambda_modules(self) -> list[LambdaModule]:
        return [m for m in self.modules() if isinstance(m, LambdaModule)]

    def set_lam(self, lam: float) -> None:
        lam = check_lam(lam)
        self.lam = lam
        for m in self._lambda_modules():
            m.set_lam(lam)

    def get_extra_state(self) -> torch.Tensor:
        # A 0-d tensor rather than a python float: the TorchScript tracer (torch.jit.trace, the
        # ONNX exporter) detaches every state_dict value. Loads with weights_only=True.
        return torch.tensor(self.lam, dtype=torch.float64)

    def set_extra_state(self, state: Any) -> None:
        self.set_lam(float(state))

    def forward_linear(self, x: torch.Tensor) -> torch.Tensor:
        """The block without its end-of-block nonlinearity; affine in `x` at λ = 1 (eval mode)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"family={self.family}, lam={self.lam}, base={self.base_type}"


class BlockHandler:
    """One family of residual blocks. Subclass, implement, register with `register_block`."""

    family: str = ""

    def check(self, module: nn.Module) -> str | None:
        """Why `module` cannot be pruned (one line), or None if it can."""
        return None

    def shortcut(self, module: nn.Module) -> str:
        """'identity', 'projection' (a linear op on the skip) or 'none' (no residual)."""
        return SHORTCUT_IDENTITY

    def to_pruned(self, module: nn.Module, **options: Any) -> PrunedBlock:
        """A new module sharing `module`'s parameters, in its pruned training form at λ = 0."""
        raise NotImplementedError

    def convert(self, module: nn.Module, **options: Any) -> PrunedBlock:
        """`check` then `to_pruned`; raises `UnsupportedError` with the reason."""
        reason = self.check(module)
        if reason is not None:
            raise UnsupportedError(f"{type(module).__name__} cannot be pruned: {reason}")
        return self.to_pruned(module, **options)


_REGISTRY: dict[type, BlockHandler] = {}


def register_block(*types: type, family: str) -> Callable[[type], type]:
    """Class decorator: register a `BlockHandler` subclass for the given exact module types.

    Returns the class unchanged (with `family` set). Registering a type again replaces the
    previous handler, so users can override the built-in ones.
    """
    if not types:
        raise ValueError("register_block needs at least one module type")

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, BlockHandler)):
            raise TypeError(f"{cls!r} is not a BlockHandler subclass")
        cls.family = family
        handler = cls()
        for t in types:
            _REGISTRY[t] = handler
        return cls

    return deco


def get_handler(module: nn.Module) -> BlockHandler | None:
    """The handler registered for `type(module)` (exact type), or None."""
    return _REGISTRY.get(type(module))


def registered_types() -> dict[type, str]:
    """Registered module types and their family names."""
    return {t: h.family for t, h in _REGISTRY.items()}
