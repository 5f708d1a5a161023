"""Fetches the MNIST-format IDX files from public mirrors, verified before use.

    from vae_jax.download import download
    folder = download("mnist")  # $XDG_CACHE_HOME/vae_jax/mnist, else ~/.cache/vae_jax/mnist
    dataset = vae_jax.data.read_idx_dir(folder)

A file gets its final name only once its SHA-256 matches the pinned value: it is streamed
into a temporary file in the target folder while it is hashed, then moved into place with
`os.replace`, which is atomic. A failed, corrupt or interrupted download leaves nothing
under the final name, and a reader never sees half a file. Processes filling one folder
take turns through a lock file (where the OS has `fcntl`); without one they would each
download and replace, which is wasteful but still safe.
"""

import contextlib
import gzip
import hashlib
import http.client
import os
import secrets
import socket
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from typing import NamedTuple

from vae_jax import folders
from vae_jax.errors import InputError

try:
    import fcntl
except ImportError:  # Windows: no lock, still safe (see the module docstring).
    fcntl = None

MIRROR_ENV = "VAE_JAX_MIRROR"  # one base URL that replaces a dataset's mirror list
TMP_SUFFIX = ".part"
LOCK_FILE = folders.LOCK_FILE
STALE_TMP_S = 3600.0  # a temporary file untouched this long was left by a killed process
_CHUNK_BYTES = 1 << 16
# HTTP statuses worth asking the same mirror again for; other 4xx answers are final.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class RemoteFile(NamedTuple):
    """One file of a dataset, under the same name on every mirror and on disk."""

    name: str  # e.g. "train-images-idx3-ubyte.gz"
    sha256: str  # of the published .gz bytes
    # Of the decompressed bytes, when pinned: a recompressed copy verifies through it.
    raw_sha256: str | None = None


class RemoteDataset(NamedTuple):
    mirrors: tuple[str, ...]  # base URLs, tried in order
    files: tuple[RemoteFile, ...]


