"""Small HTML pages: what is deployed, each version and job, and an upload-an-image form.

These are the pages the Airflow extra links open when the endpoint is local.
The form sends the image through the same prediction path as the API.
"""

from __future__ import annotations

import base64
import html
import json

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from include.local_platform.api.security import Guard
from include.local_platform.context import Context
from include.local_platform.errors import ApiError, PredictionError
from include.local_platform.resources import artifacts, jobs, models, operations
from include.local_platform.resources.names import job_name
from include.local_platform.serving import prediction
from include.local_platform.serving.numeric_json import dumps
from include.local_platform.workers import trainer_process, training

#: Largest upload the form takes (whole request), and most pixels an uploaded image may have.
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4_000_000
LOG_PAGE_BYTES = 4 * 1024 * 1024
_STYLE = """<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
.READY,.SUCCEEDED{color:#070}.FAILED{color:#b00}pre{background:#f4f4f4;padding:.6rem;overflow:auto}</style>"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}"
            f"</head><body><p><a href='/ui'>ml/v1 local service</a></p><h1>{html.escape(title)}</h1>"
            f"{body}</body></html>")


def _esc(value: object) -> str:
    return html.escape(str(value))


def index(ctx: Context) -> str:
    rows = []
    for model in ctx.store.list("model"):
        default = (model.get("defaultVersion") or {}).get("name", "")
        for version in ctx.store.list("version", model["name"]):
            marker = " (default)" if version["name"] == default else ""
            rows.append(f"<tr><td>{_esc(model['name'])}</td><td><a href='/ui/{_esc(version['name'])}'>"
                        f"{_esc(version['name'].rsplit('/', 1)[-1])}</a>{marker}</td>"
                        f"<td class='{_esc(version['state'])}'>{_esc(version['state'])}</td>"
                        f"<td>{_esc(version['createTime'])}</td></tr>")
    job_rows = [
        f"<tr><td><a href='/ui/{_esc(job['_name'])}'>{_esc(job['jobId'])}</a></td>"
        f"<td class='{_esc(job['state'])}'>{_esc(job['state'])}</td><td>{_esc(job['createTime'])}</td></tr>"
        for job in reversed(ctx.store.list("job"))
    ]
    return _page("Models, versions and jobs",
                 "<h2>Versions</h2><table><tr><th>model</th><th>version</th><th>state</th><th>created</th></tr>"
                 + "".join(rows) + "</table><h2>Jobs</h2><table><tr><th>job</th><th>state</th>"
                 "<th>created</th></tr>" + "".join(job_rows[:200]) + "</table>")


def refusal(message: str) -> str:
    return _page("Refused", f"<p>{_esc(message)}</p>")


def _version_page(ctx: Context, project: str, model: str, version: str, form, csrf: str) -> str:
    current = models.with_default_flag(ctx, models.get_version(ctx, project, model, version))
    result = ""
    if form is not None and form.get("image") is not None:
        result = _predict_upload(ctx, current["name"], form)
    upload = ("<h2>Try it</h2><form method='post' enctype='multipart/form-data' "
              f"action='?csrf_token={_esc(csrf)}'><input type='hidden' name='csrf_token' value='{_esc(csrf)}'>"
              "<input type='file' name='image' accept='image/jpeg,image/png'> "
              "<button type='submit'>Predict</button></form>") if current["state"] == "READY" else ""
    return _page(f"Version {version} of {model}",
                 f"<pre>{_esc(json.dumps(current, indent=2))}</pre>{upload}{result}")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG, PNG, GIF or BMP header, without decoding the pixels; None otherwise."""
    import struct

    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:3] == b"\xff\xd8\xff":
        import tensorflow as tf

        try:
            height, width, _ = tf.image.extract_jpeg_shape(data).numpy().tolist()
        except (tf.errors.OpError, ValueError):
            return None
        return width, height
    return None


def _predict_upload(ctx: Context, version_name: str, form) -> str:
    """Predict on an uploaded image: JPEG bytes for ``*_bytes`` inputs, a float tensor for image inputs.

    The image's size is read from its header first: more than MAX_UPLOAD_PIXELS is refused before any
    pixel is decoded (a small PNG can hold a huge, memory-filling image).
    """
    import tensorflow as tf

    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        return "<h2>No image</h2><p>Choose an image file (JPEG, PNG, GIF or BMP) to upload.</p>"
    data = upload.file.read(MAX_UPLOAD_BYTES + 1)
    size = image_size(data)
    if size is None:
        return "<h2>Not an image</h2><p>The file is not a JPEG, PNG, GIF or BMP image.</p>"
    if size[0] * size[1] > MAX_UPLOAD_PIXELS:
        return (f"<h2>Image too large</h2><p>{size[0]}x{size[1]} pixels; at most {MAX_UPLOAD_PIXELS:,} pixels "
                "are decoded here.</p>")
    version = models.resolve_for_prediction(ctx, version_name)
    signature = ctx.models.get(version["name"], artifacts.local_dir(ctx, version)).signature(None)
    instance: dict = {}
    try:
        for alias, spec in signature.inputs.items():
            if alias == "key":
                instance[alias] = "upload"
            elif spec.dtype.name == "string":
                instance[alias] = {"b64": base64.b64encode(data).decode("ascii")}
            else:
                height, width = spec.shape.as_list()[1:3]
                image = tf.image.resize(tf.io.decode_image(data, channels=3, expand_animations=False),
                                        (height, width)) / 255.0
                instance[alias] = image.numpy().tolist()
        answer = orjson.loads(dumps(prediction.predict(signature, [instance], ctx.scratch_dir)[0]))
    except (PredictionError, tf.errors.OpError, ValueError) as error:
        return f"<h2>Prediction failed</h2><pre>{_esc(error)}</pre>"
    shown = {key: (value if len(json.dumps(value)) < 2000 else f"<{len(json.dumps(value))} bytes of JSON>")
             for key, value in answer.items()}
    heatmap = answer.get("heatmap")
    picture = ""
    if heatmap is not None:
        pixels = tf.cast(tf.clip_by_value(tf.constant(heatmap)[..., None], 0, 1) * 255, tf.uint8)
        png = tf.io.encode_png(tf.image.resize(pixels, (256, 256), method="nearest")).numpy()
        picture = f"<p><img alt='heatmap' src='data:image/png;base64,{base64.b64encode(png).decode()}'></p>"
    return f"<h2>Prediction</h2>{picture}<pre>{_esc(json.dumps(shown, indent=2))}</pre>"


