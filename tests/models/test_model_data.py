"""Dataset adapters: images from memory maps, sets by index arrays (padded when sizes differ), events."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.errors import ConfigError
from kernels.image_store import image_file, open_images, write_manifest
from models.data import EventDataset, ImageDataset, SetDataset, collate_sets, image_dataset, join_mixed_indices
from models.deepsets import DeepSets
from models.training import TrainConfig, evaluate_loss, train


def test_image_dataset_reads_a_memory_mapped_image_file(tmp_path):
    with image_file(tmp_path, "train", 0, n_images=3, bins=4) as arr:
        arr[:] = np.arange(3, dtype=np.float32)[:, None, None, None, None]
    write_manifest(tmp_path, {"format": "wcscan-images/1", "bins": 4, "dtype": "float32", "image_shape": [2, 4, 4, 4],
                              "points": [{"index": 0, "splits": {"train": {"path": "split=train/point=000.npy",
                                                                           "images": 3}}}]})
    mm = open_images(tmp_path, "train", 0)
    ds = ImageDataset(mm, [0.5, 0.6, 0.7])
    img, label = ds[2]
    assert len(ds) == 3 and img.shape == (2, 4, 4, 4) and img.dtype == torch.float32
    assert float(img.mean()) == 2.0 and label.item() == pytest.approx(0.7)


def test_image_dataset_joins_points_with_one_label_each():
    a, b = np.zeros((2, 2, 3, 3, 3), np.float32), np.ones((3, 2, 3, 3, 3), np.float32)
    ds = image_dataset([a, b], [-1.0, 0.5])
    assert len(ds) == 5
    assert [ds[i][1].item() for i in range(5)] == [-1.0, -1.0, 0.5, 0.5, 0.5]
    assert float(ds[4][0].mean()) == 1.0


def test_image_dataset_refuses_mismatched_labels():
    with pytest.raises(ConfigError, match="2 images but 3 labels"):
        ImageDataset(np.zeros((2, 2, 3, 3, 3), np.float32), [0.0, 1.0, 2.0])


def test_set_dataset_draws_sets_by_index_from_each_pool():
    p0 = np.arange(20, dtype=np.float32).reshape(5, 4)
    p1 = 100 + np.arange(40, dtype=np.float32).reshape(10, 4)
    ds = SetDataset([p0, p1], [-1.0, 1.0], [np.array([[0, 1], [4, 4]]), np.array([[9, 0], [1, 2], [3, 4]])])
    assert len(ds) == 5
    x, y = ds[3]
    assert x.tolist() == [p1[1].tolist(), p1[2].tolist()] and y.item() == 1.0
    x, y = ds[1]
    assert x.tolist() == [p0[4].tolist()] * 2 and y.item() == -1.0
    with pytest.raises(IndexError):
        ds[5]


def test_set_dataset_refuses_indices_outside_the_pool():
    with pytest.raises(ConfigError, match=r"lie in \[0, 4\]"):
        SetDataset([np.zeros((5, 4), np.float32)], [0.0], [np.array([[0, 5]])])


def test_collate_stacks_equal_sets_and_pads_unequal_ones_with_a_mask():
    a, b = torch.ones(3, 4), 2 * torch.ones(5, 4)
    x, y = collate_sets([(a, torch.tensor(0.0)), (a, torch.tensor(1.0))])
    assert x.shape == (2, 3, 4) and y.tolist() == [0.0, 1.0]
    x, mask, y = collate_sets([(a, torch.tensor(0.0)), (b, torch.tensor(1.0))])
    assert x.shape == (2, 5, 4) and mask.sum(1).tolist() == [3, 5] and torch.all(x[0, 3:] == 0)


def test_deep_sets_trains_on_sets_of_mixed_sizes(toy_events):
    rng = np.random.default_rng(0)
    pools = [toy_events(y, 500, rng) for y in (-1.0, 0.0, 1.0)]
    idx = [rng.integers(0, 500, (8, n)) for n in (10, 20, 30)]  # a different set size per point
    ds = SetDataset(pools, [-1.0, 0.0, 1.0], idx)
    torch.manual_seed(0)
    net = DeepSets(hidden=8, latent=4, phi_layers=1, rho_layers=1)
    cfg = TrainConfig(lr=1e-2, batch_size=6, epochs=2, loss="mse", patience=0)
    hist = train(net, ds, ds, cfg)
    assert len(hist["train_loss"]) == 2 and np.isfinite(hist["val_loss"]).all()
    assert evaluate_loss(net, ds, cfg) == pytest.approx(hist["val_loss"][hist["best_epoch"]], rel=1e-5)


def test_event_dataset_labels_each_pool_with_its_class():
    ds = EventDataset.from_pools([np.zeros((2, 4)), np.ones((3, 4))], [0, 2])
    assert len(ds) == 5 and ds.classes.tolist() == [0, 0, 2, 2, 2]
    x, c = ds[4]
    assert x.dtype == torch.float32 and x.tolist() == [1.0] * 4 and c.item() == 2


def test_event_dataset_refuses_a_sampler_array_that_was_not_transposed():
    with pytest.raises(ConfigError, match="transpose"):
        EventDataset(np.zeros((4, 10), np.float32), np.zeros(4, np.int64))  # (4, n): needs .T


def test_pad_entries_are_dropped_from_their_set():
    pool = np.arange(20, dtype=np.float32).reshape(5, 4)
    ds = SetDataset([pool], [0.0], [np.array([[0, -1, 2, -1], [1, 2, 3, 4]])])
    assert ds[0][0].tolist() == [pool[0].tolist(), pool[2].tolist()]
    assert ds[1][0].shape == (4, 4)


def test_signal_and_background_sets_from_kernels_bootstrap():
    from kernels.bootstrap import mixed_set_indices

    signal = np.zeros((60, 4), np.float32)
    background = np.ones((40, 4), np.float32)
    mixed = mixed_set_indices(60, 40, 10, 4, 0.3, seed=1, replace=False, fixed_fraction=False)
    idx = join_mixed_indices(mixed.sig_idx, mixed.bkg_idx, n_signal=60)
    ds = SetDataset([np.concatenate([signal, background])], [0.5], [idx])
    for s in range(4):
        x, _ = ds[s]
        assert x.shape == (10, 4)  # every set keeps its size; padding is gone
        assert int(x[:, 0].sum()) == mixed.n_background[s]  # background events are the ones
