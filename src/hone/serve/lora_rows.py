"""Each batch row through its own LoRA or DoRA adapter (or none) in one forward pass of the shared model.

Every PEFT LoRA layer's forward is replaced by `RowLoraLayer.forward` (an instance attribute, the way
Accelerate's hooks wrap a module). It runs the base layer and adds the loaded adapters' updates stacked:
their A matrices as one `[sum of ranks, in]` matrix, their scaled, transposed B matrices as one `[sum of ranks, out]`
matrix, and a row mask that keeps, for each row, only its adapter's rank columns:

    lora = ((x @ A_stack.T) * row_mask) @ B_stack

which is each row's own LoRA update, in two matmuls per layer for any mix of adapters (the stacks are kept in
the base's dtype, so on a bf16 base to bf16 rounding of PEFT's float32 update). A DoRA row
also scales its output by the adapter's magnitude over the column norm of W + BA (constant once the weights
are frozen, so computed when the adapter loads): `output = s * (base(x) - bias + lora) + bias`.
PEFT's own mixed-adapter path gathers, multiplies and scatters per adapter per layer, refuses DoRA, and
checks its arguments on every call; on a CPU those small steps cost more than the matmuls.

While one adapter has every row (always so at batch 1), a layer can instead hold a copy of its base weight with
that adapter merged in, `W + scaling * B @ A` (times the DoRA scale), and do one matmul like the base: the
adapter then costs nothing per token. `LoadedAdapters` decides when (see `merge_single_adapter`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def unsupported(layer, name: str) -> str | None:
    """Why adapter `name` in PEFT LoRA `layer` cannot be computed row by row here, or None when it can."""
    from peft.tuners.lora.layer import Linear
    from peft.tuners.lora.variants import DoraLinearVariant

    if not isinstance(layer, Linear):
        return f"LoRA on a {type(layer.get_base_layer()).__name__} layer (only linear layers are served)"
    variant = getattr(layer, "lora_variant", {}).get(name)
    if variant is not None and not isinstance(variant, DoraLinearVariant):
        return f"the LoRA variant {type(variant).__name__}"
    if getattr(layer, "lora_bias", {}).get(name, False):
        return "a LoRA bias (lora_bias: true)"
    return None


class RowAdapters:
    """Which adapter each row of the next forward uses, shared by every LoRA layer of the model."""

    def __init__(self):
        self.adapters: list[str | None] = []
        self.any_adapter = False
        self.single: str | None = None  # the adapter of every row, when they all use the same one
        self.merged: str | None = None  # the adapter merged into the layers' weight copies
        self.use_merged = False  # every row uses the merged adapter: layers take their merged weights
        self._masks: dict[tuple, torch.Tensor] = {}
        self._indexes: dict[tuple, torch.Tensor] = {}

    def set(self, adapters: list[str | None]) -> None:
        self.adapters = adapters
        self.any_adapter = any(name is not None for name in adapters)
        first = adapters[0] if adapters else None
        self.single = first if first is not None and adapters.count(first) == len(adapters) else None
        self.use_merged = self.single is not None and self.single == self.merged
        self._masks, self._indexes = {}, {}

    def set_merged(self, name: str | None) -> None:
        """Record that the layers now hold adapter `name` merged (None: no merged copies)."""
        self.merged = name
        self.use_merged = self.single is not None and self.single == name

    def mask(self, layout: tuple[tuple[str, int], ...], device, dtype) -> torch.Tensor:
        """`[rows, sum of ranks]`: ones over the rank columns of each row's adapter (built once per step)."""
        key = (layout, dtype)  # layers over a quantized base keep float32 stacks beside bf16 ones
        if key not in self._masks:
            blocks = {name: (sum(r for _, r in layout[:i]), rank) for i, (name, rank) in enumerate(layout)}
            total = sum(rank for _, rank in layout)
            mask = torch.zeros((len(self.adapters), total), dtype=dtype)
            for row, name in enumerate(self.adapters):
                if name in blocks:
                    start, rank = blocks[name]
                    mask[row, start:start + rank] = 1
            self._masks[key] = mask.to(device)
        return self._masks[key]

    def index(self, layout: tuple[tuple[str, int], ...], device) -> torch.Tensor:
        """`[rows]`: each row's adapter's place in `layout`, or len(layout) for rows it does not cover."""
        if layout not in self._indexes:
            places = {name: i for i, (name, _) in enumerate(layout)}
            self._indexes[layout] = torch.tensor([places.get(name, len(layout)) for name in self.adapters],
                                                 device=device)
        return self._indexes[layout]


class SharedInput:
    """Sibling LoRA layers with inputs of one width (q, k, v and o; gate and up): their x @ A as one matmul.

    The first member the key's adapters touch (q; gate) computes the product for all and the others take
    their columns of it when they are called with that same tensor (k and v; up); one called with another
    input (o) computes only its own columns. Kept per key: one adapter for all rows, or None for the stack.
    """

    def __init__(self, members: list[RowLoraLayer]):
        self.members = members
        # per key: the stacked A, each member's (start, width) in it, and the member that computes it for all
        self.a: dict[str | None, tuple[torch.Tensor, dict[RowLoraLayer, tuple[int, int]], RowLoraLayer]] = {}
        self._last: tuple[torch.Tensor, str | None, torch.Tensor] | None = None  # input, key, product

    def rebuild(self) -> None:
        """Concatenate the members' A matrices (after they have rebuilt their own)."""
        self._last, self.a = None, {}
        for key in {None} | {name for member in self.members for name in member.single}:
            parts = [(member, member.a if key is None else member.single[key][0]) for member in self.members
                     if (member.a if key is None else member.single.get(key)) is not None]
            spans, start = {}, 0
            for member, a in parts:
                spans[member], start = (start, a.shape[0]), start + a.shape[0]
            if parts:
                self.a[key] = (torch.cat([a for _, a in parts]), spans, parts[0][0])

    def product(self, member: RowLoraLayer, x: torch.Tensor, key: str | None) -> torch.Tensor:
        """`x @ member's A.T` for adapter `key` (None: all of the member's adapters, stacked)."""
        a, spans, leader = self.a[key]
        start, width = spans[member]
        last = self._last
        if last is not None and last[0] is x and last[1] == key:
            return last[2].narrow(-1, start, width)
        cast = x if x.dtype == a.dtype else x.to(a.dtype)
        if member is not leader:
            return cast @ a.narrow(0, start, width).T
        self._last = (x, key, cast @ a.T)
        return self._last[2].narrow(-1, start, width)


