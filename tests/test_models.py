"""Model registry, output shapes and parameter counts against the published figures."""
import pytest
import torch

from esam.errors import ConfigError
from esam.models import MODELS, build_model, register_model

# (model, classes): exact count here, published figure (millions) it must round to
PARAMS = {
    ("small_cnn", 10): (24_346, None),
    ("cifar_cnn", 10): (94_762, None),  # the CPU-sized noisy-CIFAR network
    ("resnet18", 10): (11_173_962, 11.17),  # CIFAR ResNet-18 (kuangliu/SAM/ESAM code)
    ("resnet18", 100): (11_220_132, 11.22),
    ("wrn28_10", 10): (36_479_194, 36.5),  # Zagoruyko & Komodakis
    ("pyramidnet110", 10): (28_485_477, 28.5),  # Han et al. list 28.3M; imgclsmob counts 28,485,477
    ("resnet50", 1000): (25_557_032, 25.6),  # torchvision
    ("resnet101", 1000): (44_549_160, 44.5),
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_has_the_papers_models():
    assert {"small_cnn", "resnet18", "wrn28_10", "pyramidnet110", "resnet50", "resnet101"} <= set(MODELS)


@pytest.mark.parametrize("name,classes", list(PARAMS))
def test_parameter_counts(name, classes):
    with torch.device("meta"):  # no memory, no initialisation: big models cost milliseconds
        model = build_model(name, num_classes=classes)
    exact, millions = PARAMS[name, classes]
    assert count(model) == exact
    if millions is not None:
        assert round(count(model) / 1e6, 2 if millions < 12 else 1) == millions


@pytest.mark.parametrize("name", ["small_cnn", "cifar_cnn", "resnet18", "wrn28_10", "pyramidnet110"])
def test_cifar_models_forward_shape(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_small_cnn_on_digits_shape_and_size():
    model = build_model("small_cnn", num_classes=10, in_channels=1).eval()
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_other_input_channels(name):
    with torch.device("meta"):
        model = build_model(name, num_classes=10, in_channels=1)
        assert model(torch.empty(2, 1, 32, 32)).shape == (2, 10)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        build_model("resnet19", num_classes=10)
    message = str(err.value)
    assert "unknown model 'resnet19'" in message
    assert all(name in message for name in MODELS)


def test_bad_num_classes_is_a_config_error():
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("small_cnn", num_classes=0)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(lambda num_classes, in_channels: torch.nn.Identity())


def test_small_cnn_learns_digits():
    """The quick model is good enough for the CPU demo: > 90% on digits in 10 plain SGD epochs."""
    from esam.config import DataConfig
    from esam.data import build_data

    torch.manual_seed(0)
    data = build_data(DataConfig(name="digits", augment=False), torch.device("cpu"), seed=0,
                      batch_size=128, eval_batch_size=512)
    model = build_model("small_cnn", data.num_classes, data.in_channels)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for epoch in range(10):
        for x, y in data.train.epoch(epoch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in data.test.epoch(0))
    assert correct / data.test_size > 0.9
