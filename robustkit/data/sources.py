"""Where downloadable datasets come from, their checksums, and where they are stored.

Official locations are used by default. A mirror replaces all of them at once: with ``mirror=BASE``
(the dataset option) or the ``ROBUSTKIT_DATA_MIRROR`` environment variable, a file is fetched from
``BASE/<dataset>/<filename>`` (e.g. ``BASE/mnist/t10k-images-idx3-ubyte.gz``), so one mirror can hold
every dataset even where file names collide (MNIST and Fashion-MNIST use the same names). Checksums are
always the official ones, so a mirror can make a download fail but never change the data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .download import download_url

MIRROR_ENV = "ROBUSTKIT_DATA_MIRROR"
DATA_DIR_ENV = "ROBUSTKIT_DATA_DIR"


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: its name on disk, its official URL and its published MD5."""

    filename: str
    url: str
    md5: str


def _files(base: str, md5s: dict[str, str]) -> dict[str, RemoteFile]:
    return {name: RemoteFile(name, base + name, md5) for name, md5 in md5s.items()}


# MNIST: the original site throttles and requires sign-in; torchvision's S3 copy is byte-identical.
MNIST_FILES = _files("https://ossci-datasets.s3.amazonaws.com/mnist/", {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
})
# Fashion-MNIST: Zalando's official S3 website endpoint (plain HTTP; integrity comes from the MD5).
FASHION_MNIST_FILES = _files("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
})
CIFAR10_ARCHIVE = RemoteFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                             "c58f30108f718f92721af3b95e74349a")
CIFAR100_ARCHIVE = RemoteFile("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                              "eb9058c3a382ffc7106e4002c42a8d85")
# CIFAR-10-C: Hendrycks & Dietterich, Zenodo record 2535967 (about 2.9 GB).
CIFAR10C_ARCHIVE = RemoteFile("CIFAR-10-C.tar", "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1",
                              "56bf5dcef84df0e2308c6dcbcbbd8499")


def default_root(dataset: str) -> Path:
    """``$ROBUSTKIT_DATA_DIR/<dataset>``, else ``$XDG_CACHE_HOME/robustkit/data/<dataset>`` (~/.cache)."""
    base = os.environ.get(DATA_DIR_ENV)
    if base:
        return Path(base).expanduser().absolute() / dataset
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache.absolute() / "robustkit" / "data" / dataset


def source_url(dataset: str, remote: RemoteFile, mirror: str | None = None) -> str:
    """The URL to fetch ``remote`` from: the mirror (argument, else environment) or the official one."""
    base = mirror or os.environ.get(MIRROR_ENV)
    if not base:
        return remote.url
    return f"{base.rstrip('/')}/{dataset}/{remote.filename}"


def fetch(dataset: str, remote: RemoteFile, folder: Path, *, mirror: str | None = None) -> Path:
    """Download ``remote`` into ``folder`` (verified against its official MD5) unless already there."""
    return download_url(source_url(dataset, remote, mirror), folder / remote.filename, md5=remote.md5)
