"""The data: esam calls `load(data_config)` and trains on the (train, test) pair of Datasets it returns."""
import torch
from sklearn.datasets import make_classification
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset


def load(cfg) -> tuple[TensorDataset, TensorDataset]:
    # cfg is esam's DataConfig (root, train_limit, ...); this dataset needs none of it.
    x, y = make_classification(n_samples=2000, n_features=20, n_informative=10, n_classes=3, random_state=0)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    mean, std = x_tr.mean(0), x_tr.std(0)  # used as given by esam: standardize here
    as_set = lambda a, b: TensorDataset(torch.tensor((a - mean) / std, dtype=torch.float32), torch.tensor(b))  # noqa: E731
    return as_set(x_tr, y_tr), as_set(x_te, y_te)
