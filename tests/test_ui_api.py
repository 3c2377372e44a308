"""The web tool's API (``backdoorlab ui``) with FastAPI's test client: every endpoint, then hostile requests.

A tiny poisoned LeNet (BadNets, a white 4×4 square at the bottom-right → class 0, trained for a few seconds on
400 mnist5k images) is built once per session and shared with ``test_ui_e2e.py``.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():  # starlette asks for httpx2 instead of httpx; both work
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from backdoorlab.audit.alt_triggers import crop, measure
from backdoorlab.audit.smoothadv import PAPER_PIXELS, scale_eps
from backdoorlab.experiments.store import RunRecord, RunStore
from backdoorlab.ui.app import create_app, is_loopback, run_ui_cli
from backdoorlab.ui.images import png_bytes
from backdoorlab.ui.triggers import color_shape_trigger, masked_success, shape_mask

HEADERS = {"x-backdoorlab": "1"}
RUN_ID = "abcd1234"
TARGET = 0
# the cached model files below live here; removed when the test process exits
_FILES = tempfile.TemporaryDirectory(prefix="backdoorlab-ui-")


# -- shared fixtures (also used by test_ui_e2e.py) -----------------------------------------------------------
@functools.cache
def tiny_model_file() -> Path:
    """A poisoned LeNet saved with ``save_model``; built once per test session (≈ 3 s on one core)."""
    from backdoorlab.attacks.registry import make_attack
    from backdoorlab.data.registry import load_dataset
    from backdoorlab.models import create_model, save_model
    from backdoorlab.training import TrainRecipe, fit
    from backdoorlab.triggers import square

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread is ~10× faster than two on a busy 2-core machine
    try:
        train, _ = load_dataset("mnist5k")
        sub = train.per_class(40, seed=0)
        attack = make_attack(
            "badnets", target=TARGET, rate=0.25, trigger=square(4, 1.0, placement="bottom-right")
        )
        poisoned = attack.poison(sub, torch.Generator().manual_seed(0))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = create_model("lenet", in_channels=1, num_classes=10, input_size=28)
        recipe = TrainRecipe(epochs=5, batch_size=50, optimizer="adam", lr=1e-3, channels_last=False)
        fit(model, poisoned.data, recipe, seed=0, device="cpu")
        path = Path(_FILES.name) / "tiny-badnets.safetensors"
        save_model(model, path, classes=train.classes, extra={"poisoned": True, "data": "mnist5k"})
    finally:
        torch.set_num_threads(threads)
    return path


@functools.cache
def clean_model_file() -> Path:
    """An untrained LeNet (distinct weights) standing in for a run's clean reference."""
    from backdoorlab.models import create_model, save_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = create_model("lenet", in_channels=1, num_classes=10, input_size=28)
    path = Path(_FILES.name) / "clean.safetensors"
    save_model(model, path, classes=[str(i) for i in range(10)])
    return path


def make_home(root: Path) -> Path:
    """A workspace with one stored run (poisoned victim + clean reference + HTML report) and a reproduction."""
    home = root / "home"
    folders = {}
    for role, src in (("victim", tiny_model_file()), ("clean", clean_model_file())):
        folder = home / "cache" / "model" / f"{role}key"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(src.read_bytes())
        folders[role] = str(folder)
    run_dir = home / "runs" / RUN_ID
    run_dir.mkdir(parents=True)
    report = run_dir / "report.html"
    report.write_text("<!doctype html><title>run report</title><h1>Run report of badnets-tiny</h1>")
    config = {
        "name": "badnets-tiny",
        "data": {"name": "mnist5k", "options": {}},
        "model": {"name": "lenet"},
        "attack": {"name": "badnets", "target": TARGET, "rate": 0.25},
    }
    metrics = {"victim": {"clean_acc": 0.88, "asr": 0.97}, "clean": {"clean_acc": 0.1}, "history": {}}
    RunStore(home / "store.sqlite").add(
        RunRecord(RUN_ID, "badnets-tiny", time.time(), 3.0, config, metrics, folders, str(report))
    )
    repro = home / "reproductions" / "demo-small"
    repro.mkdir(parents=True)
    (repro / "report.html").write_text("<!doctype html><h1>Reproduction demo</h1>")
    (repro / "fig1.png").write_bytes(png_bytes(torch.rand(3, 8, 8)))
    (repro / "results.json").write_text('{"ok": true}')
    return home


