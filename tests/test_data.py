"""Datasets, device loaders and the on-device augmentation: small, CPU, deterministic."""
import numpy as np
import pytest
import torch
from PIL import Image

from esam.config import DataConfig
from esam.data import DATASETS, DeviceLoader, build_data, channel_stats, imagefolder
from esam.data.augment import Augmentation, AugmentParams, crop_flip, cutout_
from esam.data.loaders import Normalize
from esam.errors import ConfigError, DataError

CPU = torch.device("cpu")
PLAIN = {"augment": False}


def build(batch_size=64, eval_batch_size=100, seed=0, **cfg):
    return build_data(DataConfig(**cfg), CPU, seed, batch_size, eval_batch_size)


def collect(loader, epoch=0):
    xs, ys = zip(*loader.epoch(epoch))
    return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------------------------------- digits

def test_digits_sizes_and_classes():
    data = build(name="digits", **PLAIN)
    assert (data.train_size, data.test_size) == (1437, 360)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, (8, 8))
    assert data.steps_per_epoch == 1437 // 64 == len(data.train)
    x, y = next(iter(data.train.epoch(0)))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    _, y_test = collect(data.test)
    assert torch.bincount(y_test, minlength=10).min() >= 35  # stratified: every digit about 36 times


def test_digits_split_is_fixed_and_independent_of_the_run_seed():
    a, b = build(name="digits", seed=0, **PLAIN), build(name="digits", seed=5, **PLAIN)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.train.labels, b.train.labels)
    assert a.train.images.dtype == torch.uint8 and int(a.train.images.max()) == 255


# ------------------------------------------------------------------------------- loader contract

def test_train_batches_are_full_and_test_keeps_everything_in_order():
    data = build(name="synthetic", synthetic_size=1000, batch_size=300, eval_batch_size=100, **PLAIN)
    sizes = [len(x) for x, _ in data.train.epoch(0)]
    assert sizes == [300, 300, 300] and data.steps_per_epoch == 3
    _, y = collect(data.test)
    assert [len(b) for b, _ in data.test.epoch(0)] == [100, 100, 50]
    assert torch.equal(y, data.test.labels)  # in order


def test_last_test_batch_partial():
    data = build(name="digits", eval_batch_size=100, **PLAIN)
    assert [len(x) for x, _ in data.test.epoch(0)] == [100, 100, 100, 60]


def test_shuffle_differs_per_epoch_and_repeats_per_seed():
    kw = {"name": "synthetic", "synthetic_size": 512, "batch_size": 64}
    a0, a1 = collect(build(**kw).train, 0), collect(build(**kw).train, 1)
    again = collect(build(**kw).train, 0)
    other_seed = collect(build(seed=1, **kw).train, 0)
    assert torch.equal(a0[0], again[0]) and torch.equal(a0[1], again[1])
    assert not torch.equal(a0[1], a1[1])
    assert not torch.equal(a0[1], other_seed[1])


def test_an_epoch_is_a_permutation():
    data = build(name="synthetic", synthetic_size=512, batch_size=64, **PLAIN)
    x, _ = collect(data.train, 3)
    ref = data.train.normalize(data.train.images)
    assert torch.equal(x.flatten(1).sum(1).sort().values, ref.flatten(1).sum(1).sort().values)


def test_normalization_uses_training_statistics():
    data = build(name="synthetic", synthetic_size=2048, **PLAIN)
    x, _ = collect(data.train)
    assert x.mean().abs() < 0.02 and (x.std() - 1).abs() < 0.02


def test_channel_stats_are_exact():
    images = torch.randint(0, 256, (50, 3, 5, 7), dtype=torch.uint8)
    mean, std = channel_stats(images)
    f = images.double() / 255
    assert np.allclose(mean, f.mean((0, 2, 3)).numpy()) and np.allclose(std, f.std((0, 2, 3), unbiased=False).numpy())


