"""Model registry: a dict of builders plus `register_model`, as in pycls.

Every builder takes `(num_classes, in_channels)` and returns an `nn.Module` that maps
`[B, in_channels, H, W]` float images to `[B, num_classes]` logits.

    model = build_model("resnet18", num_classes=10)

Your own model, by import path (`train.model: "my_project.nets:build"`, esam.import_paths): the
callable is called as `build(num_classes, in_channels)`, both positional ints taken from the data
(in_channels is the size of the inputs' second dimension: an image's channels, a feature vector's
length), and must return an `nn.Module` mapping a batch of the data's inputs to `[B, num_classes]`
logits. Anything else it returns is one ConfigError naming the path.

The registry lives in esam/models/registry.py; builders are registered by importing their module
here; a new family is one new file plus one import line.
"""
# Importing the families registers them.
from esam.models import imagenet, pyramidnet, resnet, small, wide_resnet  # noqa: F401
from esam.models.registry import MODELS, ModelBuilder, build_model, register_model

__all__ = ["MODELS", "ModelBuilder", "build_model", "register_model"]