def _training_log(ctx: Context, job: dict, project: str, lines: int = 500) -> str:
    """The trainer's last lines; the page reloads itself every 3 s while the job is active."""
    tail = trainer_process.tail_lines(training.log_path(ctx, f"projects/{project}/jobs/{job['jobId']}"), lines)
    active = job["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED")
    refresh = "<meta http-equiv='refresh' content='3'>" if active else ""
    whole = f"/ui/projects/{_esc(project)}/jobs/{_esc(job['jobId'])}/log"
    return (f"{refresh}<h2>Training log</h2><p>Last {lines} lines{' (refreshing)' if active else ''}; "
            f"all of it: <a href='{whole}'>{whole}</a></p><pre id='training-log'>{_esc(chr(10).join(tail))}"
            "</pre>")


def _whole_log(ctx: Context, project: str, job_id: str) -> str:
    """A training job's whole log (its last LOG_PAGE_BYTES), as the log API gives it to the operators."""
    jobs.get_job(ctx, project, job_id)  # 404 for a job that does not exist
    lines = trainer_process.tail_lines(training.log_path(ctx, f"projects/{project}/jobs/{job_id}"),
                                       count=10**6, size=LOG_PAGE_BYTES)
    return _page(f"Training log of {job_id}", f"<pre>{_esc(chr(10).join(lines))}</pre>")


def _batch_engine(ctx: Context, project: str, job: dict) -> str:
    """Where a batch job ran: the engine, Beam's runner and, on Dataflow, its job id and console page."""
    stored = ctx.store.get(job_name(project, job["jobId"])) or {}
    rows = [("Batch engine", _esc(stored.get("_batchEngine", "local")))]
    if stored.get("_beamRunner"):
        rows.append(("Beam runner", _esc(stored["_beamRunner"])))
    if stored.get("_beamJobId"):
        job_id = _esc(stored["_beamJobId"])
        url = stored.get("_beamConsoleUrl")
        rows.append(("Beam job", f"<a href='{_esc(url)}'>{job_id}</a>" if url else job_id))
    return "<table>" + "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows) + "</table>"


def render(ctx: Context, path: str, form, csrf: str = "") -> tuple[int, str]:
    """Route a ``/ui/...`` page; resource paths are the ml/v1 names; ``csrf`` goes into the upload form."""
    parts = path.strip("/").split("/")
    try:
        if len(parts) == 6 and parts[2] == "models" and parts[4] == "versions":
            return 200, _version_page(ctx, parts[1], parts[3], parts[5], form, csrf)
        if len(parts) == 4 and parts[2] == "jobs":
            job = jobs.get_job(ctx, parts[1], parts[3])
            return 200, _page(f"Job {parts[3]}", f"<pre>{_esc(json.dumps(job, indent=2))}</pre>"
                              + (_training_log(ctx, job, parts[1]) if "trainingInput" in job else "")
                              + (_batch_engine(ctx, parts[1], job) if "predictionInput" in job else ""))
        if len(parts) == 5 and parts[2] == "jobs" and parts[4] == "log":
            return 200, _whole_log(ctx, parts[1], parts[3])
        if len(parts) == 4 and parts[2] == "operations":
            operation = operations.get(ctx, path.strip("/"))
            return 200, _page(f"Operation {parts[3]}", f"<pre>{_esc(json.dumps(operation, indent=2))}</pre>")
    except ApiError as error:
        return error.code, _page("Not found", f"<p>{_esc(error.message)}</p>")
    return 404, _page("Not found", f"<p>No page for {_esc(path)}.</p>")


def add_routes(app: FastAPI, ctx: Context, guard: Guard) -> None:
    """``/`` and ``/ui``: the index; ``/ui/<resource name>``: a version, job or operation (POST: the upload form)."""

    @app.get("/", response_class=HTMLResponse)
    @app.get("/ui", response_class=HTMLResponse)
    def _index() -> str:
        return index(ctx)

    @app.api_route("/ui/{path:path}", methods=["GET", "POST"], response_class=HTMLResponse)
    async def _page_route(path: str, request: Request) -> HTMLResponse:
        form = None
        if request.method == "POST":  # the CSRF token and the size are checked before the body is read
            if not guard.csrf_valid(request.url.path, request.query_params.get("csrf_token")):
                return HTMLResponse(refusal("The form has expired or did not come from this page; "
                                            "reload the page and try again."), status_code=403)
            if int(request.headers.get("content-length") or MAX_UPLOAD_BYTES + 1) > MAX_UPLOAD_BYTES:
                return HTMLResponse(refusal(f"Uploads are limited to {MAX_UPLOAD_BYTES // 2**20} MB."),
                                    status_code=413)
            form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
        csrf = guard.csrf_token(request.url.path)
        status, page = await run_in_threadpool(render, ctx, path, form, csrf)
        return HTMLResponse(page, status_code=status)
