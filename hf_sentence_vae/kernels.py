"""CPU fast paths of the sentence VAE: the output layer fused with its loss or with the searches' choice, and the
LSTM calls.

Each function computes what its plain PyTorch counterpart computes (the tests hold them to it); they differ in
speed and memory on CPU, where this model is mostly trained and used (BENCHMARKS.md, "Speed"). The output-layer
functions work through the vocabulary in chunks whose logits stay in cache, so that the `(N, V)` logits are never
written to memory just to be read back once (training writes them once, for its backward):

- [`output_layer_nll`]: `-log softmax(hidden @ weight.T + bias)[target]` as one autograd node (in row blocks,
  keeping nothing, where no gradient is needed);
- [`greedy_tokens`]: `argmax` of the logits (and the chosen tokens' log-probabilities, on request), with banned ids;
- [`top_k_tokens`]: the `k` best ids of the logits and their log-probabilities, with banned ids;
- [`run_lstm`]: `lstm(inputs, state)`, in float32 under CPU autocast, with optional DropConnect on the recurrent
  weights;
- [`lstm_step`]: one decoding step of an LSTM, through the LSTM cell op for small batches;
- [`WordGateLSTM`]: decoding steps of an LSTM that reads word embeddings, with each word's input-side gate
  pre-activations computed once per search and looked up afterwards;
- [`native_bfloat16_cpu`]: whether bfloat16 products run natively on this CPU;
- [`exporting`]: whether `torch.export` is tracing (where sizes may be symbolic).

Only `torch` and `numpy` (a dependency of `transformers`) are imported, so this module travels with the model's
remote code.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Decoding steps of at most this many rows use the LSTM cell op instead of nn.LSTM (faster for small batches).
CELL_MAX_BATCH = 64
# Logits per vocabulary chunk of the training loss (1 MiB of float32).
LOSS_BUDGET = 1 << 18
# Rows per block of the output layer's loss when no gradient is needed (evaluation).
INFERENCE_ROWS = 512
# Logits per vocabulary chunk of the greedy search (512 KiB of float32: the chunk stays in a core's L2 cache).
GREEDY_BUDGET = 1 << 17
# The narrowest vocabulary chunk of the greedy search: with many rows, narrower GEMMs lose more speed than the
# cache saves.
GREEDY_MIN_CHUNK = 512
# Logits per vocabulary chunk of the screened greedy search (1 MiB of float32 logits, from 512 KiB of bfloat16).
SCREEN_BUDGET = 1 << 18
# Fewer rows than this take the float32 products directly in the screened greedy search.
SCREEN_MIN_ROWS = 16
# Decoding steps of fewer rows than this multiply the embeddings instead of using `WordGateLSTM`: their rows read
# mostly words not read before, whose products the lookup must compute anyway.
WORD_GATES_MIN_ROWS = 16
# Logits per vocabulary chunk of the top-k search (2 MiB of float32): `topk` costs less per element on wider rows.
TOP_K_BUDGET = 1 << 19
# Columns per block of the two-stage top-k of wide rows ([`_top_k`]).
TOP_K_BLOCK = 64
# Decoding steps of this many rows or more, up to PACKED_MAX_ROWS, take their float32 CPU products (the output layer
# over the whole vocabulary, the LSTM cell's gates) from oneDNN with the weight packed once per search
# ([`PackedWeight`]): at these row counts MKL's GEMM runs far below the memory bound (10k words x 256 features, one
# thread, benchmarks/bench_packed.py: 5 rows 0.78 ms, oneDNN on the packed weight 0.28 ms; 64 rows 4.05 against 3.06
# ms); above them the searches' chunked products do as well. One row stays on MKL's GEMV, which spares a batch-1
# search the packing (~2 ms for a 10 MB output layer, more than its steps would save).
PACKED_MIN_ROWS = 2
PACKED_MAX_ROWS = 128
# Under CPU bf16 autocast the output layer pads its rows to a multiple of this: oneDNN builds a bf16 GEMM kernel
# per new shape (~4 ms), and the number of target tokens differs almost every batch.
BF16_ROW_BUCKET = 128


def native_bfloat16_cpu() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX-512 BF16 or AMX), without which oneDNN emulates bfloat16 products
    at about half the float32 speed (BENCHMARKS.md, "bf16 by oneDNN instruction set"). True where this build of torch
    cannot tell (its CPU-feature checks are private)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not all(callable(check) for check in checks):
        return True
    return any(check() for check in checks)


def exporting() -> bool:
    """True while `torch.export` traces (strict or not); False on torch releases without `is_exporting`."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return is_exporting is not None and is_exporting()


def _concrete(size) -> bool:
    """Whether a tensor size is a plain `int` the kernels can loop over: not a `torch.SymInt` of a traced graph.
    Strict `torch.export` traces with TorchDynamo, where a symbolic size passes `isinstance(size, int)` too (a loop
    over a data-dependent one then fails to export), so an export's sizes never count as concrete."""
    return isinstance(size, int) and not exporting()


