"""Download LibriSpeech parts without surprises.

A part whose folder exists is never downloaded. A download goes to
``<dl_dir>/<part>.tar.gz.partial``, renamed to ``<part>.tar.gz`` only when complete, and
is extracted through a temporary folder, so an interrupted or failed run leaves no file
that a later run could take for a finished one. A failure raises :class:`DownloadError`
with one line that says what to fetch and where to put it.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import urllib.request
from pathlib import Path

from mvq_kd.utils import Pathlike

LIBRISPEECH_URL = "https://www.openslr.org/resources/12"
LIBRISPEECH_PARTS = (
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
)


class DownloadError(RuntimeError):
    """A corpus part could not be downloaded or extracted."""


def _fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``dest`` with a progress bar (bytes, rate, ETA)."""
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as f:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))


def download_librispeech_part(
    dl_dir: Pathlike, part: str, base_url: str = LIBRISPEECH_URL
) -> Path:
    """Make ``<dl_dir>/LibriSpeech/<part>/`` exist, downloading it only if it does not.

    Args:
        dl_dir: download folder; the archive is kept there as ``<part>.tar.gz``.
        part: a LibriSpeech part name, e.g. ``dev-clean``.
        base_url: the folder URL of the archives (openslr or a mirror).
    Returns:
        The part folder.
    Raises:
        DownloadError: the part is unknown, or its download or extraction failed; no
            partial file is left behind.
    """
    dl_dir = Path(dl_dir)
    part_dir = dl_dir / "LibriSpeech" / part
    if part_dir.is_dir():
        logging.info(f"{part}: present in {part_dir}, not downloading")
        return part_dir
    url = f"{base_url.rstrip('/')}/{part}.tar.gz"
    help_line = (
        f"fetch {url} yourself and extract it in {dl_dir} (tar xzf {part}.tar.gz) so that "
        f"{part_dir}/ exists: prepare.sh then uses it and downloads nothing"
    )
    if part not in LIBRISPEECH_PARTS:
        raise DownloadError(
            f"No folder {part_dir} and '{part}' is not a LibriSpeech part "
            f"({', '.join(LIBRISPEECH_PARTS)}): check --parts and --dl-dir"
        )
    dl_dir.mkdir(parents=True, exist_ok=True)
    archive = dl_dir / f"{part}.tar.gz"
    if not archive.is_file():
        partial = archive.with_name(archive.name + ".partial")
        logging.info(f"{part}: downloading {url}")
        try:
            _fetch(url, partial)
        except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts are OSErrors
            partial.unlink(missing_ok=True)
            raise DownloadError(f"Downloading {url} failed ({e}); {help_line}") from None
        partial.rename(archive)
    tmp = dl_dir / f".extracting-{part}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        logging.info(f"{part}: extracting {archive}")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        extracted = tmp / "LibriSpeech" / part
        if not extracted.is_dir():
            raise DownloadError(f"{archive} holds no LibriSpeech/{part}/ folder; {help_line}")
        part_dir.parent.mkdir(parents=True, exist_ok=True)
        for name in ("SPEAKERS.TXT", "CHAPTERS.TXT", "BOOKS.TXT", "LICENSE.TXT", "README.TXT"):
            src = tmp / "LibriSpeech" / name
            if src.is_file() and not (part_dir.parent / name).exists():
                src.rename(part_dir.parent / name)
        extracted.rename(part_dir)
    except (OSError, tarfile.TarError) as e:
        raise DownloadError(f"Extracting {archive} failed ({e}); {help_line}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return part_dir
