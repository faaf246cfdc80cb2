"""The inverse of M's flow without zuko's repeated passes: each hidden unit of each
MADE computed once, as soon as the features it reads are known.

M's flow (:class:`worldmodels.frmdn.FRMDN`) is zuko's ``MAF(...).transform``: a
composition of masked autoregressive transforms, each an affine map of every feature
x_j whose shift and log-scale come from a masked MLP (a MADE, the "hyper-network") of
cat(x, context). zuko inverts one transform by running the whole MADE ``passes`` times
from x = 0, the features of one more autoregressive group becoming exact at each pass
(``zuko.transforms.AutoregressiveTransform._inverse``): z_dim passes for a MAF, two for a
coupling flow. Every pass recomputes the context's share of the first layer (h is 256
wide, x 32), rebuilds every masked weight (mask * W) and concatenates x and h again,
although that share never changes and a hidden unit's value stops changing once the
features it reads are exact.

:class:`FlowInverse` computes the same inverse from the MADE's masks. A hidden unit that
reads (through the masks, layer by layer) only features of groups < g is *ready* at
group g: its value then is final. At group g it computes the units ready at g, layer by
layer, then the shift and scale of group g's features from the ready units of the last
hidden layer, then those features. Every unit is computed once, and the context's share
of every transform's first layer is one product per call, so a transform's inverse
costs about one pass of its MADE's arithmetic instead of ``passes`` passes, in
``passes`` small steps. The values are zuko's inverse up to float rounding (the same
products summed in another order, without the terms the masks zero).

The masked, reordered weights are kept between calls and rebuilt when a tensor of the
flow changes (in place, as optimisers and ``load_state_dict`` change them, or by a move
to another device or dtype). So are the work buffers of the last few batch sizes, with
every slice a step reads made in advance (at batch 1 a MAF's inverse is some 400 tiny
operations, and a slice costs as much as a small product): a :class:`FlowInverse` is
not for two threads at once. It computes without autograd (sampling, dreams).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: work buffers kept for this many batch sizes (a dream batch shrinks as dreams end)
_KEPT_SIZES = 4


def stamp(tensors: Iterable[Tensor | None]) -> tuple:
    """What a value made from ``tensors`` depends on: each one's version (bumped by
    in-place changes, as optimisers and ``load_state_dict`` make), storage, dtype and
    device; None entries are skipped. An in-place change through ``t.data`` bypasses
    ``t``'s version counter, so it is not seen (see ``frmdn.kept``)."""
    return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors
                 if t is not None)


@dataclass
class _Transform:
    """One masked autoregressive transform, reordered for the inverse.

    Features are sorted by autoregressive group: ``perm`` (F,) holds the natural index of
    each sorted position, and group g is sorted positions ``features[g]:features[g + 1]``.
    The hidden units of layer l are sorted by the group they are ready at, those of group
    g being ``units[l][g]:units[l][g + 1]``; units that no output reads are left out.
    Weights are sliced to what each group's step reads (the masks zero the rest).
    """

    perm: Tensor
    features: list[int]  # G + 1 bounds
    units: list[list[int]]  # per hidden layer, G + 1 bounds
    context_weight: Tensor | None  # (H1, C): the context's columns of the first layer
    first_bias: Tensor  # (H1,)
    first: list[Tensor]  # per group g: (units ready at g, features of groups < g)
    # per hidden layer l >= 1, per group g: weight (units of l ready at g, units of l - 1
    # ready at <= g), bias (units of l ready at g, 1)
    hidden: list[list[tuple[Tensor, Tensor]]]
    # per group g: the rows of its features' shifts then raw scales: weight (2 k_g, units
    # of the last layer ready at <= g), bias (2 k_g, 1)
    out: list[tuple[Tensor, Tensor]]
    abs_log_slope: float  # |log slope| of zuko's MonotonicAffineTransform


def _ready(deps: Tensor, group: Tensor, groups: int) -> Tensor:
    """The group each unit is ready at, 1 + the last group it reads (0 if it reads no
    feature; ``groups`` if never needed): deps (units, F) bool -> (units,) int64."""
    last = torch.where(deps, group.unsqueeze(0), torch.full(deps.shape, -1, dtype=torch.long,
                                                            device=deps.device))
    return (last.max(dim=1).values + 1).clamp(max=groups)


def _bounds(ready: Tensor, groups: int) -> list[int]:
    """G + 1 bounds of the blocks of units sorted by ``ready`` (those ready at G left out)."""
    counts = torch.bincount(ready, minlength=groups + 1)[:groups]
    return [0, *torch.cumsum(counts, 0).tolist()]


