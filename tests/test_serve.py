"""``glae serve``: a real server process answering real HTTP requests on real UTKFace photos.

One server (the ``server`` fixture of conftest.py) runs with tight limits (1 MiB uploads, 1 megapixel) so every
refusal is reachable with small files; 503 and 504 are checked on an in-process server
whose detector is slow on purpose, and the pieces (sniffing, face cap, pool) on their own.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glae.cli import main
from glae.data.images import read_rgb
from glae.data.transforms import eval_transform
from glae.estimator import AgeEstimator
from glae.faces.align import ALIGNED_SIZE, align_face
from glae.faces.detector import DetectedFace
from glae.faces.filtering import FaceFilter
from glae.predict_options import PredictOptions
from glae.serve import ServeSettings
from glae.serve.client import LocalServer, free_port, get_json, post_image
from glae.serve.inference import LargestFaces, predict_upload
from glae.serve.pool import InferencePool, PoolBusy

MAX_AGE = 116


def _encode(image: Image.Image, format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def _check_face(face: dict, width: int, height: int) -> None:
    x1, y1, x2, y2 = face["box"]
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert np.isfinite(face["age"]) and 0 <= face["interval_90"][0] <= face["age"] <= face["interval_90"][1] <= MAX_AGE
    assert face["head"] in ("vanilla", "balanced") and len(face["landmarks"]) == 5
    assert len(face["distribution"]) == MAX_AGE + 1 and sum(face["distribution"]) == pytest.approx(1, abs=1e-4)


def test_one_face_on_a_real_crop(server: LocalServer, utk_crops: list[Path]) -> None:
    status, result = post_image(server.url + "/api/predict", utk_crops[0].read_bytes(), utk_crops[0].name)
    assert status == 200, result
    assert (result["width"], result["height"]) == Image.open(utk_crops[0]).size
    assert len(result["faces"]) == 1 and result["faces_found"] == 1 and result["elapsed_ms"] > 0
    _check_face(result["faces"][0], result["width"], result["height"])


def test_two_faces_on_a_composite(server: LocalServer, two_faces_photo: Image.Image) -> None:
    status, result = post_image(server.url + "/api/predict", _encode(two_faces_photo, "PNG"), "pair.png")
    assert status == 200, result
    assert len(result["faces"]) == 2
    for face in result["faces"]:
        _check_face(face, 440, 240)
    centres = sorted((face["box"][0] + face["box"][2]) / 2 for face in result["faces"])
    assert centres[0] < 220 < centres[1]  # one face on each crop


def test_no_face_is_an_empty_result(server: LocalServer) -> None:
    status, result = post_image(server.url + "/api/predict", _encode(Image.new("RGB", (300, 200), (90, 140, 200)), "PNG"))
    assert status == 200 and result["faces"] == [] and result["faces_found"] == 0


@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("oversized.jpg", b"\xff\xd8\xff" + bytes(1_500_000), 413, "larger than the limit of 1 MiB"),
        ("notes.jpg", b"just some text, whatever the name says\n" * 20, 415, "not an image"),
        ("empty.jpg", b"", 422, "empty"),
    ],
)
def test_refused_uploads(server: LocalServer, name: str, data: bytes, status: int, message: str) -> None:
    answer = post_image(server.url + "/api/predict", data, name)
    assert answer[0] == status and message in answer[1]["error"]


def test_corrupt_and_oversized_images_are_422(server: LocalServer, utk_crops: list[Path]) -> None:
    truncated = utk_crops[1].read_bytes()[:300]
    status, result = post_image(server.url + "/api/predict", truncated, "truncated.jpg")
    assert status == 422 and "corrupt or truncated" in result["error"]
    big = _encode(Image.new("L", (1200, 1000)), "PNG")  # 1.2 megapixels in a few kB
    status, result = post_image(server.url + "/api/predict", big, "big.png")
    assert status == 422 and "exceeds the limit of 1000000" in result["error"]


def test_page_health_and_json_errors(server: LocalServer) -> None:
    assert get_json(server.url + "/health") == (200, {"status": "ok", "model": "tiny.safetensors"})
    assert get_json(server.url + "/missing") == (404, {"error": "Not Found"})
    with urllib.request.urlopen(server.url + "/", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/html")
        page = response.read().decode()
    assert 'type="file"' in page
    for asset in ("/static/page.js", "/static/page.css"):
        with urllib.request.urlopen(server.url + asset, timeout=10) as response:
            page += response.read().decode()
    assert not re.search(r"""(src=|href=|url\(|import |fetch\()\s*["']?(https?:)?//""", page)  # works offline


def test_cli_fails_in_one_line_without_a_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("glae.estimator.default_model_path", lambda: tmp_path / "absent.safetensors")
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: no default model shipped")
    assert main(["serve", "--model", str(tmp_path / "model.safetensors"), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --workers must be >= 1, got 0"


@pytest.mark.parametrize("format", ["AVIF", "TGA", "IM"])  # TGA and IM have no signature Pillow tests
def test_a_photo_in_any_listed_format_is_estimated(server: LocalServer, utk_crops: list[Path], format: str) -> None:
    status, body = post_image(server.url + "/api/predict", _encode(Image.open(utk_crops[0]), format), f"photo.{format.lower()}")
    assert status == 200 and body["faces_found"] == 1, body


class _FakeDetector:
    POINTS = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], dtype=np.float32)

    def __init__(self, sides: list[float], delay: float = 0.0) -> None:
        self.sides, self.delay = sides, delay

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        time.sleep(self.delay)
        return [DetectedFace((0.0, 0.0, side, side), self.POINTS, 0.99) for side in self.sides]


def test_largest_faces_are_kept() -> None:
    capped = LargestFaces(_FakeDetector([10, 50, 30, 40]), limit=2, keep=FaceFilter(0, 0))
    assert [face.box[2] for face in capped.detect(Image.new("RGB", (64, 64)))] == [50, 40]
    assert capped.found == 4


def test_filtered_faces_are_neither_kept_nor_counted() -> None:
    capped = LargestFaces(_FakeDetector([10, 50, 30, 40]), limit=2, keep=FaceFilter(0.5, 35))
    assert [face.box[2] for face in capped.detect(Image.new("RGB", (64, 64)))] == [50, 40]
    assert capped.found == 2


def test_an_upload_is_estimated_with_the_servers_options(
    model_file: Path, utk_crops: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch size, margin and face filter of ``glae serve``'s options, seen by the model."""
    options = PredictOptions(batch_size=1, margin=0.5, min_face_size=20, device="cpu")
    estimator = AgeEstimator.load(model_file, options, _FakeDetector([90, 80, 10]))
    batches: list[torch.Tensor] = []
    run_model = estimator.predictor.predict_routed
    monkeypatch.setattr(estimator.predictor, "predict_routed", lambda images: batches.append(images) or run_model(images))
    data = _encode(Image.open(utk_crops[0]), "PNG")
    result = predict_upload(estimator, data, max_pixels=1_000_000, max_faces=20)
    assert result["faces_found"] == len(result["faces"]) == 2  # the 10 px face is no face
    assert [len(batch) for batch in batches] == [1, 1]
    aligned = align_face(read_rgb(data), _FakeDetector.POINTS, ALIGNED_SIZE, options.margin)
    torch.testing.assert_close(batches[0][0], eval_transform(64, estimator.predictor.normalization)(aligned))


def test_pool_refuses_past_capacity_and_frees_slots_when_work_ends() -> None:
    pool = InferencePool(workers=1, queue=1)
    release = threading.Event()

    async def run(function: Callable[[], object]) -> object:
        with pool.admit() as slot:  # as a route does: a slot first, then the work
            return await slot.run(function)

    async def scenario() -> None:
        first = asyncio.ensure_future(run(release.wait))
        second = asyncio.ensure_future(run(release.wait))
        await asyncio.sleep(0.05)
        with pytest.raises(PoolBusy):
            await run(release.wait)
        release.set()
        assert await first and await second
        assert await run(lambda: 7) == 7

    asyncio.run(scenario())
    pool.shutdown()


def test_a_full_server_refuses_before_reading_the_upload_and_a_dropped_admission_frees_its_slot() -> None:
    """The slot is taken before the body is read, so a busy server holds no uploads it will refuse."""
    pool = InferencePool(workers=1, queue=0)
    with pool.admit():  # a request reading its upload
        with pytest.raises(PoolBusy):
            pool.admit()
    with pool.admit():  # the first one failed (bad upload) without running: its slot came back
        pass
    with pool.admit() as slot:
        assert asyncio.run(slot.run(lambda: 7)) == 7
    pool.shutdown()


def test_busy_and_timeout_answers(model_file: Path, utk_crops: list[Path]) -> None:
    """503 when the one worker and its queue are taken, 504 past the timeout: JSON both times."""
    import uvicorn

    from glae.serve.app import create_app

    estimator = AgeEstimator.load(model_file, PredictOptions(device="cpu"), _FakeDetector([100], delay=3.0))
    app = create_app(estimator, ServeSettings(timeout_s=1.0, workers=1, queue=0), "tiny")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/api/predict"
        data = utk_crops[0].read_bytes()
        with ThreadPoolExecutor(2) as clients:
            slow = clients.submit(post_image, url, data)
            time.sleep(0.5)
            busy = clients.submit(post_image, url, data)
            assert busy.result()[0] == 503 and "busy" in busy.result()[1]["error"]
            assert slow.result() == (504, {"error": "the request took longer than 1 s"})
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def _recv_all(sock, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (b"" if it never answers)."""
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


@contextmanager
def _server_in_thread(model_file: Path, settings: ServeSettings) -> Iterator[int]:
    """The app under uvicorn with GLAE's protocol, in this process (a face-free detector); yields its port."""
    import uvicorn

    from glae.serve.app import create_app
    from glae.serve.server import server_config

    estimator = AgeEstimator.load(model_file, PredictOptions(device="cpu"), _FakeDetector([]))
    port = free_port()
    server = uvicorn.Server(server_config(create_app(estimator, settings, "tiny"), settings, "127.0.0.1", port, "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_connections_that_never_finish_their_headers_are_bounded(model_file: Path) -> None:
    """A cap on open connections (JSON 503 past it) and a header deadline, with 5 loopback sockets."""
    import socket

    slow = []
    with _server_in_thread(model_file, ServeSettings(header_timeout_s=1.0, max_connections=4)) as port:
        try:
            for _ in range(4):
                slow.append(socket.create_connection(("127.0.0.1", port)))
                slow[-1].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", port)) as extra:
                answer = _recv_all(extra, timeout=5)
            assert answer.startswith(b"HTTP/1.1 503") and b'"error": "the server has 4 connections open' in answer
            started = time.monotonic()
            for sock in slow:
                assert _recv_all(sock, timeout=5) == b""  # closed by the server, no request ever ran
            assert time.monotonic() - started < 3
            assert get_json(f"http://127.0.0.1:{port}/health")[0] == 200  # the slots are free again
        finally:
            for sock in slow:
                sock.close()


def _read_response(sock) -> bytes:
    """One HTTP response (headers and its content-length body) from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096) or pytest.fail(f"connection closed after {data!r}")
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
    while len(body) < length:
        body += sock.recv(4096) or pytest.fail("connection closed mid-body")
    return head + b"\r\n\r\n" + body


def test_a_keep_alive_connection_stays_open_after_an_answer_near_a_deadline_tick(model_file: Path, utk_crops: list[Path]) -> None:
    """An upload spanning the header deadline's first tick, answered just before the next: the
    idle time counts from the answer, so the client's next request on the connection is served."""
    import socket

    boundary = "glae-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode() + utk_crops[0].read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with _server_in_thread(model_file, ServeSettings(header_timeout_s=1.0)) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        sock.sendall(head + body[:20])  # the request runs from here: the tick at 1 s lets it be
        time.sleep(1.85)
        sock.sendall(body[20:])
        assert _read_response(sock).startswith(b"HTTP/1.1 200")  # about 0.1 s before the tick at 2 s
        time.sleep(0.3)  # past that tick, well within the deadline counted from the answer
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock).startswith(b"HTTP/1.1 200")


def test_port_out_of_range_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "70000", "--model", "/nonexistent.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --port 70000 is not a TCP port; use 1..65535 (default 8000)\n"


@pytest.mark.parametrize(("option", "value"), [("--max-upload-mb", "nan"), ("--timeout", "inf"), ("--header-timeout", "nan")])
def test_non_finite_limits_are_one_line_at_startup(option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--max-upload-mb nan`` once passed the check, then every upload answered 500."""
    assert main(["serve", option, value, "--model", "/nonexistent.safetensors"]) == 2
    assert capsys.readouterr().err == f"error: {option} must be a positive finite number, got {float(value)}\n"


def test_a_client_that_disconnects_mid_upload_is_a_400_not_a_server_bug() -> None:
    """Ctrl-C during a slow upload is an ApiError 400, which the app answers without logging a traceback as a bug."""
    import asyncio

    from starlette.requests import Request

    from glae.serve.errors import ApiError
    from glae.serve.upload import read_image_upload

    messages = iter([{"type": "http.request", "body": b"--x\r\n" + b"\0" * 1000, "more_body": True}, {"type": "http.disconnect"}])

    async def receive() -> dict:
        return next(messages)

    scope = {"type": "http", "method": "POST", "path": "/api/predict", "headers": [(b"content-length", b"1000000")]}
    with pytest.raises(ApiError) as refused:
        asyncio.run(read_image_upload(Request(scope, receive), max_bytes=2**20))
    assert (refused.value.status, refused.value.message) == (400, "the client disconnected before its upload was complete")
