"""CPU fast paths of the sentence VAE: the output layer fused with its loss, and the LSTM calls.

Each function computes what its plain PyTorch counterpart computes (the tests hold them to it); they differ in
speed and memory on CPU, where this model is mostly trained (BENCHMARKS.md, "Speed"):

- [`output_layer_nll`]: `-log softmax(hidden @ weight.T + bias)[target]` as one autograd node;
- [`run_lstm`]: `lstm(inputs, state)`, in float32 under CPU autocast, with optional DropConnect on the recurrent
  weights;
- [`lstm_step`]: one decoding step of an LSTM, through the LSTM cell op for small batches.

Only `torch` is imported, so this module travels with the model's remote code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Decoding steps of at most this many rows use the LSTM cell op instead of nn.LSTM (faster for small batches).
CELL_MAX_BATCH = 64
# Under CPU bf16 autocast the output layer pads its rows to a multiple of this: oneDNN builds a bf16 GEMM kernel
# per new shape (~4 ms), and the number of target tokens differs almost every batch.
BF16_ROW_BUCKET = 128


class OutputLayerNLL(torch.autograd.Function):
    """Per-token -log softmax(hidden @ weight.T + bias)[target]: the output layer and its loss in one node.

    Against `F.linear` followed by a cross-entropy, it keeps one `(N, V)` buffer instead of two (the log-softmax
    is written over the logits, and the backward turns it into the logits' gradient in place), and it gets the
    bias gradient from the weight-gradient product (one column of ones more) instead of a separate pass over
    `(N, V)`: 10-14% more tokens per second in PTB training. Under autocast the products run in the autocast dtype
    (on CPU with the rows padded to a multiple of `BF16_ROW_BUCKET`), the log-softmax in float32. The graph
    through this node can be differentiated once."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        rows = hidden.shape[0]
        with torch.autocast(device, enabled=False):
            hidden_c, weight_c = hidden.to(dtype), weight.to(dtype)
            pad = (-rows) % BF16_ROW_BUCKET if device == "cpu" and dtype != torch.float32 else 0
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
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype)
        ctx.rows = rows
        return nll[:rows]

    @staticmethod
    def backward(ctx, grad):
        hidden_c, weight_c, log_probs, targets = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        grad = grad.to(log_probs.dtype)
        if log_probs.shape[0] > ctx.rows:
            grad = torch.cat([grad, grad.new_zeros(log_probs.shape[0] - ctx.rows)])
        grad = grad.unsqueeze(-1)
        grad_logits = log_probs.exp_().mul_(grad)  # softmax * grad - onehot * grad, in the saved buffer
        grad_logits.scatter_add_(-1, targets.unsqueeze(-1), -grad)
        grad_logits = grad_logits.to(hidden_c.dtype)
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = torch.mm(grad_logits, weight_c)[: ctx.rows].to(hidden_dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            ones = hidden_c.new_ones(hidden_c.shape[0], 1)
            both = torch.mm(grad_logits.t(), torch.cat([hidden_c, ones], dim=1))
            grad_weight = both[:, :-1].to(weight_dtype).contiguous()
            grad_bias = both[:, -1].to(bias_dtype).contiguous()
        return grad_hidden, grad_weight, grad_bias, None


def output_layer_nll(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """`(N,)` negative log-likelihoods of `targets` `(N,)` under the logits `hidden @ weight.T + bias`
    (`hidden` `(N, F)`, `weight` `(V, F)`, `bias` `(V,)`), computed by [`OutputLayerNLL`]."""
    return OutputLayerNLL.apply(hidden, weight, bias, targets)


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


def lstm_step(
    lstm: nn.LSTM, inputs: torch.Tensor, h: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a single-layer `lstm` on `(B, D)` inputs from the `(B, H)` state `(h, c)`; returns the new
    `(h, c)`."""
    if inputs.shape[0] <= CELL_MAX_BATCH and not torch.is_autocast_enabled(inputs.device.type):
        # A single step of a small batch: the LSTM cell op is ~5x faster than nn.LSTM's (oneDNN) call.
        return torch.lstm_cell(inputs, (h, c), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    # Rows padded to a multiple of CELL_MAX_BATCH: oneDNN caches a kernel (with its buffers) per batch size, and the
    # searches drop finished rows, so unpadded batches would fill that cache (+400 MB RSS over 100k greedy
    # sentences). Rows do not interact; the padding rows are dropped.
    rows = inputs.shape[0]
    pad = (-rows) % CELL_MAX_BATCH
    if pad:
        inputs = torch.cat([inputs, inputs.new_zeros(pad, inputs.shape[1])])
        h, c = (torch.cat([s, s.new_zeros(pad, s.shape[1])]) for s in (h, c))
    _, (h, c) = run_lstm(lstm, inputs.unsqueeze(1), (h.unsqueeze(0), c.unsqueeze(0)))
    return h[0, :rows], c[0, :rows]


__all__ = ["BF16_ROW_BUCKET", "CELL_MAX_BATCH", "OutputLayerNLL", "lstm_step", "output_layer_nll", "run_lstm"]
