"""``cifar10c``: CIFAR-10-C (Hendrycks & Dietterich 2019), the CIFAR-10 test set under 19 corruptions.

Layout: ``<corruption>.npy`` of shape (5 * n, 32, 32, 3) uint8 -- severities 1..5 stacked, n = 10000 test
images each -- and ``labels.npy`` of shape (5 * n,). ``root`` may be that folder or its parent holding
``CIFAR-10-C/``. Files are memory-mapped and only the selected severity block (and only its first
``n_examples`` rows) is read, so choosing one corruption costs 30 MB of reading, not 150 MB.
With ``download=True`` the Zenodo archive (2.9 GB) is fetched into ``root``, MD5-checked and extracted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from robustkit.errors import ConfigError, DataError, did_you_mean

from .archive import extract_tar
from .arrays import images_to_tensor, labels_to_tensor
from .catalog import register_dataset
from .dataset import LoadedData
from .options import optional_str, positive_int
from .sources import CIFAR10C_ARCHIVE, default_root, fetch

FOLDER = "CIFAR-10-C"
SEVERITIES = 5
# The 15 benchmark corruptions followed by the 4 extra ("held-out") ones distributed in the same archive.
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array or truncated ({exc})") from exc


def _find_folder(root: Path, corruption: str) -> Path | None:
    for folder in (root, root / FOLDER):
        if (folder / f"{corruption}.npy").is_file() and (folder / "labels.npy").is_file():
            return folder
    return None


@register_dataset("cifar10c", aliases=("cifar10-c",))
def load_cifar10c(root: Path | None, *, corruption: str, severity: int = 5, download: bool = False,
                  mirror: str | None = None, n_examples: int | None = None) -> LoadedData:
    """One corruption at one severity (1..5, default 5 as in RobustBench): 10000 images, 3x32x32."""
    if corruption not in CORRUPTIONS:
        raise ConfigError(f"dataset 'cifar10c' option corruption: expected one of {', '.join(CORRUPTIONS)}, "
                          f"got {corruption!r}{did_you_mean(str(corruption), CORRUPTIONS)}")
    positive_int("cifar10c", "severity", severity, maximum=SEVERITIES)
    optional_str("cifar10c", "mirror", mirror)
    root = root if root is not None else default_root("cifar10c")
    folder = _find_folder(root, corruption)
    if folder is None and download:
        extract_tar(fetch("cifar10c", CIFAR10C_ARCHIVE, root, mirror=mirror), root)
        folder = _find_folder(root, corruption)
    if folder is None:
        if not root.exists():
            raise DataError(f"cifar10c root {root} does not exist; point root at the CIFAR-10-C folder "
                            f"or pass download=True")
        raise DataError(f"cifar10c: expected {corruption}.npy and labels.npy in {root} or {root / FOLDER}; "
                        f"pass download=True to fetch the archive")

    images_path, labels_path = folder / f"{corruption}.npy", folder / "labels.npy"
    images, labels = _open_npy(images_path), _open_npy(labels_path)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8 or images.shape[0] % SEVERITIES:
        raise DataError(f"{images_path}: expected uint8 (5 * N, H, W, 3) with the 5 severities stacked, "
                        f"got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{labels_path}: expected shape ({images.shape[0]},) to match {images_path.name}, "
                        f"got {labels.shape}")
    per_severity = images.shape[0] // SEVERITIES
    start = (severity - 1) * per_severity
    count = per_severity if n_examples is None else min(n_examples, per_severity)
    rows = slice(start, start + count)
    x = images_to_tensor(np.array(images[rows]), layout="NHWC", source=str(images_path))
    y = labels_to_tensor(np.array(labels[rows]), source=str(labels_path))
    return LoadedData(x, y, classes=list(CIFAR10_CLASSES), root=root)