# The published .gz digests are the ones TFDS pins (tensorflow_datasets/url_checksums);
# tests/test_download.py checks them against the installed TFDS.
DATASETS = {
    "mnist": RemoteDataset(
        mirrors=(
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
        files=(
            RemoteFile(
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            RemoteFile(
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            RemoteFile(
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            RemoteFile(
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        ),
    ),
    "fashion_mnist": RemoteDataset(
        mirrors=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        files=(
            RemoteFile(
                "train-images-idx3-ubyte.gz",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            ),
            RemoteFile(
                "train-labels-idx1-ubyte.gz",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            ),
            RemoteFile(
                "t10k-images-idx3-ubyte.gz",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            ),
            RemoteFile(
                "t10k-labels-idx1-ubyte.gz",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ),
        ),
    ),
}


def cache_dir(name: str) -> str:
    """Where `download(name)` puts its files: $XDG_CACHE_HOME/vae_jax/<name>, else
    ~/.cache/vae_jax/<name>."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "vae_jax", name)


def mirrors(name: str) -> tuple[str, ...]:
    """The base URLs to try for `name`: $VAE_JAX_MIRROR alone when set, else the list."""
    override = os.environ.get(MIRROR_ENV)
    if override and not override.startswith(("http://", "https://")):
        raise InputError(
            f"{MIRROR_ENV}={override} is not an http:// or https:// URL; set it to the base "
            "URL that serves the four .gz files, or unset it"
        )
    urls = (override,) if override else DATASETS[name].mirrors
    return tuple(url if url.endswith("/") else url + "/" for url in urls)


def download(
    name: str,
    folder: str | None = None,
    *,
    offline: bool = False,
    timeout_s: float = 30.0,
    attempts: int = 3,
    backoff_s: float = 1.0,
    progress: bool | None = None,
) -> str:
    """Makes `folder` hold `name`'s four IDX files, verified; fetches the missing ones.

    Files already there are checked against their pinned SHA-256 (a few tens of ms) and
    never replaced: one that fails is an error that says to delete it.

    Args:
      name: a key of `DATASETS` (`mnist`, `fashion_mnist`).
      folder: where the files go; None is `cache_dir(name)`. Created if missing.
      offline: never touch the network; missing files are an error naming them.
      timeout_s: seconds without an answer before a connection attempt fails.
      attempts: tries per mirror for errors that may pass (timeouts, dropped
        connections, HTTP 5xx and 429); a wrong checksum, a refused connection, an
        unknown host or an HTTP 404 moves on to the next mirror at once.
      backoff_s: wait before the second try; doubled before each later one.
      progress: a progress bar per file; None shows them only on a terminal.

    Returns `folder`. Raises InputError for an unknown `name`, a file that fails
    verification, `offline` with files missing, a folder that cannot be written, or every
    mirror failing for a file (the message lists each URL tried with its error).
    """
    if name not in DATASETS:
        raise InputError(
            f"cannot download {name}: only {', '.join(DATASETS)} are known; "
            "point --data_dir at a folder of its four IDX files"
        )
    folder = folder or cache_dir(name)
    missing = _check_present_files(name, folder, offline)
    if not missing:
        return folder  # All there and verified: the folder may even be read-only.
    # A folder made here and left without a file (every mirror failed) is removed again.
    with folders.removed_unless_used(folder):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create {folder} for {name}: {e.strerror}") from None
        with _folder_lock(folder):
            _remove_stale_temporary_files(folder)
            # Under the lock, look again at what was missing: another process may have
            # fetched some of it meanwhile.
            missing = _check_present_files(name, folder, offline=False, files=tuple(missing))
            used = _fetch_files(name, missing, folder, timeout_s, attempts, backoff_s, progress)
    if missing:
        print(
            f"{name}: downloaded {len(missing)} file(s) from {', '.join(dict.fromkeys(used))}, "
            f"SHA-256 verified, into {folder}",
            flush=True,
        )
    return folder


def _fetch_files(name, missing, folder, timeout_s, attempts, backoff_s, progress) -> list[str]:
    """Fetches each of `missing` into `folder`; returns the mirror that served each."""
    used = []
    urls = list(mirrors(name))
    for remote in missing:
        url = _fetch_from_mirrors(
            name, remote, urls, folder, timeout_s, attempts, backoff_s, progress
        )
        base = url[: -len(remote.name)]
        used.append(base)
        urls.remove(base)  # the mirror that answered is asked first for the next file
        urls.insert(0, base)
    return used


# --- Verification ----------------------------------------------------------------------


def verify_file(path: str, remote: RemoteFile) -> bool:
    """Whether the file at `path` is `remote`: its SHA-256 or, when that is pinned, the
    SHA-256 of its decompressed bytes matches."""
    with open(path, "rb") as f:
        return _sha256_of(f) == remote.sha256 or _decompressed_matches(path, remote)


def identify(folder: str) -> str | None:
    """The known dataset (a key of `DATASETS`) whose published test images `folder` holds,
    by their SHA-256 (of the .gz, or of the IDX bytes where pinned); None for a slice or
    other files. MNIST's and Fashion-MNIST's files share names and shapes: this tells them
    apart."""
    for name, dataset in DATASETS.items():
        remote = next(r for r in dataset.files if r.name.startswith("t10k-images"))
        gz_path = os.path.join(folder, remote.name)
        raw_path = gz_path.removesuffix(".gz")
        try:
            if os.path.isfile(gz_path) and verify_file(gz_path, remote):
                return name
            if remote.raw_sha256 and os.path.isfile(raw_path):
                with open(raw_path, "rb") as f:
                    if _sha256_of(f) == remote.raw_sha256:
                        return name
        except OSError:
            return None  # unreadable: the reader says so
    return None


def _sha256_of(stream) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def _decompressed_matches(path: str, remote: RemoteFile) -> bool:
    """Whether `path` decompresses to the pinned IDX bytes (a recompressed copy)."""
    if remote.raw_sha256 is None:
        return False
    try:
        with gzip.open(path, "rb") as f:
            return _sha256_of(f) == remote.raw_sha256
    except (OSError, EOFError, zlib.error):  # not gzip, or cut short
        return False


def _check_present_files(
    name: str, folder: str, offline: bool, files: tuple[RemoteFile, ...] | None = None
) -> list[RemoteFile]:
    """Verifies those of `files` (default: all of `name`'s) already in `folder`; returns
    the missing ones."""
    missing = []
    for remote in DATASETS[name].files if files is None else files:
        path = os.path.join(folder, remote.name)
        if not os.path.isfile(path):
            missing.append(remote)
            continue
        try:
            verified = verify_file(path, remote)
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror}") from None
        if not verified:
            raise InputError(
                f"{path} is not the published {name} file (its SHA-256 does not match); "
                "delete it and run again to download a good copy"
            )
    if offline and missing:
        raise InputError(
            f"{name}: {', '.join(r.name for r in missing)} missing in {folder} and downloads "
            f"are off; drop --nodownload, or put the four IDX files there (or in a folder "
            "passed as --data_dir)"
        )
    return missing


# --- Fetching --------------------------------------------------------------------------


class _ChecksumError(Exception):
    pass


class _WriteError(Exception):
    pass


class _NoDowngradeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, except from https to plain http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if req.full_url.startswith("https:") and not newurl.startswith("https:"):
            raise urllib.error.HTTPError(
                req.full_url, code, f"refused redirect from https to {newurl}", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_from_mirrors(
    name, remote, urls, folder, timeout_s, attempts, backoff_s, progress
) -> str:
    """Fetches one file from the first mirror that serves it verified; returns its URL."""
    errors = []
    for base in urls:
        url = base + remote.name
        for attempt in range(attempts):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            try:
                _fetch(url, remote, folder, timeout_s, progress)
                return url
            except _ChecksumError as e:
                error, retry = f"refused, {e}", False
            except _WriteError as e:
                raise InputError(f"cannot write {name} into {folder}: {e}") from None
            except urllib.error.HTTPError as e:
                error, retry = f"HTTP {e.code} {e.reason}", e.code in _RETRY_STATUSES
            except urllib.error.URLError as e:
                # Refused, or no such host: an answer, not a hiccup (offline, mostly).
                final = isinstance(e.reason, (ConnectionRefusedError, socket.gaierror))
                error, retry = str(e.reason), not final
            except (OSError, http.client.HTTPException) as e:  # timeouts, dropped connections
                error, retry = f"{type(e).__name__}: {e}", True
            if not retry:
                break
        errors.append(f"{url} ({error})")
    raise InputError(
        f"cannot download {name}: {'; '.join(errors)}. Check the connection and run again, "
        f"or put the four IDX files in a folder and pass --data_dir=FOLDER, or set "
        f"{MIRROR_ENV}=URL to a mirror that serves them"
    )


def _fetch(url: str, remote: RemoteFile, folder: str, timeout_s: float, progress) -> None:
    """Streams `url` into a temporary file in `folder`; moves it to its name once verified."""
    from tqdm import tqdm  # Deferred: only a download needs it.

    temporary = os.path.join(folder, f".{remote.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    # The name is chosen before the file exists, and the `try` entered before it is
    # created: a Ctrl-C at any point, even inside `open`, leaves no temporary file behind.
    try:
        try:
            out = open(temporary, "xb")  # noqa: SIM115 (closed by the `with` below)
        except OSError as e:
            raise _WriteError(e.strerror) from None
        request = urllib.request.Request(url, headers={"User-Agent": "vae_jax"})
        opener = urllib.request.build_opener(_NoDowngradeRedirects)
        with out, opener.open(request, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            digest, num_bytes = hashlib.sha256(), 0
            with tqdm(
                total=expected,
                desc=remote.name,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=None if progress is None else not progress,
                file=sys.stderr,
            ) as bar:
                while chunk := response.read(_CHUNK_BYTES):
                    digest.update(chunk)
                    num_bytes += len(chunk)
                    try:
                        out.write(chunk)
                    except OSError as e:
                        raise _WriteError(e.strerror) from None
                    bar.update(len(chunk))
            # http.client ends a body cut short quietly: compare with what was announced.
            if expected is not None and num_bytes != expected:
                raise http.client.IncompleteRead(b"", expected - num_bytes)
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as e:
                raise _WriteError(e.strerror) from None
        if digest.hexdigest() != remote.sha256 and not _decompressed_matches(temporary, remote):
            raise _ChecksumError(
                f"SHA-256 {digest.hexdigest()[:12]}... of {num_bytes} bytes matches neither the "
                f"published {remote.sha256[:12]}..."
                + (" nor, decompressed, the pinned IDX digest" if remote.raw_sha256 else "")
            )
        os.chmod(temporary, 0o644)  # readable by all, whatever the umask, like a cache
        os.replace(temporary, os.path.join(folder, remote.name))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


@contextlib.contextmanager
def _folder_lock(folder: str) -> Iterator[None]:
    """Holds an exclusive lock on `folder` (released by the OS if the process dies)."""
    if fcntl is None:
        yield
        return
    try:
        handle = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise InputError(f"cannot write into {folder}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process filling {folder}", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # Releases the lock.


def _remove_stale_temporary_files(folder: str) -> None:
    now = time.time()
    for entry in os.scandir(folder):
        if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat().st_mtime > STALE_TMP_S:
                    os.remove(entry.path)
