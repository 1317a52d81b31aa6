"""Modules that can be called as their main function (``pixelfold.tune(model, x)`` and ``pixelfold.tune.Plan``).

>>> import pixelfold, pixelfold.tune
>>> callable(pixelfold.tune), pixelfold.tune.Plan.__name__, pixelfold.tune.tune.__name__
(True, 'Plan', 'tune')
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from typing import Any

__all__ = ["make_callable"]


class _CallableModule(types.ModuleType):
    """A module whose ``__call__`` is one of its functions (named by ``__pixelfold_main__``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__pixelfold_main__)(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(getattr(self, self.__pixelfold_main__))

    @property
    def __wrapped__(self) -> Any:
        return getattr(self, self.__pixelfold_main__)


def make_callable(module_name: str, function: str) -> types.ModuleType:
    """Make the (imported) module ``module_name`` callable as its function ``function``; returns the module."""
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    module.__pixelfold_main__ = function  # type: ignore[attr-defined]
    module.__class__ = _CallableModule
    return module
