"""Downloads against a local HTTP server (127.0.0.1, ephemeral port) that supports Range requests.

The server serves a temporary folder: ``mnist/`` links to the real MNIST files in ../shared (so the official
MD5s apply), and small CIFAR-style archives built here are served with their own MD5s patched into the
loaders. Every request is logged (path, Range header) so resumption can be asserted, every client call
has a short timeout, and the server is shut down when each test ends.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

import robustkit.data.cifar as cifar_mod
import robustkit.data.cifar10c as cifar10c_mod
from robustkit.data import download_url, load_dataset
from robustkit.data.archive import extract_tar
from robustkit.data.sources import MIRROR_ENV, MNIST_FILES, RemoteFile
from robustkit.errors import DataError

IMAGES_GZ, LABELS_GZ = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
TIMEOUT = 10.0


class _RangeHandler(BaseHTTPRequestHandler):
    """GET with ``Range: bytes=a-[b]`` support (206 / 416), plus test switches on the server object."""

    timeout = TIMEOUT  # a stuck client cannot hold a handler thread forever

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        srv = self.server
        srv.log.append((urlsplit(self.path).path, self.headers.get("Range")))
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        path = srv.root / rel
        if not rel or ".." in Path(rel).parts or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        header = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
        if match and not srv.ignore_range:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop_after is not None:  # one-shot: announce the full length, send part, hang up
            cut, srv.drop_after = srv.drop_after, None
            self.wfile.write(body[:cut])
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path, shared_dir):
    root = tmp_path / "www"
    root.mkdir()
    os.symlink(shared_dir / "data" / "mnist", root / "mnist")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    httpd.root, httpd.log, httpd.ignore_range, httpd.drop_after = root, [], False, None
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_checksum_and_skips_a_good_existing_file(server, tmp_path, shared_dir):
    src = shared_dir / "data" / "mnist" / LABELS_GZ
    dest = tmp_path / "out" / LABELS_GZ
    got = download_url(f"{server.base}/mnist/{LABELS_GZ}", dest, md5=MNIST_FILES[LABELS_GZ].md5,
                       timeout=TIMEOUT, progress=False)
    assert got == dest and dest.read_bytes() == src.read_bytes()
    assert not dest.with_name(dest.name + ".part").exists()
    assert server.log == [(f"/mnist/{LABELS_GZ}", None)]
    download_url(f"{server.base}/mnist/{LABELS_GZ}", dest, md5=MNIST_FILES[LABELS_GZ].md5, timeout=TIMEOUT)
    assert len(server.log) == 1  # verified local copy: no request


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    dest = tmp_path / "out" / LABELS_GZ
    with pytest.raises(DataError) as err:
        download_url(f"{server.base}/mnist/{LABELS_GZ}", dest, md5="0" * 32, timeout=TIMEOUT, progress=False)
    msg = str(err.value)
    assert "checksum mismatch" in msg and f"expected md5 {'0' * 32}" in msg and "\n" not in msg
    assert list(dest.parent.iterdir()) == []  # neither the final file nor the .part
    assert len(server.log) == 1


def test_partial_file_is_resumed_with_a_range_request(server, tmp_path, shared_dir):
    src = (shared_dir / "data" / "mnist" / IMAGES_GZ).read_bytes()
    dest = tmp_path / IMAGES_GZ
    dest.with_name(dest.name + ".part").write_bytes(src[:700_001])
    download_url(f"{server.base}/mnist/{IMAGES_GZ}", dest, md5=MNIST_FILES[IMAGES_GZ].md5, timeout=TIMEOUT)
    assert server.log == [(f"/mnist/{IMAGES_GZ}", "bytes=700001-")]
    assert dest.read_bytes() == src
    assert not dest.with_name(dest.name + ".part").exists()


def test_dropped_connection_resumes_automatically(server, tmp_path, shared_dir):
    src = (shared_dir / "data" / "mnist" / IMAGES_GZ).read_bytes()
    server.drop_after = 300_000
    dest = tmp_path / IMAGES_GZ
    download_url(f"{server.base}/mnist/{IMAGES_GZ}", dest, md5=MNIST_FILES[IMAGES_GZ].md5, timeout=TIMEOUT,
                 progress=False)
    assert dest.read_bytes() == src
    assert server.log[0] == (f"/mnist/{IMAGES_GZ}", None)
    assert server.log[1][1] is not None and server.log[1][1].startswith("bytes=")
    assert int(server.log[1][1][6:-1]) >= 1  # resumed from what had arrived, not from zero
    assert len(server.log) == 2


def test_server_ignoring_range_restarts_instead_of_appending(server, tmp_path, shared_dir):
    src = (shared_dir / "data" / "mnist" / LABELS_GZ).read_bytes()
    server.ignore_range = True
    dest = tmp_path / LABELS_GZ
    dest.with_name(dest.name + ".part").write_bytes(src[:1000])
    download_url(f"{server.base}/mnist/{LABELS_GZ}", dest, md5=MNIST_FILES[LABELS_GZ].md5, timeout=TIMEOUT,
                 progress=False)
    assert dest.read_bytes() == src and len(server.log) == 1


def test_stale_partial_file_from_another_version_is_discarded_once(server, tmp_path, shared_dir):
    src = (shared_dir / "data" / "mnist" / LABELS_GZ).read_bytes()
    dest = tmp_path / LABELS_GZ
    dest.with_name(dest.name + ".part").write_bytes(b"\xff" * 1000)
    download_url(f"{server.base}/mnist/{LABELS_GZ}", dest, md5=MNIST_FILES[LABELS_GZ].md5, timeout=TIMEOUT,
                 progress=False)
    assert dest.read_bytes() == src
    assert [r for _p, r in server.log] == ["bytes=1000-", None]


def test_http_errors_and_unreachable_hosts_are_one_line_errors(server, tmp_path):
    with pytest.raises(DataError, match=r"download of .*/mnist/nope.gz failed: HTTP 404"):
        download_url(f"{server.base}/mnist/nope.gz", tmp_path / "nope.gz", timeout=TIMEOUT, progress=False)
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    start = time.monotonic()
    with pytest.raises(DataError, match="failed after 2 attempts"):
        download_url(f"http://127.0.0.1:{port}/mnist/x.gz", tmp_path / "x.gz", timeout=2, retries=1, progress=False)
    assert time.monotonic() - start < 10
    with pytest.raises(DataError, match="only http, https, file URLs"):
        download_url("ftp://example.org/x", tmp_path / "x", progress=False)


def test_load_dataset_downloads_only_the_missing_split_files_from_the_mirror(server, tmp_path, mnist_test):
    root = tmp_path / "mnist-data"
    ds = load_dataset({"name": "mnist", "root": str(root), "download": True, "mirror": server.base})
    assert ds.content_hash == mnist_test.content_hash
    assert sorted(p for p, _r in server.log) == [f"/mnist/{IMAGES_GZ}", f"/mnist/{LABELS_GZ}"]
    assert sorted(p.name for p in root.iterdir()) == [IMAGES_GZ, LABELS_GZ]
    assert "mirror" not in ds.spec["options"]  # where the bytes came from is not part of the data's identity
    load_dataset("mnist", root=root, download=True, mirror=server.base)
    assert len(server.log) == 2  # already there: nothing fetched


def test_mirror_and_default_root_from_the_environment(server, tmp_path, monkeypatch, mnist_test):
    monkeypatch.setenv(MIRROR_ENV, server.base + "/")
    monkeypatch.setenv("ROBUSTKIT_DATA_DIR", str(tmp_path / "cache"))
    ds = load_dataset("mnist", download=True, n_examples=10)
    assert ds.content_hash == mnist_test.subset(10).content_hash
    assert ds.spec["root"] == str(tmp_path / "cache" / "mnist")
    assert (tmp_path / "cache" / "mnist" / IMAGES_GZ).is_file()


def _tar_bytes(files: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_cifar10_download_extracts_the_archive(server, tmp_path, monkeypatch):
    import pickle

    rng = np.random.default_rng(0)
    test_batch = {b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), b"labels": [1, 2, 3, 4, 5, 6]}
    meta = {b"label_names": [b"c%d" % i for i in range(10)]}
    archive = _tar_bytes({"cifar-10-batches-py/test_batch": pickle.dumps(test_batch, protocol=2),
                          "cifar-10-batches-py/batches.meta": pickle.dumps(meta, protocol=2)}, "w:gz")
    (server.root / "cifar10").mkdir()
    (server.root / "cifar10" / "cifar-10-python.tar.gz").write_bytes(archive)
    fake = RemoteFile("cifar-10-python.tar.gz", "https://invalid.example/never", hashlib.md5(archive).hexdigest())
    monkeypatch.setattr(cifar_mod, "CIFAR10", replace(cifar_mod.CIFAR10, archive=fake))
    ds = load_dataset("cifar10", root=tmp_path / "c10", download=True, mirror=server.base)
    assert ds.y.tolist() == [1, 2, 3, 4, 5, 6] and ds.classes[3] == "c3"
    assert server.log == [("/cifar10/cifar-10-python.tar.gz", None)]
    assert not any(p.name.startswith(".extract-") for p in (tmp_path / "c10").iterdir())


def test_cifar10c_download_extracts_the_archive(server, tmp_path, monkeypatch):
    images = np.random.default_rng(1).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    labels = np.tile(np.array([7, 3], np.uint8), 5)
    archive = _tar_bytes({"CIFAR-10-C/fog.npy": _npy(images), "CIFAR-10-C/labels.npy": _npy(labels)}, "w")
    (server.root / "cifar10c").mkdir()
    (server.root / "cifar10c" / "CIFAR-10-C.tar").write_bytes(archive)
    fake = RemoteFile("CIFAR-10-C.tar", "https://invalid.example/never", hashlib.md5(archive).hexdigest())
    monkeypatch.setattr(cifar10c_mod, "CIFAR10C_ARCHIVE", fake)
    ds = load_dataset({"name": "cifar10c", "root": str(tmp_path), "corruption": "fog", "severity": 2,
                       "download": True, "mirror": server.base})
    assert ds.y.tolist() == [7, 3]
    np.testing.assert_array_equal(ds.x.numpy(), images[2:4].transpose(0, 3, 1, 2) / np.float32(255))


@pytest.fixture(params=["data_filter", "fallback"])
def tar_filter(request, monkeypatch):
    """Run extraction tests with tarfile's data filter and with the check used where it is missing."""
    if request.param == "fallback":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt"])
