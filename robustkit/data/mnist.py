"""``mnist`` and ``fashion-mnist``: the original IDX files under a root folder.

Files keep their official names (``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``,
``train-...``), directly in ``root`` or in torchvision's ``<root>/MNIST/raw`` (``FashionMNIST/raw``)
folder, so existing downloads are reused. An uncompressed file is preferred over its ``.gz``.
With ``download=True`` only the missing files of the requested split are fetched (checksum-verified).
"""
from __future__ import annotations

from pathlib import Path

from robustkit.errors import DataError

from .arrays import images_to_tensor, labels_to_tensor
from .catalog import register_dataset
from .dataset import LoadedData
from .idx import read_idx
from .options import choice, optional_str
from .sources import FASHION_MNIST_FILES, MNIST_FILES, RemoteFile, default_root, fetch

SPLIT_FILES = {
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
}
MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _find(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _load_idx_split(dataset: str, root: Path | None, split: str, download: bool, mirror: str | None,
                    remote: dict[str, RemoteFile], torchvision_dir: str, classes: list[str]) -> LoadedData:
    choice(dataset, "split", split, tuple(SPLIT_FILES))
    optional_str(dataset, "mirror", mirror)
    root = root if root is not None else default_root(dataset)
    stems = SPLIT_FILES[split]
    folders = [root, root / torchvision_dir / "raw"]
    if download:
        for stem in stems:
            if _find(folders, stem) is None:
                fetch(dataset, remote[f"{stem}.gz"], root, mirror=mirror)
    if not root.exists():
        raise DataError(f"{dataset} root {root} does not exist; point root at the folder with the IDX files "
                        f"or pass download=True")
    paths = [_find(folders, stem) for stem in stems]
    if None in paths:
        missing = [f"{stem}[.gz]" for stem, p in zip(stems, paths) if p is None]
        raise DataError(f"{dataset} ({split} split): expected {' and '.join(missing)} in {root} "
                        f"(or {root / torchvision_dir / 'raw'}); pass download=True to fetch them")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype.kind != "u":
        raise DataError(f"{paths[0]}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{paths[1]}: expected {images.shape[0]} labels to match {paths[0].name}, "
                        f"got shape {labels.shape}")
    x = images_to_tensor(images, layout="NHW", source=str(paths[0]))
    y = labels_to_tensor(labels, source=str(paths[1]))  # range vs. the 10 classes is checked by Dataset
    return LoadedData(x, y, classes=list(classes), root=root)


@register_dataset("mnist")
def load_mnist(root: Path | None, *, split: str = "test", download: bool = False,
               mirror: str | None = None) -> LoadedData:
    """MNIST, 1x28x28; ``split``: ``test`` (10000, default) or ``train`` (60000)."""
    return _load_idx_split("mnist", root, split, download, mirror, MNIST_FILES, "MNIST", MNIST_CLASSES)


@register_dataset("fashion-mnist", aliases=("fashion_mnist",))
def load_fashion_mnist(root: Path | None, *, split: str = "test", download: bool = False,
                       mirror: str | None = None) -> LoadedData:
    """Fashion-MNIST, 1x28x28; ``split``: ``test`` (10000, default) or ``train`` (60000)."""
    return _load_idx_split("fashion-mnist", root, split, download, mirror, FASHION_MNIST_FILES, "FashionMNIST",
                           FASHION_MNIST_CLASSES)