class RowLoraLayer:
    """One PEFT LoRA layer whose forward applies each row's own adapter."""

    def __init__(self, layer, rows: RowAdapters):
        self.layer = layer
        self.rows = rows
        self.shared = SharedInput([self])  # until LoadedAdapters groups the layers
        self.layout: tuple[tuple[str, int], ...] = ()
        self.a = self.b = None
        self.single: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per adapter: A, (scaling * B).T
        self.dora: dict[str, torch.Tensor] = {}  # DoRA adapter -> its per-output scale
        self.dora_rows: torch.Tensor | None = None  # [len(layout) + 1, out]: the scale of each layout entry, 1s
        self.plain_base = type(layer.base_layer) is torch.nn.Linear
        self.merged: torch.Tensor | None = None  # the base weight with `rows.merged` merged in
        layer.forward = self.forward

    def rebuild(self, names: list[str]) -> None:
        """Stack the A and scaled B of the loaded adapters `names` that touch this layer."""
        layer = self.layer
        names = [name for name in names if name in layer.lora_A]
        self.layout = tuple((name, layer.r[name]) for name in names)
        # B is kept as (scaling * B).T, contiguous: the fastest layout for the small second matmul on a CPU.
        self.single = {name: (layer.lora_A[name].weight,
                              (layer.lora_B[name].weight * layer.scaling[name]).T.contiguous()) for name in names}
        # The stacks serve mixed batches, in the base's dtype: at 16 rows a bf16 matmul reads half the bytes and
        # takes about half the time of a float32 one, and no input or output needs a cast.
        dtype = self._stack_dtype()
        self.a = torch.cat([a for a, _ in self.single.values()]).to(dtype) if names else None
        self.b = torch.cat([b for _, b in self.single.values()]).to(dtype) if names else None
        self.dora = {name: self._dora_scale(name) for name in names if name in getattr(layer, "lora_variant", {})}
        self.dora_rows = None
        if self.dora:
            ones = torch.ones_like(next(iter(self.dora.values())))
            self.dora_rows = torch.stack([self.dora.get(name, ones) for name in names] + [ones])

    def _stack_dtype(self) -> torch.dtype:
        """The base weight's dtype, or the adapters' own where the base is quantized."""
        weight = self.layer.get_base_layer().weight
        if weight.is_floating_point():
            return weight.dtype
        return next(iter(self.single.values()))[0].dtype

    def mergeable(self, name: str) -> bool:
        """Whether adapter `name` changes this layer and can be merged into a copy of its (plain) weight."""
        return self.plain_base and name in self.single

    def merge(self, name: str) -> None:
        """Hold a copy of the base weight with adapter `name` merged in (computed in the adapter's dtype)."""
        a, b = self.single[name]
        weight = self.layer.base_layer.weight
        merged = torch.addmm(weight.to(a.dtype), b.T, a)
        if name in self.dora:
            merged = self.dora[name][:, None] * merged
        self.merged = merged.to(weight.dtype)

    def _dora_scale(self, name: str) -> torch.Tensor:
        """magnitude / ||W + scaling * B A|| per output feature, as PEFT's DoRA computes it in eval."""
        from peft.utils.integrations import dequantize_module_weight

        layer = self.layer
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        weight = dequantize_module_weight(layer.get_base_layer()).to(a.dtype) + layer.scaling[name] * (b @ a)
        return layer.lora_magnitude_vector[name].weight / torch.linalg.norm(weight, dim=1)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base = self.layer.base_layer
        if self.rows.use_merged and self.merged is not None:
            return F.linear(x, self.merged, base.bias)
        # A plain nn.Linear base is called directly: one module call less per layer and token.
        output = F.linear(x, base.weight, base.bias) if self.plain_base else base(x, *args, **kwargs)
        rows = self.rows
        if self.a is None or not rows.any_adapter:
            return output
        if rows.single is not None:
            if rows.single not in self.single:
                return output  # this adapter leaves this layer alone
            b, mask, scale = self.single[rows.single][1], None, self.dora.get(rows.single)
        else:
            b = self.b
            mask = rows.mask(self.layout, b.device, b.dtype)
            scale = self.dora_rows
            if scale is not None:
                scale = scale.index_select(0, rows.index(self.layout, b.device))
            if output.dim() == 3:
                mask, scale = mask[:, None, :], None if scale is None else scale[:, None, :]
        xa = self.shared.product(self, x, rows.single)
        lora = (xa if mask is None else xa * mask) @ b
        if scale is None:
            return output.add_(lora)  # the base output is this call's own fresh tensor
        bias = base.bias
        if bias is None:
            return (scale * (output + lora)).to(output.dtype)
        return (scale * (output - bias + lora) + bias).to(output.dtype)
