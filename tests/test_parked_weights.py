"""Parking a module's weights in a file and mapping them back (openhart/utils/parked_weights.py)."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from openhart.utils.parked_weights import ParkedWeights


class TiedModel(nn.Module):
    """An embedding tied to the output layer, a plain linear and a buffer: every kind of slot."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embed = nn.Embedding(50, 16)
        self.hidden = nn.Linear(16, 16)
        self.out = nn.Linear(16, 50, bias=False)
        self.out.weight = self.embed.weight
        for parameter in self.parameters():
            parameter.data = torch.randn(parameter.shape, generator=generator)
        self.register_buffer("scale", torch.tensor([0.5, 2.0]), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.embed(ids)) * self.scale[0]))


def test_park_and_restore_gives_the_same_module_back(tmp_path):
    model = TiedModel()
    ids = torch.arange(10)
    before = model(ids)
    parked = ParkedWeights(tmp_path)
    parked.park(model)
    assert all(p.is_meta for p in model.parameters()) and model.scale.is_meta
    parked.restore("cpu")
    assert torch.equal(model(ids), before)
    assert model.out.weight is model.embed.weight  # still tied, stored once
    assert all(not p.requires_grad for p in model.parameters())
    # A second park reuses the file; a discard makes the next one write the new weights.
    written = parked.path.stat().st_mtime_ns
    parked.park(model)
    parked.restore()
    assert parked.path.stat().st_mtime_ns == written
    with torch.no_grad():
        model.hidden.bias += 1.0
    parked.discard()
    parked.park(model)
    parked.restore()
    assert not torch.equal(model(ids), before)


def test_a_failed_write_leaves_the_module_untouched(tmp_path):
    model = TiedModel()
    parked = ParkedWeights(tmp_path)
    shutil.rmtree(parked.path.parent)  # the folder vanished: the write fails with an OSError
    with pytest.raises(OSError):
        parked.park(model)
    assert not any(p.is_meta for p in model.parameters())
    assert not parked.written
    with pytest.raises(RuntimeError, match="nothing is parked"):
        parked.restore()


def test_int8_weights_come_back_as_int8(tmp_path):
    pytest.importorskip("torchao", reason="int8 weights need torchao (pip install 'openhart[quantize]')")
    from openhart.quantization import quantize_linears_int8, weight_bytes

    model = TiedModel()
    quantize_linears_int8(model.hidden)
    ids = torch.arange(10)
    before, resident = model(ids), weight_bytes(model)
    parked = ParkedWeights(tmp_path)
    parked.park(model)
    parked.restore()
    assert hasattr(model.hidden.weight, "__tensor_flatten__")
    assert weight_bytes(model) == resident
    assert torch.equal(model(ids), before)
