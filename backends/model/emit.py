"""A fused ModelPlan -> one payload: every op's kernels, bound to arguments, constants and workspace.

Each op kind has an emitter (as XNNPACK's node visitors each emit one op);
`emit_payload` walks the plan in order and concatenates their kernels into
one launch plan per arch group (the runtime replays it as one CUDA graph).

Delegate arguments: the plan's inputs (tokens, input_pos), its outputs
(logits), then its states (the KV caches, named by their buffers, shared
by the program's methods). Weights are payload constants. Intermediates
are workspace slices (layout.plan_arena), after a region that the attention
kernels' split partials and the kv_len slot use, layer after layer.

Attention is emitted as a group: the q/k RoPE (with the Qwen3 / Gemma 3
q/k norms) and the two cache writes that feed it become one
rope_cache_write launch, then the attention kernels attend [0, kv_len)
of the caches, causal (bottom-right) and with the layer's window.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

from ..kernel_builder import binding, bind_by_name, compile_for_archs, grid_factor, sharing_compiles
from ..payload_constants import PayloadConstants
from ..serialization import payload_generated as fb
from ..serialization import serialize_payload
from ..serialization.dtypes import torch_dtype_codes
from ..serialization.payload_serializer import PROGRAMMATIC_LAUNCH_ARCH
from .layout import SLICE_ALIGN, Arena, Strided, _round_up, plan_arena, strided
from .ops import (CONSTANT, INPUT, INTERMEDIATE, STATE, ModelPlan, NotRecognised, Op, Value, cache_heads_and_length,
                  cache_layout)

DTYPE_CODES = torch_dtype_codes(torch)
KV_LEN_BYTES = 16
ERROR_FLAG_BYTES = 16


def _i32(value: int):
    return binding(fb.ParamKind.Int32Constant, i32Value=int(value))


def _f32(value: float):
    return binding(fb.ParamKind.Float32Constant, f32Value=float(value))


@dataclass(frozen=True)
class Rows:
    """A grid extent of ceil(rows / divisor), where `count` is the plan's row count (its bound when
    the token count is dynamic: the runtime then reads it from the call's token input)."""

    count: int
    divisor: int = 1


@dataclass
class AttentionGroup:
    """The ops one attention launch group replaces: RoPE (+ q/k norms) and the cache writes."""

    attention: Op
    qkv: Value  # the fused projection's output, read by every part
    rope_q: Op
    rope_k: Op
    write_k: Op
    write_v: Op
    q_norm: Optional[Op] = None
    k_norm: Optional[Op] = None

    def ops(self) -> list[Op]:
        return [op for op in (self.rope_q, self.rope_k, self.write_k, self.write_v, self.q_norm, self.k_norm) if op]


def _root(value: Value) -> tuple[Value, tuple]:
    """The stored value under a narrow view and its (start, length) columns."""
    if not value.views or value.views[0][0] != "narrow":
        raise NotRecognised(f"{value.name}: RoPE input that is not columns of a fused projection")
    _, (_, start, length) = value.views[0]
    return Value(value.name, value.kind, (), value.dtype), (start, length)


def attention_groups(plan: ModelPlan) -> list[AttentionGroup]:
    by_output = {op.output.name: op for op in plan.ops if op.kind not in ("cache_write",)}
    writes = {}
    for op in plan.ops:
        if op.kind == "cache_write":
            writes[op.inputs["cache"].name] = op
    groups = []
    for op in plan.ops:
        if op.kind != "attention":
            continue
        rope_q = by_output.get(op.inputs["q"].name)
        write_k, write_v = writes.get(op.inputs["k_cache"].name), writes.get(op.inputs["v_cache"].name)
        rope_k = by_output.get(write_k.inputs["rows"].name) if write_k else None
        if rope_q is None or rope_q.kind != "rope" or rope_k is None or rope_k.kind != "rope" or write_v is None:
            raise NotRecognised(f"{op.output.name}: attention not fed by RoPE'd q/k and cache writes")
        norms = []
        for rope in (rope_q, rope_k):
            producer = by_output.get(rope.inputs["x"].name)
            norms.append(producer if producer is not None and producer.kind == "rmsnorm" else None)
        sources = [(n.inputs["x"] if n else r.inputs["x"]) for n, r in zip(norms, (rope_q, rope_k))]
        sources.append(write_v.inputs["rows"])
        roots = [_root(v) for v in sources]
        if len({r[0].name for r in roots}) != 1:
            raise NotRecognised(f"{op.output.name}: q, k and v are not columns of one projection")
        groups.append(AttentionGroup(op, roots[0][0], rope_q, rope_k, write_k, write_v, norms[0], norms[1]))
    return groups


