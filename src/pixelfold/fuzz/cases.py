"""Random specs per transform, the Python source that builds them, and what each transform claims.

A *spec* is a JSON-able dict: ``t`` (the transform), ``seed`` (weights and
inputs), the layer's arguments (``dims``, ``cin``, ``cout``, ``k``, ``s``,
``p``, ``d``, ``g``, ``bias``, ``mode``), the transform's (``block``,
``order``, ...), the batch ``n`` and the input ``size``. :func:`source` turns
it into plain Python (torch + pixelfold) that defines ``orig`` / ``ref_fwd``
(the original layer) and ``form`` / ``fwd`` (pixelfold's); the harness runs
exactly that source, so a printed reproducer rebuilds the case exactly.

:func:`outside` lists the documented reasons a spec is *not* claimed exact
(README "exact when" table, the docstrings of :mod:`pixelfold.layers`, the
conditions the FoldErrors of :mod:`pixelfold.transforms` state). An empty
list means the transform claims the spec: a refusal is then a failure.

>>> spec = draw("fold", seed=0, index=3)
>>> spec["t"], outside(spec) == [] or isinstance(outside(spec)[0], str)
('fold', True)
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable

__all__ = ["TRANSFORMS", "ORDERS", "draw", "source", "outside", "pads_of", "SHARED_PARAMS"]

ORDERS = ("crd", "dcr", "focus")
MODES = ("zeros", "reflect", "replicate", "circular")
#: transforms whose form keeps the original layer's Parameters (grads land on them directly)
SHARED_PARAMS = ("fold", "polyphase", "subpixel", "patch_linear")
Spec = dict[str, Any]


# ---------------------------------------------------------------------------- drawing helpers
def _tup(rng: random.Random, dims: int, lo: int, hi: int) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(dims)]


def _block(rng: random.Random, dims: int) -> list[int]:
    """A rectangular block, at least one entry > 1 most of the time."""
    b = _tup(rng, dims, 1, 2 if dims == 3 else 3)
    if all(v == 1 for v in b) and rng.random() < 0.85:
        b[rng.randrange(dims)] = 2
    return b


def _order_groups(rng: random.Random, orders: tuple[str, ...] = ORDERS) -> tuple[str, int]:
    order = rng.choice(orders)
    p_grouped = 0.4 if order == "crd" else 0.12  # grouped non-crd is a documented refusal: test it, not only it
    return order, (rng.randint(2, 3) if rng.random() < p_grouped else 1)


def _padding(rng: random.Random, stride: list[int], spans: list[int]) -> Any:
    r = rng.random()
    if all(s == 1 for s in stride) and r < 0.3:
        return "same"  # asymmetric where the span is even
    if r < 0.4:
        return "valid"
    # mostly at most the span (more pads whole outputs with zeros only), sometimes up to 3
    return [rng.randint(0, min(3, sp) if rng.random() < 0.85 else 3) for sp in spans]


def _mode(rng: random.Random, claimed: tuple[str, ...] = MODES, p_other: float = 0.12) -> str:
    others = [m for m in MODES if m not in claimed]
    if others and rng.random() < p_other:
        return rng.choice(others)
    return "zeros" if rng.random() < 0.4 else rng.choice(claimed)


def pads_of(spec: Spec) -> list[tuple[int, int]]:
    """The ``(lo, hi)`` padding per dim that PyTorch uses for ``spec['p']`` (``'same'``: extra on the right)."""
    p = spec["p"]
    if p == "valid":
        return [(0, 0)] * spec["dims"]
    if p == "same":
        tot = [d * (k - 1) for k, d in zip(spec["k"], spec["d"])]
        return [(t // 2, t - t // 2) for t in tot]
    return [(v, v) for v in p]


def _spans(spec: Spec) -> list[int]:
    return [d * (k - 1) + 1 for k, d in zip(spec["k"], spec["d"])]


def _reads_input(L: int, k: int, s: int, d: int, lo: int, hi: int) -> bool:
    """Whether some output of a conv along one dim reads a real input position (not only padding)."""
    n_out = (L + lo + hi - d * (k - 1) - 1) // s + 1
    return any(0 <= t * s - lo + e * d < L for t in range(max(0, n_out)) for e in range(k))


def _conv_sizes(rng: random.Random, spec: Spec, extra: int) -> list[int]:
    """Input sizes the original conv accepts (reflect: pad < size; circular: pad <= size) and whose output
    depends on the input (not only on padding), plus 0..extra."""
    out = []
    for k, s, d, span, (lo, hi) in zip(spec["k"], spec["s"], spec["d"], _spans(spec), pads_of(spec)):
        m = max(1, span - lo - hi)
        if spec["mode"] == "reflect":
            m = max(m, lo + 1, hi + 1)
        elif spec["mode"] == "circular":
            m = max(m, lo, hi)
        while not _reads_input(m, k, s, d, lo, hi):
            m += 1
        out.append(m + rng.randint(0, extra))
    return out


def _conv(rng: random.Random, dims: int, groups: int, stride: list[int], cin: int | None = None,
          modes: tuple[str, ...] = MODES, p_mode_other: float = 0.12) -> Spec:
    kmax = {1: 5, 2: 4, 3: 3}[dims]
    k = _tup(rng, dims, 1, kmax)
    d = _tup(rng, dims, 1, 2) if rng.random() < 0.3 else [1] * dims
    spans = [di * (ki - 1) + 1 for ki, di in zip(k, d)]
    return dict(dims=dims, cin=cin if cin is not None else groups * rng.randint(1, 3), cout=groups * rng.randint(1, 3),
                k=k, s=stride, p=_padding(rng, stride, spans), d=d, g=groups, bias=rng.random() < 0.6,
                mode=_mode(rng, modes, p_mode_other))


_EXTRA = {1: 7, 2: 4, 3: 2}


# ---------------------------------------------------------------------------- samplers
def _draw_fold(rng: random.Random) -> Spec:
    dims = rng.choice([1, 2, 2, 3])
    order, g = _order_groups(rng)
    block = _block(rng, dims)
    stride = [b * rng.randint(1, 2) for b in block] if rng.random() < 0.9 else _tup(rng, dims, 1, 3)
    spec = _conv(rng, dims, g, stride)
    spec.update(block=block, order=order, n=rng.randint(1, 3))
    spec["size"] = _conv_sizes(rng, spec, _EXTRA[dims])
    return spec


def _draw_polyphase(rng: random.Random) -> Spec:
    dims = rng.choice([1, 2, 2, 3])
    order, g = _order_groups(rng)
    stride = _tup(rng, dims, 1, 2 if dims == 3 else 3)
    block = _tup(rng, dims, 1, 2 if dims == 3 else 3)
    if dims == 3:  # keep the phase count (s*b per dim) small
        block = [b if b * s <= 2 else 1 for b, s in zip(block, stride)]
    spec = _conv(rng, dims, g, stride)
    spec.update(block=block, order=order, n=rng.randint(1, 3))
    spec["size"] = _conv_sizes(rng, spec, _EXTRA[dims])
    return spec


def _draw_to_space(rng: random.Random) -> Spec:
    dims = rng.choice([1, 2, 2, 3])
    order, g = _order_groups(rng)
    block = _block(rng, dims)
    R = math.prod(block)
    per_group = R * rng.randint(1, 2) if rng.random() < 0.92 else rng.randint(1, 4)
    spec = _conv(rng, dims, g, _tup(rng, dims, 1, 3), cin=g * per_group, modes=("zeros", "circular"))
    spec.update(block=block, order=order, n=rng.randint(1, 3))
    spec["size"] = _conv_sizes(rng, spec, _EXTRA[dims])  # of the C-channel map the original conv reads
    return spec


def _draw_to_depth(rng: random.Random) -> Spec:
    dims = rng.choice([1, 2, 2, 3])
    order, g = _order_groups(rng)
    block = _block(rng, dims)
    stride = [b * rng.randint(1, 2) for b in block] if rng.random() < 0.9 else _tup(rng, dims, 1, 3)
    spec = _conv(rng, dims, g, stride, modes=("zeros", "circular"))
    if spec["p"] != "same" and rng.random() < 0.85:
        spec["p"] = [b * rng.randint(0, min(2, max(1, sp // b))) for b, sp in zip(block, _spans(spec))]
    spec.update(block=block, order=order, n=rng.randint(1, 3))
    spec["size"] = [-(-L // b) * b for L, b in zip(_conv_sizes(rng, spec, _EXTRA[dims]), block)]
    return spec


def _draw_subpixel(rng: random.Random) -> Spec:
    dims = rng.choice([1, 2, 2, 3])
    form = rng.choice(["shared", "phases"])
    if form == "phases" and rng.random() < 0.85:
        order, g = "crd", (rng.randint(2, 3) if rng.random() < 0.4 else 1)
    else:
        order, g = _order_groups(rng)
    smax, kmax = (2, 3) if dims == 3 else (3, 4)
    k, s = _tup(rng, dims, 1, kmax), _tup(rng, dims, 1, smax)
    d = _tup(rng, dims, 1, 2) if rng.random() < 0.3 else [1] * dims
    p = [rng.randint(0, di * (ki - 1)) if rng.random() < 0.8 else rng.randint(0, 3) for ki, di in zip(k, d)]
    op = [rng.randint(0, max(si, di) - 1) if rng.random() < 0.4 else 0 for si, di in zip(s, d)]
    size = []
    for pi, si, ki, di, opi in zip(p, s, k, d, op):
        lo = 1
        while (lo - 1) * si - 2 * pi + di * (ki - 1) + opi + 1 < 1:
            lo += 1
        size.append(lo + rng.randint(0, {1: 6, 2: 4, 3: 2}[dims]))
    spec = dict(dims=dims, cin=g * rng.randint(1, 3), cout=g * rng.randint(1, 3), k=k, s=s, p=p, op=op, d=d, g=g,
                bias=rng.random() < 0.6, form=form, order=order, n=rng.randint(1, 3), size=size, output_size=None)
    if rng.random() < 0.2:  # forward(x, output_size=...): any size the module accepts
        base = [(L - 1) * si - 2 * pi + di * (ki - 1) + 1 for L, pi, si, ki, di in zip(size, p, s, k, d)]
        spec["output_size"] = [b + rng.randint(0, si - 1) for b, si in zip(base, s)]
    return spec


def _draw_transposed(rng: random.Random) -> Spec:
    dims = rng.choice([1, 2, 2, 3])
    shuffle = "pixel_shuffle" if dims == 2 and rng.random() < 0.35 else "d2s"
    if shuffle == "pixel_shuffle":
        r = rng.randint(2, 3)
        block, order = [r, r], "crd"
        g = rng.randint(2, 3) if rng.random() < 0.4 else 1
    else:
        block = _block(rng, dims)
        order = rng.choice(ORDERS)
        g = rng.randint(2, 3) if rng.random() < 0.35 else 1
    R = math.prod(block)
    O = g * rng.randint(1, 2)
    if rng.random() < 0.08:  # out_channels/prod(block) not divisible by groups (documented refusal)
        O = rng.randint(1, 3)
        if (O * R) % g:
            g = 1
    kmax = {1: 5, 2: 4, 3: 3}[dims]
    k = _tup(rng, dims, 1, kmax)
    s = [1] * dims if rng.random() < 0.9 else _tup(rng, dims, 1, 2)
    d = [1] * dims if rng.random() < 0.9 else _tup(rng, dims, 1, 2)
    r = rng.random()
    if r < 0.78:
        p: Any = [rng.randint(0, ki - 1) for ki in k]
    elif r < 0.88 and all(v == 1 for v in s):
        p = "same"
    elif r < 0.94:
        p = "valid"
    else:
        p = [rng.randint(0, ki + 1) for ki in k]
    bias_kind = rng.choices(["none", "tied", "free"], [0.35, 0.5, 0.15])[0]
    spec = dict(dims=dims, cin=g * rng.randint(1, 2), cout=O * R, k=k, s=s, p=p, d=d, g=g, bias=bias_kind != "none",
                bias_kind=bias_kind, mode="zeros" if rng.random() < 0.92 else rng.choice(MODES[1:]),
                shuffle=shuffle, block=block, order=order, trim=rng.random() < 0.7, n=rng.randint(1, 3))
    spec["size"] = _conv_sizes(rng, spec, _EXTRA[dims])
    return spec


def _draw_merge(rng: random.Random) -> Spec:
    dims = rng.choice([1, 2, 2, 3])
    steps = ["s2d", "s2d", "focus_slice", "pixel_unshuffle", "focus_module"] if dims == 2 else ["s2d"]
    step = rng.choice(steps)
    if step == "pixel_unshuffle":
        r = rng.randint(2, 3)
        block, order = [r, r], "crd"
    elif step == "focus_module":
        block, order = [2, 2], "focus"
    elif step == "focus_slice":
        block, order = ([2, 2] if rng.random() < 0.6 else _block(rng, dims)), "focus"
    else:
        block, order = _block(rng, dims), rng.choice(ORDERS)
    R = math.prod(block)
    C = rng.randint(1, 3)
    cin = C * R
    divisors = [v for v in range(2, min(cin, 4) + 1) if cin % v == 0]
    g = rng.choice(divisors) if divisors and rng.random() < 0.25 else 1
    spec = _conv(rng, dims, g, _tup(rng, dims, 1, 3), cin=cin)
    spec.update(step=step, block=block, order=order, C=C, call=rng.choice(["seq", "pair"]), n=rng.randint(1, 3))
    spec["size"] = [L * b for L, b in zip(_conv_sizes(rng, spec, _EXTRA[dims]), block)]  # of the unfolded input
    return spec


def _draw_patch_linear(rng: random.Random) -> Spec:
    dims = rng.choice([1, 2, 2, 3])
    order = rng.choice(["crd", "dcr"]) if rng.random() < 0.9 else "focus"
    k = _tup(rng, dims, 1, {1: 5, 2: 4, 3: 3}[dims])
    s = list(k) if rng.random() < 0.85 else _tup(rng, dims, 1, 3)
    g = 1 if rng.random() < 0.92 else 2
    spec = dict(dims=dims, cin=g * rng.randint(1, 3), cout=g * rng.randint(1, 3), k=k, s=s,
                p=("valid" if rng.random() < 0.3 else [0] * dims) if rng.random() < 0.9 else _tup(rng, dims, 0, 2),
                d=[1] * dims if rng.random() < 0.92 else _tup(rng, dims, 1, 2), g=g, bias=rng.random() < 0.6,
                mode=rng.choice(MODES), order=order, n=rng.randint(1, 3))
    spec["size"] = [m + rng.randint(0, 2 * ki) for m, ki in zip(_conv_sizes(rng, spec, 0), k)]
    spec["memfmt"] = rng.choice(["conv", "channels_last"])  # drawn last: the earlier draws keep their streams
    return spec


# ---------------------------------------------------------------------------- claims
def _grouped_order(spec: Spec) -> list[str]:
    if spec.get("order", "crd") != "crd" and spec["g"] > 1:
        return [f"order={spec['order']!r} with groups={spec['g']} (interleaves groups; crd only)"]
    return []


def _mode_reason(spec: Spec, allowed: tuple[str, ...]) -> list[str]:
    return [] if spec["mode"] in allowed else [f"padding_mode={spec['mode']!r} (supported: {'/'.join(allowed)})"]


def _divides(a: list[int], b: list[int]) -> bool:
    return all(x % y == 0 for x, y in zip(a, b))


def _outside_fold(spec: Spec) -> list[str]:
    why = [] if _divides(spec["s"], spec["block"]) else ["stride not divisible by block"]
    return why + _grouped_order(spec)


def _outside_to_depth(spec: Spec) -> list[str]:
    why = _outside_fold(spec) + _mode_reason(spec, ("zeros", "circular"))
    if not all(lo % b == 0 and hi % b == 0 for (lo, hi), b in zip(pads_of(spec), spec["block"])):
        why.append("padding not divisible by block")
    return why


def _outside_to_space(spec: Spec) -> list[str]:
    why = _mode_reason(spec, ("zeros", "circular")) + _grouped_order(spec)
    if (spec["cin"] // spec["g"]) % math.prod(spec["block"]):
        why.append("channels per group not divisible by prod(block)")
    return why


def _outside_subpixel(spec: Spec) -> list[str]:
    why = _grouped_order(spec)
    if spec["form"] == "phases" and spec["order"] != "crd":
        why.append("form='phases' with order≠crd")
    return why


def _outside_transposed(spec: Spec) -> list[str]:
    why = []
    if any(v != 1 for v in spec["s"]) or any(v != 1 for v in spec["d"]):
        why.append("conv stride or dilation ≠ 1")
    if spec["mode"] != "zeros":
        why.append("padding_mode≠zeros")
    if any(lo != hi or lo > k - 1 for (lo, hi), k in zip(pads_of(spec), spec["k"])):
        why.append("padding unequal or > kernel-1")
    if spec["bias_kind"] == "free" and math.prod(spec["block"]) > 1:
        why.append("bias differs between phases")
    if spec["cout"] % (math.prod(spec["block"]) * spec["g"]):
        why.append("out_channels/prod(block) not divisible by groups")
    return why


def _outside_patch_linear(spec: Spec) -> list[str]:
    why = []
    if spec["k"] != spec["s"] or any(lo or hi for lo, hi in pads_of(spec)) or any(v != 1 for v in spec["d"]):
        why.append("not kernel == stride, padding 0, dilation 1")
    if spec["g"] != 1:
        why.append("groups ≠ 1")
    if spec["order"] not in ("crd", "dcr"):
        why.append(f"order={spec['order']!r} (crd/dcr only)")
    return why


# ---------------------------------------------------------------------------- source
def _r(v: Any) -> str:
    return repr(tuple(v)) if isinstance(v, list) else repr(v)


def _conv_line(spec: Spec) -> str:
    return (f"conv = nn.Conv{spec['dims']}d({spec['cin']}, {spec['cout']}, {_r(spec['k'])}, stride={_r(spec['s'])}, "
            f"padding={_r(spec['p'])}, dilation={_r(spec['d'])}, groups={spec['g']}, bias={spec['bias']}, "
            f"padding_mode={spec['mode']!r}, dtype=torch.float64)")


def _x_line(spec: Spec, channels: int) -> str:
    return f"x = torch.randn({spec['n']}, {channels}, *{_r(spec['size'])}, dtype=torch.float64)"


def source(spec: Spec) -> tuple[list[str], list[str]]:
    """``(setup, form)`` lines of Python: setup defines ``conv``, ``x``, ``orig``, ``ref_fwd``; form ``form``, ``fwd``.

    Names available: ``torch``, ``nn``, ``copy``, ``pixelfold`` and :mod:`pixelfold.fuzz.ops`'s helpers.
    """
    t, b, order = spec["t"], _r(spec.get("block", [])), spec.get("order")
    setup = [f"torch.default_generator.manual_seed({spec['seed']})"]
    if t == "subpixel":
        setup.append(f"conv = nn.ConvTranspose{spec['dims']}d({spec['cin']}, {spec['cout']}, {_r(spec['k'])}, "
                     f"stride={_r(spec['s'])}, padding={_r(spec['p'])}, output_padding={_r(spec['op'])}, "
                     f"groups={spec['g']}, bias={spec['bias']}, dilation={_r(spec['d'])}, dtype=torch.float64)")
    else:
        setup.append(_conv_line(spec))
    cin = spec["C"] if t == "merge" else spec["cin"]
    form = []
    if t in SHARED_PARAMS:
        form.append("src = copy.deepcopy(conv)")
    if t == "transposed" and spec["bias_kind"] != "none":
        R = math.prod(spec["block"])
        if spec["bias_kind"] == "tied":
            setup.append(f"conv.bias = nn.Parameter(tie(torch.randn({spec['cout'] // R}, dtype=torch.float64), "
                         f"{R}, {order!r}))")
        else:
            setup.append(f"conv.bias = nn.Parameter(torch.randn({spec['cout']}, dtype=torch.float64))")
    setup.append(_x_line(spec, cin))
    ref_fwd, fwd = "orig", "form"
    if t == "fold":
        form.append(f"form = pixelfold.fold(src, {b}, {order!r})")
    elif t == "polyphase":
        form.append(f"form = pixelfold.polyphase(src, {b}, {order!r})")
    elif t == "patch_linear":
        form.append(f"form = pixelfold.PatchLinear(src, {order!r}, {spec.get('memfmt', 'conv')!r})")
    elif t == "to_space":
        form.append(f"form = pixelfold.to_space(conv, {b}, {order!r})")
        fwd = f"lambda x: form(d2s(x, {b}, {order!r}))"
    elif t == "to_depth":
        form.append(f"form = pixelfold.to_depth(conv, {b}, {order!r})")
        fwd = f"lambda x: form(s2d(x, {b}, {order!r}))"
    elif t == "subpixel":
        form.append(f"form = pixelfold.subpixel(src, {spec['form']!r}, {order!r})")
        if spec["output_size"] is not None:
            ref_fwd = f"lambda x: orig(x, output_size={spec['output_size']!r})"
            fwd = f"lambda x: form(x, output_size={spec['output_size']!r})"
    elif t == "transposed":
        if spec["shuffle"] == "pixel_shuffle":
            setup.append(f"orig = nn.Sequential(conv, nn.PixelShuffle({spec['block'][0]}))")
            form.append(f"form = pixelfold.transposed(orig, trim={spec['trim']})")
        else:
            setup.append(f"orig = nn.Sequential(conv, D2S({b}, {order!r}))")
            form.append(f"form = pixelfold.transposed(nn.Sequential(conv, pixelfold.DepthToSpace({b}, {order!r})), "
                        f"trim={spec['trim']})")
    elif t == "merge":
        step = spec["step"]
        if step == "focus_module":
            setup.append("orig = Focus(conv)")
            form.append("form = pixelfold.merge(orig)")
        elif step == "pixel_unshuffle":
            setup.append(f"orig = nn.Sequential(nn.PixelUnshuffle({spec['block'][0]}), conv)")
            form.append("form = pixelfold.merge(orig)" if spec["call"] == "seq" else
                        f"form = pixelfold.merge(nn.PixelUnshuffle({spec['block'][0]}), conv)")
        else:
            setup.append(f"orig = nn.Sequential(S2D({b}, {order!r}), conv)")
            mod = f"pixelfold.FocusSlice({b})" if step == "focus_slice" else f"pixelfold.SpaceToDepth({b}, {order!r})"
            form.append(f"form = pixelfold.merge(nn.Sequential({mod}, conv))" if spec["call"] == "seq" else
                        f"form = pixelfold.merge({mod}, conv)")
    else:
        raise ValueError(f"unknown transform {t!r}")
    if not any(line.startswith("orig = ") for line in setup):
        setup.append("orig = conv")
    setup.append(f"ref_fwd = {ref_fwd}")
    form.append(f"fwd = {fwd}")
    return setup, form


# ---------------------------------------------------------------------------- registry
TRANSFORMS: dict[str, tuple[Callable[[random.Random], Spec], Callable[[Spec], list[str]]]] = {
    "to_space": (_draw_to_space, _outside_to_space),
    "to_depth": (_draw_to_depth, _outside_to_depth),
    "fold": (_draw_fold, _outside_fold),
    "polyphase": (_draw_polyphase, _grouped_order),
    "subpixel": (_draw_subpixel, _outside_subpixel),
    "transposed": (_draw_transposed, _outside_transposed),
    "merge": (_draw_merge, lambda spec: []),  # README: "always"
    "patch_linear": (_draw_patch_linear, _outside_patch_linear),
}


def draw(transform: str, seed: int, index: int, attempt: int = 0) -> Spec:
    """The ``index``-th random spec of ``transform`` for run seed ``seed`` (``attempt``: redraws)."""
    rng = random.Random(f"pixelfold.fuzz/{transform}/{seed}/{index}/{attempt}")
    spec = {"t": transform, **TRANSFORMS[transform][0](rng)}
    spec["seed"] = rng.randrange(2**31)
    return spec


def outside(spec: Spec) -> list[str]:
    """The documented reasons the spec's transform does not claim it (empty: claimed exact)."""
    return TRANSFORMS[spec["t"]][1](spec)