def test_limits_take_the_first_samples():
    full = build(name="digits", **PLAIN)
    data = build(name="digits", train_limit=200, test_limit=50, **PLAIN)
    assert (data.train_size, data.test_size, data.steps_per_epoch) == (200, 50, 3)
    assert torch.equal(data.test.images, full.test.images[:50])


def test_synthetic_shapes():
    data = build(name="synthetic", synthetic_size=256, synthetic_shape=(3, 16, 24), synthetic_classes=7, batch_size=32)
    assert (data.train_size, data.test_size, data.num_classes) == (256, 64, 7)
    assert (data.in_channels, data.image_size) == (3, (16, 24))
    x, y = next(iter(data.train.epoch(0)))
    assert x.shape == (32, 3, 16, 24) and int(y.max()) < 7


def test_batch_larger_than_the_training_set():
    with pytest.raises(DataError, match="^batch_size 4096 is larger than the 1437 training samples of digits$"):
        build(name="digits", batch_size=4096)


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ConfigError) as err:
        build(name="mnist")
    assert "mnist" in str(err.value) and all(name in str(err.value) for name in DATASETS)


def test_missing_cifar_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as err:
        build(name="cifar10", root=str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "cifar-10-batches-py" in message and str(tmp_path) in message and "data.download: true" in message
    with pytest.raises(DataError, match="cifar-100-python"):
        build(name="cifar100", root=str(tmp_path))


# ---------------------------------------------------------------------------------- augmentation

def params(n, shift=(4, 4), flip=False, cut=False, centre=(0, 0)) -> AugmentParams:
    full = lambda v, dtype=torch.long: torch.full((n,), v, dtype=dtype)
    return AugmentParams(full(shift[0]), full(shift[1]), full(flip, torch.bool), full(cut, torch.bool),
                         full(centre[0]), full(centre[1]))


@pytest.fixture
def images():
    return torch.randint(1, 256, (3, 2, 10, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_centred_crop_is_the_identity(images):
    assert torch.equal(crop_flip(images, params(3), padding=4), images)


def test_crop_shifts_and_pads_with_zeros(images):
    out = crop_flip(images, params(3, shift=(0, 1)), padding=4)  # window 4 px up, 3 px left
    assert out.shape == images.shape
    assert torch.equal(out[:, :, 4:, 3:], images[:, :, :-4, :-3])
    assert (out[:, :, :4] == 0).all() and (out[:, :, :, :3] == 0).all()


def test_flip_mirrors(images):
    assert torch.equal(crop_flip(images, params(3, flip=True), padding=4), images.flip(-1))
    assert torch.equal(crop_flip(images, params(3, shift=(0, 0), flip=True), padding=0), images.flip(-1))


def test_cutout_zeroes_a_square_clipped_at_the_border():
    x = torch.ones(2, 3, 20, 20)
    cutout_(x, params(2, cut=True, centre=(10, 10)), size=8)
    assert (x[:, :, 6:14, 6:14] == 0).all() and x.sum() == 2 * 3 * (400 - 64)
    y = torch.ones(1, 3, 20, 20)
    cutout_(y, params(1, cut=True, centre=(1, 18)), size=8)  # rows [-3, 5), cols [14, 22): clipped to 5x6
    assert (y[:, :, :5, 14:] == 0).all() and y.sum() == 3 * (400 - 30)
    z = torch.ones(1, 1, 20, 20)
    cutout_(z, params(1, cut=False, centre=(10, 10)), size=8)
    assert (z == 1).all()


def test_sampling_is_deterministic_and_in_range():
    aug = Augmentation(crop_padding=4, flip=True, cutout=16, cutout_prob=0.5)
    a = aug.sample(4000, 32, 32, torch.Generator().manual_seed(3))
    b = aug.sample(4000, 32, 32, torch.Generator().manual_seed(3))
    assert all(torch.equal(s, t) for s, t in zip(a._tensors(), b._tensors()))
    assert int(a.shift_y.min()) == 0 and int(a.shift_y.max()) == 8
    assert 0.45 < a.flip.float().mean() < 0.55 and 0.45 < a.cut.float().mean() < 0.55
    off = Augmentation(crop_padding=0, flip=False, cutout=0).sample(100, 32, 32, torch.Generator())
    assert not off.flip.any() and not off.cut.any() and not off.shift_x.any()


def augmented(seed=0, **aug):
    cfg = {"name": "synthetic", "synthetic_size": 256, "batch_size": 64, "crop_padding": 0, "flip": False, "cutout": 0}
    cfg.update(aug)
    return build(seed=seed, **cfg)


def test_labels_and_order_untouched_by_augmentation():
    plain = collect(build(name="synthetic", synthetic_size=256, batch_size=64, **PLAIN).train, 2)
    aug = collect(augmented(crop_padding=4, flip=True, cutout=16).train, 2)
    assert torch.equal(plain[1], aug[1])
    assert not torch.equal(plain[0], aug[0])


def test_flip_through_the_loader():
    plain, _ = collect(build(name="synthetic", synthetic_size=256, batch_size=64, **PLAIN).train)
    flipped, _ = collect(augmented(flip=True).train)
    same = (flipped == plain).flatten(1).all(1)
    mirrored = (flipped == plain.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and 0.3 < mirrored.float().mean() < 0.7


def test_cutout_through_the_loader_fills_the_mean():
    x, _ = collect(augmented(cutout=8, cutout_prob=1.0).train)
    zeros = (x == 0).all(1).flatten(1).sum(1)  # pixels zero in every channel: the cut square
    assert zeros.min() >= 16 and zeros.max() <= 64  # at least a quarter of the square (corner), at most all


def test_augmentation_repeats_per_seed_and_epoch():
    kw = {"crop_padding": 4, "flip": True, "cutout": 16}
    a, b, c = augmented(**kw), augmented(**kw), augmented(seed=1, **kw)
    assert torch.equal(collect(a.train, 1)[0], collect(b.train, 1)[0])
    assert not torch.equal(collect(a.train, 1)[0], collect(a.train, 2)[0])
    assert not torch.equal(collect(a.train, 1)[0], collect(c.train, 1)[0])


def test_result_does_not_depend_on_the_chunk_size():
    data = augmented(crop_padding=4, flip=True, cutout=16)
    whole = collect(data.train, 0)
    data.train.chunk = 64  # one batch per chunk
    assert all(torch.equal(a, b) for a, b in zip(whole, collect(data.train, 0)))


def test_device_loader_rejects_float_images():
    with pytest.raises(ValueError):
        DeviceLoader(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long), 2,
                     Normalize((0.5,), (0.5,), CPU), train=True)


# ----------------------------------------------------------------------------------- imagefolder

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def write_tree(root, counts=(("train", 4), ("test", 2)), size=(12, 10), test_name=None):
    """Three classes of uniformly coloured images, PNG and JPEG mixed."""
    for split, n in counts:
        for k, colour in enumerate(COLOURS):
            folder = root / (test_name if split == "test" and test_name else split) / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                ext = "png" if i % 2 else "jpg"
                Image.new("RGB", size, colour).save(folder / f"{i}.{ext}")
    return root


def folder_cfg(root, cache, **kw):
    return dict(name="imagefolder", root=str(root), cache_dir=str(cache), **PLAIN, **kw)


def test_imagefolder_classes_counts_and_cache(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "tree")
    data = build(batch_size=4, **folder_cfg(root, tmp_path / "cache"))
    assert (data.train_size, data.test_size, data.num_classes) == (12, 6, 3)
    assert (data.in_channels, data.image_size) == (3, (10, 12))
    images, labels = data.train.images, data.train.labels
    assert torch.equal(labels, images[:, :, 5, 5].argmax(1))  # class k is coloured in channel k
    assert torch.bincount(labels).tolist() == [4, 4, 4]
    assert len(list((tmp_path / "cache").glob("imagefolder-tree-native-*.pt"))) == 1

    def no_decoding(*args, **kw):
        raise AssertionError("decoded again instead of using the cache")
    monkeypatch.setattr(imagefolder, "decode_images", no_decoding)
    again = build(batch_size=4, **folder_cfg(root, tmp_path / "cache"))
    assert torch.equal(again.train.images, images) and torch.equal(again.test.labels, data.test.labels)


def test_imagefolder_cache_is_rebuilt_when_a_file_changes(tmp_path):
    root = write_tree(tmp_path / "tree")
    build(batch_size=4, **folder_cfg(root, tmp_path / "cache"))
    Image.new("RGB", (12, 10), (0, 0, 0)).save(root / "train" / "class0" / "0.jpg")
    build(batch_size=4, **folder_cfg(root, tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_imagefolder_val_folder_and_resize(tmp_path):
    root = write_tree(tmp_path / "tree", test_name="val")
    data = build(batch_size=4, **folder_cfg(root, tmp_path / "cache", image_size=8))
    assert data.image_size == (8, 8) and data.test_size == 6


def test_imagefolder_corrupt_file_is_named(tmp_path):
    root = write_tree(tmp_path / "tree")
    bad = root / "train" / "class1" / "2.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=f"corrupt image file {bad}"):
        build(batch_size=4, **folder_cfg(root, tmp_path / "cache"))


def test_imagefolder_truncated_file_is_named_by_a_worker_process(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "tree", counts=(("train", 6), ("test", 1)))
    bad = root / "train" / "class2" / "5.png"
    bad.write_bytes(bad.read_bytes()[:40])
    monkeypatch.setattr(imagefolder, "PARALLEL_MIN_FILES", 0)
    monkeypatch.setattr(imagefolder, "cpu_count", lambda: 2)
    with pytest.raises(DataError, match=f"corrupt image file {bad}"):
        build(batch_size=4, **folder_cfg(root, tmp_path / "cache"))


def test_imagefolder_parallel_decoding_matches_serial(tmp_path):
    root = write_tree(tmp_path / "tree")
    files = sorted(str(p) for p in root.rglob("*.*"))
    serial = imagefolder.decode_images(files, (10, 12), resize=False, workers=1)
    parallel = imagefolder.decode_images(files, (10, 12), resize=False, workers=2, min_files=0)
    assert serial.shape == (18, 3, 10, 12) and torch.equal(serial, parallel)


def test_imagefolder_mixed_sizes_need_image_size(tmp_path):
    root = write_tree(tmp_path / "tree")
    Image.new("RGB", (20, 20), (0, 0, 0)).save(root / "test" / "class0" / "9.png")
    with pytest.raises(DataError, match="data.image_size"):
        build(batch_size=4, **folder_cfg(root, tmp_path / "cache"))


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(DataError, match="train/<class>"):
        build(**folder_cfg(tmp_path / "absent", tmp_path / "cache"))


def test_imagefolder_large_images_stream_through_a_dataloader(tmp_path):
    root = write_tree(tmp_path / "tree", counts=(("train", 3), ("test", 1)), size=(80, 70))
    cfg = folder_cfg(root, tmp_path / "cache", image_size=72, num_workers=0)
    data = build(batch_size=4, **{**cfg, "augment": True})
    assert (data.train_size, data.test_size, data.image_size, data.steps_per_epoch) == (9, 3, (72, 72), 2)
    batches = list(data.train.epoch(0))
    assert [x.shape for x, _ in batches] == [(4, 3, 72, 72)] * 2 and batches[0][0].dtype == torch.float32
    x, y = collect(data.test)
    assert x.shape == (3, 3, 72, 72) and sorted(y.tolist()) == [0, 1, 2]
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing cached for large images


def test_imagefolder_large_corrupt_file_from_a_worker(tmp_path):
    root = write_tree(tmp_path / "tree", counts=(("train", 2), ("test", 1)), size=(80, 70))
    bad = root / "train" / "class0" / "1.png"
    bad.write_bytes(b"garbage")
    data = build(batch_size=6, **folder_cfg(root, tmp_path / "cache", num_workers=1))
    with pytest.raises(DataError, match=f"^corrupt image file {bad}"):
        list(data.train.epoch(0))