def wait_job(client: TestClient, job_id: str, timeout: float = 60.0) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return make_home(tmp_path_factory.mktemp("ui-api"))


@pytest.fixture(scope="module")
def client(home) -> TestClient:
    app = create_app(home, denoiser_settings={"max_images": 64, "min_samples": 64, "depth": 2, "width": 4})
    with TestClient(app, headers=HEADERS) as c:
        yield c
    app.state.ui.jobs.shutdown()


@pytest.fixture(scope="module")
def model_ids(client) -> dict[str, str]:
    models = client.get("/api/models").json()["models"]
    return {m["role"]: m["id"] for m in models}


@pytest.fixture(scope="module")
def session(client, model_ids) -> dict:
    """A Basic Adv attack session on the poisoned victim (fast: 10 steps)."""
    body = {
        "model_id": model_ids["victim"],
        "dataset": "mnist5k",
        "method": "basic",
        "steps": 10,
        "n_images": 6,
        "n_eval": 40,
    }
    r = client.post("/api/attacks", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "done", job["error"]
    return job["result"]


def decode_png(url_or_bytes) -> torch.Tensor:
    import base64

    from PIL import Image

    data = url_or_bytes
    if isinstance(data, str):
        data = base64.b64decode(data.split(",", 1)[1])
    im = Image.open(io.BytesIO(data))
    im.load()
    import numpy as np

    return torch.from_numpy(np.array(im))


# -- pages and static files ----------------------------------------------------------------------------------
def test_index_and_static_files_are_served_with_security_headers(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for needle in (
        'id="model-select"',
        'id="upload-file"',
        'id="eps"',
        'for="eps"',
        'id="success-best"',
        'id="decide-form"',
        "/static/app.js",
        "/static/style.css",
    ):
        assert needle in r.text
    assert "http://" not in r.text and "https://" not in r.text  # nothing fetched from the internet
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    js = client.get("/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in js.text  # data is written with textContent only
    css = client.get("/static/style.css")
    assert "image-rendering: pixelated" in css.text
    assert client.get("/static/nothing.js").status_code == 404
    assert client.get("/favicon.ico").status_code == 204


def test_info_lists_datasets_methods_and_paper_defaults(client):
    info = client.get("/api/info").json()
    names = {d["name"]: d for d in info["datasets"]}
    assert "mnist5k" in names and "shapes" in names and "folder" not in names
    assert names["mnist5k"]["defaults"]["eps"] == pytest.approx(scale_eps(60, PAPER_PIXELS, 784), abs=1e-3)
    assert names["mnist5k"]["defaults"]["patch_size"] == 4  # 30/224 of 28 px
    assert set(info["methods"]) == {"smoothadv", "smoothing", "basic"}
    assert "circle" in info["shapes"] and info["max_upload_bytes"] == 64 * 1024 * 1024


# -- models ------------------------------------------------------------------------------------------------------
def test_stored_run_models_are_listed_with_ground_truth(client, model_ids):
    models = {m["role"]: m for m in client.get("/api/models").json()["models"]}
    victim, clean = models["victim"], models["clean"]
    assert victim["truth"] == "poisoned" and clean["truth"] == "clean"
    assert victim["runs"] == [RUN_ID] and victim["source"] == "run" and victim["data"] == "mnist5k"
    header = json.loads(st_load_meta(tiny_model_file())["backdoorlab"])
    assert victim["id"] == header["sha256"]
    one = client.get(f"/api/models/{victim['id']}").json()
    assert one["name"] == victim["name"] and one["input_shape"] == [1, 28, 28]


def st_load_meta(path: Path) -> dict:
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])["__metadata__"]


def test_upload_keeps_a_safetensors_model_under_its_hash(tmp_path):
    home = tmp_path / "h"
    with TestClient(create_app(home), headers=HEADERS) as c:
        data = tiny_model_file().read_bytes()
        r = c.post(
            "/api/models/upload?name=my tiny model",
            content=data,
            headers={"content-type": "application/octet-stream"},
        )
        assert r.status_code == 201, r.text
        model = r.json()["model"]
        assert (
            model["name"] == "my tiny model" and model["truth"] == "poisoned" and model["source"] == "upload"
        )
        assert (home / "ui" / "models" / f"{model['id']}.safetensors").read_bytes() == data
        again = c.post("/api/models/upload", content=data).json()["model"]
        assert again["id"] == model["id"]
        assert [m["id"] for m in c.get("/api/models").json()["models"]] == [model["id"]]


# -- inspect: attacks and jobs -------------------------------------------------------------------------------------
def test_basic_adv_session_shows_clean_and_adversarial_images_with_predictions(client, session):
    assert session["method"] == "basic" and len(session["images"]) == 6 and session["held_out"] == 40
    eps = session["settings"]["eps"]
    assert eps == pytest.approx(scale_eps(60, PAPER_PIXELS, 784), abs=1e-3)
    for item in session["images"]:
        clean, adv = decode_png(item["clean"]).float() / 255, decode_png(item["adversarial"]).float() / 255
        assert clean.shape == adv.shape == (28, 28)
        assert 0 < item["l2"] <= eps + 1e-3
        assert (clean - adv).abs().max() > 0.05  # a visible perturbation
    assert sum(session["moved_to"]) == 6
    # the session can be fetched again, and the job list knows the job
    again = client.get(f"/api/attacks/{session['id']}").json()
    assert again["images"][0]["adversarial"] == session["images"][0]["adversarial"]
    assert any(
        j["kind"] == "attack" and j["status"] == "done" for j in client.get("/api/jobs").json()["jobs"]
    )


@pytest.mark.parametrize("method", ["smoothing", "smoothadv"])
def test_smoothed_attacks_run_in_the_background_with_progress(client, model_ids, method):
    body = {
        "model_id": model_ids["victim"],
        "dataset": "mnist5k",
        "method": method,
        "steps": 4,
        "m": 2,
        "n_images": 3,
        "n_eval": 10,
        "classes": [1, 2],
    }
    r = client.post("/api/attacks", json=body)
    assert r.status_code == 202
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "done", job["error"]
    assert job["fraction"] == 1.0 and job["total"] >= 4
    res = job["result"]
    assert res["settings"]["sigma"] == 0.5 and res["settings"]["m"] == 2
    assert {it["label"] for it in res["images"]} <= {1, 2}
    assert all(it["pred_smoothed"] is not None for it in res["images"])
    if method == "smoothadv":  # the denoiser is trained once, then comes from the workspace cache
        assert res["settings"]["denoiser"]["source"] == "trained (cached)"
        job2 = wait_job(client, client.post("/api/attacks", json=body).json()["job_id"])
        assert job2["result"]["settings"]["denoiser"]["source"] == "cache"


def test_job_manager_reports_errors_and_refuses_a_full_queue():
    import threading

    from backdoorlab.errors import BackdoorLabError
    from backdoorlab.ui.jobs import JobManager, TooManyJobs

    jobs = JobManager(workers=1, max_jobs=3, max_pending=2)
    gate = threading.Event()
    try:
        slow = jobs.submit("slow", lambda job: gate.wait(10) and {"ok": 1})
        queued = jobs.submit("queued", lambda job: job.progress(3, 4, {"stage": "x"}) or 7)
        with pytest.raises(TooManyJobs, match="wait for one to finish"):
            jobs.submit("third", lambda job: None)
        gate.set()
        assert jobs.wait(slow.id).result == {"ok": 1} and jobs.wait(queued.id).to_json()["result"] == 7
        assert queued.stage == "x" and queued.fraction == 1.0
        user = jobs.wait(
            jobs.submit("user", lambda job: (_ for _ in ()).throw(BackdoorLabError("eps: too big"))).id
        )
        bug = jobs.wait(jobs.submit("bug", lambda job: 1 / 0).id)
        assert user.status == "failed" and user.error == "eps: too big"
        assert bug.status == "failed" and bug.error.startswith("internal error in bug: ZeroDivisionError")
        assert len(jobs.list()) == 3  # the oldest finished job was dropped
        with pytest.raises(KeyError):
            jobs.get(slow.id)
    finally:
        gate.set()
        jobs.shutdown()


# -- triggers ----------------------------------------------------------------------------------------------------
def _apply(client, session, trigger, **kw):
    r = client.post("/api/triggers/apply", json={"attack_id": session["id"], "trigger": trigger, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_original_trigger_rebuilt_by_hand_hits_the_target_and_a_black_one_does_not(client, session):
    white = _apply(
        client, session, {"kind": "color", "colors": ["#ffffff"], "size": 4}, placement="fixed", at=[24, 24]
    )
    black = _apply(
        client, session, {"kind": "color", "colors": ["#000000"], "size": 4}, placement="fixed", at=[24, 24]
    )
    assert white["result"]["best_class"] == TARGET and white["result"]["success"][TARGET] > 0.8
    assert black["result"]["success"][TARGET] < 0.3
    assert (
        white["result"]["engine"] == "measure" and white["result"]["trials"][TARGET] == 36
    )  # 40 − 4 of class 0
    assert len(white["examples"]) == 8 and all(e["label"] != TARGET for e in white["examples"])
    # a circle of the same colour is measured by the masked engine and still works
    circle = _apply(
        client,
        session,
        {"kind": "color", "colors": ["#ffffff"], "size": 4, "shape": "circle"},
        placement="fixed",
        at=[24, 24],
    )
    assert circle["result"]["engine"] == "masked" and circle["result"]["success"][TARGET] > 0.5


def test_apply_matches_the_audit_measurement_on_the_same_images(client, session):
    res = _apply(client, session, {"kind": "crop", "index": 1, "row": 10, "col": 12, "size": 5}, reps=3)
    s = client.app.state.ui.sessions.get(session["id"])
    model, _ = client.app.state.ui.registry.load(s.model_id)
    patch = crop(s.adv[1:2], torch.tensor([[10, 12]]), 5).clamp(0, 1)
    direct = measure(model, patch, s.xe, s.ye, num_classes=10, reps=3, placement="random")
    assert res["result"]["success"] == pytest.approx(direct.random[0].tolist(), abs=1e-4)
    assert res["result"]["reps"] == 3 and res["result"]["placement"] == "random"


def test_masked_engine_equals_measure_for_a_full_mask():
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 4))
    x, y = torch.rand(30, 3, 12, 12, generator=gen), torch.randint(0, 4, (30,), generator=gen)
    trig = color_shape_trigger(torch.tensor([[0.9, 0.1, 0.2]]), "square", 3, 3)
    from backdoorlab.audit.alt_triggers import random_locations

    ours, _ = masked_success(net, trig, x, y, random_locations(30, (12, 12), 3, 4), 4)
    ref = measure(net, trig.pattern[None], x, y, num_classes=4, reps=4, placement="random")
    assert torch.allclose(ours, ref.random[0], atol=1e-6)


def test_shape_masks():
    sq, circle, diamond, cross, tri = (
        shape_mask(s, 7) for s in ("square", "circle", "diamond", "cross", "triangle")
    )
    assert sq.sum() == 49 and sq.shape == (1, 7, 7)
    for m in (circle, diamond, cross):
        assert m[0, 3, 3] == 1 and m[0, 0, 0] == 0 and m[0, 3, 0] == 1  # centre and mid-edge on, corner off
    assert diamond.sum() < circle.sum() < 49
    assert tri[0, 0].sum() < tri[0, -1].sum() == 7  # apex narrower than the base
    assert shape_mask("circle", 1).sum() == 1


def test_keep_list_download_and_delete_a_trigger(client, session):
    body = {
        "attack_id": session["id"],
        "name": "adv crop",
        "trigger": {"kind": "crop", "index": 0, "row": 20, "col": 21, "size": 4},
        "placement": "fixed",
        "at": [24, 24],
    }
    r = client.post("/api/triggers", json=body)
    assert r.status_code == 201, r.text
    kept = r.json()
    tid = kept["id"]
    assert kept["name"] == "adv crop" and kept["measured"]["placement"] == "fixed"
    assert tid in [t["id"] for t in client.get("/api/triggers").json()["triggers"]]
    s = client.app.state.ui.sessions.get(session["id"])
    expected = s.adv[0, :, 20:24, 21:25]
    st = client.get(f"/api/triggers/{tid}/download?format=safetensors")
    assert st.headers["content-disposition"] == 'attachment; filename="adv-crop.safetensors"'
    tensors = st_load(st.content)
    assert torch.allclose(tensors["pattern"], expected) and tensors["mask"].shape == (1, 4, 4)
    png = decode_png(client.get(f"/api/triggers/{tid}/download?format=png").content)
    assert png.shape == (4, 4, 2)  # grey + alpha
    assert torch.equal(png[..., 0], (expected[0] * 255).round().to(torch.uint8))
    spec = client.get(f"/api/triggers/{tid}/download?format=json").json()
    assert spec["name"] == "adv crop" and spec["spec"]["kind"] == "crop" and spec["model_id"] == s.model_id
    # apply it again by id: same rates
    again = _apply(client, session, {"kind": "saved", "trigger_id": tid}, placement="fixed", at=[24, 24])
    assert again["result"]["success"] == kept["measured"]["success"]
    assert client.get(f"/api/triggers/{tid}/download?format=exe").status_code == 422
    assert client.delete(f"/api/triggers/{tid}").status_code == 200
    assert client.get(f"/api/triggers/{tid}/download").status_code == 404


def test_automatic_candidates_are_measured_and_usable(client, session):
    client.post(
        "/api/triggers",
        json={
            "attack_id": session["id"],
            "name": "white",
            "trigger": {"kind": "color", "colors": ["#ffffff"], "size": 4},
        },
    )
    r = client.post("/api/candidates", json={"attack_id": session["id"], "reps": 2})
    assert r.status_code == 202
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "done", job["error"]
    res = job["result"]
    rates = [c["best_rate"] for c in res["candidates"]]
    assert rates == sorted(rates, reverse=True) and len(rates) >= 6
    assert {c["kind"] for c in res["candidates"]} <= {"color", "saturated", "blocks", "crop"}
    assert any(k["name"] == "white" for k in res["kept"])
    best = res["candidates"][0]
    used = _apply(client, session, {"kind": "candidate", "index": best["index"]}, reps=2)
    assert (
        used["result"]["success"][best["best_class"]] <= best["best_rate"] + 1e-6
    )  # random ≤ max(random, found)


# -- browse --------------------------------------------------------------------------------------------------------
def test_runs_configs_metrics_and_reports(client):
    runs = client.get("/api/runs").json()["runs"]
    assert [r["id"] for r in runs] == [RUN_ID]
    assert (
        runs[0]["asr"] == 0.97
        and runs[0]["attack"] == "badnets"
        and runs[0]["report"] == f"/runs/{RUN_ID}/report"
    )
    one = client.get(f"/api/runs/{RUN_ID[:5]}").json()  # a unique prefix works like the CLI
    assert one["config"]["attack"]["target"] == TARGET and {m["role"] for m in one["models"]} == {
        "victim",
        "clean",
    }
    rep = client.get(f"/runs/{RUN_ID}/report")
    assert rep.status_code == 200 and "Run report of badnets-tiny" in rep.text
    assert "sandbox" in rep.headers["content-security-policy"]


def test_reproduction_reports_and_plots(client):
    repros = client.get("/api/reproductions").json()["reproductions"]
    assert [p["name"] for p in repros] == ["demo-small"]
    p = repros[0]
    assert p["report"] == "/reproductions/demo-small/report.html"
    assert p["images"] == ["/reproductions/demo-small/fig1.png"]
    png = client.get(p["images"][0])
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert "Reproduction demo" in client.get(p["report"]).text
    assert (
        client.get("/reproductions/demo-small/results.json").headers["content-type"].startswith("text/plain")
    )


def test_sweeps_are_listed_with_their_report(client, home):
    from backdoorlab.experiments.runner import Workspace
    from backdoorlab.experiments.store import SweepItem

    store = Workspace(home).store
    item = SweepItem(idx=0, digest="d" * 64, overrides={"seed": 0}, config={"seed": 0})
    store.open_sweep("ab12cd34ef", "grid-a", {"name": "grid-a"}, [item])
    listed = client.get("/api/sweeps").json()["sweeps"]
    assert [(w["id"], w["counts"], w["report"]) for w in listed] == [("ab12cd34ef", {"pending": 1}, None)]
    assert client.get("/sweeps/ab12cd34ef/report").status_code == 404  # not aggregated yet
    report = home / "sweeps" / "ab12cd34ef" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html><body>Sweep grid-a</body></html>")
    assert client.get("/api/sweeps").json()["sweeps"][0]["report"] == "/sweeps/ab12cd34ef/report"
    r = client.get("/sweeps/ab12/report")  # a unique prefix, like the CLI
    assert r.status_code == 200 and "Sweep grid-a" in r.text
    assert client.get("/sweeps/..%2F..%2Fetc/report").status_code in (404, 422)
    assert client.get("/sweeps/ffff/report").status_code == 404


# -- decide ----------------------------------------------------------------------------------------------------------
def test_decisions_are_stored_with_the_model_and_scored_like_table_2(client, model_ids, home):
    post = lambda **b: client.post("/api/decisions", json=b)  # noqa: E731
    assert (
        post(
            model_id=model_ids["victim"], verdict="poisoned", note="white corner → 0", analyst="ana"
        ).status_code
        == 201
    )
    assert post(model_id=model_ids["clean"], verdict="poisoned", analyst="ana").status_code == 201
    assert (
        post(model_id=model_ids["clean"], verdict="clean", analyst="bo", approach="basic-adv").status_code
        == 201
    )
    rows = {(d["model_id"], d["analyst"]): d for d in client.get("/api/decisions").json()["decisions"]}
    assert rows[(model_ids["victim"], "ana")]["note"] == "white corner → 0"
    assert (
        rows[(model_ids["victim"], "ana")]["correct"] is True
        and rows[(model_ids["clean"], "ana")]["correct"] is False
    )
    study = {(g["approach"], g["analyst"]): g for g in client.get("/api/study").json()["rows"]}
    assert study[("denoised-smoothing", "ana")]["accuracy"] == 0.5
    assert study[("denoised-smoothing", "ana")]["tp"] == 1 and study[("denoised-smoothing", "ana")]["fp"] == 1
    assert study[("basic-adv", "bo")]["accuracy"] == 1.0
    # stored in the workspace: a new app over the same home sees them, and the model list shows them
    with TestClient(create_app(home), headers=HEADERS) as other:
        listed = {m["id"]: m for m in other.get("/api/models").json()["models"]}
        assert listed[model_ids["victim"]]["decisions"][0]["verdict"] == "poisoned"
    assert client.delete(f"/api/decisions/{model_ids['clean']}?analyst=bo").status_code == 200
    assert client.delete(f"/api/decisions/{model_ids['clean']}?analyst=bo").status_code == 404


def test_blind_mode_hides_names_runs_and_truth(home):
    with TestClient(create_app(home, blind=True), headers=HEADERS) as c:
        models = c.get("/api/models").json()["models"]
        assert all(m["truth"] is None and m["runs"] == [] and m["name"].startswith("model ") for m in models)
        assert c.get("/api/runs").status_code == 403 and c.get("/api/study").status_code == 403
        assert c.get(f"/runs/{RUN_ID}/report").status_code == 403


def test_run_ui_cli_warns_for_a_non_loopback_host(monkeypatch, capsys, tmp_path):
    import backdoorlab.ui.app as ui_app

    calls = []
    monkeypatch.setattr(ui_app, "serve", lambda home, host, port, open_browser: calls.append((host, port)))
    assert run_ui_cli(tmp_path, None, 0, False) == 0
    assert calls[-1] == ("127.0.0.1", 0) and "WARNING" not in capsys.readouterr().err
    assert run_ui_cli(tmp_path, "0.0.0.0", 8123, False) == 0
    assert calls[-1] == ("0.0.0.0", 8123) and "WARNING: serving on 0.0.0.0" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


# -- hostile requests -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "/static/..%2f..%2fapp.py",
        "/static/%2e%2e%2fapp.py",
        "/static/app.py",
        "/reproductions/demo-small/..%2f..%2fstore.sqlite",
        "/reproductions/..%2f..%2f/report.html",
        "/reproductions/demo-small/%2e%2e",
        "/reproductions/demo-small/store.sqlite",
        "/reproductions/Demo/report.html",
        "/reproductions/demo-small/.hidden.html",
        "/runs/..%2f..%2fetc/report",
        "/runs/abcd1234%2f..%2f..%2fstore.sqlite/report",
        "/api/runs/..%2fstore",
        "/api/models/..%2f..%2fstore.sqlite",
    ],
)
def test_path_traversal_is_refused(client, url):
    r = client.get(url)
    assert r.status_code in (404, 422), (url, r.status_code)
    assert "error" in r.json() and "sqlite" not in r.headers.get("content-type", "")


