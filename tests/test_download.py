"""The downloader end to end, against HTTP servers on 127.0.0.1 (never the internet).

The servers serve the shipped slice, whose digests are put in place of the published
ones, or, where `full_data` is there, the real files against the real pinned digests.
"""

import gzip
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import SLICE, needs_tfds, refusing_url
from local_mirror import FILE_NAMES, Mirror, shared_files, slice_files

from vae_jax import data, download
from vae_jax.errors import InputError


@pytest.fixture
def serve():
    """serve(files) starts a Mirror; every one started is shut down after the test."""
    mirrors = []

    def start(files):
        mirrors.append(Mirror(files))
        return mirrors[-1]

    yield start
    for mirror in mirrors:
        mirror.close()


@pytest.fixture
def dead_url():
    with refusing_url() as url:
        yield url


def slice_spec(mirrors=(), with_raw_digests=True) -> download.RemoteDataset:
    """The slice as a RemoteDataset: its own digests pinned in place of the published."""
    files = []
    for name, body in slice_files().items():
        raw = hashlib.sha256(gzip.decompress(body)).hexdigest() if with_raw_digests else None
        files.append(download.RemoteFile(name, hashlib.sha256(body).hexdigest(), raw))
    return download.RemoteDataset(tuple(mirrors), tuple(files))


@pytest.fixture
def pin_slice(monkeypatch):
    """pin_slice(mirrors=()) makes `mnist` the slice, tried at `mirrors`; with no
    mirrors, $VAE_JAX_MIRROR is the one to set."""

    def pin(mirrors=(), name="mnist", **options):
        monkeypatch.setitem(download.DATASETS, name, slice_spec(mirrors, **options))
        if mirrors:
            monkeypatch.delenv(download.MIRROR_ENV, raising=False)

    return pin


def folder_names(folder: pathlib.Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name != download.LOCK_FILE)


def test_pinned_digests_and_first_mirrors_are_the_ones_tfds_pins():
    needs_tfds()
    import tensorflow_datasets

    checksums = pathlib.Path(tensorflow_datasets.__file__).parent / "url_checksums"
    for name in ("mnist", "fashion_mnist"):
        lines = (checksums / f"{name}.txt").read_text().splitlines()
        rows = [line.split("\t") for line in lines if line.strip()]
        pinned = {url.rsplit("/", 1)[1]: (url, sha256) for url, _, sha256, _ in rows}
        ours = download.DATASETS[name]
        assert {r.name: r.sha256 for r in ours.files} == {k: v[1] for k, v in pinned.items()}
        tfds_mirror = next(iter(pinned.values()))[0].rsplit("/", 1)[0] + "/"
        assert tfds_mirror in ours.mirrors


def test_downloads_the_slice_verified_then_reads_it_from_the_folder(
    serve, pin_slice, monkeypatch, tmp_path, capsys, mnist_idx
):
    mirror = serve(slice_files())
    monkeypatch.setenv(download.MIRROR_ENV, mirror.url.rstrip("/"))  # no slash: added
    pin_slice()
    folder = tmp_path / "new" / "mnist"
    assert download.download("mnist", str(folder), progress=False) == str(folder)
    assert folder_names(folder) == sorted(FILE_NAMES)  # no temporary file left
    for name in FILE_NAMES:
        assert (folder / name).read_bytes() == (SLICE / "idx" / name).read_bytes()
        assert oct((folder / name).stat().st_mode & 0o777) == "0o644"
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and str(folder) in line and "SHA-256 verified" in line
    np.testing.assert_array_equal(
        data.read_idx_dir(str(folder)).train_images, mnist_idx.train_images
    )
    # Present and verified: nothing is fetched again, nothing printed, also offline.
    download.download("mnist", str(folder), progress=False)
    download.download("mnist", str(folder), offline=True)
    assert sorted(mirror.requests) == sorted(FILE_NAMES) and capsys.readouterr().out == ""


