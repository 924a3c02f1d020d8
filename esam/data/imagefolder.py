"""`imagefolder`: images in `root/train/<class>/*` and `root/test/<class>/*` (or `root/val/`).

Classes are the sorted sub-folder names of `train/`; images are read as RGB. The file lists
are put in a fixed pseudo-random order (seed 0), so `train_limit` takes a mix of classes.

Small images (side <= 64 px after the optional `image_size` resize, all splits < 4 GiB decoded,
e.g. CIFAR-10 as JPEG) are decoded once by a pool of processes and cached as one uint8 tensor
file in `cache_dir` (default ~/.cache/esam). The cache key hashes the root path, every file's
path, size and mtime, and `image_size`: changing a file makes a new cache. Later runs load the
cache (about a second for CIFAR-10); the data then lives on the device like CIFAR.

Larger images (ImageNet) stay on disk: a torch DataLoader with `num_workers` processes decodes
them with torchvision's transforms (train: RandomResizedCrop + flip; test: Resize to 256/224 of
the side + CenterCrop), `image_size` (default 224) being the crop side. Normalized with
ImageNet's mean and std; no Cutout on this path.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from esam.data.config import DataConfig
from esam.data.datasets import InMemory, Streamed, data_root, register_dataset
from esam.data.loaders import channel_stats
from esam.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")
SMALL_MAX_SIDE = 64  # px: at most this, the decoded set is cached and kept on the device
SMALL_MAX_BYTES = 4 << 30  # ... and at most this many bytes decoded
PARALLEL_MIN_FILES = 2048  # fewer files are decoded in this process (starting workers costs more)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    return Path("~/.cache/esam").expanduser()


# ---------------------------------------------------------------------------------------- files

def _scan_split(split_dir: Path, classes: list[str]) -> tuple[list[str], list[int], list[tuple]]:
    """Files of one split in (class, name) order, their labels, and (relpath, size, mtime) rows."""
    files, labels, stats = [], [], []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        with os.scandir(class_dir) as it:
            entries = sorted((e for e in it if e.is_file() and not e.name.startswith(".")
                              and e.name.lower().endswith(IMAGE_EXTENSIONS)), key=lambda e: e.name)
        for e in entries:
            st = e.stat()
            files.append(e.path)
            labels.append(label)
            stats.append((f"{split_dir.name}/{name}/{e.name}", st.st_size, st.st_mtime_ns))
    return files, labels, stats


def scan(root: Path) -> tuple[list[str], dict[str, tuple[list[str], list[int]]], str]:
    """-> (classes, {"train": (files, labels), "test": (files, labels)}, cache key digest)."""
    train_dir = root / "train"
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"imagefolder: expected {root.resolve()}/train/<class>/* and "
                        f"{root.resolve()}/test/<class>/* (or val/), not found")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = sorted(d.name for d in test_dir.iterdir() if d.is_dir() and d.name not in classes)
    if not classes:
        raise DataError(f"imagefolder: no class folders in {train_dir.resolve()}")
    if unknown:
        raise DataError(f"imagefolder: class folder {test_dir.name}/{unknown[0]} has no counterpart in {train_dir.resolve()}")
    digest = hashlib.sha256(f"{CACHE_FORMAT}\n{root.resolve()}\n".encode())
    splits = {}
    for split, split_dir in (("train", train_dir), ("test", test_dir)):
        files, labels, stats = _scan_split(split_dir, classes)
        if not files:
            raise DataError(f"imagefolder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir.resolve()}")
        order = np.random.default_rng(0).permutation(len(files))  # fixed: limits take mixed classes
        splits[split] = ([files[i] for i in order], [labels[i] for i in order])
        digest.update("\n".join(f"{p}\t{s}\t{m}" for p, s, m in stats).encode())
    return classes, splits, digest.hexdigest()


# ------------------------------------------------------------------------------------- decoding

def _open_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert() loads the pixels: a truncated file fails here
    except Exception as err:  # noqa: BLE001  PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DataError(f"corrupt image file {path}: {type(err).__name__}: {err}") from None


def _decode_chunk(args: tuple[list[str], tuple[int, int], bool]) -> np.ndarray | str:
    """Decode files into [n, H, W, 3] uint8; an error is returned as its message (picklable)."""
    paths, (h, w), resize = args
    out = np.empty((len(paths), h, w, 3), np.uint8)
    for i, path in enumerate(paths):
        try:
            im = _open_rgb(path)
        except DataError as err:
            return str(err)
        if im.size != (w, h):
            if not resize:
                return (f"image {path} is {im.size[0]}x{im.size[1]} px, the first one is {w}x{h}: "
                        f"set data.image_size to resize them all")
            im = im.resize((w, h), Image.BILINEAR)
        out[i] = np.asarray(im)
    return out


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def decode_images(paths: list[str], size: tuple[int, int], resize: bool, workers: int | None = None,
                  min_files: int | None = None) -> torch.Tensor:
    """Decode image files to uint8 [N, 3, H, W] (H, W = size), in `workers` processes (default:
    one per available core, at most 32) when there are at least `min_files` of them.
    Files of another size are resized if `resize`, else they raise DataError."""
    workers = min(32, cpu_count()) if workers is None else workers
    min_files = PARALLEL_MIN_FILES if min_files is None else min_files
    n_tasks = 1 if workers <= 1 or len(paths) < max(min_files, 2) else min(len(paths), workers * 8)
    bounds = np.linspace(0, len(paths), n_tasks + 1).astype(int)
    tasks = [(paths[a:b], size, resize) for a, b in pairwise(bounds)]
    out = torch.empty((len(paths), size[0], size[1], 3), dtype=torch.uint8)
    if n_tasks == 1:
        results = map(_decode_chunk, tasks)
        pool = None
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
        results = pool.map(_decode_chunk, tasks)
    try:
        for a, result in zip(bounds[:-1], results):
            if isinstance(result, str):
                raise DataError(result)
            out[a:a + len(result)] = torch.from_numpy(result)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return out.permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------- cache

@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive file lock, so that concurrent trials decode a dataset once (no-op off POSIX)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cache_path(cfg: DataConfig, root: Path, digest: str) -> Path:
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    side = cfg.image_size or "native"
    return cache_dir / f"imagefolder-{root.resolve().name}-{side}-{digest[:16]}.pt"


def _load_small(cfg: DataConfig, root: Path, classes: list[str], splits: dict, digest: str,
                size: tuple[int, int]) -> InMemory:
    path = cache_path(cfg, root, digest)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the cache folder {path.parent}: {err}") from None
    with _locked(path.with_suffix(".lock")):
        if path.is_file():
            try:
                cached = torch.load(path, weights_only=True)
                if cached.get("format") == CACHE_FORMAT and cached.get("classes") == classes:
                    return InMemory(cached["train_x"], cached["train_y"], cached["test_x"], cached["test_y"],
                                    len(classes), tuple(cached["mean"]), tuple(cached["std"]))
            except Exception as err:  # noqa: BLE001  a damaged cache file is rebuilt
                warnings.warn(f"rebuilding the unreadable cache file {path}: {err}", stacklevel=2)
        resize = cfg.image_size is not None
        train_x = decode_images(splits["train"][0], size, resize)
        test_x = decode_images(splits["test"][0], size, resize)
        mean, std = channel_stats(train_x)
        data = {"format": CACHE_FORMAT, "root": str(root.resolve()), "classes": classes,
                "train_x": train_x, "train_y": torch.tensor(splits["train"][1], dtype=torch.long),
                "test_x": test_x, "test_y": torch.tensor(splits["test"][1], dtype=torch.long),
                "mean": list(mean), "std": list(std)}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(data, tmp)
            os.replace(tmp, path)  # atomic: a reader never sees half a file
        except OSError:
            tmp.unlink(missing_ok=True)  # an unwritable cache costs speed, not correctness
    return InMemory(data["train_x"], data["train_y"], data["test_x"], data["test_y"], len(classes), mean, std)


# ------------------------------------------------------------------------------ streamed (large)

class ImageFiles(torch.utils.data.Dataset):
    """(uint8 [3, H, W] tensor, label) per file, through a torchvision transform of the PIL image."""

    def __init__(self, files: list[str], labels: list[int], transform) -> None:
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(_open_rgb(self.files[i])), self.labels[i]


def _streamed(cfg: DataConfig, classes: list[str], splits: dict) -> Streamed:
    from torchvision import transforms as T

    side = cfg.image_size or 224
    resize = T.Compose([T.Resize(round(side * 256 / 224)), T.CenterCrop(side)])
    train_tf = [T.RandomResizedCrop(side)] if cfg.augment else [resize]
    if cfg.augment and cfg.flip:
        train_tf.append(T.RandomHorizontalFlip())
    train = ImageFiles(*splits["train"], T.Compose([*train_tf, T.PILToTensor()]))
    test = ImageFiles(*splits["test"], T.Compose([resize, T.PILToTensor()]))
    return Streamed(train, test, len(classes), 3, (side, side), IMAGENET_MEAN, IMAGENET_STD)


@register_dataset("imagefolder")
def imagefolder(cfg: DataConfig) -> InMemory | Streamed:
    root = data_root(cfg)
    classes, splits, digest = scan(root)
    if cfg.image_size is not None:
        size = (cfg.image_size, cfg.image_size)
    else:
        first = splits["train"][0][0]
        try:
            with Image.open(first) as im:  # reads the header only
                w, h = im.size
        except Exception as err:  # noqa: BLE001  (as in _open_rgb)
            raise DataError(f"corrupt image file {first}: {type(err).__name__}: {err}") from None
        size = (h, w)
    n = len(splits["train"][0]) + len(splits["test"][0])
    if max(size) <= SMALL_MAX_SIDE and n * 3 * size[0] * size[1] <= SMALL_MAX_BYTES:
        return _load_small(cfg, root, classes, splits, digest, size)
    return _streamed(cfg, classes, splits)
