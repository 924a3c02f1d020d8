"""An exported config in your own training loop: `python own_loop.py best.yaml` (after `esam export`)."""
import sys

import torch
import torch.nn.functional as F
import yaml

from esam import ESAM
from tiny_mlp.data import load
from tiny_mlp.nets import build

config = yaml.safe_load(open(sys.argv[1]))
train_set, test_set = load(config["data"])
model = build(num_classes=3, in_channels=train_set.tensors[0].shape[1])
base = torch.optim.SGD(model.parameters(), lr=config["optimizer"]["lr"], momentum=0.9, weight_decay=5e-4)
opt = ESAM.from_config(model.parameters(), base, config)    # rho, beta, gamma, score as the search found them
for epoch in range(config["epochs"]):
    for x, y in torch.utils.data.DataLoader(train_set, batch_size=config["batch_size"], shuffle=True):
        opt.step(lambda idx=None: F.cross_entropy(model(x if idx is None else x[idx]), y if idx is None else y[idx],
                                                   reduction="none"))
with torch.no_grad():
    x, y = test_set.tensors
    print(f"test accuracy {(model(x).argmax(1) == y).float().mean().item() * 100:.2f}%")