def test_a_recompressed_copy_verifies_through_its_decompressed_digest(serve, pin_slice, tmp_path):
    files = slice_files()
    raw = gzip.decompress(files["train-images-idx3-ubyte.gz"])
    files["train-images-idx3-ubyte.gz"] = gzip.compress(raw, compresslevel=1)
    mirror = serve(files)
    pin_slice(mirrors=[mirror.url])
    download.download("mnist", str(tmp_path / "a"), progress=False)
    assert gzip.decompress((tmp_path / "a" / "train-images-idx3-ubyte.gz").read_bytes()) == raw
    # Where only the .gz digest is pinned (Fashion-MNIST), the same copy is refused.
    pin_slice(mirrors=[mirror.url], with_raw_digests=False)
    with pytest.raises(InputError, match="refused, SHA-256"):
        download.download("mnist", str(tmp_path / "b"), progress=False)


def test_a_corrupted_file_is_refused_and_nothing_is_kept_under_its_name(serve, pin_slice, tmp_path):
    files = slice_files()
    body = bytearray(files["train-images-idx3-ubyte.gz"])
    body[len(body) // 2] ^= 0x01  # one bit of one byte
    files["train-images-idx3-ubyte.gz"] = bytes(body)
    mirror = serve(files)
    pin_slice(mirrors=[mirror.url])
    with pytest.raises(InputError) as error:
        download.download("mnist", str(tmp_path), progress=False)
    message = str(error.value)
    assert f"{mirror.url}train-images-idx3-ubyte.gz (refused, SHA-256" in message
    assert "\n" not in message
    assert folder_names(tmp_path) == []  # neither the file nor a temporary copy
    assert mirror.requests == ["train-images-idx3-ubyte.gz"]  # a bad checksum is not retried


def test_a_bad_or_dead_first_mirror_falls_back_to_the_second(
    serve, pin_slice, dead_url, tmp_path, capsys
):
    corrupt = slice_files()
    corrupt["train-images-idx3-ubyte.gz"] = b"not the file"
    bad, good = serve(corrupt), serve(slice_files())
    for first in (bad.url, dead_url):
        folder = tmp_path / first.split(":")[-1].strip("/")
        pin_slice(mirrors=[first, good.url])
        download.download("mnist", str(folder), progress=False)
        assert folder_names(folder) == sorted(FILE_NAMES)
        assert f"from {good.url}," in capsys.readouterr().out
    # Once the second mirror served a file, it is asked first for the others.
    assert bad.requests == ["train-images-idx3-ubyte.gz"]
    assert sorted(good.requests) == sorted(FILE_NAMES * 2)


def test_a_connection_dropped_mid_file_is_retried(serve, pin_slice, tmp_path):
    mirror = serve(slice_files())
    mirror.faults["train-images-idx3-ubyte.gz"] = ["drop", "500"]
    pin_slice(mirrors=[mirror.url])
    download.download("mnist", str(tmp_path / "a"), progress=False, backoff_s=0.01)
    assert mirror.requests.count("train-images-idx3-ubyte.gz") == 3
    assert (tmp_path / "a" / "train-images-idx3-ubyte.gz").read_bytes() == (
        SLICE / "idx" / "train-images-idx3-ubyte.gz"
    ).read_bytes()
    # Dropped on every attempt: an error, and nothing under the name.
    mirror.faults["train-labels-idx1-ubyte.gz"] = ["drop"] * 3
    with pytest.raises(InputError, match=r"train-labels-idx1-ubyte.gz \(IncompleteRead"):
        download.download("mnist", str(tmp_path / "b"), progress=False, backoff_s=0.01)
    assert folder_names(tmp_path / "b") == ["train-images-idx3-ubyte.gz"]


def test_no_reachable_mirror_is_one_line_naming_each_url(pin_slice, dead_url, serve, tmp_path):
    empty = serve({})  # answers 404 to everything
    pin_slice(mirrors=[dead_url, empty.url])
    with pytest.raises(InputError) as error:
        download.download("mnist", str(tmp_path), progress=False)
    message = str(error.value)
    assert message.startswith("cannot download mnist: ") and "\n" not in message
    assert f"{dead_url}train-images-idx3-ubyte.gz (" in message
    assert f"{empty.url}train-images-idx3-ubyte.gz (HTTP 404" in message
    assert "--data_dir" in message and download.MIRROR_ENV in message
    assert empty.requests == ["train-images-idx3-ubyte.gz"]  # a 404 is not retried


def test_a_file_in_the_folder_that_fails_verification_is_kept_and_named(pin_slice, tmp_path):
    pin_slice()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"something else")
    for offline in (True, False):
        with pytest.raises(InputError, match="t10k-labels-idx1-ubyte.gz is not the published"):
            download.download("mnist", str(tmp_path), offline=offline)
    assert (tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes() == b"something else"


def test_unwritable_folder_unknown_dataset_and_bad_mirror_url(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="cannot create .*file/mnist for mnist"):
        download.download("mnist", str(tmp_path / "file" / "mnist"))
    with pytest.raises(InputError, match="cannot download cifar10: only mnist, fashion_mnist"):
        download.download("cifar10", str(tmp_path))
    monkeypatch.setenv(download.MIRROR_ENV, "127.0.0.1:8000")
    with pytest.raises(InputError, match="VAE_JAX_MIRROR=127.0.0.1:8000 is not an http"):
        download.download("mnist", str(tmp_path / "m"))


def test_stale_temporary_files_are_removed(serve, pin_slice, tmp_path):
    mirror = serve(slice_files())
    pin_slice(mirrors=[mirror.url])
    stale, fresh = (tmp_path / f".train-images-idx3-ubyte.gz.{s}.part" for s in ("old", "new"))
    stale.write_bytes(b"left by a killed process")
    fresh.write_bytes(b"another process is writing this")
    an_hour_ago = time.time() - download.STALE_TMP_S - 60
    os.utime(stale, (an_hour_ago, an_hour_ago))
    download.download("mnist", str(tmp_path), progress=False)
    assert not stale.exists() and fresh.exists()


def test_redirects_from_https_to_http_are_refused():
    handler = download._NoDowngradeRedirects()
    request = urllib.request.Request("https://mirror.invalid/mnist/train-images-idx3-ubyte.gz")
    with pytest.raises(urllib.error.HTTPError, match="refused redirect from https"):
        handler.redirect_request(request, None, 302, "Found", {}, "http://mirror.invalid/x.gz")
    followed = handler.redirect_request(request, None, 302, "Found", {}, "https://b.invalid/x")
    assert followed.full_url == "https://b.invalid/x"


TWO_PROCESSES = """
import json, os, sys, time
from vae_jax import download
spec = json.load(open(sys.argv[1]))
download.DATASETS["mnist"] = download.RemoteDataset(
    (spec["url"],), tuple(download.RemoteFile(*f) for f in spec["files"])
)
open(sys.argv[2] + ".ready", "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.005)
download.download("mnist", sys.argv[4], progress=False)
"""


def test_two_processes_filling_one_cache_at_once(serve, tmp_path, monkeypatch):
    mirror = serve(slice_files())
    mirror.delay_s = 0.1  # the first file takes about 0.6 s: the processes overlap
    monkeypatch.delenv(download.MIRROR_ENV)
    spec = {"url": mirror.url, "files": [list(f) for f in slice_spec().files]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "fill.py").write_text(TWO_PROCESSES)
    cache, go = tmp_path / "cache", tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "fill.py"), str(tmp_path / "spec.json")]
            + [str(tmp_path / f"p{i}"), str(go), str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.time() + 120
    while not all((tmp_path / f"p{i}.ready").exists() for i in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.01)
    go.touch()
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    # One process downloaded, the other waited for it and then found the files verified.
    assert sum("waiting for another process" in err for _, err in outputs) == 1
    assert sum("downloaded 4 file(s)" in out for out, _ in outputs) == 1
    assert sorted(mirror.requests) == sorted(FILE_NAMES)
    assert folder_names(cache) == sorted(FILE_NAMES)
    for name in FILE_NAMES:
        assert (cache / name).read_bytes() == (SLICE / "idx" / name).read_bytes()


def test_fashion_mnist_goes_to_its_own_cache_folder(serve, pin_slice, tmp_path, monkeypatch):
    # Fashion-MNIST's files have MNIST's names; the slice stands in for them.
    mirror = serve(slice_files())
    pin_slice(mirrors=[mirror.url], name="fashion_mnist", with_raw_digests=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    dataset = data.load_dataset("fashion_mnist", num_train=100)
    assert dataset.source == f"IDX files in {tmp_path / 'vae_jax' / 'fashion_mnist'}"
    assert dataset.train_images.shape == (100, 784)
    assert folder_names(tmp_path / "vae_jax" / "fashion_mnist") == sorted(FILE_NAMES)


# --- All of MNIST, with the real pinned digests ------------------------------------------


def test_the_shared_copy_verifies_against_the_published_digests(
    serve, full_data, tmp_path, monkeypatch
):
    # Its training images were recompressed: they verify through the IDX digest.
    mirror = serve(shared_files(full_data))
    monkeypatch.setenv(download.MIRROR_ENV, mirror.url)
    download.download("mnist", str(tmp_path), progress=False)
    assert folder_names(tmp_path) == sorted(FILE_NAMES)
    for remote in download.DATASETS["mnist"].files:
        assert download.verify_file(str(tmp_path / remote.name), remote)


def run_main(workdir, *flags, env):
    return subprocess.run(
        [sys.executable, "-m", "vae_jax.main", f"--workdir={workdir}", *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.slow
def test_first_run_downloads_then_runs_from_the_cache(serve, full_data, tmp_path):
    mirror = serve(shared_files(full_data))
    env = {**os.environ, download.MIRROR_ENV: mirror.url, "XDG_CACHE_HOME": str(tmp_path / "c")}
    flags = ["--epochs=1", "--num_train=2048", "--latent=8", "--hidden_sizes=64,32"]
    first = run_main(tmp_path / "w1", *flags, env=env)
    assert first.returncode == 0, first.stderr
    cache = tmp_path / "c" / "vae_jax" / "mnist"
    assert f"SHA-256 verified, into {cache}" in first.stdout
    assert f"data: IDX files in {cache}: 2048 train, 10000 test" in first.stdout
    assert folder_names(cache) == sorted(FILE_NAMES)
    for picture in ("samples.png", "reconstructions.png", "loss_curves.png"):
        assert (tmp_path / "w1" / picture).stat().st_size > 1000
    mirror.close()  # the server is gone: the cache alone serves the second run
    again = run_main(tmp_path / "w2", *flags, "--nodownload", env=env)
    assert again.returncode == 0, again.stderr
    assert "downloaded" not in again.stdout
    first_metrics = json.loads((tmp_path / "w1" / "metrics.jsonl").read_text())
    again_metrics = json.loads((tmp_path / "w2" / "metrics.jsonl").read_text())
    assert first_metrics["test_loss"] == again_metrics["test_loss"]


def test_a_served_file_with_one_byte_flipped_is_refused(serve, full_data, tmp_path):
    files = shared_files(full_data)
    body = bytearray(files["t10k-labels-idx1-ubyte.gz"])
    body[-20] ^= 0xFF
    files["t10k-labels-idx1-ubyte.gz"] = bytes(body)
    mirror = serve(files)
    env = {**os.environ, download.MIRROR_ENV: mirror.url, "XDG_CACHE_HOME": str(tmp_path / "c")}
    result = run_main(tmp_path / "w", "--epochs=1", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("error: cannot download mnist: ") and "refused, SHA-256" in lines[0]
    # The three good files are kept, verified; the bad one left nothing behind.
    cache = tmp_path / "c" / "vae_jax" / "mnist"
    assert folder_names(cache) == sorted(set(FILE_NAMES) - {"t10k-labels-idx1-ubyte.gz"})
    assert not (tmp_path / "w").exists()


def test_no_cache_and_no_mirror_is_one_line_and_exit_2(tmp_path):
    # The tests' $VAE_JAX_MIRROR is a port that refuses connections.
    result = run_main(tmp_path / "w", "--epochs=1", env=dict(os.environ))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("error: cannot download mnist: http://127.0.0.1:")
    assert "Connection refused" in lines[0] and "--data_dir" in lines[0]


def test_ctrl_c_during_a_download_keeps_nothing_half_written(serve, tmp_path):
    mirror = serve(slice_files())
    mirror.delay_s = 1.0  # about 5 s for the first file: time to interrupt it
    env = {**os.environ, download.MIRROR_ENV: mirror.url, "XDG_CACHE_HOME": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "vae_jax.main", f"--workdir={tmp_path / 'w'}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    cache = tmp_path / "vae_jax" / "mnist"
    deadline = time.time() + 60
    while not (cache.is_dir() and any(p.suffix == ".part" for p in cache.iterdir())):
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip() == (
        "interrupted before training began: the workdir is untouched, and a download "
        "keeps only the files it had verified"
    )
    # Nothing verified yet: the folders the download made are gone with their lock.
    assert not (tmp_path / "vae_jax").exists() and not (tmp_path / "w").exists()
