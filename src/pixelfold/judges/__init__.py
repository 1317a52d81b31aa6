"""The vendor NPU compilers as judges: per-operator NPU/CPU placement and cycle estimates (issue 10).

Not imported by ``import pixelfold``: ``from pixelfold.judges import judge``.

>>> from pixelfold.judges import TARGETS
>>> sorted(TARGETS)
['ethos-u55-128', 'ethos-u65-256', 'ethos-u85-256', 'rk3568', 'rk3576', 'rk3588', 'rv1106']

Build the compilers' environments with ``make npu-env`` (``.venv-vela``,
``.venv-rknn``); without them :func:`judge` raises
:class:`~pixelfold.FoldError` naming that command.
"""

from .core import (
    DEFAULT_LOWERING,
    TARGETS,
    cache_dir,
    env_available,
    env_python,
    judge,
    judge_batch,
    judge_file,
    judge_layer,
    judge_layers,
    judge_targets,
    layer_key,
)
from .lowering import lowered_rearrangements
from .results import Judgement, OpPlacement

__all__ = [
    "TARGETS",
    "DEFAULT_LOWERING",
    "Judgement",
    "OpPlacement",
    "judge",
    "judge_targets",
    "judge_batch",
    "judge_file",
    "judge_layer",
    "judge_layers",
    "layer_key",
    "env_available",
    "env_python",
    "cache_dir",
    "lowered_rearrangements",
]
