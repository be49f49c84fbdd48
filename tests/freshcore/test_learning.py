"""The layers learn: a real hand-written digit set (scikit-learn's bundled 8x8 digits)."""

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import freshcore as fc

SPEC = {
    "name": "digits-cnn",
    "input_shape": [1, 8, 8],
    "num_classes": 10,
    "layers": [
        {"type": "conv", "out_channels": 16, "kernel_size": 3, "padding": 1}, {"type": "relu"},
        {"type": "pool", "kernel_size": 2},
        {"type": "conv", "out_channels": 32, "kernel_size": 3, "padding": 1}, {"type": "relu"},
        {"type": "fc", "out_features": 64}, {"type": "relu"},
        {"type": "fc", "out_features": 10},
    ],
}  # fmt: skip


@pytest.mark.parametrize("method", ["freshnets", "hashednets", "lowfreq", "lrd"])
def test_trains_far_above_chance_on_real_digits(method):
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    model = fc.build_model(SPEC, method, 1 / 8, seed=0)
    model.set_normalization(x_train.mean(dim=(0, 2, 3)), x_train.std(dim=(0, 2, 3)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        model.train()
        for idx in torch.randperm(len(y_train), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    model.materialize()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.85, accuracy  # chance is 0.10
    again = fc.from_bytes(fc.to_bytes(model))
    with torch.no_grad():
        assert torch.equal(again(x_test), model(x_test))
