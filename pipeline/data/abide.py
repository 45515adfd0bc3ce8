"""Fetch ABIDE: raw data in BIDS from the public INDI bucket, or ABIDE Preprocessed via nilearn.

The raw BIDS release lives in the ``fcp-indi`` bucket under
``data/Projects/ABIDE/RawDataBIDS/<SITE>/``. The bucket is listed with the S3 ``ListObjectsV2``
HTTP API (``?list-type=2&prefix=…``, paginated by continuation tokens), so no AWS client is needed.
Downloads go to ``<file>.part`` and resume with HTTP ``Range`` requests; a completed file is checked
against its size and, when the ETag is a plain MD5 (single-part upload), its checksum, and only then
renamed into place. A rerun skips files that are complete.

ABIDE Preprocessed (the PCP derivatives) are fetched with :func:`nilearn.datasets.fetch_abide_pcp`.

No library fits the raw-BIDS part: nilearn only fetches the preprocessed release and ``boto3`` would
be a heavy dependency for two HTTP calls.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import requests
from tqdm.auto import tqdm

from pipeline.errors import InputError, SymprepError

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://s3.amazonaws.com/fcp-indi"
RAW_PREFIX = "data/Projects/ABIDE/RawDataBIDS"
#: ABIDE Preprocessed (PCP) under the same bucket (nilearn's default URL)
PCP_PREFIX = "data/Projects/ABIDE_Initiative"
ABIDE_SITES = (
    "CMU",
    "Caltech",
    "KKI",
    "Leuven",
    "MaxMun",
    "NYU",
    "OHSU",
    "Olin",
    "Pitt",
    "SBL",
    "SDSU",
    "Stanford",
    "Trinity",
    "UCLA",
    "UM",
    "USM",
    "Yale",
)
_S3_NS = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
_SUBJECT = re.compile(r"^(sub-[A-Za-z0-9]+)/")
_CHUNK = 1 << 14  # small blocks: an interrupted transfer keeps all but < 16 KiB


class FetchError(SymprepError):
    """A download failed (network, HTTP status, checksum)."""

    exit_code = 1


@dataclass(frozen=True)
class RemoteFile:
    """One object of the bucket: its key, size in bytes and ETag."""

    key: str
    size: int
    etag: str

    @property
    def md5(self) -> str | None:
        """The MD5 checksum when the ETag is one (single-part uploads), else None."""
        tag = self.etag.strip('"')
        return tag if re.fullmatch(r"[0-9a-f]{32}", tag) else None


def list_objects(
    base_url: str, prefix: str, session: requests.Session | None = None, timeout: float = 30.0
) -> list[RemoteFile]:
    """All objects under ``prefix`` (S3 ``ListObjectsV2``, following continuation tokens)."""
    session = session or requests.Session()
    files: list[RemoteFile] = []
    token: str | None = None
    while True:
        query = {"list-type": "2", "prefix": prefix}
        if token:
            query["continuation-token"] = token
        url = f"{base_url}?{urlencode(query)}"
        try:
            response = session.get(url, timeout=timeout)
        except requests.RequestException as exc:
            raise FetchError(f"cannot list {prefix!r}: {exc}", base_url) from None
        if response.status_code != 200:
            raise FetchError(
                f"listing {prefix!r} failed with HTTP {response.status_code}", base_url
            )
        root = ET.fromstring(response.content)
        for item in root.findall("s3:Contents", _S3_NS):
            files.append(
                RemoteFile(
                    key=item.findtext("s3:Key", default="", namespaces=_S3_NS),
                    size=int(item.findtext("s3:Size", default="0", namespaces=_S3_NS)),
                    etag=item.findtext("s3:ETag", default="", namespaces=_S3_NS),
                )
            )
        if root.findtext("s3:IsTruncated", default="false", namespaces=_S3_NS) != "true":
            return files
        token = root.findtext("s3:NextContinuationToken", namespaces=_S3_NS)
        if not token:
            return files


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(
    remote: RemoteFile,
    base_url: str,
    dest: Path,
    session: requests.Session | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download one object to ``dest``, resuming a ``.part`` file, checking size and MD5."""
    session = session or requests.Session()
    if dest.exists() and dest.stat().st_size == remote.size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > remote.size:
        part.unlink()
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    url = f"{base_url}/{quote(remote.key)}"
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
            if response.status_code == 200:
                have, mode = 0, "wb"  # server ignored the range: start over
            elif response.status_code == 206:
                mode = "ab"
            elif response.status_code == 416 and have == remote.size:
                mode = None
            else:
                raise FetchError(f"HTTP {response.status_code} for {remote.key}", base_url)
            if mode:
                with (
                    part.open(mode) as fh,
                    tqdm(
                        total=remote.size,
                        initial=have,
                        unit="B",
                        unit_scale=True,
                        desc=dest.name,
                        leave=False,
                        disable=not progress,
                    ) as bar,
                ):
                    for block in response.iter_content(_CHUNK):
                        fh.write(block)
                        bar.update(len(block))
    except requests.RequestException as exc:
        raise FetchError(
            f"download of {remote.key} interrupted ({exc}); rerun to resume", base_url
        ) from None
    size = part.stat().st_size
    if size != remote.size:
        raise FetchError(
            f"{remote.key}: got {size} bytes, expected {remote.size}; rerun to resume", dest
        )
    if remote.md5 and _md5(part) != remote.md5:
        part.unlink()
        raise FetchError(
            f"{remote.key}: MD5 checksum mismatch (file removed); rerun to fetch again", dest
        )
    os.replace(part, dest)
    return dest


