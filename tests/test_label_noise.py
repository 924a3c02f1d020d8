"""Label noise (`data.label_noise`): its rate, its seed, clean test labels, both kinds, every data path."""
import pytest
import torch
from PIL import Image

from esam.cli import main
from esam.config import DataConfig, load_train_config
from esam.data import build_data
from esam.data.label_noise import LabelNoise, NoisyLabels
from esam.errors import ConfigError

CPU = torch.device("cpu")
MANY = torch.arange(200_000) % 10  # a large label set, every class alike


def build(seed=0, batch_size=64, **cfg):
    return build_data(DataConfig(augment=False, **cfg), CPU, seed, batch_size, 100)


def test_the_realized_rate_is_p():
    # 200000 labels: the rate's standard error is under 0.11 points, so 0.5 points is about 5 of them
    for p in (0.1, 0.4):
        pairflip = LabelNoise(p, "pairflip", 10).apply(MANY)
        assert (pairflip != MANY).float().mean().item() == pytest.approx(p, abs=0.005)
        symmetric = LabelNoise(p, "symmetric", 10).apply(MANY)  # a uniform draw keeps its own class 1 time in K
        assert (symmetric != MANY).float().mean().item() == pytest.approx(p * 9 / 10, abs=0.005)
    counts = torch.bincount(symmetric[symmetric != MANY], minlength=10).float()  # p 0.4: 7200 a class
    assert (counts / counts.mean() - 1).abs().max() < 0.06  # the new classes are uniform (within 5 SE)


def test_pairflip_moves_to_the_next_class_and_symmetric_does_not():
    noisy = LabelNoise(0.3, "pairflip", 10).apply(MANY)
    changed = noisy != MANY
    assert torch.equal(noisy[changed], (MANY[changed] + 1) % 10)  # 9 goes to 0
    assert (MANY[changed] == 9).any()
    symmetric = LabelNoise(0.3, "symmetric", 10).apply(MANY)
    assert ((symmetric - MANY) % 10 != 1).any()  # lands anywhere, not only on the next class


def test_the_same_seed_gives_the_same_labels():
    noise = LabelNoise(0.25, "symmetric", 10, seed=3)
    assert torch.equal(noise.apply(MANY), LabelNoise(0.25, "symmetric", 10, seed=3).apply(MANY))
    assert not torch.equal(noise.apply(MANY), LabelNoise(0.25, "symmetric", 10, seed=4).apply(MANY))
    # both kinds replace the same samples for one seed: only the new labels differ
    pair = LabelNoise(0.25, "pairflip", 10, seed=3)
    assert torch.equal(pair.draws(1000)[0], noise.draws(1000)[0])


def test_digits_train_labels_are_noisy_and_test_labels_clean():
    clean = build(name="digits")
    noisy = build(name="digits", label_noise=0.3, label_noise_kind="pairflip")
    assert torch.equal(noisy.test.labels, clean.test.labels)  # the accuracy measured stays the clean one
    assert torch.equal(noisy.test.images, clean.test.images) and torch.equal(noisy.train.images, clean.train.images)
    changed = noisy.train.labels != clean.train.labels
    assert 0.25 < changed.float().mean().item() < 0.35  # 1437 labels
    assert torch.equal(noisy.train.labels[changed], (clean.train.labels[changed] + 1) % 10)
    # what the batches carry: the noisy labels (a batch of everything, in order of the permutation)
    _, y = next(iter(build(name="digits", batch_size=1437, label_noise=0.3, label_noise_kind="pairflip").train.epoch(0)))
    assert sorted(y.tolist()) == sorted(noisy.train.labels.tolist())


def test_the_run_seed_and_the_limit_leave_the_noisy_labels_alone():
    one = build(name="digits", seed=0, label_noise=0.2)
    other = build(name="digits", seed=7, label_noise=0.2)  # another trial's (or repeat's) run seed
    assert torch.equal(one.train.labels, other.train.labels)
    limited = build(name="digits", label_noise=0.2, train_limit=500)
    assert torch.equal(limited.train.labels, one.train.labels[:500])
    assert not torch.equal(build(name="digits", label_noise=0.2, label_noise_seed=1).train.labels, one.train.labels)


def test_synthetic_data_gets_noise_too():
    clean, noisy = build(name="synthetic", synthetic_size=4000), build(name="synthetic", synthetic_size=4000,
                                                                       label_noise=0.5)
    assert 0.40 < (clean.train.labels != noisy.train.labels).float().mean().item() < 0.50  # 0.5 * 9 / 10
    assert torch.equal(clean.test.labels, noisy.test.labels)


class Labelled(torch.utils.data.Dataset):
    """A streamed dataset stand-in: (image, int label) per index."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.zeros(1), int(self.labels[i])


def test_a_streamed_set_gets_the_labels_an_in_memory_one_would():
    noise = LabelNoise(0.3, "symmetric", 10, seed=2)
    streamed = NoisyLabels(Labelled(MANY[:5000]), noise)
    labels = [streamed[i][1] for i in range(len(streamed))]
    assert all(isinstance(y, int) for y in labels[:10])
    assert labels == noise.apply(MANY[:5000]).tolist()


def test_an_imagefolder_streamed_from_disk_has_noisy_training_labels(tmp_path):
    for split, n in (("train", 4), ("test", 2)):  # images over 64 px: streamed through a DataLoader
        for k in range(3):
            folder = tmp_path / split / f"class{k}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (70, 70), (60 * k, 0, 0)).save(folder / f"{i}.png")
    cfg = {"name": "imagefolder", "root": str(tmp_path), "cache_dir": str(tmp_path / "cache"), "num_workers": 0}
    clean, noisy = build(batch_size=4, **cfg), build(batch_size=4, label_noise=0.6, label_noise_seed=1, **cfg)
    assert isinstance(noisy.train.dataset, NoisyLabels)
    truth = clean.train.dataset.labels
    expected = LabelNoise(0.6, "symmetric", 3, seed=1).apply(torch.tensor(truth)).tolist()
    assert expected != truth and [noisy.train.dataset[i][1] for i in range(12)] == expected
    test_labels = [y for _, y in noisy.test.dataset]
    assert test_labels == clean.test.dataset.labels  # untouched


@pytest.mark.parametrize("override, message", [
    ("data.label_noise=1.0", "data.label_noise must be in [0, 1), got 1.0"),
    ("data.label_noise=-0.1", "data.label_noise must be in [0, 1), got -0.1"),
    ("data.label_noise_kind=asymmetric", "data.label_noise_kind: unknown value 'asymmetric' (valid: symmetric, pairflip"),
    ("data.label_noise_seed=-1", "data.label_noise_seed must be in [0, "),
])
def test_a_bad_value_is_one_line(capsys, override, message):
    with pytest.raises(ConfigError) as err:
        load_train_config(None, [override])
    assert message in str(err.value)
    assert main(["train", "--set", override]) == 2
    out = capsys.readouterr().err.strip()
    assert len(out.splitlines()) == 1 and message in out, out


def test_the_defaults_are_clean():
    cfg = load_train_config(None, [])
    assert (cfg.data.label_noise, cfg.data.label_noise_kind, cfg.data.label_noise_seed) == (0.0, "symmetric", 0)
    assert LabelNoise.of(cfg.data, 10) is None
