"""The invariance that holds for the networks: on one machine with one install, the same seed trains the same
bytes. (Across CPUs it need not: torch's kernels differ between processors; the README says by how much.)"""

from __future__ import annotations

import io

import numpy as np


def _train_deepsets_bytes(seed: int) -> tuple[bytes, bytes]:
    """Deep Sets trained as ``wcscan run`` trains it (seed_everything, then train): (weights, predictions)."""
    import torch

    from models.deepsets import DeepSets
    from models.splits import deepsets_data
    from models.training import TrainConfig, seed_everything, train

    rng = np.random.default_rng(0)
    grid = [-1.0, 0.0, 1.0]
    pools = [rng.uniform(-1, 1, size=(600, 4)).astype(np.float32) + 0.1 * d for d in grid]
    seed_everything(seed)
    train_set, val_set, sample = deepsets_data(pools, grid, 50, 6, seed)
    net = DeepSets(hidden=8, phi_layers=1, latent=8, rho_layers=1)
    net.fit_features(sample)
    train(net, train_set, val_set, TrainConfig(epochs=2, batch_size=4, seed=seed, device="cpu"))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    with torch.no_grad():
        x = torch.as_tensor(np.stack([p[:50] for p in pools]))
        pred = net(x).detach().numpy().tobytes()
    return buf.getvalue(), pred


def test_the_same_seed_trains_the_same_bytes_on_one_machine():
    assert _train_deepsets_bytes(3) == _train_deepsets_bytes(3)


def test_another_seed_trains_other_weights():
    assert _train_deepsets_bytes(3)[0] != _train_deepsets_bytes(4)[0]