def fetch_abide_raw(
    out_dir: str | os.PathLike[str],
    site: str,
    n_subjects: int | None = None,
    base_url: str = DEFAULT_BASE_URL,
    include_func: bool = True,
    progress: bool = True,
) -> Path:
    """Download the raw BIDS data of ``n_subjects`` subjects of one ABIDE site into ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Destination BIDS folder (``dataset_description.json``, ``participants.tsv``, ``sub-*/``).
    site : str
        ABIDE site folder name (``NYU``, ``UCLA``, …).
    n_subjects : int or None
        First ``n_subjects`` subjects (sorted); None for all.
    base_url : str
        Bucket URL (tests point it at a local server).
    include_func : bool, default=True
        Also fetch the functional runs.
    progress : bool, default=True
        Show progress bars.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    if n_subjects is not None and n_subjects < 1:
        raise InputError(f"--n-subjects must be at least 1, got {n_subjects}")
    prefix = f"{RAW_PREFIX}/{site}/"
    session = requests.Session()
    objects = list_objects(base_url.rstrip("/"), prefix, session)
    if not objects:
        raise FetchError(
            f"no files under {prefix!r}: unknown site? (known: {', '.join(ABIDE_SITES)})", base_url
        )
    subjects = sorted({m.group(1) for o in objects if (m := _SUBJECT.match(o.key[len(prefix) :]))})
    chosen = set(subjects[:n_subjects] if n_subjects else subjects)
    wanted = []
    for obj in objects:
        rel = obj.key[len(prefix) :]
        if not rel or rel.endswith("/"):
            continue
        m = _SUBJECT.match(rel)
        if m and (m.group(1) not in chosen or (not include_func and "/func/" in rel)):
            continue
        wanted.append((obj, Path(out_dir) / rel))
    total = sum(o.size for o, _ in wanted)
    logger.info(
        "ABIDE %s: %d subjects, %d files, %.1f MB", site, len(chosen), len(wanted), total / 1e6
    )
    for obj, dest in tqdm(wanted, desc=f"ABIDE {site}", unit="file", disable=not progress):
        download(obj, base_url.rstrip("/"), dest, session, progress=progress)
    return Path(out_dir)


def fetch_abide_preprocessed(
    out_dir: str | os.PathLike[str],
    site: str,
    n_subjects: int | None,
    pipeline: str = "cpac",
    derivatives: tuple[str, ...] = ("func_preproc",),
    url: str | None = None,
    base_url: str | None = None,
):
    """ABIDE Preprocessed derivatives via :func:`nilearn.datasets.fetch_abide_pcp`.

    ``base_url`` (the bucket, as for the raw data) sets ``url`` to its :data:`PCP_PREFIX`.
    """
    from nilearn.datasets import fetch_abide_pcp

    if url is None and base_url is not None:
        url = f"{base_url.rstrip('/')}/{PCP_PREFIX}"

    return fetch_abide_pcp(
        data_dir=str(out_dir),
        n_subjects=n_subjects,
        pipeline=pipeline,
        derivatives=list(derivatives),
        SITE_ID=[site],
        url=url,
        verbose=1,
    )