def vocabulary_chunk(rows: int, vocab_size: int, budget: int, multiple: int = 64, minimum: int = 64) -> int:
    """Columns per vocabulary chunk so that a `(rows, chunk)` float32 block of logits holds at most `budget` elements
    (so that it stays in cache while it is reduced), a multiple of `multiple`, at least `max(multiple, minimum)`, at
    most `vocab_size`."""
    if rows < 1 or vocab_size < 1:
        raise ValueError(f"rows and vocab_size must be >= 1, got rows={rows}, vocab_size={vocab_size}")
    return min(vocab_size, max(multiple, minimum, budget // rows // multiple * multiple))


class OutputLayerNLL(torch.autograd.Function):
    """Per-token -log softmax(hidden @ weight.T + bias)[target]: the output layer and its loss in one node.

    In float32 the `(N, V)` logits are computed in vocabulary chunks that stay in cache: each chunk's product is
    reduced there to its max and its exponentials (relative to that max), which are written out once with their sum
    (a row's log-sum-exp combines its chunks'). The backward reads each chunk once more, scales it into the chunk's
    softmax gradient in cache (no second exponential) and runs the three gradient products on it (hidden, weight,
    bias), with the target's one-hot part applied afterwards as an index-add. Against the whole `(N, V)` product
    followed by a log-softmax, the GEMMs no longer stream their output through memory: 1.3x faster for this layer
    at the peer's sizes (710 tokens, 256 features, 10k words), about 1.2x for a training step.

    Under autocast the products run in the autocast dtype (on CPU with the rows padded to a multiple of
    `BF16_ROW_BUCKET`), the log-softmax in float32, over the whole `(N, V)` buffer (written over the logits, and
    turned into the logits' gradient in place by the backward). So does float32 when the number of rows is symbolic
    (a graph traced by `torch.export` or with dynamic shapes, where the count of chunks cannot depend on it). The
    graph through this node can be differentiated once."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype)
        ctx.rows = rows = hidden.shape[0]
        with torch.autocast(device, enabled=False):
            fp32 = dtype == torch.float32 and hidden.dtype == weight.dtype == bias.dtype == torch.float32
            if fp32 and _concrete(rows):
                ctx.chunked = True
                exponentials, maxima, lse = _chunked_exponentials(hidden, weight, bias)
                target_logits = torch.einsum("nf,nf->n", hidden, weight[targets]) + bias[targets]
                ctx.save_for_backward(hidden, weight, exponentials, maxima, lse, targets)
                return lse - target_logits
            ctx.chunked = False
            hidden_c, weight_c = hidden.to(dtype), weight.to(dtype)
            ctx.pad = pad = (-rows) % BF16_ROW_BUCKET if device == "cpu" and dtype != torch.float32 else 0
            if pad:  # zero rows, whose gradient is zero: a few shapes for oneDNN's per-shape bf16 GEMM kernels
                hidden_c = torch.cat([hidden_c, hidden_c.new_zeros(pad, hidden_c.shape[1])])
                targets = torch.cat([targets, targets.new_zeros(pad)])
            logits = torch.addmm(bias.to(dtype), hidden_c, weight_c.t())
            # In place, row by row (each row is read before it is written); a float32 copy of bf16 logits first
            # (2.5x faster than log_softmax(dtype=float32) on CPU).
            log_probs = logits.to(torch.promote_types(logits.dtype, torch.float32))
            log_probs = torch.log_softmax(log_probs, dim=-1, out=log_probs)
            nll = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).neg()
        ctx.save_for_backward(hidden_c, weight_c, log_probs, targets)
        return nll[:rows] if pad else nll

    @staticmethod
    def backward(ctx, grad):
        if ctx.chunked:
            return _chunked_backward(ctx, grad)
        hidden_c, weight_c, log_probs, targets = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        grad = grad.to(log_probs.dtype)
        if ctx.pad:  # (the sizes are compared only where rows were padded: under export they are symbolic)
            grad = torch.cat([grad, grad.new_zeros(ctx.pad)])
        grad = grad.unsqueeze(-1)
        grad_logits = log_probs.exp_().mul_(grad)  # softmax * grad - onehot * grad, in the saved buffer
        grad_logits.scatter_add_(-1, targets.unsqueeze(-1), -grad)
        grad_logits = grad_logits.to(hidden_c.dtype)
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = torch.mm(grad_logits, weight_c)
            grad_hidden = (grad_hidden[: ctx.rows] if ctx.pad else grad_hidden).to(hidden_dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            ones = hidden_c.new_ones(hidden_c.shape[0], 1)
            both = torch.mm(grad_logits.t(), torch.cat([hidden_c, ones], dim=1))
            grad_weight = both[:, :-1].to(weight_dtype).contiguous()
            grad_bias = both[:, -1].to(bias_dtype).contiguous()
        return grad_hidden, grad_weight, grad_bias, None


def _chunked_exponentials(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits `hidden @ weight.T + bias`, chunk by chunk over the vocabulary, reduced while each chunk is in
    cache: returns the `(N, V)` exp(logit - max of its chunk), the `(N, chunks)` chunk maxima (0 for a chunk of
    -inf) and the `(N,)` row log-sum-exps."""
    rows, vocab = hidden.shape[0], weight.shape[0]
    chunk = vocabulary_chunk(rows, vocab, budget=LOSS_BUDGET)
    count = -(-vocab // chunk)
    exponentials = hidden.new_empty(rows, vocab)
    maxima = hidden.new_empty(rows, count)
    sums = hidden.new_empty(rows, count)
    buffer = hidden.new_empty(rows, chunk)
    for index, start in enumerate(range(0, vocab, chunk)):
        stop = min(start + chunk, vocab)
        block = _logit_block(hidden, weight, bias, start, stop, buffer)
        top = block.amax(-1, keepdim=True)
        top = top.masked_fill(top.isinf(), 0.0)  # a chunk of -inf (masked ids): exponentials of 0, not of NaN
        maxima[:, index : index + 1] = top
        out = exponentials[:, start:stop]
        _exp_(torch.sub(block, top, out=out))
        torch.sum(out, -1, out=sums[:, index])
    top = maxima.amax(-1, keepdim=True)
    lse = (sums * (maxima - top).exp_()).sum(-1).log_() + top.squeeze(-1)
    return exponentials, maxima, lse


def _chunked_backward(ctx, grad: torch.Tensor):
    hidden, weight, exponentials, maxima, lse, targets = ctx.saved_tensors
    need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
    rows, vocab = exponentials.shape
    grad = grad.to(exponentials.dtype).unsqueeze(-1)
    chunk = vocabulary_chunk(rows, vocab, budget=LOSS_BUDGET)
    # softmax * grad = exponentials * exp(chunk max - lse) * grad: one scale per row and chunk.
    scales = (maxima - lse.unsqueeze(-1)).exp_().mul_(grad)
    grad_hidden = hidden.new_zeros(hidden.shape) if need_hidden else None
    grad_weight = weight.new_empty(weight.shape) if need_weight else None
    grad_bias = weight.new_empty(vocab) if need_bias else None
    buffer = exponentials.new_empty(rows, chunk)
    for index, start in enumerate(range(0, vocab, chunk)):
        stop = min(start + chunk, vocab)
        softmax_grad = buffer.view(-1)[: rows * (stop - start)].view(rows, stop - start)
        torch.mul(exponentials[:, start:stop], scales[:, index : index + 1], out=softmax_grad)  # in cache
        if need_hidden:
            grad_hidden.addmm_(softmax_grad, weight[start:stop])
        if need_weight:
            torch.mm(softmax_grad.t(), hidden, out=grad_weight[start:stop])
        if need_bias:
            torch.sum(softmax_grad, 0, out=grad_bias[start:stop])
    # The one-hot part of the gradient: -grad at each row's target.
    if need_hidden:
        grad_hidden.sub_(weight[targets] * grad)
    if need_weight:
        grad_weight.index_add_(0, targets, hidden * -grad)
    if need_bias:
        grad_bias.index_add_(0, targets, -grad.squeeze(-1))
    return grad_hidden, grad_weight, grad_bias, None


def output_layer_nll(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """`(N,)` negative log-likelihoods of `targets` `(N,)` under the logits `hidden @ weight.T + bias`
    (`hidden` `(N, F)`, `weight` `(V, F)`, `bias` `(V,)`), computed by [`OutputLayerNLL`] when a gradient is needed,
    else (evaluation, importance sampling) by [`inference_nll`], which keeps nothing for a backward."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (hidden, weight, bias))
    plain = (
        not needs_grad
        and _concrete(hidden.shape[0])
        and not torch.is_autocast_enabled(hidden.device.type)
        and hidden.dtype == weight.dtype == bias.dtype
        and hidden.dtype in (torch.float32, torch.float64)
    )
    if plain:
        return inference_nll(hidden, weight, bias, targets)
    return OutputLayerNLL.apply(hidden, weight, bias, targets)


def inference_nll(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """[`output_layer_nll`] without a backward: blocks of `INFERENCE_ROWS` rows, each block's logits reduced to its
    log-sum-exp and target logit right after its GEMM (the `(N, V)` logits are never held whole, and no
    exponentials are written for a backward; with many rows, as in importance sampling, about 1.8x faster than
    the training node)."""
    rows = hidden.shape[0]
    nll = hidden.new_empty(rows)
    for start in range(0, rows, INFERENCE_ROWS):
        stop = min(start + INFERENCE_ROWS, rows)
        logits = torch.addmm(bias, hidden[start:stop], weight.t())
        target_logits = logits.gather(-1, targets[start:stop].unsqueeze(-1)).squeeze(-1)
        torch.sub(torch.logsumexp(logits, -1), target_logits, out=nll[start:stop])
    return nll


def _exp_(values: torch.Tensor) -> torch.Tensor:
    """`values.exp_()`; on a float32 CPU tensor outside autograd and graph capture by NumPy's vectorised exp (1.6-1.9x
    torch's on one AVX-512 core, within 2.6 ulps of the exact value where torch's is within 0.6; they differ on about
    40 % of elements, by at most 3 ulps). The output layer's exponentials take 5-9 % of a decoding or training step."""
    if (
        values.device.type == "cpu"
        and values.dtype == torch.float32
        and not values.requires_grad
        and not torch.compiler.is_compiling()
    ):
        array = values.numpy()
        np.exp(array, out=array)
        return values
    return values.exp_()


def _logit_block(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    start: int,
    stop: int,
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """`(N, stop - start)` float32 logits of the vocabulary ids `start:stop`: `hidden @ weight.T + bias` with the bias
    added by the GEMM (float32), or after a GEMM in the weight's lower precision (its output converted first). With
    `buffer` (at least `N * (stop - start)` float32 elements) the float32 logits are written there: one block reused
    chunk after chunk stays in cache, where fresh ones would be fresh memory to fault in each time."""
    rows, width = hidden.shape[0], stop - start
    out = None if buffer is None else buffer.view(-1)[: rows * width].view(rows, width)
    if weight.dtype == torch.float32:
        return torch.addmm(bias[start:stop], hidden, weight[start:stop].t(), out=out)
    low = torch.mm(hidden, weight[start:stop].t())
    return (low.float() if out is None else out.copy_(low)).add_(bias[start:stop])


def _exclude_(logits: torch.Tensor, banned: torch.Tensor | None) -> torch.Tensor | None:
    """Sets the `banned` columns of the `(N, V)` `logits` to -inf in place; returns their former values (`(N, B)`),
    or None without any."""
    if banned is None or banned.numel() == 0:
        return None
    excluded = logits.index_select(1, banned)
    logits.index_fill_(1, banned, float("-inf"))
    return excluded


def _log_sum_exp_(logits: torch.Tensor, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """`(N, 1)` log-sum-exp of each row of the `(N, V)` float32 `logits` and of `excluded` (`(N, B)` or None),
    overwriting `logits` with their exponentials relative to the row's maximum (through `_exp_`: NumPy's exp, 1.6-1.9x
    torch's, where `torch.logsumexp` would take torch's on a copy)."""
    top = logits.amax(-1, keepdim=True)
    top = top.masked_fill(top.isinf(), 0.0)  # a row of -inf only: exponentials of -inf, 0, not NaN
    lse = _exp_(logits.sub_(top)).sum(-1, keepdim=True).log_().add_(top)
    if excluded is not None:
        lse = torch.logaddexp(lse, torch.logsumexp(excluded, dim=-1, keepdim=True))
    return lse


def _top_k(values: torch.Tensor, k: int, block: int = TOP_K_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """`values.topk(k, dim=-1)` of a `(N, W)` float tensor, in two stages on wide rows: the maxima of blocks of `block`
    columns, the `k` blocks with the largest (the `k` best values lie in them: a value outside them is beaten by
    their `k` maxima), then `topk` over those blocks' `k * block` values and the columns after the last whole block.
    The same values and ids (ties apart), 1.2-2.2x `topk` on 10k-wide rows of 5-128 rows."""
    rows, width = values.shape
    whole = width // block * block
    if k * block * 4 > whole:  # narrow rows: topk itself
        return values.topk(k, dim=-1)
    blocks = values[:, :whole].unflatten(1, (whole // block, block))
    chosen = blocks.amax(-1).topk(k, dim=-1).indices  # (N, k)
    candidates = blocks.gather(1, chosen.unsqueeze(-1).expand(-1, -1, block)).flatten(1)
    ids = (chosen.unsqueeze(-1) * block + torch.arange(block, device=values.device)).flatten(1)
    if whole < width:
        candidates = torch.cat([candidates, values[:, whole:]], 1)
        tail = torch.arange(whole, width, device=values.device).expand(rows, -1)
        ids = torch.cat([ids, tail], 1)
    best, positions = candidates.topk(k, dim=-1)
    return best, ids.gather(1, positions)


def _excluded_log_sum_exp(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, banned: torch.Tensor | None
) -> torch.Tensor | None:
    """`(N,)` log-sum-exp of the logits of the `banned` ids (None without any)."""
    if banned is None or banned.numel() == 0:
        return None
    logits = torch.mm(hidden, weight.index_select(0, banned).t()).float().add_(bias.index_select(0, banned))
    return torch.logsumexp(logits, dim=-1)


def _first_index(hits_buffer: torch.Tensor, values: torch.Tensor, target: torch.Tensor, dim: int) -> torch.Tensor:
    """The first index along `dim` (0 or 1) at which `values` equals `target` (broadcast along `dim`), as a float
    tensor. Comparing into a float buffer and taking the max of the hits weighted by a decreasing ramp is ~4x faster on
    CPU than `max` with indices (whose index-tracking reduction is not vectorised)."""
    size = values.shape[dim]
    hits = torch.eq(values, target, out=hits_buffer)
    ramp = torch.arange(size, 0, -1, dtype=hits.dtype, device=hits.device)
    ramp = ramp.view(-1, 1) if dim == 0 else ramp
    return size - hits.mul_(ramp).amax(dim)


class PackedWeight:
    """`x @ weight.T + bias` for float32 CPU rows, by oneDNN's GEMM on a copy of the `(O, I)` float32 `weight` (or of
    its `(O, I_k)` pieces, joined along the inputs) packed in oneDNN's own layout, made on the first call and kept for
    the object's life (one search): at a few rows (`PACKED_MIN_ROWS` to `PACKED_MAX_ROWS`) 1.3-3.9x MKL's GEMM at the
    peer's sizes, the products summed in another order (float32 rounding apart, the same results). Where this build's
    oneDNN cannot run the packed product, the first call warns (`RuntimeWarning`) and `F.linear` serves from then on.
    [`PackedWeight.supports`] says where it runs: a CPU float32 weight, torch built with oneDNN (`torch.ops.mkldnn`),
    outside graph capture."""

    def __init__(self, weight: torch.Tensor | tuple[torch.Tensor, ...], bias: torch.Tensor):
        pieces = tuple(w.detach() for w in (weight if isinstance(weight, tuple) else (weight,)))
        if not all(self.supports(w) for w in pieces):
            raise ValueError(
                f"PackedWeight needs a float32 CPU weight and torch's oneDNN ops, got a {pieces[0].dtype} weight on "
                f"{pieces[0].device}"
            )
        # `weight` as `(O, I_k)` pieces is joined along its inputs on the first call, with the packing.
        self.pieces, self.bias = pieces, bias.detach().float()
        self._packed = None

    @staticmethod
    def supports(weight: torch.Tensor) -> bool:
        ops = torch.ops.mkldnn
        return (
            weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise")
            and not exporting()
            and not torch.compiler.is_compiling()
        )

    @staticmethod
    def _pack(weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(weight, None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is False:
            return F.linear(x, self._weight, self.bias)
        if self._packed is not None:
            return self._product(x)
        weight = self.pieces[0] if len(self.pieces) == 1 else torch.cat(self.pieces, 1)
        try:
            self._packed = self._pack(weight)
            return self._product(x)
        except RuntimeError as error:  # a oneDNN build without these kernels: the plain product from here on
            warnings.warn(
                f"oneDNN could not run a packed {tuple(weight.shape)} float32 product ({error}); decoding takes "
                "torch's own products instead",
                RuntimeWarning,
                stacklevel=2,
            )
            self._packed, self._weight = False, weight
            return F.linear(x, weight, self.bias)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        # Above 16 rows, rows padded to a multiple of 4: oneDNN keeps a kernel (and its buffers) per shape.
        padded = rows if rows <= 16 else -(-rows // 4) * 4
        if padded != rows:
            x = torch.cat([x, x.new_zeros(padded - rows, x.shape[1])])
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")[:rows]


def _packed_rows(packed: PackedWeight | None, rows: int) -> bool:
    """Whether a step of `rows` rows takes its products from `packed`."""
    return packed is not None and PACKED_MIN_ROWS <= rows <= PACKED_MAX_ROWS


def greedy_tokens(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    banned: torch.Tensor | None = None,
    with_log_probs: bool = False,
    packed: PackedWeight | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The greedy choice of an output layer without its `(N, V)` logits or log-softmax: the `(N,)` ids maximising
    `hidden @ weight.T + bias` (`hidden` `(N, F)`, `weight` `(V, F)`, `bias` `(V,)` float32; the first such id,
    as `argmax` picks it) among the ids not in `banned`, and with `with_log_probs` their `(N,)` log-probabilities
    under the softmax over every id (the banned ones included), from one log-sum-exp.

    The vocabulary is processed in chunks whose `(N, chunk)` logits stay in cache: each is reduced there to its
    maximum, the position of its first maximum and, for the log-probabilities, its sum of exponentials. A `weight`
    in bfloat16 (with `hidden` converted to it) runs the products in bfloat16; their bfloat16 results are
    reduced in float32. With `packed` (a [`PackedWeight`] of `weight` and `bias`), a step of `PACKED_MIN_ROWS` to
    `PACKED_MAX_ROWS` rows takes its logits, all at once, from it."""
    rows, vocab = hidden.shape[0], weight.shape[0]
    hidden = hidden.to(weight.dtype)
    chunk = vocabulary_chunk(rows, vocab, budget=GREEDY_BUDGET, minimum=GREEDY_MIN_CHUNK)
    few = _packed_rows(packed, rows)
    if few or chunk >= vocab:  # a few rows: all their logits at once
        logits = packed(hidden) if few else _logit_block(hidden, weight, bias, 0, vocab)
        excluded = _exclude_(logits, banned)
        best, tokens = logits.max(-1)  # the first maximal index, as argmax gives it
        if not with_log_probs:
            return tokens, None
        return tokens, best - _log_sum_exp_(logits, excluded).squeeze(-1)
    search_bias = bias if banned is None or banned.numel() == 0 else bias.index_fill(0, banned, float("-inf"))
    count = -(-vocab // chunk)
    maxima = torch.empty(count, rows, device=hidden.device)
    positions = torch.empty(count, rows, device=hidden.device)
    sums = torch.empty(count, rows, device=hidden.device) if with_log_probs else None
    scratch = torch.empty(rows, chunk, device=hidden.device)
    buffer = torch.empty(rows, chunk, device=hidden.device)
    for index, start in enumerate(range(0, vocab, chunk)):
        stop = min(start + chunk, vocab)
        block = _logit_block(hidden, weight, search_bias, start, stop, buffer)
        top = block.amax(-1, keepdim=True)
        maxima[index] = top.squeeze(-1)
        positions[index] = _first_index(scratch[:, : stop - start], block, top, dim=1)
        if sums is not None:
            top = top.masked_fill(top.isinf(), 0.0)  # a chunk of banned ids only: exponentials of 0, not NaN
            torch.sum(_exp_(block.sub_(top)), -1, out=sums[index])
    best = maxima.amax(0)
    first_chunk = _first_index(torch.empty_like(maxima), maxima, best, dim=0).long()
    tokens = first_chunk * chunk + positions.gather(0, first_chunk.unsqueeze(0)).squeeze(0).long()
    if sums is None:
        return tokens, None
    scale = maxima.sub_(best).exp_() if count > 1 else None  # exp(chunk max - best); maxima is not needed after
    total = sums.mul_(scale).sum(0) if scale is not None else sums[0]
    log_total = total.log_()
    log_probs = -log_total  # best - log-sum-exp over the allowed ids
    excluded = _excluded_log_sum_exp(hidden, weight, bias, banned)
    if excluded is not None:  # the banned ids' share of the normaliser
        log_probs = log_probs - torch.log1p(torch.exp(excluded - best - log_total))
    return tokens, log_probs


def _screening_terms(features: int, bias_bound: float) -> tuple[float, float]:
    """`(relative, offset)` of [`screening_bound`] = `relative * ||h|| * weight_norm + offset`."""
    unit, fp32 = 2.0**-8, 2.0**-24
    gamma = (features + 1) * fp32 / (1 - (features + 1) * fp32)
    relative = (2 * unit + unit**2) * (1 + unit) + unit * (1 + 2 * unit) + 2 * gamma + 4 * fp32
    return 1.01 * relative, 1.01 * (2 * gamma + 4 * fp32) * bias_bound + 1e-30


def finite_bias_bound(bias: torch.Tensor) -> float:
    """The largest `|b_j|` among the finite entries of `bias` (0 without any): a term of [`screening_bound`]."""
    finite = bias[bias.isfinite()]
    return float(finite.abs().max()) if finite.numel() else 0.0


def screening_bound(hidden: torch.Tensor, weight_norm: torch.Tensor | float, bias_bound: float) -> torch.Tensor:
    """`(N,)` bounds on how far a logit of the float32 output layer (`hidden @ weight.T + bias`, as a float32 GEMM
    computes it) can be from its bfloat16 screen in [`screened_greedy_tokens`], for the ids whose rows of `weight`
    have Euclidean norms of at most `weight_norm`, with `|b_j| <= bias_bound` ([`finite_bias_bound`]). The screen is
    the product of `hidden` and `weight` rounded to bfloat16, accumulated in float32 (as oneDNN's bfloat16 GEMMs do,
    with AVX-512 BF16, AMX or emulated), the result rounded to bfloat16, then the float32 bias added.

    With `u = 2^-8` (bfloat16's unit roundoff) and `|h . w_j| <= S_j = sum_i |h_i w_ji| <= ||h|| ||w_j||`: rounding
    both factors moves each product by at most `(2u + u^2)` of it, rounding the result by `u` of the result, each
    float32 accumulation (the screen's and the reference's) by `gamma_{F+1} = (F + 1) 2^-24 / (1 - (F + 1) 2^-24)`
    of `S_j + |b_j|`, each bias addition by `2^-24` of its result; `1e-30` covers the tiny inputs that bfloat16
    arithmetic flushes to zero. The sum is taken 1 % larger for slack."""
    relative, offset = _screening_terms(hidden.shape[-1], bias_bound)
    return relative * hidden.float().norm(dim=-1) * weight_norm + offset


def screened_greedy_tokens(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    low_weight: torch.Tensor,
    bias: torch.Tensor,
    banned: torch.Tensor | None = None,
    weight_norms: torch.Tensor | None = None,
    bias_bound: float | None = None,
) -> torch.Tensor:
    """[`greedy_tokens`]' float32 choice (the `(N,)` ids maximising `hidden @ weight.T + bias` among the ids not in
    `banned`, the first of tied maxima) from products in bfloat16. `low_weight` (`weight` in bfloat16) screens the
    vocabulary, chunk by chunk in cache: with `e_j` the [`screening_bound`] of id `j`'s chunk (from the largest of
    `weight_norms`, the `(V,)` norms of `weight`'s rows, in the chunk) and `s_j` its screened logit, the float32
    maximum is among the ids with `s_j + e_j >= max_m (s_m - e_m)`. A row with one such id takes it; the others
    compare their ids' float32 logits, computed from `hidden` and `weight` as dot products (so the choice is the
    float32 layer's up to ids whose logits tie within float32 rounding, where two float32 GEMMs may also differ).
    Fewer than
    `SCREEN_MIN_ROWS` rows take [`greedy_tokens`]' float32 products directly. `weight_norms` and
    `bias_bound` ([`finite_bias_bound`]) are computed when not given (pass them when decoding step after step).
    Products in bfloat16 run about twice as fast as in float32 on CPUs with AVX-512 BF16 or AMX; where they are
    emulated, this is slower than [`greedy_tokens`]."""
    if low_weight.dtype != torch.bfloat16 or low_weight.shape != weight.shape:
        raise ValueError(
            f"low_weight must be the weight in bfloat16: got {low_weight.dtype} {tuple(low_weight.shape)} for a "
            f"weight of shape {tuple(weight.shape)}"
        )
    rows, vocab = hidden.shape[0], weight.shape[0]
    if rows < SCREEN_MIN_ROWS:  # a few rows: the screen's own steps cost more than the float32 products save
        return greedy_tokens(hidden, weight, bias, banned)[0]
    hidden = hidden.float()
    if weight_norms is None:
        weight_norms = weight.float().norm(dim=-1)
    if bias_bound is None:
        bias_bound = finite_bias_bound(bias)
    relative, offset = _screening_terms(hidden.shape[-1], bias_bound)
    scale = hidden.norm(dim=-1, keepdim=True).mul_(relative)  # the bound is scale * (chunk's weight norm) + offset
    low_hidden = hidden.to(torch.bfloat16)
    search_bias = bias if banned is None or banned.numel() == 0 else bias.index_fill(0, banned, float("-inf"))
    chunk = vocabulary_chunk(rows, vocab, budget=SCREEN_BUDGET)
    lower = torch.full((rows, 1), float("-inf"), device=hidden.device)  # max_m (s_m - e_m) so far
    buffer = torch.empty(rows, chunk, device=hidden.device)
    found_rows, found_ids, found_values = [], [], []
    for start in range(0, vocab, chunk):
        stop = min(start + chunk, vocab)
        block = _logit_block(low_hidden, low_weight, search_bias, start, stop, buffer)
        error = scale * weight_norms[start:stop].max() + offset
        top = block.amax(-1, keepdim=True)
        torch.maximum(lower, top - error, out=lower)
        # Candidates against the bound so far (a superset of those against the row's final bound), looked for only
        # in the rows whose chunk maximum is one (with the vocabulary in frequency order, after the first chunk,
        # few rows).
        threshold = lower - error
        hit_rows = (top >= threshold).squeeze(-1).nonzero().squeeze(-1)
        if hit_rows.numel() == 0:
            continue
        candidates = block.index_select(0, hit_rows)
        hits = (candidates >= threshold.index_select(0, hit_rows)).nonzero()
        found_rows.append(hit_rows[hits[:, 0]])
        found_ids.append(hits[:, 1] + start)
        found_values.append(candidates[hits[:, 0], hits[:, 1]] + error.view(-1)[found_rows[-1]])
    cand_rows, cand_ids = torch.cat(found_rows), torch.cat(found_ids)
    keep = torch.cat(found_values) >= lower.squeeze(-1)[cand_rows]
    cand_rows, cand_ids = cand_rows[keep], cand_ids[keep]
    counts = torch.bincount(cand_rows, minlength=rows)
    tokens = torch.full((rows,), vocab, dtype=torch.long, device=hidden.device)
    tokens.scatter_reduce_(0, cand_rows, cand_ids, "amin")  # the id of a row with one candidate
    ties = counts[cand_rows] > 1
    if bool(ties.any()):
        tie_rows, tie_ids = cand_rows[ties], cand_ids[ties]
        exact = torch.einsum("nf,nf->n", hidden[tie_rows], weight[tie_ids].float()) + search_bias[tie_ids]
        top = torch.full((rows,), float("-inf"), device=hidden.device)
        top.scatter_reduce_(0, tie_rows, exact, "amax")
        first = torch.where(exact == top[tie_rows], tie_ids, torch.full_like(tie_ids, vocab))
        tokens.scatter_reduce_(0, tie_rows, first, "amin", include_self=False)
    missing = (tokens == vocab).nonzero().squeeze(-1)
    if missing.numel():  # NaN features: no candidate
        raise ValueError(f"screened_greedy_tokens: rows {missing.tolist()[:10]} have no candidate id (NaN features?)")
    return tokens


def top_k_tokens(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    k: int,
    banned: torch.Tensor | None = None,
    packed: PackedWeight | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` best ids of an output layer, without its `(N, V)` logits or log-softmax: `(N, k)` log-probabilities
    (under the softmax over every id, the banned ones included) and ids, best first, of the ids not in `banned`,
    for `hidden @ weight.T + bias` as in [`greedy_tokens`]. Each vocabulary chunk, in cache, gives its `k` best (only
    for the rows where it can beat the first chunk's `k`-th best) and its sum of exponentials; the `k` best of those
    are the row's. With `packed`, as in [`greedy_tokens`]."""
    rows, vocab = hidden.shape[0], weight.shape[0]
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, {vocab}], got {k}")
    hidden = hidden.to(weight.dtype)
    chunk = max(vocabulary_chunk(rows, vocab, budget=TOP_K_BUDGET), k)
    few = _packed_rows(packed, rows)
    if few or chunk >= vocab:  # a few rows: all their logits at once
        logits = packed(hidden) if few else _logit_block(hidden, weight, bias, 0, vocab)
        excluded = _exclude_(logits, banned)
        values, ids = _top_k(logits, k)
        return values - _log_sum_exp_(logits, excluded), ids
    search_bias = bias if banned is None or banned.numel() == 0 else bias.index_fill(0, banned, float("-inf"))
    values, ids, maxima, sums = [], [], [], []
    threshold = None
    buffer = torch.empty(rows, chunk, device=hidden.device)
    for start in range(0, vocab, chunk):
        stop = min(start + chunk, vocab)
        width = min(k, stop - start)
        block = _logit_block(hidden, weight, search_bias, start, stop, buffer)
        top = block.amax(-1, keepdim=True)
        if threshold is None:
            top_values, top_ids = block.topk(width, dim=-1)
            threshold = top_values[:, -1:]  # the first chunk's k-th best
        else:
            # Only a row whose chunk maximum is above the first chunk's k-th best can take ids from this chunk
            # (rarely: with the vocabulary in frequency order, the first chunk holds the likely words); `topk` runs
            # on those rows.
            hits = (top > threshold).squeeze(-1).nonzero().squeeze(-1)
            top_values = block.new_full((rows, width), float("-inf"))
            top_ids = torch.zeros((rows, width), dtype=torch.long, device=block.device)
            if hits.numel():
                hit_values, hit_ids = block.index_select(0, hits).topk(width, dim=-1)
                top_values.index_copy_(0, hits, hit_values)
                top_ids.index_copy_(0, hits, hit_ids)
        values.append(top_values)
        ids.append(top_ids + start)
        maxima.append(top)
        top = top.masked_fill(top.isinf(), 0.0)
        sums.append(_exp_(block.sub_(top)).sum(-1, keepdim=True))
    values, ids = torch.cat(values, -1), torch.cat(ids, -1)
    maxima, sums = torch.cat(maxima, -1), torch.cat(sums, -1)
    best = maxima.amax(-1, keepdim=True)
    best = best.masked_fill(best.isinf(), 0.0)
    lse = (sums * (maxima - best).exp_()).sum(-1, keepdim=True).log_() + best
    excluded = _excluded_log_sum_exp(hidden, weight, bias, banned)
    if excluded is not None:
        lse = torch.logaddexp(lse, excluded.unsqueeze(-1))
    values, order = values.topk(k, dim=-1)
    return values - lse, ids.gather(-1, order)


def run_lstm(lstm: nn.LSTM, inputs, state: tuple[torch.Tensor, torch.Tensor] | None = None, weight_drop: float = 0.0):
    """`lstm(inputs, state)`, except under CPU autocast, where the recurrence runs in float32: oneDNN's bf16
    LSTM is 1.2-1.5x slower on CPU than its fp32 one, which made a bf16-autocast training step slower than an
    fp32 one; with fp32 LSTMs and bf16 projections it is ~1.25x faster. Elsewhere (fp32, CUDA autocast) this is a
    plain call. With `weight_drop > 0` the recurrent weights get a fresh DropConnect mask (one per call, shared by
    every time step) and the fused LSTM op still runs the whole sequence."""

    def call(x, s):
        if weight_drop == 0.0:
            return lstm(x, s)
        dropped = F.dropout(lstm.weight_hh_l0, weight_drop, training=True)
        return torch.func.functional_call(lstm, {"weight_hh_l0": dropped}, (x, s))

    if torch.is_autocast_enabled("cpu") and lstm.weight_hh_l0.device.type == "cpu":
        with torch.autocast("cpu", enabled=False):
            return call(inputs.float(), None if state is None else tuple(s.float() for s in state))
    return call(inputs, state)


def packed_lstm_gates(lstm: nn.LSTM) -> PackedWeight | None:
    """The gate pre-activations of a single-layer `lstm`'s step as one [`PackedWeight`] over `[inputs, h]`
    (`[W_ih, W_hh]`, `b_ih + b_hh`), for [`lstm_step`]; None where `PackedWeight` does not run."""
    weight = lstm.weight_ih_l0
    if lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size or not lstm.bias:
        return None
    if not PackedWeight.supports(weight):
        return None
    with torch.no_grad():
        return PackedWeight((weight, lstm.weight_hh_l0), lstm.bias_ih_l0 + lstm.bias_hh_l0)


def lstm_step(
    lstm: nn.LSTM,
    inputs: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    packed_gates: PackedWeight | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a single-layer `lstm` on `(B, D)` inputs from the `(B, H)` state `(h, c)`; returns the new
    `(h, c)`. With `packed_gates` ([`packed_lstm_gates`] of `lstm`), a step of `PACKED_MIN_ROWS` to
    `PACKED_MAX_ROWS` rows takes its gates from it (the products summed in another order: the states agree with the
    cell op's to float32 rounding)."""
    rows = inputs.shape[0]
    autocast = torch.is_autocast_enabled(inputs.device.type)
    if packed_gates is not None and PACKED_MIN_ROWS <= rows <= PACKED_MAX_ROWS and not autocast:
        gates = packed_gates(torch.cat([inputs, h], 1))
        in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, 1)  # nn.LSTM's order
        c = torch.sigmoid(forget_gate).mul_(c).add_(torch.sigmoid(in_gate).mul_(torch.tanh(cell_gate)))
        return torch.sigmoid(out_gate).mul_(torch.tanh(c)), c
    if rows <= CELL_MAX_BATCH and not autocast:
        # A single step of a small batch: the LSTM cell op is ~5x faster than nn.LSTM's (oneDNN) call.
        return torch.lstm_cell(inputs, (h, c), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    # Rows padded to a multiple of CELL_MAX_BATCH: oneDNN caches a kernel (with its buffers) per batch size, and the
    # searches drop finished rows, so unpadded batches would fill that cache (+400 MB RSS over 100k greedy
    # sentences). Rows do not interact; the padding rows are dropped.
    pad = (-rows) % CELL_MAX_BATCH
    if pad:
        inputs = torch.cat([inputs, inputs.new_zeros(pad, inputs.shape[1])])
        h, c = (torch.cat([s, s.new_zeros(pad, s.shape[1])]) for s in (h, c))
    _, (h, c) = run_lstm(lstm, inputs.unsqueeze(1), (h.unsqueeze(0), c.unsqueeze(0)))
    return h[0, :rows], c[0, :rows]


class WordGateLSTM:
    """Decoding steps of a single-layer `lstm` whose input at each step is the embedding of the word just read
    (`embedding`, `(V, E)`), optionally followed by a per-row code (`latent_size` features): the input-side gate
    pre-activations of a word, `W_ih[:, :E] e_w + b_ih + b_hh`, are computed the first time the word is read and
    looked up afterwards, so a step multiplies only the recurrent weight (and the code's `W_ih[:, E:]`, if any).

    This is the arithmetic of [`lstm_step`] with the products summed in another order, so the states agree with it
    to float32 rounding, not bit for bit. It pays where rows read words read before (many rows, or many steps): at
    the peer's sizes (E 300, H 256) the input side is half of a step's products. One instance serves one search (it
    keeps the words read so far: one `(4H,)` row per distinct word); it holds detached copies, for inference only."""

    def __init__(self, lstm: nn.LSTM, embedding: torch.Tensor, latent_size: int = 0):
        if lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size or not lstm.bias:
            raise ValueError("WordGateLSTM needs a single-layer, unidirectional LSTM with biases and no projection")
        width = embedding.shape[-1]
        if lstm.input_size != width + latent_size:
            raise ValueError(
                f"WordGateLSTM: the LSTM reads {lstm.input_size} features, not embedding {width} + latent {latent_size}"
            )
        size = lstm.hidden_size
        # Gates reordered (i, f, g, o) -> (i, f, o, g): one sigmoid over the first 3H columns, one tanh over the last H.
        index = torch.arange(4 * size, device=lstm.weight_ih_l0.device)
        order = torch.cat([index[: 2 * size], index[3 * size :], index[2 * size : 3 * size]])
        weight_ih = lstm.weight_ih_l0.detach()[order]
        self.hidden_size = size
        self._word_weight = weight_ih[:, :width]
        self._latent_weight = weight_ih[:, width:].t() if latent_size else None
        self._recurrent_weight = lstm.weight_hh_l0.detach()[order].t()
        self._bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()[order]
        self._embedding = embedding.detach()
        self._slot = torch.full((embedding.shape[0],), -1, dtype=torch.long, device=embedding.device)
        self._gates = weight_ih.new_empty(0, 4 * size)
        self._filled = 0

    @property
    def words_read(self) -> int:
        """How many distinct words have their gate pre-activations stored."""
        return self._filled

    def _slots(self, tokens: torch.Tensor) -> torch.Tensor:
        """The rows of the stored pre-activations for `tokens`, computing those of words not read before."""
        slots = self._slot[tokens]
        unseen = slots < 0
        if bool(unseen.any()):
            words = tokens[unseen].unique()
            start, stop = self._filled, self._filled + words.numel()
            if stop > self._gates.shape[0]:  # grow by doubling: a search reads a few thousand distinct words
                grown = self._gates.new_empty(max(2 * self._gates.shape[0], stop, 256), self._gates.shape[1])
                grown[:start] = self._gates[:start]
                self._gates = grown
            torch.addmm(
                self._bias,
                self._embedding[words].to(self._gates.dtype),
                self._word_weight.t(),
                out=self._gates[start:stop],
            )
            self._slot[words] = torch.arange(start, stop, device=tokens.device)
            self._filled = stop
            slots = self._slot[tokens]
        return slots

    def __call__(
        self, tokens: torch.Tensor, h: torch.Tensor, c: torch.Tensor, latent: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The new `(h, c)`, each `(N, H)`, after reading `tokens` `(N,)` (with the `(N, Z)` `latent` appended to
        their embeddings when the LSTM reads one) from the state `(h, c)`."""
        if (latent is None) != (self._latent_weight is None):
            raise ValueError("WordGateLSTM: pass latent exactly when the LSTM reads a code after each word")
        slots = self._slots(tokens)  # may grow the store: read it after
        gates = self._gates.index_select(0, slots)
        if latent is not None:
            gates.addmm_(latent.to(gates.dtype), self._latent_weight)
        gates.addmm_(h, self._recurrent_weight)
        size = self.hidden_size
        gates[:, : 3 * size].sigmoid_()
        gates[:, 3 * size :].tanh_()
        c = torch.addcmul(gates[:, size : 2 * size] * c, gates[:, :size], gates[:, 3 * size :])
        return gates[:, 2 * size : 3 * size] * c.tanh(), c


__all__ = [
    "BF16_ROW_BUCKET",
    "CELL_MAX_BATCH",
    "OutputLayerNLL",
    "PACKED_MAX_ROWS",
    "PACKED_MIN_ROWS",
    "PackedWeight",
    "WORD_GATES_MIN_ROWS",
    "WordGateLSTM",
    "lstm_step",
    "packed_lstm_gates",
    "output_layer_nll",
    "greedy_tokens",
    "run_lstm",
    "screened_greedy_tokens",
    "exporting",
    "finite_bias_bound",
    "screening_bound",
    "top_k_tokens",
    "native_bfloat16_cpu",
    "vocabulary_chunk",
]