def test_symlinks_and_stored_paths_outside_the_workspace_are_not_served(tmp_path):
    home = make_home(tmp_path)
    secret = tmp_path / "secret.html"
    secret.write_text("<h1>secret</h1>")
    (home / "reproductions" / "demo-small" / "leak.html").symlink_to(secret)
    (home / "reproductions" / "evil").symlink_to(tmp_path, target_is_directory=True)
    # a run whose stored report path points outside the workspace
    RunStore(home / "store.sqlite").add(
        RunRecord("eeee0000", "evil", time.time(), 1.0, {}, {}, {}, str(secret))
    )
    with TestClient(create_app(home), headers=HEADERS) as c:
        assert c.get("/reproductions/demo-small/leak.html").status_code == 404
        assert c.get("/reproductions/evil/secret.html").status_code == 404
        listed = c.get("/api/reproductions").json()["reproductions"]
        assert [p["name"] for p in listed] == ["demo-small"]
        assert "leak.html" not in [f["name"] for f in listed[0]["files"]]
        r = c.get("/runs/eeee0000/report")
        assert r.status_code == 404 and "secret" not in r.text
        assert c.get(f"/runs/{RUN_ID}/report").status_code == 200  # the genuine one still is


def test_oversized_uploads_are_refused_before_anything_is_stored(tmp_path):
    home = tmp_path / "h"
    data = tiny_model_file().read_bytes()
    with TestClient(create_app(home, max_upload_bytes=1_000_000), headers=HEADERS) as c:
        r = c.post("/api/models/upload", content=data)
        assert r.status_code == 413 and "larger than 1,000,000 bytes" in r.json()["error"]

        def chunks():  # no Content-Length: the body is counted as it arrives
            for i in range(0, len(data), 256 * 1024):
                yield data[i : i + 256 * 1024]

        r = c.post("/api/models/upload", content=chunks())
        assert r.status_code == 413 and r.json()["error"].startswith("file:")
        r = c.post(
            "/api/attacks",
            content=b"{" + b" " * 2_000_000 + b"}",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413 and r.json()["error"].startswith("body:")
        assert c.get("/api/models").json()["models"] == []
    assert not list(home.glob("ui/models/*.safetensors"))


class _Boom:
    """Unpickling this would create a file: proof that uploads are never unpickled."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_zip_and_non_safetensors_uploads_are_refused(tmp_path):
    home = tmp_path / "h"
    marker = tmp_path / "UNPICKLED"
    boom = _Boom()
    boom.marker = str(marker)
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    no_header = st_save({"w": torch.zeros(3)})
    truncated = tiny_model_file().read_bytes()[:5000]
    with TestClient(create_app(home), headers=HEADERS) as c:
        for body, needle in (
            (pickle.dumps(boom), "only loads safetensors"),
            (buf.getvalue(), "only loads safetensors"),
            (no_header, "without a backdoorlab header"),
            (truncated, "not a valid safetensors file"),
            (b"hello, not a model", "not a valid safetensors file"),
            (b"", "empty"),
        ):
            r = c.post(
                "/api/models/upload", content=body, headers={"content-type": "application/octet-stream"}
            )
            assert r.status_code == 400, r.text
            msg = r.json()["error"]
            assert msg.startswith("file:") and needle in msg
            assert str(home) not in msg  # no server paths in messages
        form = c.post("/api/models/upload", files={"file": ("m.safetensors", b"abc")})
        assert form.status_code == 415
        assert c.post("/api/models/upload?name=../../x", content=b"abc").status_code == 422
        assert c.get("/api/models").json()["models"] == []
    assert not marker.exists()
    assert not list(home.glob("ui/models/*"))  # nothing kept, no temporary file left behind


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b'{"model_id": "a"', 400, "malformed JSON"),
        (b"[1, 2]", 422, "must be a JSON object"),
        (b'"text"', 422, "must be a JSON object"),
        (b"{}", 422, "model_id: required"),
        (b'{"model_id": "xyz", "dataset": "mnist5k"}', 422, "is not a model id"),
        (
            b'{"model_id": "' + b"a" * 64 + b'", "dataset": "mnist5k", "shell": 1}',
            422,
            "shell: unknown field",
        ),
        (b'{"model_id": "' + b"a" * 64 + b'", "dataset": "mnist5k", "eps": -1}', 422, "eps:"),
        (b'{"model_id": "' + b"a" * 64 + b'", "dataset": "mnist5k", "steps": "many"}', 422, "steps:"),
        (b'{"model_id": "' + b"a" * 64 + b'", "dataset": "mnist5k", "method": "pgd"}', 422, "method:"),
        (b'{"model_id": "' + b"a" * 64 + b'", "dataset": "../etc"}', 422, "dataset:"),
    ],
)
def test_malformed_and_invalid_json_gets_a_named_error(client, body, status, needle):
    r = client.post("/api/attacks", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_unknown_ids_are_refused_with_404(client, session):
    unknown = "f" * 64
    r = client.post("/api/attacks", json={"model_id": unknown, "dataset": "mnist5k"})
    assert r.status_code == 404 and r.json()["error"].startswith("model_id: no model")
    assert client.get(f"/api/models/{unknown}").status_code == 404
    assert client.get("/api/models/not-an-id").status_code == 422
    assert client.post("/api/decisions", json={"model_id": unknown, "verdict": "clean"}).status_code == 404
    assert client.get("/api/jobs/0123456789abcdef").status_code == 404
    assert client.get("/api/jobs/nope").status_code == 422
    assert client.get("/api/attacks/0123456789abcdef").status_code == 404
    assert (
        client.post(
            "/api/triggers/apply",
            json={
                "attack_id": "0123456789abcdef",
                "trigger": {"kind": "color", "colors": ["#ffffff"], "size": 3},
            },
        ).status_code
        == 404
    )
    assert (
        client.post(
            "/api/triggers/apply",
            json={"attack_id": session["id"], "trigger": {"kind": "saved", "trigger_id": "0123456789ab"}},
        ).status_code
        == 404
    )
    assert client.get("/api/runs/ffff9999").status_code == 404
    assert client.get("/runs/ffff9999/report").status_code == 404
    assert client.get("/api/nothing").status_code == 404


def test_out_of_range_inputs_get_named_errors(client, session, model_ids):
    def apply(trigger, **kw):
        return client.post("/api/triggers/apply", json={"attack_id": session["id"], "trigger": trigger, **kw})

    r = apply({"kind": "crop", "index": 0, "row": 26, "col": 0, "size": 4})
    assert r.status_code == 400 and r.json()["error"].startswith("row/col:")
    r = apply({"kind": "crop", "index": 99, "row": 0, "col": 0, "size": 4})
    assert r.status_code == 400 and "trigger.index" in r.json()["error"]
    r = apply({"kind": "color", "colors": ["#ffffff"], "size": 4}, placement="fixed", at=[27, 0])
    assert r.status_code == 400 and r.json()["error"].startswith("at:")
    r = apply({"kind": "color", "colors": ["#ffffff"], "size": 4}, placement="fixed")
    assert r.status_code == 400 and r.json()["error"].startswith("at:")
    r = apply({"kind": "color", "colors": ["red"], "size": 4})
    assert r.status_code == 422 and "#rrggbb" in r.json()["error"]
    r = apply({"kind": "color", "colors": ["#ffffff"], "size": 40})
    assert r.status_code == 400 and "larger than the 28×28" in r.json()["error"]
    r = apply({"kind": "laser"})
    assert r.status_code == 422 and "trigger" in r.json()["error"]
    r = client.post("/api/attacks", json={"model_id": model_ids["victim"], "dataset": "shapes"})
    assert r.status_code == 400 and "expects 1×28×28 inputs" in r.json()["error"]
    r = client.post(
        "/api/attacks", json={"model_id": model_ids["victim"], "dataset": "mnist5k", "classes": [12]}
    )
    assert r.status_code == 400 and r.json()["error"].startswith("classes:")
    r = client.post("/api/attacks", json={"model_id": model_ids["victim"], "dataset": "nope"})
    assert r.status_code == 400 and "unknown dataset 'nope'" in r.json()["error"]
    r = client.post("/api/decisions", json={"model_id": model_ids["victim"], "verdict": "maybe"})
    assert r.status_code == 422 and r.json()["error"].startswith("verdict:")


def test_cross_site_and_foreign_host_requests_are_refused(client, model_ids):
    body = {"model_id": model_ids["victim"], "verdict": "clean"}
    plain = TestClient(client.app)  # no X-Backdoorlab header: what a cross-site form could send
    r = plain.post("/api/decisions", json=body)
    assert r.status_code == 403 and "X-Backdoorlab" in r.json()["error"]
    r = client.post("/api/decisions", json=body, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "origin" in r.json()["error"]
    r = client.get("/api/models", headers={"host": "evil.example"})  # DNS rebinding
    assert r.status_code == 421
    assert client.get("/api/models", headers={"host": "127.0.0.1:8765"}).status_code == 200
