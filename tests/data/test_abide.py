"""The ABIDE fetcher against a local server that speaks the S3 listing API and HTTP ranges."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.data.abide import RAW_PREFIX, FetchError, fetch_abide_raw

SITE = "NYU"


def _bucket() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    root = f"{RAW_PREFIX}/{SITE}"
    files = {
        f"{root}/dataset_description.json": b'{"Name": "ABIDE NYU", "BIDSVersion": "1.0.2"}',
        f"{root}/participants.tsv": b"participant_id\tDX_GROUP\nsub-0050001\t1\nsub-0050002\t2\n",
        f"{RAW_PREFIX}/UCLA/participants.tsv": b"other site",
    }
    for sub in ("sub-0050001", "sub-0050002", "sub-0050003"):
        files[f"{root}/{sub}/anat/{sub}_T1w.nii.gz"] = rng.bytes(30_000)
        files[f"{root}/{sub}/func/{sub}_task-rest_run-1_bold.nii.gz"] = rng.bytes(50_000)
    return files


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    log: list[tuple[str, str | None]] = []
    cut_once: set[str] = set()
    corrupt: set[str] = set()
    page_size = 4

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 (http.server API)
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path in ("", "/") and query.get("list-type") == ["2"]:
            return self._list(query["prefix"][0], int(query.get("continuation-token", ["0"])[0]))
        key = unquote(url.path.lstrip("/"))
        self.log.append((key, self.headers.get("Range")))
        if key not in self.files:
            self.send_error(404)
            return
        body = self.files[key]
        if key in self.corrupt:
            body = body[:-1] + bytes([body[-1] ^ 1])
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if key in self.cut_once:  # connection drops half way
            self.cut_once.discard(key)
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        self.wfile.write(body[start:])

    def _list(self, prefix: str, offset: int):
        keys = sorted(k for k in self.files if k.startswith(prefix))
        page = keys[offset : offset + self.page_size]
        truncated = offset + self.page_size < len(keys)
        items = "".join(
            f"<Contents><Key>{k}</Key><Size>{len(self.files[k])}</Size>"
            f"<ETag>&quot;{self._etag(k)}&quot;</ETag></Contents>"
            for k in page
        )
        more = (
            f"<NextContinuationToken>{offset + self.page_size}</NextContinuationToken>"
            if truncated
            else ""
        )
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
            f'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>fcp-indi</Name>'
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{items}{more}"
            f"</ListBucketResult>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(xml)))
        self.end_headers()
        self.wfile.write(xml)

    def _etag(self, key: str) -> str:
        if key.endswith("participants.tsv"):
            return "9b2cf535f27731c974343645a3985328-2"  # multipart upload: no MD5 to check
        return hashlib.md5(self.files[key], usedforsecurity=False).hexdigest()


@pytest.fixture
def bucket():
    _Handler.files = _bucket()
    _Handler.log, _Handler.cut_once, _Handler.corrupt = [], set(), set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Handler
    server.shutdown()
    server.server_close()


def test_fetches_first_subjects_of_a_site(bucket, tmp_path):
    url, handler = bucket
    out = fetch_abide_raw(tmp_path / "abide", SITE, n_subjects=2, base_url=url, progress=False)
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == [
        "dataset_description.json",
        "participants.tsv",
        "sub-0050001/anat/sub-0050001_T1w.nii.gz",
        "sub-0050001/func/sub-0050001_task-rest_run-1_bold.nii.gz",
        "sub-0050002/anat/sub-0050002_T1w.nii.gz",
        "sub-0050002/func/sub-0050002_task-rest_run-1_bold.nii.gz",
    ]
    key = f"{RAW_PREFIX}/{SITE}/sub-0050002/anat/sub-0050002_T1w.nii.gz"
    assert (out / "sub-0050002/anat/sub-0050002_T1w.nii.gz").read_bytes() == handler.files[key]
    # a rerun downloads nothing
    n_requests = len(handler.log)
    fetch_abide_raw(out, SITE, n_subjects=2, base_url=url, progress=False)
    assert len(handler.log) == n_requests


def test_interrupted_download_resumes_with_a_range_request(bucket, tmp_path):
    url, handler = bucket
    key = f"{RAW_PREFIX}/{SITE}/sub-0050001/func/sub-0050001_task-rest_run-1_bold.nii.gz"
    handler.cut_once.add(key)
    with pytest.raises(FetchError, match="rerun to resume"):
        fetch_abide_raw(tmp_path / "abide", SITE, n_subjects=1, base_url=url, progress=False)
    dest = tmp_path / "abide/sub-0050001/func/sub-0050001_task-rest_run-1_bold.nii.gz"
    part = dest.with_name(dest.name + ".part")
    assert not dest.exists() and part.stat().st_size > 0
    kept = part.stat().st_size
    fetch_abide_raw(tmp_path / "abide", SITE, n_subjects=1, base_url=url, progress=False)
    assert dest.read_bytes() == handler.files[key]
    ranges = [r for k, r in handler.log if k == key]
    assert ranges[0] is None and ranges[-1] == f"bytes={kept}-"


def test_checksum_mismatch_is_caught(bucket, tmp_path):
    url, handler = bucket
    key = f"{RAW_PREFIX}/{SITE}/sub-0050001/anat/sub-0050001_T1w.nii.gz"
    handler.corrupt.add(key)
    with pytest.raises(FetchError, match="MD5 checksum mismatch"):
        fetch_abide_raw(tmp_path / "abide", SITE, n_subjects=1, base_url=url, progress=False)
    assert not (tmp_path / "abide/sub-0050001/anat/sub-0050001_T1w.nii.gz").exists()


def test_cli_unknown_site_is_one_line(bucket, tmp_path, capsys):
    url, _ = bucket
    code = main(["fetch-abide", str(tmp_path / "x"), "--site", "Atlantis", "--base-url", url])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no files under" in err and "Atlantis" in err
