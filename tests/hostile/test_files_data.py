"""Hostile files: checkpoints, model cards, IDX and npz data (issue 12: Bad 4, Weak "text file as checkpoint").

Every bad file is one line naming it, exit code 2, nothing computed before is touched, and reads are bounded
by what the file's header declares."""
from __future__ import annotations

import gzip
import io
import random
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from _hostile import assert_one_line_error, base_config
from robustkit.data import load_dataset
from robustkit.errors import RobustkitError


def _with_checkpoint(tiny, content: bytes, name: str = "bad.pt"):
    (tiny.root / name).write_bytes(content)
    cfg = base_config()
    cfg["models"][0]["checkpoint"] = name
    return tiny.write_config(cfg)


def _garbage_checkpoints() -> list[bytes]:
    """51 fuzzed files: a text file, truncations and byte flips of a real torch checkpoint, random bytes."""
    buf = io.BytesIO()
    torch.save({"0.weight": torch.ones(3, 3), "0.bias": torch.zeros(3)}, buf)
    good = buf.getvalue()
    rng = random.Random(12)
    files = [b"this is a text file, not weights\n", b"", b"PK\x03\x04", b"\x80\x02}q\x00.", good[: len(good) // 2]]
    for _ in range(30):
        flipped = bytearray(good)
        for _ in range(rng.randint(1, 40)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        files.append(bytes(flipped))
    files += [bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))) for _ in range(15)]
    files.append(b"\x20\x00\x00\x00\x00\x00\x00\x00" + b'{"a": {"dtype": "F32", "shape": [9], "data_offsets": [0, 1]}}')
    return files


def test_text_file_as_checkpoint(tiny, cli, unchanged):
    """Issue 12: ``IndexError: pop from empty list``."""
    code, _, err = cli("eval", "--config", _with_checkpoint(tiny, b"hello, I am text\n"), "-q")
    assert_one_line_error(code, err, "bad.pt", "not a readable")


@pytest.mark.parametrize("i", range(51))
def test_fuzzed_garbage_checkpoints(tiny, cli, i):
    """Issue 12: 4 of 51 fuzzed garbage files escaped as tracebacks."""
    code, _, err = cli("eval", "--config", _with_checkpoint(tiny, _garbage_checkpoints()[i]), "-q")
    assert code in (0, 2), err
    if code != 0:  # a flip in padding can leave a loadable file; then it loads or fails the strict key check
        assert_one_line_error(code, err, "bad.pt" if "bad.pt" in err else "bad.yaml")


def test_pickled_code_never_runs(tiny, cli, unchanged):
    marker = tiny.root / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buf = io.BytesIO()
    torch.save({"w": Evil()}, buf)
    code, _, err = cli("eval", "--config", _with_checkpoint(tiny, buf.getvalue()), "-q")
    assert_one_line_error(code, err, "bad.pt", "refused for safety")
    assert not marker.exists()


def test_checkpoint_that_is_a_folder(tiny, cli, unchanged):
    (tiny.root / "dir.pt").mkdir()
    cfg = base_config()
    cfg["models"][0]["checkpoint"] = "dir.pt"
    code, _, err = cli("eval", "--config", tiny.write_config(cfg), "-q")
    assert_one_line_error(code, err, "dir.pt")


