"""Every page behind the token: the login form, its session cookie, and the upload form's limits.

Found by a review run as an attacker on the same machine would: ``/ui`` listed every job,
version and operation and showed training logs without any header, and the upload form
read whole bodies before its CSRF check and decoded images of any size.
"""

from __future__ import annotations

import re
import struct
import time
import zlib
from pathlib import Path
from urllib.parse import quote

import pytest

from include.local_platform.api.pages import MAX_UPLOAD_PIXELS
from include.local_platform.api.security import SESSION_COOKIE, read_token
from tests.include.local_platform.api.test_ml_v1_predict import jpeg
from tests.include.local_platform.api.test_security import raw
from tests.include.local_platform.conftest import PARENT, unique


def _response(service, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one request with exactly these headers."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def pages(ml_api, deploy):
    """A page of each kind: the index, a version, a job, an operation."""
    _, version = deploy("images")
    job_id = unique("page_job")
    ml_api.projects().jobs().create(parent=PARENT, body={"jobId": job_id, "trainingInput": {
        "packageUris": ["gs://nowhere/p-0.1.tar.gz"], "pythonModule": "m", "region": "us-central1"}}).execute()
    operation = ml_api.projects().operations().list(name=PARENT).execute()["operations"][0]["name"]
    return ["/", "/ui", f"/ui/{version}", f"/ui/{PARENT}/jobs/{job_id}", f"/ui/{operation}"]


def test_every_page_without_the_token_goes_to_the_login_form(ml_service, pages):
    for path in pages:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": f"{SESSION_COOKIE}=forged"}):
            status, answer_headers, body = _response(ml_service, "GET", path, headers=headers)
            assert status == 303, (path, headers)
            assert answer_headers["location"] == f"/ui/login?next={quote(path, safe='')}", path
            assert b"projects/" not in body  # nothing of the page itself
        status, _, body = _response(ml_service, "GET", path, headers=ml_service.headers)
        assert status == 200 and b"<h1>" in body, path
    status, headers, _ = _response(ml_service, "POST", pages[2], b"x", {"Content-Type": "text/plain"})
    assert status == 303 and headers["location"] == "/ui/login?next=%2Fui"


def test_login_sets_an_httponly_samesite_strict_cookie_that_opens_pages_not_the_api(ml_service, pages):
    status, headers, _ = _response(ml_service, "GET", f"/ui/login?token=wrong&next={quote(pages[2])}")
    assert status == 401 and "set-cookie" not in headers
    status, headers, _ = _response(ml_service, "GET", f"/ui/login?token={ml_service.token}&next={quote(pages[2])}")
    assert status == 303 and headers["location"] == pages[2]  # the token leaves the address bar at once
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/" in cookie
    value = re.match(rf"{SESSION_COOKIE}=([^;]+)", cookie).group(1)
    assert ml_service.token not in cookie
    session = {"Cookie": f"{SESSION_COOKIE}={value}"}
    for path in pages:
        assert _response(ml_service, "GET", path, headers=session)[0] == 200, path
    job_page = _response(ml_service, "GET", pages[3], headers=session)[2].decode()
    assert f"href='{pages[3]}/log'" in job_page  # the whole log, behind the same cookie
    deadline = time.monotonic() + 30
    while b"downloading gs://nowhere" not in (log := _response(ml_service, "GET", f"{pages[3]}/log",
                                                              headers=session))[2] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert log[0] == 200 and b"downloading gs://nowhere/p-0.1.tar.gz" in log[2]
    assert raw(ml_service, "GET", f"/v1/{PARENT}/models", headers=session)[0] == 401  # the API wants the header
    status, headers, _ = _response(ml_service, "GET", "/ui/logout", headers=session)
    assert status == 303 and f"{SESSION_COOKIE}=" in headers["set-cookie"] and "Max-Age=0" in headers["set-cookie"]


@pytest.mark.parametrize(("wanted", "lands"), [("/ui/projects/p/jobs/j", "/ui/projects/p/jobs/j"),
                                               ("//evil.example/ui", "/ui"), ("https://evil.example", "/ui"),
                                               ("/ui/../../etc", "/ui/../../etc"), ("javascript:x", "/ui")])
def test_login_goes_only_to_pages_of_this_service(ml_service, wanted, lands):
    status, headers, _ = _response(ml_service, "GET", f"/ui/login?token={ml_service.token}&next={quote(wanted)}")
    assert status == 303 and headers["location"] == lands


def test_login_form_posts_from_this_origin_only(ml_service):
    body = f"token={ml_service.token}&next=%2Fui".encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert _response(ml_service, "POST", "/ui/login", body, {**form, "Origin": "http://evil.example"})[0] == 403
    status, headers, _ = _response(ml_service, "POST", "/ui/login", body, form)
    assert status == 303 and headers["location"] == "/ui" and SESSION_COOKIE in headers["set-cookie"]
    assert _response(ml_service, "POST", "/ui/login", b"token=nope", form)[0] == 401
    assert _response(ml_service, "GET", "/ui/login")[0] == 200  # the form itself is open


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixel data is a few bytes: never decoded here)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + zlib.compress(b"\0" * 64)


def _upload(ml_service, version: str, parts: list[tuple[str, str | None, bytes]], **headers) -> tuple[int, bytes]:
    _, page = raw(ml_service, "GET", f"/ui/{version}", headers=ml_service.headers)
    csrf = re.search(rb"action='\?csrf_token=([0-9a-f]+)'", page).group(1).decode()
    boundary = "b0undary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode()
        + (f'; filename="{filename}"\r\nContent-Type: application/octet-stream'.encode() if filename else b"")
        + b"\r\n\r\n" + data + b"\r\n" for name, filename, data in parts) + f"--{boundary}--\r\n".encode()
    all_headers = {**ml_service.headers, "Content-Type": f"multipart/form-data; boundary={boundary}", **headers}
    return raw(ml_service, "POST", f"/ui/{version}?csrf_token={csrf}", body, all_headers)


def test_upload_form_refuses_huge_images_text_fields_and_oversize_bodies_before_decoding(ml_service, deploy):
    _, version = deploy("images")
    status, page = _upload(ml_service, version, [("image", "bomb.png", _png_header(20_000, 20_000))])
    assert status == 200 and b"Image too large" in page and f"{MAX_UPLOAD_PIXELS:,}".encode() in page
    status, page = _upload(ml_service, version, [("image", None, b"just text")])
    assert status == 200 and b"No image" in page  # was a 500
    status, page = _upload(ml_service, version, [("image", "x.bin", b"not an image at all")])
    assert status == 200 and b"Not an image" in page
    status, page = _upload(ml_service, version, [("image", "a.jpg", jpeg(200))])
    assert status == 200 and b"<h2>Prediction</h2>" in page
    status, _ = _upload(ml_service, version, [("image", "a.jpg", jpeg(200))], **{"Content-Length": "999999999"})
    assert status == 413  # refused from the header: the body is never read


def test_token_file_first_line_owner_only_and_sane_length(tmp_path: Path):
    good = tmp_path / "token"
    good.write_text("s3cr3t-token-of-32-characters-xx\nsecond line ignored\n")
    good.chmod(0o600)
    assert read_token(good) == "s3cr3t-token-of-32-characters-xx"
    good.chmod(0o644)
    with pytest.raises(ValueError, match="readable by other users"):
        read_token(good)
    for content in ("short\n", "two words in a token here\n", "x" * 5000):
        bad = tmp_path / "bad"
        bad.write_text(content)
        bad.chmod(0o600)
        with pytest.raises(ValueError, match="first line must be one token"):
            read_token(bad)