def _reorder(transform: nn.Module, n_features: int, context: int) -> _Transform:
    """The reordered weights of one ``zuko.flows.MaskedAutoregressiveTransform``; a
    TypeError for one this module does not handle."""
    from zuko.nn import MaskedLinear
    from zuko.transforms import MonotonicAffineTransform

    if transform.univariate is not MonotonicAffineTransform or transform.total != 2:
        raise TypeError("FlowInverse handles affine MADE transforms only")
    if getattr(transform, "order", None) is None:
        raise TypeError("FlowInverse needs a transform built from an order")
    layers = list(transform.hyper)
    linears = layers[0::2]
    if (len(layers) % 2 != 1 or not all(isinstance(m, MaskedLinear) for m in linears)
            or not all(isinstance(m, nn.ReLU) for m in layers[1::2])):
        raise TypeError("FlowInverse handles MaskedMLP(masked linear, ReLU, ..., masked linear)")
    slope = inspect.signature(MonotonicAffineTransform.__init__).parameters["slope"].default
    group = transform.order.long()
    groups = int(group.max()) + 1
    weights = [(m.mask * m.weight).detach() for m in linears]
    biases = [m.bias.detach() for m in linears]
    masks = [m.mask.bool() for m in linears]

    # the features each unit reads, layer by layer, and the group it is ready at
    deps = masks[0][:, :n_features]
    ready = [_ready(deps, group, groups)]
    for mask in masks[1:-1]:
        deps = (mask.double() @ deps.double()) > 0
        ready.append(_ready(deps, group, groups))
    out_deps = (masks[-1].double() @ deps.double()) > 0  # rows: shift, scale of each j
    if bool((_ready(out_deps, group, groups) > group.repeat_interleave(2)).any()):
        raise TypeError("the MADE's masks are not autoregressive in its order")

    perm = torch.argsort(group, stable=True)
    features = _bounds(group, groups)
    kept = [torch.argsort(r, stable=True)[: int((r < groups).sum())] for r in ready]
    units = [_bounds(r, groups) for r in ready]
    first = weights[0][kept[0]]
    first_x = first[:, :n_features][:, perm]
    hidden = []
    for layer in range(1, len(linears) - 1):
        w = weights[layer][kept[layer]][:, kept[layer - 1]]
        b = biases[layer][kept[layer]]
        lo, hi = units[layer], units[layer - 1]
        hidden.append([(w[lo[g]: lo[g + 1], : hi[g + 1]].contiguous(),
                        b[lo[g]: lo[g + 1]].unsqueeze(1).contiguous()) for g in range(groups)])
    w_out = weights[-1][:, kept[-1]]
    out = []
    for g in range(groups):
        natural = perm[features[g]: features[g + 1]]
        rows = torch.cat([2 * natural, 2 * natural + 1])  # shifts, then raw scales
        out.append((w_out[rows, : units[-1][g + 1]].contiguous(),
                    biases[-1][rows].unsqueeze(1).contiguous()))
    return _Transform(
        perm=perm, features=features, units=units,
        context_weight=first[:, n_features:].contiguous() if context else None,
        first_bias=biases[0][kept[0]].contiguous(),
        first=[first_x[units[0][g]: units[0][g + 1], : features[g]].contiguous()
               for g in range(groups)],
        hidden=hidden, out=out, abs_log_slope=abs(math.log(slope)),
    )


class _Steps:
    """The work buffers of one transform for N rows, and the arguments of each group's
    operations (slices of the buffers made once)."""

    def __init__(self, t: _Transform, pre: Tensor):
        n, like = pre.shape[1], pre
        f = t.features
        self.y = like.new_empty(f[-1], n)  # inputs, sorted order
        self.x = like.new_empty(f[-1], n)  # outputs, sorted order
        acts = [like.new_empty(u[-1], n) for u in t.units]
        self.groups = []
        for g in range(len(t.out)):
            u1 = t.units[0]
            block = acts[0][u1[g]: u1[g + 1]]
            first = (pre[u1[g]: u1[g + 1]], t.first[g], self.x[: f[g]], block) \
                if u1[g + 1] > u1[g] else None
            hidden = []
            for layer, blocks in enumerate(t.hidden, start=1):
                lo, hi = t.units[layer], t.units[layer - 1]
                if lo[g + 1] > lo[g]:
                    weight, bias = blocks[g]
                    hidden.append((bias, weight, acts[layer - 1][: hi[g + 1]],
                                   acts[layer][lo[g]: lo[g + 1]]))
            weight, bias = t.out[g]
            k = f[g + 1] - f[g]
            phi = like.new_empty(2 * k, n)
            out = (bias, weight, acts[-1][: t.units[-1][g + 1]], phi)
            affine = (phi[:k], phi[k:], like.new_empty(k, n), self.y[f[g]: f[g + 1]],
                      self.x[f[g]: f[g + 1]])
            self.groups.append((first, hidden, out, affine))