@pytest.mark.parametrize("card,needle", [
    ("name: x\narch: mlp\nnormalisation: {mean: [0.5], std: [0.5]}\n", "normalisation"),
    ("name: x\narch: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
    ("name: x\narch: nope-net\n", "nope-net"),
    ("- not\n- a card\n", "card"),
])
def test_hostile_model_cards(tiny, cli, unchanged, card, needle):
    (tiny.root / "card.yaml").write_text(card)
    cfg = base_config()
    cfg["models"] = ["card.yaml"]
    code, _, err = cli("eval", "--config", tiny.write_config(cfg), "-q")
    assert_one_line_error(code, err, needle)
    assert not (tiny.root / "pwned").exists()


# --------------------------------------------------------------------------------------------------- IDX
def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()


def _mnist_root(tmp_path, images: bytes, labels: bytes, gz: bool = True):
    root = tmp_path / "mnist"
    root.mkdir()
    for stem, data in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        if gz:
            with gzip.open(root / f"{stem}.gz", "wb") as f:
                f.write(data)
        else:
            (root / stem).write_bytes(data)
    return root


IMAGES = np.random.RandomState(0).randint(0, 256, (12, 28, 28), dtype=np.uint8)
LABELS = (np.arange(12) % 10).astype(np.uint8)


def test_gzip_idx_with_gigabytes_of_trailing_zeros_is_refused_after_the_declared_payload(tmp_path):
    """Issue 12, Bad 4: a valid header and 4 GiB of zeros was decompressed whole (8.7 GB RSS). The stream is
    read only up to the declared payload plus one byte; 1 GiB of compressed zeros costs about 1 MB of disk."""
    root = tmp_path / "mnist"
    root.mkdir()
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(_idx(IMAGES))
        zeros = bytes(1 << 24)
        for _ in range(64):  # 1 GiB
            f.write(zeros)
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(_idx(LABELS))
    with pytest.raises(RobustkitError) as info:
        load_dataset("mnist", root=root)
    assert "t10k-images" in str(info.value) and "more than" in str(info.value)


@pytest.mark.parametrize("images,needle", [
    (_idx(IMAGES)[:-10], "truncated"),
    (b"\x01\x02\x03\x04" + _idx(IMAGES)[4:], "bad magic"),
    (bytes([0, 0, 8, 3]) + (60000).to_bytes(4, "big") * 3, "declares shape"),
    (bytes([0, 0, 8, 3, 0, 0]), "header is truncated"),
    (b"", "bad magic"),
])
def test_bad_idx_files(tmp_path, images, needle):
    for gz in (True, False):
        (tmp_path / str(gz)).mkdir()
        root = _mnist_root(tmp_path / str(gz), images, _idx(LABELS), gz=gz)
        with pytest.raises(RobustkitError) as info:
            load_dataset("mnist", root=root)
        assert needle in str(info.value) and "\n" not in str(info.value)


def test_idx_labels_that_do_not_match_the_images(tmp_path):
    root = _mnist_root(tmp_path, _idx(IMAGES), _idx(LABELS[:7]))
    with pytest.raises(RobustkitError, match="expected 12 labels"):
        load_dataset("mnist", root=root)


def test_corrupted_gzip_stream(tmp_path):
    root = _mnist_root(tmp_path, _idx(IMAGES), _idx(LABELS))
    path = root / "t10k-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[30:60] = b"\x00" * 30
    path.write_bytes(bytes(data))
    with pytest.raises(RobustkitError, match="t10k-images"):
        load_dataset("mnist", root=root)


# --------------------------------------------------------------------------------------------------- npz
def _npz_case(tiny, name: str, **arrays) -> str:
    np.savez(tiny.root / name, **arrays)
    return name


X8 = np.random.RandomState(2).randint(0, 256, (24, 1, 8, 8), dtype=np.uint8)
Y8 = np.arange(24) % 10

NPZ_CASES = {
    "one-hot-labels": (dict(x=X8, y=np.eye(10, dtype=np.int64)[Y8]), "one-hot"),
    "label-count": (dict(x=X8, y=Y8[:20]), "20 labels for 24 images"),
    "missing-key": (dict(images=X8, y=Y8), "no array named 'x'"),
    "float-out-of-range": (dict(x=X8.astype(np.float32), y=Y8), "[0, 1]"),
    "nan-images": (dict(x=np.full((24, 1, 8, 8), np.nan, np.float32), y=Y8), "[0, 1]"),
    "negative-labels": (dict(x=X8, y=Y8 - 5), ">= 0"),
    "float-labels": (dict(x=X8, y=Y8 + 0.5), "integer"),
    "object-array": (dict(x=np.array([object()] * 24, dtype=object), y=Y8), "x"),
    "five-dims": (dict(x=X8[:, :, :, :, None], y=Y8), "dimensions"),
    "scalar": (dict(x=np.float32(3), y=Y8), "scalar"),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_bad_npz_arrays(tiny, cli, unchanged, case):
    arrays, needle = NPZ_CASES[case]
    if case == "object-array":
        buf = io.BytesIO()
        np.save(buf, arrays["x"], allow_pickle=True)
        with zipfile.ZipFile(tiny.root / "case.npz", "w") as zf:
            zf.writestr("x.npy", buf.getvalue())
            ybuf = io.BytesIO()
            np.save(ybuf, Y8)
            zf.writestr("y.npy", ybuf.getvalue())
    else:
        _npz_case(tiny, "case.npz", **arrays)
    cfg = base_config()
    cfg["dataset"]["root"] = "case.npz"
    code, _, err = cli("eval", "--config", tiny.write_config(cfg), "-q")
    assert_one_line_error(code, err, "case.npz", needle)


@pytest.mark.parametrize("content,needle", [
    (b"garbage, not a zip" * 10, "not a readable .npz"),
    (None, "single .npy"),
    (b"", "not a readable .npz"),
])
def test_npz_that_is_not_an_npz(tiny, cli, unchanged, content, needle):
    if content is None:
        np.save(tiny.root / "case.npz", X8)
        (tiny.root / "case.npz.npy").rename(tiny.root / "case.npz")
    else:
        (tiny.root / "case.npz").write_bytes(content)
    cfg = base_config()
    cfg["dataset"]["root"] = "case.npz"
    code, _, err = cli("eval", "--config", tiny.write_config(cfg), "-q")
    assert_one_line_error(code, err, "case.npz", needle)


def test_npz_with_a_truncated_member(tiny, cli, unchanged):
    buf = io.BytesIO()
    np.save(buf, X8)
    ybuf = io.BytesIO()
    np.save(ybuf, Y8)
    with zipfile.ZipFile(tiny.root / "case.npz", "w") as zf:
        zf.writestr("x.npy", buf.getvalue()[:-100])
        zf.writestr("y.npy", ybuf.getvalue())
    cfg = base_config()
    cfg["dataset"]["root"] = "case.npz"
    code, _, err = cli("eval", "--config", tiny.write_config(cfg), "-q")
    assert_one_line_error(code, err, "case.npz", "does not match")


def test_npz_n_examples_reads_only_the_first_rows_and_keeps_the_class_count(tiny):
    """The streamed read gives the same tensors (and content hash) as slicing a full read."""
    full = load_dataset({"name": "npz", "root": str(tiny.root / "data.npz")})
    part = load_dataset({"name": "npz", "root": str(tiny.root / "data.npz"), "n_examples": 7})
    assert torch.equal(part.x, full.x[:7]) and torch.equal(part.y, full.y[:7])
    assert part.num_classes == full.num_classes == 10
    assert part.content_hash == full.subset(7).content_hash


def test_image_whose_header_declares_gigapixels_is_refused_before_decoding(tmp_path):
    """A decompression bomb: a small PNG whose header declares 100000 x 100000 pixels."""
    folder = tmp_path / "imgs" / "cat"
    folder.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(folder / "ok.png")
    data = bytearray((folder / "ok.png").read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", 100_000, 100_000)
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr: ihdr + 17])))
    (folder / "bomb.png").write_bytes(bytes(data))
    with pytest.raises(RobustkitError) as info:
        load_dataset("imagefolder", root=tmp_path / "imgs")
    message = str(info.value)
    assert "bomb.png" in message and ("10000000000 pixels" in message or "100000 x 100000" in message), message