def test_tar_members_outside_the_destination_are_refused(tmp_path, name, tar_filter):
    archive = tmp_path / "bad.tar"
    archive.write_bytes(_tar_bytes({"fine.txt": b"ok", name: b"evil"}, "w"))
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="refusing unsafe archive member"):
        extract_tar(archive, dest)
    assert not (tmp_path / "evil.txt").exists()
    assert not (dest / "fine.txt").exists()  # nothing is moved into place from a refused archive


def test_tar_absolute_member_never_lands_outside_the_destination(tmp_path, tar_filter):
    target = tmp_path / "outside" / "evil.txt"  # an absolute name inside this test's own folder
    archive = tmp_path / "abs.tar"
    archive.write_bytes(_tar_bytes({str(target): b"evil"}, "w"))
    dest = tmp_path / "dest"
    if tar_filter == "fallback":
        with pytest.raises(DataError, match="refusing unsafe archive member"):
            extract_tar(archive, dest)
    else:  # the data filter strips the leading "/"
        extract_tar(archive, dest)
        assert (dest / str(target).lstrip("/")).read_bytes() == b"evil"
    assert not target.exists()


def test_tar_link_escaping_the_destination_is_refused(tmp_path, tar_filter):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("data/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    (tmp_path / "link.tar").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="refusing unsafe archive member"):
        extract_tar(tmp_path / "link.tar", tmp_path / "dest")


def test_truncated_archive_is_a_data_error(tmp_path, tar_filter):
    data = _tar_bytes({"a/b.bin": os.urandom(200_000)}, "w:gz")
    (tmp_path / "t.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.tar.gz: corrupted or truncated archive"):
        extract_tar(tmp_path / "t.tar.gz", tmp_path / "dest")


def test_file_url_mirror_for_a_local_copy(tmp_path, shared_dir, mnist_test):
    www = tmp_path / "www"
    www.mkdir()
    os.symlink(shared_dir / "data" / "mnist", www / "mnist")
    root = tmp_path / "root"
    (root).mkdir()
    (root / f"{IMAGES_GZ}.part").write_bytes(b"junk")  # a file URL ignores Range: must restart, not append
    ds = load_dataset("mnist", root=root, download=True, mirror=www.as_uri(), n_examples=5)
    assert ds.content_hash == mnist_test.subset(5).content_hash