@dataclass
class Emitter:
    plan: ModelPlan
    archs: list[int]
    ptx: bool
    constants: PayloadConstants = field(default_factory=PayloadConstants)
    kernels: list[fb.KernelT] = field(default_factory=list)
    regrid: list = field(default_factory=list)  # (kernel, grid) set after the compiles fill the kernels
    rows_max: Optional[int] = None  # a dynamic token count: the most rows this launch plan takes
    tail_bytes: int = 0  # workspace after the arena that some kernel uses as scratch (argmax partials)

    def __post_init__(self):
        plan = self.plan
        self.arg_of = {v.name: i for i, v in enumerate(plan.inputs)}
        self.out_arg = {v.name: len(plan.inputs) + i for i, v in enumerate(plan.outputs)}
        first_state = len(plan.inputs) + len(plan.outputs)
        self.state_arg = {name: first_state + i for i, name in enumerate(plan.states)}
        self.stored: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    # --- where a value is ---------------------------------------------------------------------------

    def store(self, value: Value, shape, strides=None) -> None:
        """Record the layout `value` is written in (contiguous unless strides say otherwise)."""
        shape = tuple(shape)
        self.stored[value.name] = (shape, tuple(strides) if strides else torch.empty(shape, device="meta").stride())

    def layout(self, value: Value) -> Strided:
        if value.kind in (INPUT, CONSTANT, STATE) or value.name in self.out_arg:
            base = self.plan.constants.get(value.name) or self.plan.states.get(value.name) or value
            return strided(value, self._stored_shape_of_arg(value, base))
        shape, strides = self.stored[value.name]
        return strided(value, shape, strides)

    def _stored_shape_of_arg(self, value: Value, base: Value) -> tuple[int, ...]:
        if value.kind == INPUT:
            return next(v.shape for v in self.plan.inputs if v.name == value.name)
        if value.name in self.out_arg:
            return next(v.shape for v in self.plan.outputs if v.name == value.name and not v.views)
        return base.shape

    def pointer(self, value: Value, arena: Arena):
        """The binding of a pointer parameter that reads `value` (at its view's offset)."""
        view = self.layout(value)
        offset_bytes = view.offset * value.dtype.itemsize
        if value.kind == CONSTANT:
            if offset_bytes:
                raise NotRecognised(f"{value.name}: a constant read at an offset")
            index = self.constants.index(value.name, self.plan.constant_data[value.name].contiguous())
            return lambda param: _set_constant(param, index)
        if value.name in self.out_arg or value.kind in (INPUT, STATE):
            if offset_bytes:
                raise NotRecognised(f"{value.name}: an argument read at an offset")
            arg = self.out_arg.get(value.name, self.arg_of.get(value.name, self.state_arg.get(value.name)))
            return binding(fb.ParamKind.TensorPointer, arg=arg)
        start, size = arena.slices[value.name]
        return binding(fb.ParamKind.Workspace, workspaceOffset=self.arena_base + start + offset_bytes,
                       workspaceExtent=size - offset_bytes)

    # --- the step's row count (static, or the call's token count) -------------------------------------

    def _dynamic(self, count: int) -> bool:
        """Whether a launch over `count` rows (as the plan's shapes hold them) runs the call's token
        count: per-token rows are at the bound (>= 2); one row (the last token's) stays one."""
        rows = self.plan.rows
        if rows is not None and count not in (rows.hi, 1):
            raise NotRecognised(f"a launch over {count} rows in a step of a dynamic token count "
                                f"(up to {rows.hi}): only per-token rows or one row can follow it")
        return rows is not None and count == rows.hi

    def rows(self, count: int):
        """The binding of a row-count parameter: `count`, or the call's token count."""
        if not self._dynamic(count):
            return _i32(count)
        return binding(fb.ParamKind.TensorSize, arg=self.arg_of[self.plan.rows.name], dim=self.plan.rows.dim)

    def most_rows(self, count: int) -> int:
        """The most rows a launch of this plan has (what kernel choices and tiles are made for)."""
        return self.rows_max if self._dynamic(count) else count

    def grid_dims(self, grid) -> list[fb.GridDimT]:
        dims = []
        for g in grid:
            if not isinstance(g, Rows):
                dims.append(fb.GridDimT(factors=[], multiplier=int(g)))
            elif self._dynamic(g.count):
                rows = self.plan.rows
                dims.append(fb.GridDimT(factors=[grid_factor(self.arg_of[rows.name], rows.dim, g.divisor)],
                                        multiplier=1))
            else:
                dims.append(fb.GridDimT(factors=[], multiplier=-(-g.count // g.divisor)))
        return dims

    def add(self, compile_one, bindings: dict, key, grid) -> None:
        """A kernel of compile_one(arch, wait_for_previous) with its parameters bound by name. Its sm_90+
        images wait for the kernel before them, so the runtime may launch them as programmatic dependents
        (the next kernel's launch overlaps this one's tail; payload.fbs Kernel.waits_for_previous)."""

        def describe(kernel, compiled):
            kernel.params = bind_by_name(compiled.params, bindings, kernel=compiled.name)
            kernel.waitsForPrevious = True

        kernel = compile_for_archs(lambda arch: compile_one(arch, arch >= PROGRAMMATIC_LAUNCH_ARCH), self.archs,
                                   self.ptx, describe, key=key)
        self.kernels.append(kernel)
        self.regrid.append((kernel, grid))


def _set_constant(param: fb.KernelParamT, index: int) -> None:
    param.kind, param.constant = fb.ParamKind.Constant, index


# --- emitters: each op kind's kernels -----------------------------------------------------------

def emit_embedding(e: Emitter, op: Op, arena: Arena) -> None:
    from ..aot.embedding import compile_embedding, embedding_grid

    table, tokens = op.inputs["table"], op.inputs["tokens"]
    rows = tokens.numel
    dim = table.shape[-1]
    out = e.layout(op.output)
    bindings = {"Tokens": e.pointer(tokens, arena), "Table": e.pointer(table, arena),
                "Out": e.pointer(op.output, arena),
                "Error": binding(fb.ParamKind.Workspace, workspaceOffset=e.error_offset, workspaceExtent=4),
                "L": e.rows(rows), "V": _i32(table.shape[0]), "stride_o": _i32(out.rows()[1])}

    def compile_one(arch, wait_for_previous):
        return compile_embedding(dtype=table.dtype, token_dtype=tokens.dtype, dim=dim, arch=arch,
                                 scale=op.attrs["scale"], wait_for_previous=wait_for_previous)

    e.add(compile_one, bindings, ("embedding", table.dtype, tokens.dtype, dim, op.attrs["scale"]),
          embedding_grid(Rows(rows)))


def emit_linear(e: Emitter, op: Op, arena: Arena) -> None:
    from ..aot.linear import compile_linear
    from ..heuristics import linear_config, linear_grid, linear_kind

    x, weight, out = op.inputs["x"], op.inputs["weight"], op.output
    m, stride_x = e.layout(x).rows()
    gated = op.attrs.get("gated") or ""
    n, k = weight.shape[0] // (2 if gated else 1), weight.shape[1]
    bias, residual = op.inputs.get("bias"), op.inputs.get("residual")
    out_rows, stride_o = e.layout(out).rows()
    stride_r = e.layout(residual).rows()[1] if residual is not None else stride_o
    out_ptr = e.pointer(out, arena)
    bindings = {"X": e.pointer(x, arena), "W": e.pointer(weight, arena),
                "Bias": e.pointer(bias, arena) if bias is not None else out_ptr,
                "Residual": e.pointer(residual, arena) if residual is not None else out_ptr, "Out": out_ptr,
                "M": e.rows(m), "eps": _f32(op.attrs.get("norm_eps") or 0.0), "stride_xm": _i32(stride_x),
                "stride_rm": _i32(stride_r), "stride_om": _i32(stride_o)}
    kind = linear_kind(e.most_rows(m))
    variant = dict(has_bias=bias is not None, has_residual=residual is not None,
                   norm_prologue=op.attrs.get("norm_eps") is not None, gated=gated,
                   softcap=float(op.attrs.get("softcap") or 0.0))
    config = linear_config(kind, e.most_rows(m), n, k, weight.dtype, e.archs[0], gated=bool(gated))

    def compile_one(arch, wait_for_previous):
        return compile_linear(kind=kind, dtype=weight.dtype, out_dtype=out.dtype, n=n, k=k, arch=arch,
                              config=config, wait_for_previous=wait_for_previous, **variant)

    e.add(compile_one, bindings, ("linear", kind, weight.dtype, out.dtype, n, k, config, tuple(variant.items())),
          _linear_grid(kind, m, n, config))


def _linear_grid(kind: str, m: int, n: int, config) -> tuple:
    """heuristics.linear_grid with its rows axis (gemv: 1, gemm: 0) as Rows."""
    from ..heuristics import linear_grid

    grid = list(linear_grid(kind, m, n, config))
    grid[1 if kind == "gemv" else 0] = Rows(m, config.block_m)
    return tuple(grid)


def emit_rmsnorm(e: Emitter, op: Op, arena: Arena) -> None:
    from ..aot.rmsnorm import compile_rmsnorm, rmsnorm_grid

    x, weight = op.inputs["x"], op.inputs["weight"]
    rows, stride_x = e.layout(x).rows()
    stride_o = e.layout(op.output).rows()[1]
    bindings = {"X": e.pointer(x, arena), "W": e.pointer(weight, arena), "Out": e.pointer(op.output, arena),
                "eps": _f32(op.attrs["eps"]), "stride_xr": _i32(stride_x), "stride_or": _i32(stride_o)}

    def compile_one(arch, wait_for_previous):
        return compile_rmsnorm(dtype=x.dtype, n_cols=x.shape[-1], arch=arch, weight_offset=op.attrs["weight_offset"],
                               weight_dtype=weight.dtype, wait_for_previous=wait_for_previous)

    e.add(compile_one, bindings, ("rmsnorm", x.dtype, x.shape[-1], op.attrs["weight_offset"], weight.dtype),
          rmsnorm_grid(Rows(rows)))


def emit_add(e: Emitter, op: Op, arena: Arena) -> None:
    from ..aot.add import add_grid, compile_add

    a, b = op.inputs["a"], op.inputs["b"]
    rows, stride_a = e.layout(a).rows()
    stride_b, stride_o = e.layout(b).rows()[1], e.layout(op.output).rows()[1]
    n_cols = a.shape[-1]
    bindings = {"A": e.pointer(a, arena), "B": e.pointer(b, arena), "Out": e.pointer(op.output, arena),
                "stride_ar": _i32(stride_a), "stride_br": _i32(stride_b), "stride_or": _i32(stride_o)}

    e.add(lambda arch, wait: compile_add(dtype=a.dtype, n_cols=n_cols, arch=arch, wait_for_previous=wait), bindings,
          ("add", a.dtype, n_cols),
          add_grid(Rows(rows), n_cols))


def emit_attention_group(e: Emitter, group: AttentionGroup, arena: Arena) -> None:
    """rope_cache_write (q/k norms, RoPE, cache rows, kv_len), then the attention kernels."""
    from ..aot.rope_cache_write import compile_rope_cache_write, rope_cache_write_grid

    att, rope_q = group.attention, group.rope_q
    q = att.inputs["q"]
    batch, heads_q, length, head_dim = q.shape
    k_cache = att.inputs["k_cache"]
    heads_kv, seq = cache_heads_and_length(att, k_cache)
    # Row p of head h: [B, H_kv, S, D] caches at h * S * D + p * D, [B, S, H_kv, D] ones at h * D + p * H_kv * D.
    stride_ch, stride_cs = (seq * head_dim, head_dim) if cache_layout(att).heads == 1 else (head_dim,
                                                                                          heads_kv * head_dim)
    if batch != 1:
        raise NotRecognised(f"{att.output.name}: batch {batch}; the whole-model plan runs batch 1")
    qkv = Value(group.qkv.name, INTERMEDIATE, e.stored[group.qkv.name][0], group.qkv.dtype)
    stride_qkv = e.layout(qkv).rows()[1]
    norm = group.q_norm
    bindings = {"QKV": e.pointer(qkv, arena),
                "Cos": e.pointer(rope_q.inputs["cos"], arena), "Sin": e.pointer(rope_q.inputs["sin"], arena),
                "InputPos": e.pointer(rope_q.inputs["positions"], arena),
                "Q_out": e.pointer(q, arena), "K_cache": e.pointer(k_cache, arena),
                "V_cache": e.pointer(att.inputs["v_cache"], arena),
                "KvLen": binding(fb.ParamKind.Workspace, workspaceOffset=e.kv_len_offset, workspaceExtent=4),
                "L": e.rows(length), "S": _i32(seq), "eps": _f32(norm.attrs["eps"] if norm else 0.0),
                "stride_qkv": _i32(stride_qkv), "stride_qoh": _i32(length * head_dim), "stride_qol": _i32(head_dim),
                "stride_ch": _i32(stride_ch), "stride_cs": _i32(stride_cs)}
    if norm:
        bindings["QNormW"] = e.pointer(group.q_norm.inputs["weight"], arena)
        bindings["KNormW"] = e.pointer(group.k_norm.inputs["weight"], arena)
    position = rope_q.inputs["positions"]
    variant = dict(dtype=q.dtype, position_dtype=position.dtype, heads_q=heads_q, heads_kv=heads_kv,
                   head_dim=head_dim, qk_norm=norm is not None,
                   norm_offset=float(norm.attrs["weight_offset"]) if norm else 0.0,
                   table_dtype=rope_q.inputs["cos"].dtype,
                   norm_weight_dtype=norm.inputs["weight"].dtype if norm else None,
                   interleaved=bool(rope_q.attrs.get("interleaved")))

    e.add(lambda arch, wait: compile_rope_cache_write(arch=arch, wait_for_previous=wait, **variant), bindings,
          ("rope_cache_write", tuple(variant.items())), rope_cache_write_grid(Rows(length), heads_q, heads_kv))
    _emit_attention(e, att, arena, heads_q, heads_kv, head_dim, length)


def _emit_attention(e: Emitter, att: Op, arena: Arena, heads_q: int, heads_kv: int, head_dim: int,
                    length: int) -> None:
    from ..attention_plan import AttentionArgs, attention_kernel, decode_kernels, decode_plan
    from ..aot.variant import AttentionVariant
    from ..heuristics import attention_config

    q, out = att.inputs["q"], att.output
    window = att.attrs.get("window")
    variant = AttentionVariant(is_causal=True, window_left=-1 if window is None else window - 1,
                               kv_len_dtype=torch.int32)
    k_arg, v_arg = e.state_arg[att.inputs["k_cache"].name], e.state_arg[att.inputs["v_cache"].name]
    # The query and output are workspace slices: their pointers and strides are bound here;
    # K/V are the state arguments (their strides come from the states' sizes).
    args = AttentionArgs(query=k_arg, key=k_arg, value=v_arg, out=k_arg, layout=cache_layout(att))
    out_view = e.layout(out)
    extra = {"Q": e.pointer(q, arena), "Out": e.pointer(out, arena),
             "KvLen": binding(fb.ParamKind.Workspace, workspaceOffset=e.kv_len_offset, workspaceExtent=4),
             "L_q": e.rows(length),
             **{f"stride_q{d}": _i32(s) for d, s in zip("bhm", (heads_q * length * head_dim, length * head_dim,
                                                                head_dim))},
             **{f"stride_o{d}": _i32(s) for d, s in zip("bhm", out_view.strides[:3])}}
    seq = cache_heads_and_length(att, att.inputs["k_cache"])[1]
    problem = dict(dtype=q.dtype, num_heads_q=heads_q, num_heads_kv=heads_kv, head_dim=head_dim)
    arch = e.archs[0]
    plan = decode_plan(batch=1, l_q=e.most_rows(length), l_kv=seq, arch=arch, **problem)
    common = dict(variant=variant, scale=att.attrs["scale"], archs=e.archs, ptx=e.ptx, args=args,
                  extra_bindings=extra, **problem)
    if plan is None:
        config = attention_config(head_dim, q.dtype, arch)
        kernel = attention_kernel(config=config, **common)
        e.kernels.append(kernel)
        e.regrid.append((kernel, (Rows(length, config.block_m), heads_q, 1)))
        return
    shift = e.attention_offset
    plan = dataclasses.replace(plan, partial_offset=plan.partial_offset + shift, lse_offset=plan.lse_offset + shift,
                               arrivals_offset=plan.arrivals_offset + shift)
    e.attention_bytes = max(e.attention_bytes, plan.workspace_bytes)
    kernels = decode_kernels(plan=plan, **common)
    e.kernels.extend(kernels)
    e.regrid.append((kernels[0], None))  # the split grid reads the cache state's sizes
    if len(kernels) == 2:
        e.regrid.append((kernels[1], (Rows(length), heads_q, 1)))


def emit_last_row(e: Emitter, op: Op, arena: Arena) -> None:
    from ..aot.last_row import compile_last_row, last_row_grid

    x = op.inputs["x"]
    rows, stride_x = e.layout(x).rows()
    n_cols = x.shape[-1]
    bindings = {"X": e.pointer(x, arena), "Out": e.pointer(op.output, arena), "L": e.rows(rows),
                "stride_xr": _i32(stride_x)}

    e.add(lambda arch, wait: compile_last_row(dtype=x.dtype, n_cols=n_cols, arch=arch, wait_for_previous=wait),
          bindings, ("last_row", x.dtype, n_cols), last_row_grid(n_cols))


def emit_argmax(e: Emitter, op: Op, arena: Arena) -> None:
    """argmax_rows over each row's splits, then argmax_merge when there are several: their int32
    partials go in a workspace slice of their own after the arena (e.tail_bytes)."""
    from ..aot.argmax_rows import (argmax_merge_grid, argmax_num_splits, argmax_rows_grid, argmax_workspace_shape,
                                   compile_argmax_merge, compile_argmax_rows)

    x = op.inputs["x"]
    rows, stride_x = e.layout(x).rows()
    vocab, splits = x.shape[-1], argmax_num_splits(x.shape[-1])
    out = e.pointer(op.output, arena)
    bindings = {"Logits": e.pointer(x, arena), "stride_lr": _i32(stride_x)}
    if splits > 1:
        l, two, s = argmax_workspace_shape(e.most_rows(rows), splits)
        offset = _round_up(e.arena_base + arena.bytes, SLICE_ALIGN)
        e.tail_bytes = max(e.tail_bytes, offset - e.arena_base - arena.bytes + l * two * s * 4)
        bindings["Partials"] = binding(fb.ParamKind.Workspace, workspaceOffset=offset,
                                       workspaceExtent=l * two * s * 4)
    else:
        bindings["Out"] = out

    def compile_rows(arch, wait):
        return compile_argmax_rows(dtype=x.dtype, vocab=vocab, num_splits=splits, arch=arch, wait_for_previous=wait)

    e.add(compile_rows, bindings, ("argmax_rows", x.dtype, vocab, splits), argmax_rows_grid(Rows(rows), splits))
    if splits > 1:
        e.add(lambda arch, wait: compile_argmax_merge(num_splits=splits, arch=arch, wait_for_previous=wait),
              {"Partials": bindings["Partials"], "Out": out}, ("argmax_merge", splits),
              argmax_merge_grid(Rows(rows)))


EMITTERS = {"embedding": emit_embedding, "linear": emit_linear, "rmsnorm": emit_rmsnorm, "add": emit_add,
            "last_row": emit_last_row, "argmax": emit_argmax}


def _stored_layouts(e: Emitter, groups: list[AttentionGroup]) -> dict[str, int]:
    """Every intermediate's stored layout (contiguous, except attention outputs: written in the
    order their readers view them) and bytes."""
    sizes = {}
    for op in e.plan.ops:
        out = op.output
        if out.kind != INTERMEDIATE:
            continue
        e.store(out, out.shape)
        sizes[out.name] = out.numel * out.dtype.itemsize
    for group in groups:
        att = group.attention.output
        b, h, l, d = att.shape
        e.store(att, (b, h, l, d), (l * h * d, d, h * d, 1))  # [B, L, H, D] in memory
    return sizes


def emit_payload(plan: ModelPlan, *, archs: Iterable[int], ptx: bool) -> tuple[bytes, PayloadConstants]:
    """The payload of a fused plan (per arch group, one launch plan, or with a dynamic token count one
    per range of rows, selected by the call's count; lowest arch with PTX) and its constants, whose
    bytes go into the program's named data beside the payload."""
    archs = sorted(set(archs))
    groups = attention_groups(plan)
    launch_plans, constants, workspace = [], PayloadConstants(), 0
    for index, group_archs in enumerate(_major_groups(archs)):
        ranges = row_ranges(plan, groups, group_archs[0])
        attention_bytes = max(_attention_scratch_bytes(plan, groups, group_archs[0], hi) for _, hi in ranges)
        for lo, hi in ranges:
            e = Emitter(plan, group_archs, ptx and index == 0, constants, rows_max=hi)
            workspace = max(workspace, _emit_kernels(e, groups, attention_bytes))
            launch_plans.append(fb.LaunchPlanT(archs=[] if index == 0 else group_archs,
                                               when=_rows_when(e, lo, hi), kernels=e.kernels))
    payload = fb.PayloadT(inputs=[_spec(plan, v) for v in plan.inputs],
                          outputs=[_spec(plan, v, d) for v, d in zip(plan.outputs, _output_row_dims(plan))],
                          plans=launch_plans, workspaceBytes=workspace,
                          states=[fb.StateSpecT(name=name, dtype=DTYPE_CODES[v.dtype], sizes=list(v.shape))
                                  for name, v in plan.states.items()],
                          constants=constants.specs(), positionBounds=_position_bounds(plan))
    return serialize_payload(payload), constants


def _emit_kernels(e: Emitter, groups: list[AttentionGroup], attention_bytes: int) -> int:
    """Every op's kernels into e.kernels, in order; returns the workspace bytes they use."""
    plan = e.plan
    grouped = {id(op) for g in groups for op in g.ops()}
    sizes = _stored_layouts(e, groups)
    e.kv_len_offset, e.error_offset = 0, KV_LEN_BYTES
    e.attention_offset = KV_LEN_BYTES + ERROR_FLAG_BYTES
    e.attention_bytes = attention_bytes
    e.arena_base = _round_up(e.attention_offset + e.attention_bytes, SLICE_ALIGN)
    arena = plan_arena(plan, sizes)
    att_of = {id(g.attention): g for g in groups}
    with sharing_compiles():
        for op in plan.ops:
            if id(op) in grouped:
                continue
            if op.kind == "attention":
                emit_attention_group(e, att_of[id(op)], arena)
            elif op.kind in EMITTERS:
                EMITTERS[op.kind](e, op, arena)
            else:
                raise NotRecognised(f"{op.output.name}: no emitter for {op.kind}")
    for kernel, grid in e.regrid:
        if grid is not None:
            kernel.grid = e.grid_dims(grid)
    return e.arena_base + arena.bytes + e.tail_bytes


def row_ranges(plan: ModelPlan, groups: list[AttentionGroup], arch: int) -> list[tuple[int, int]]:
    """The row counts each launch plan takes, cut where a kernel choice changes: linears at
    GEMV_MAX_M, attention where its dispatch table (attention_plan.dispatch_rows) cuts L_q.
    A static step has one: its row count."""
    from ..attention_plan import dispatch_rows
    from ..heuristics import GEMV_MAX_M

    rows = plan.rows
    if rows is None:
        return [(0, 0)]  # (unused: a static plan's kernels take the plan's own counts)
    cuts = {GEMV_MAX_M}
    for g in groups:
        q = g.attention.inputs["q"]
        heads_kv, seq = cache_heads_and_length(g.attention, g.attention.inputs["k_cache"])
        table = dispatch_rows(dtype=q.dtype, batch=1, num_heads_q=q.shape[1], num_heads_kv=heads_kv,
                              head_dim=q.shape[3], l_q=(rows.lo, rows.hi), l_kv=(seq, seq), arch=arch)
        cuts.update(q_hi for (_, q_hi), _, _ in table)
    ranges, start = [], rows.lo
    for cut in sorted(c for c in cuts if rows.lo <= c < rows.hi) + [rows.hi]:
        ranges.append((start, cut))
        start = cut + 1
    return ranges


def _rows_when(e: Emitter, lo: int, hi: int) -> list[fb.SizeRangeT]:
    rows = e.plan.rows
    if rows is None:
        return []
    return [fb.SizeRangeT(arg=e.arg_of[rows.name], dim=rows.dim, min=lo, max=hi)]


def _output_row_dims(plan: ModelPlan) -> list:
    return plan.output_row_dims if len(plan.output_row_dims) == len(plan.outputs) else [None] * len(plan.outputs)


def _position_bounds(plan: ModelPlan) -> list[fb.PositionBoundT]:
    """The step's input_pos is the start position of the tokens' rows (their last dim), which
    the cache writes put in caches of their length (dim -2): execute refuses a step past
    the shortest cache, and token ids outside the embedding table."""
    arg_of = {v.name: i for i, v in enumerate(plan.inputs)}
    tokens = [op.inputs["tokens"] for op in plan.ops if op.kind == "embedding" and op.inputs["tokens"].name in arg_of]
    lengths = {}  # input_pos arg -> the shortest cache it is written at
    for op in plan.ops:
        if op.kind == "cache_write" and op.inputs["positions"].name in arg_of:
            arg = arg_of[op.inputs["positions"].name]
            length = cache_heads_and_length(op, op.inputs["cache"])[1]
            lengths[arg] = min(lengths.get(arg, length), length)
    if len(tokens) != 1:
        return []
    rows_arg, rows_dim = arg_of[tokens[0].name], len(tokens[0].shape) - 1
    table = next(op.inputs["table"] for op in plan.ops if op.kind == "embedding")
    token_bound = fb.PositionBoundT(arg=rows_arg, bound=table.shape[0], index=fb.BoundedIndex.TokenId)
    return [token_bound] + [fb.PositionBoundT(arg=arg, startOnly=True, rowsArg=rows_arg, rowsDim=rows_dim,
                                              bound=length) for arg, length in sorted(lengths.items())]


def _attention_scratch_bytes(plan: ModelPlan, groups: list[AttentionGroup], arch: int, rows_max: int) -> int:
    """The decode attention partials of the plan's layers (for at most rows_max rows when dynamic)."""
    from ..attention_plan import decode_plan

    most = 0
    for g in groups:
        b, h, l, d = g.attention.inputs["q"].shape
        heads_kv, seq = cache_heads_and_length(g.attention, g.attention.inputs["k_cache"])
        p = decode_plan(dtype=g.attention.inputs["q"].dtype, batch=b, num_heads_q=h, num_heads_kv=heads_kv,
                        head_dim=d, l_q=rows_max if plan.rows else l, l_kv=seq, arch=arch)
        most = max(most, 0 if p is None else p.workspace_bytes)
    return most


def _major_groups(archs: list[int]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for arch in archs:
        groups.setdefault(arch // 10, []).append(arch)
    return list(groups.values())


def _spec(plan: ModelPlan, value: Value, row_dim: Optional[int] = None) -> fb.TensorSpecT:
    """A delegate argument's spec; with a dynamic token count, the tokens input's count dim
    (and an output's row_dim, read from it) is -1 up to the bound."""
    rows = plan.rows
    if rows is not None and value.name == rows.name and value.kind == INPUT:
        row_dim, size_from = rows.dim, None
    elif rows is not None and row_dim is not None:
        arg = next(i for i, v in enumerate(plan.inputs) if v.name == rows.name)
        size_from = [fb.DimSourceT(dim=row_dim, arg=arg, argDim=rows.dim)]
    else:
        return fb.TensorSpecT(dtype=DTYPE_CODES[value.dtype], sizes=list(value.shape))
    sizes = [-1 if d == row_dim else s for d, s in enumerate(value.shape)]
    return fb.TensorSpecT(dtype=DTYPE_CODES[value.dtype], sizes=sizes, maxSizes=list(value.shape),
                          sizeFrom=size_from)
