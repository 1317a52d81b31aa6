"""pixelfold: exact rewrites of convolutions between their spatial and their channel layouts.

>>> import torch, pixelfold
>>> conv = torch.nn.Conv2d(256, 1, 3, padding=1)
>>> big = pixelfold.to_space(conv, 16)       # a 48×48 conv with stride 16 on 1×16H×16W
>>> x = torch.randn(1, 256, 4, 4)
>>> torch.allclose(big(pixelfold.depth_to_space(x, 16)), conv(x), atol=1e-4)
True
"""

from . import reference
from .errors import FoldError
from .layers import (
    DepthToSpace,
    FocusSlice,
    PatchLinear,
    PhaseConv,
    SpaceToDepth,
    SubpixelConvTranspose,
    fold,
    icnr_,
    merge,
    polyphase,
    subpixel,
    to_depth,
    to_space,
    transposed,
)
from .rearrange import depth_to_space, space_to_depth
from .spec import ConvSpec
from . import verify
from ._callable import make_callable
from .plan import LayerPlan, Plan, apply_plan
from .rewrite import LayerChange, Profile, RewriteReport, Rule, SamePadPhaseConv

# `pixelfold.rewrite` and `pixelfold.tune` are both the function and its module: `pixelfold.tune(model, x)`,
# `import pixelfold.tune` and `pixelfold.tune.Plan` all work (a plain `from .tune import tune` would shadow the module).
rewrite = make_callable("pixelfold.rewrite", "rewrite")
tune = make_callable("pixelfold.tune", "tune")

__version__ = "0.1.0"

__all__ = [
    "FoldError",
    "ConvSpec",
    "space_to_depth",
    "depth_to_space",
    "SpaceToDepth",
    "DepthToSpace",
    "FocusSlice",
    "PhaseConv",
    "PatchLinear",
    "SubpixelConvTranspose",
    "to_space",
    "to_depth",
    "fold",
    "polyphase",
    "subpixel",
    "transposed",
    "merge",
    "icnr_",
    "reference",
    "verify",
    "rewrite",
    "RewriteReport",
    "LayerChange",
    "Rule",
    "Profile",
    "SamePadPhaseConv",
    "tune",
    "apply_plan",
    "Plan",
    "LayerPlan",
]
