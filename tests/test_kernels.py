"""The model's CPU fast paths (`hf_sentence_vae.kernels`) compute what their plain PyTorch counterparts compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_weight_drop_masks_the_recurrent_weights_once_per_sequence():
    from hf_sentence_vae.kernels import run_lstm

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 6, batch_first=True)
    inputs, state = torch.randn(3, 7, 5), (torch.randn(1, 3, 6), torch.randn(1, 3, 6))
    undropped = lstm(inputs, state)[0].detach()
    torch.manual_seed(1)
    outputs, (h, c) = run_lstm(lstm, inputs, state, weight_drop=0.4)
    torch.manual_seed(1)
    mask = F.dropout(torch.ones_like(lstm.weight_hh_l0), 0.4, training=True)  # the same draw
    assert 0 < int((mask == 0).sum()) < mask.numel()
    reference = torch.nn.LSTM(5, 6, batch_first=True)
    reference.load_state_dict({**lstm.state_dict(), "weight_hh_l0": lstm.weight_hh_l0.detach() * mask})
    expected, (h_ref, c_ref) = reference(inputs, state)
    torch.testing.assert_close(outputs, expected)
    torch.testing.assert_close((h, c), (h_ref, c_ref))
    # the module keeps its own weights: a plain call afterwards (evaluation) runs undropped
    assert isinstance(lstm.weight_hh_l0, torch.nn.Parameter)
    torch.testing.assert_close(lstm(inputs, state)[0], undropped, rtol=0, atol=0)
    assert not torch.allclose(outputs, undropped)
    # gradients reach the parameter through the mask
    outputs.sum().backward()
    grad = lstm.weight_hh_l0.grad
    assert torch.all(grad[mask == 0] == 0) and bool(grad[mask != 0].abs().sum() > 0)
