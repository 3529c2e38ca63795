"""``imagefolder``: ``root/<class>/<image>`` files decoded with Pillow.

Order is stable and platform-independent: class folders sorted by name (label = position), files within a
class sorted by name, hidden entries skipped. Images are converted to ``mode`` (``RGB`` or ``L``); an
optional ``resize`` (int: shorter side, keeping the aspect ratio; or [height, width]) with bilinear
filtering and an optional ``center_crop`` (int or [height, width]) follow torchvision's ``Resize`` /
``CenterCrop`` conventions so a model's published preprocessing can be reproduced. All images must end up
the same size; otherwise the error says which file differs and suggests resize/center_crop.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from robustkit.errors import ConfigError, DataError

from .arrays import images_to_tensor, labels_to_tensor
from .catalog import register_dataset
from .dataset import LoadedData
from .options import choice, size_pair

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MODES = ("RGB", "L")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _scan(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Sorted class names and (file, label) pairs in the stable order."""
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)
    if not class_dirs:
        raise DataError(f"imagefolder root {root}: expected one sub-folder per class (root/<class>/<image>), "
                        f"found none")
    samples: list[tuple[Path, int]] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted((p for p in class_dir.iterdir()
                        if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS),
                       key=lambda p: p.name)
        if not files:
            raise DataError(f"imagefolder: class folder {class_dir} has no image files "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        samples.extend((f, label) for f in files)
    return [d.name for d in class_dirs], samples


def _resize(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    w, h = img.size
    if isinstance(size, int):  # shorter side to `size`, the longer one scaled and truncated (as torchvision)
        if w <= h:
            new_w, new_h = size, int(size * h / w)
        else:
            new_w, new_h = int(size * w / h), size
    else:
        new_h, new_w = size
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.BILINEAR)


def _center_crop(img: Image.Image, size: int | tuple[int, int], path: Path) -> Image.Image:
    crop_h, crop_w = (size, size) if isinstance(size, int) else size
    w, h = img.size
    if crop_h > h or crop_w > w:
        raise DataError(f"{path}: center_crop {crop_h}x{crop_w} is larger than the image ({h}x{w}); "
                        f"set resize first")
    top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


MAX_PIXELS = 1 << 26  # 67 Mpixel: a bounded read (the header's size is checked before any pixel is decoded)


def _decode(path: Path, mode: str, resize, center_crop) -> np.ndarray:
    try:
        with Image.open(path) as img:  # reads the header only
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise DataError(f"{path}: image header declares {w} x {h} pixels, more than the {MAX_PIXELS} "
                                f"robustkit decodes from one image")
            img = img.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({str(exc)[:200]})") from None
    if resize is not None:
        img = _resize(img, resize)
    if center_crop is not None:
        img = _center_crop(img, center_crop, path)
    return np.asarray(img, dtype=np.uint8)


@register_dataset("imagefolder", aliases=("image-folder",))
def load_imagefolder(root: Path | None, *, mode: str = "RGB", resize: int | list[int] | None = None,
                     center_crop: int | list[int] | None = None, n_examples: int | None = None) -> LoadedData:
    """Images of one size (after resize/center_crop) as 3xHxW (RGB) or 1xHxW (L); labels = class-folder index."""
    if root is None:
        raise ConfigError("dataset 'imagefolder' needs root: the folder holding one sub-folder per class")
    choice("imagefolder", "mode", mode, MODES)
    resize = size_pair("imagefolder", "resize", resize)
    center_crop = size_pair("imagefolder", "center_crop", center_crop)
    if not root.is_dir():
        raise DataError(f"imagefolder root {root} {'is not a folder' if root.exists() else 'does not exist'}")
    classes, samples = _scan(root)
    if n_examples is not None:
        samples = samples[:n_examples]  # decode only what will be used
    arrays: list[np.ndarray] = []
    for path, _label in samples:
        arr = _decode(path, mode, resize, center_crop)
        if arrays and arr.shape != arrays[0].shape:
            first = samples[0][0]
            raise DataError(f"imagefolder: {path} is {arr.shape[1]}x{arr.shape[0]} but {first} is "
                            f"{arrays[0].shape[1]}x{arrays[0].shape[0]} (width x height); "
                            f"set resize and/or center_crop to get one size")
        arrays.append(arr)
    layout = "NHW" if mode == "L" else "NHWC"
    x = images_to_tensor(np.stack(arrays), layout=layout, source=str(root))
    y = labels_to_tensor(np.array([label for _p, label in samples], dtype=np.int64), source=str(root))
    return LoadedData(x, y, classes=classes, root=root)