class FlowInverse:
    """y = f^-1(u) for zuko's ``MAF(...).transform`` (a ``LazyComposedTransform`` of
    masked autoregressive transforms with affine univariates), conditional or not.

    ``FlowInverse(flow)(u, context)``: u (N, F), context (N, C) or None -> y (N, F), the
    value of ``flow(context).inv(u)`` up to float rounding. Construction raises
    TypeError for a flow it does not handle (the caller then uses zuko's inverse).
    """

    def __init__(self, flow: nn.Module):
        from zuko.flows.autoregressive import MaskedAutoregressiveTransform

        transforms = list(getattr(flow, "transforms", []))
        if not transforms or not all(isinstance(t, MaskedAutoregressiveTransform)
                                     for t in transforms):
            raise TypeError("FlowInverse handles a composition of masked autoregressive "
                            "transforms")
        self.flow = flow
        self._owners = [m for t in transforms for m in (t, *list(t.hyper)[0::2])]
        self._key: tuple = ()
        self._plans: list[_Transform] = []
        self._work_of: dict[tuple, tuple[Tensor, list[_Steps]]] = {}
        self._refresh()  # checks every transform now

    def _state_key(self) -> tuple:
        """What the reordered weights depend on: the version, place and type of every
        tensor of the flow (read from its modules directly: ``parameters()`` walks the
        module tree, which costs more than a MAF step at batch 1)."""
        return stamp(t for module in self._owners
                     for t in (*module._parameters.values(), *module._buffers.values()))

    @torch.no_grad()
    def _refresh(self) -> None:
        key = self._state_key()
        if key == self._key:
            return
        transforms = list(self.flow.transforms)  # type: ignore[attr-defined]
        n_features = len(transforms[0].order)
        context = transforms[0].hyper[0].in_features - n_features
        plans = [_reorder(t, n_features, context) for t in transforms]
        self._context_weight = torch.cat([p.context_weight for p in plans]) \
            if context else None  # type: ignore[misc]
        self._context_bias = torch.cat([p.first_bias for p in plans]).unsqueeze(1)
        # the inverse runs the last transform first; between two, one gather takes the
        # features from one's sorted order to the next's, and the first's to the natural
        self._gathers = [torch.argsort(plans[i].perm)[plans[i - 1].perm]
                         for i in range(len(plans) - 1, 0, -1)]
        self._gathers.append(torch.argsort(plans[0].perm))
        self._plans, self._key, self._work_of = plans, key, {}

    def _work(self, n: int, dtype: torch.dtype, device: torch.device,
              ) -> tuple[Tensor, list[_Steps]]:
        """The first layers' context share (H1 total, N) and each transform's steps (last
        transform first), kept for the last few sizes."""
        # buffers made under inference_mode are inference tensors, which no write
        # outside it may touch: each mode keeps its own
        key = (n, dtype, device, torch.is_inference_mode_enabled())
        if key not in self._work_of:
            if len(self._work_of) >= _KEPT_SIZES:
                del self._work_of[next(iter(self._work_of))]
            bias = self._context_bias
            pre = bias.new_empty(len(bias), n, dtype=dtype).copy_(bias)  # never bias itself
            steps, start = [], 0
            for plan in self._plans:
                size = plan.units[0][-1]
                steps.append(_Steps(plan, pre[start: start + size]))
                start += size
            self._work_of[key] = (pre, steps[::-1])
        return self._work_of[key]

    @torch.no_grad()
    def __call__(self, u: Tensor, context: Tensor | None) -> Tensor:
        """u (N, F), context (N, C) or None -> y (N, F)."""
        self._refresh()
        pre, steps = self._work(u.shape[0], u.dtype, u.device)
        if self._context_weight is not None:
            if context is None:
                raise ValueError("this flow is conditional: give its context")
            torch.addmm(self._context_bias, self._context_weight, context.t(), out=pre)
        torch.index_select(u.t(), 0, self._plans[-1].perm, out=steps[0].y)
        for i, (work, plan) in enumerate(zip(steps, reversed(self._plans), strict=True)):
            self._inverse_one(work, plan.abs_log_slope)
            if i + 1 < len(steps):
                torch.index_select(work.x, 0, self._gathers[i], out=steps[i + 1].y)
        return torch.index_select(steps[-1].x, 0, self._gathers[-1]).t()

    @staticmethod
    def _inverse_one(work: _Steps, abs_log_slope: float) -> None:
        """One transform: ``work.y`` (F, N) in its sorted order -> ``work.x``."""
        for first, hidden, out, affine in work.groups:
            if first is not None:  # the first layer's units ready at g
                pre, weight, x, block = first
                if len(x):
                    torch.addmm(pre, weight, x, out=block)
                    block.relu_()
                else:  # they read no feature: the context's share and the bias
                    torch.clamp(pre, min=0, out=block)
            for bias, weight, below, block in hidden:
                torch.addmm(bias, weight, below, out=block)
                block.relu_()
            bias, weight, below, phi = out
            torch.addmm(bias, weight, below, out=phi)
            # zuko's MonotonicAffineTransform: log scale = raw / (1 + |raw / log slope|),
            # x = (y - shift) / exp(log scale)
            shift, raw, scale, y, x = affine
            torch.abs(raw, out=scale)
            scale.div_(abs_log_slope).add_(1)
            torch.div(raw, scale, out=scale)
            scale.exp_()
            torch.sub(y, shift, out=x)
            x.div_(scale)
