"""TorchScript: the fused modules refuse ``torch.jit.script`` with a clear error instead of a compiler traceback."""

from __future__ import annotations


class NotScriptable:
    """Mixin: ``torch.jit.script`` (which calls ``__prepare_scriptable__`` on a module and its children) raises a
    ``RuntimeError`` naming the module and what to use instead. The kernels are torch.library ops called from Python
    (backend selection, argument checks), which TorchScript cannot compile."""

    def __prepare_scriptable__(self):
        cls = type(self)
        raise RuntimeError(f"torch.jit.script of {cls.__module__}.{cls.__qualname__} is not supported: the fused "
                           "kernels are called from Python. Use torch.compile or torch.export, or "
                           "transformer.unswap(model) before scripting.")
