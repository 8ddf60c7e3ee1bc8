"""The registered pyfunc model as its users run it: logged with its wheel and input example, loaded with
``mlflow.pyfunc``, and served by ``mlflow models serve --env-manager local`` on localhost."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.models.conftest import micro_config


def _photo(h: int, w: int, top: int = 100, left: int = 150) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[top:top + h, left:left + w])


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A micro model set logged by :func:`pdc.mlflow_model.log_model_set` into a temp sqlite store."""
    import mlflow

    from pdc.models.package import init_model, save_package, write_model_set

    root = tmp_path_factory.mktemp("mlflow-model")
    save_package(init_model(micro_config(), seed=0), root / "pkg")
    write_model_set(root / "set", [root / "pkg"])
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)  # the server reads this store; no earlier test's store may take the model
        exp = mlflow.create_experiment("serve", artifact_location=(root / "artifacts").as_uri())
        from pdc.mlflow_model import log_model_set

        with mlflow.start_run(experiment_id=exp):
            info = log_model_set(root / "set")
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(root / "model")))
        yield {"uri": info.model_uri, "tracking_uri": uri, "local": local, "model_set": root / "set", "root": root}


def test_the_logged_model_carries_its_wheel_example_and_signature(logged):
    local = logged["local"]
    reqs = (local / "requirements.txt").read_text().split()
    wheels = [r for r in reqs if r.endswith(".whl")]
    # requirements name the wheel shipped inside the model (no `pdc==0.1.0` an index would have to hold)
    assert len(wheels) == 1 and (local / wheels[0]).is_file() and not any(r.startswith("pdc==") for r in reqs)
    assert "-c" in reqs and "torch==" in (local / "constraints.txt").read_text()
    with zipfile.ZipFile(local / wheels[0]) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "pdc/codec.py" in names and "pdc/mlflow_entry.py" in names
    assert not any(n.startswith(("flows/", "tests/")) for n in names)
    core = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert core and not any(dep in line for line in core for dep in ("mlflow", "dvc", "prefect", "ray"))

    import mlflow

    model = mlflow.models.Model.load(str(local))
    assert model.saved_input_example_info and (local / "serving_input_example.json").is_file()
    assert {p.name for p in model.signature.params.params} == {"rate", "mode", "seed"}
    assert [s.name for s in model.signature.outputs.inputs] == ["reconstruction", "bpp", "stream"]


def test_predict_takes_hwc_nhwc_and_ragged_batches(logged):
    import mlflow

    from pdc.codec import decompress
    from pdc.imageio import tensor_to_uint8
    from pdc.mlflow_model import RequestError, _objects
    from pdc.models.package import load_rate_point

    pyfunc = mlflow.pyfunc.load_model(str(logged["local"]), model_config={"device": "cpu"})
    img = _photo(40, 56)
    one = pyfunc.predict(img)
    assert one["reconstruction"].shape == (1, 40, 56, 3) and one["reconstruction"].dtype == np.uint8
    stream = one["stream"][0]
    assert isinstance(stream, bytes) and one["bpp"][0] == pytest.approx(8 * len(stream) / (40 * 56))
    # the stream decodes (the library's decoder) to exactly the reconstruction returned
    decoded = tensor_to_uint8(decompress(load_rate_point(logged["model_set"]), stream))
    np.testing.assert_array_equal(decoded, one["reconstruction"][0])

    batch = pyfunc.predict(np.stack([img, img[::-1]]), params={"mode": "e2e"})
    assert batch["reconstruction"].shape == (2, 40, 56, 3) and len(batch["stream"]) == 2
    ragged = pyfunc.predict(_objects([img, _photo(24, 32)]))
    assert [r.shape for r in ragged["reconstruction"]] == [(40, 56, 3), (24, 32, 3)]

    for bad, words in [(np.zeros((4, 4), np.uint8), "shape (4, 4)"), (np.zeros((4, 4, 3)), "float64"),
                       (np.full((4, 4, 3), 300), "0..255")]:
        with pytest.raises(RequestError, match=re.escape(words)):
            pyfunc.predict(bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(logged):
    """``mlflow models serve --env-manager local`` on a free localhost port, stopped afterwards."""
    port = _free_port()
    log = (logged["root"] / "serve.log").open("w")
    bin_dir = Path(sys.executable).parent  # `mlflow models serve` runs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["tracking_uri"], "CUDA_VISIBLE_DEVICES": "",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", logged["uri"],
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=logged["root"],
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited ({proc.returncode}):\n"
                            + (logged["root"] / "serve.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow models serve did not answer /ping in 180 s:\n"
                            + (logged["root"] / "serve.log").read_text()[-3000:])
            time.sleep(1)
        yield url
    finally:
        import signal

        for sig in (signal.SIGTERM, signal.SIGKILL):  # the server and its uvicorn worker: the group we started
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=30)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def test_served_model_writes_a_stream_that_pdc_decompress_decodes(server, logged, tmp_path):
    from typer.testing import CliRunner

    from pdc.cli.main import app
    from pdc.imageio import read_image

    img = _photo(48, 40)
    status, body = _post(f"{server}/invocations", {"inputs": img.tolist(), "params": {"seed": 3}})
    assert status == 200, body
    pred = body["predictions"]
    recon = np.asarray(pred["reconstruction"], dtype=np.uint8)
    assert recon.shape == (1, 48, 40, 3)
    stream = base64.b64decode(pred["stream"][0])  # bytes travel as base64 in MLflow's JSON
    assert pred["bpp"][0] == pytest.approx(8 * len(stream) / (48 * 40))
    (tmp_path / "x.pdc").write_bytes(stream)
    res = CliRunner().invoke(app, ["decompress", str(tmp_path / "x.pdc"), "-o", str(tmp_path / "x.png"),
                                   "--model", str(logged["model_set"]), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), recon[0])


def test_a_non_image_gets_one_line_400_and_the_server_keeps_serving(server):
    for bad in ("not an image", [[1, 2], [3, 4]], [[[0, 0, 999]]]):
        status, body = _post(f"{server}/invocations", {"inputs": bad})
        assert status == 400, body
        message = body["message"]
        assert "\n" not in message and len(message) < 200 and ("image" in message or "0..255" in message), message
    # a bad rate point is a bad request too, not a server error
    status, body = _post(f"{server}/invocations", {"inputs": _photo(16, 16).tolist(), "params": {"rate": 5}})
    assert status == 400 and "\n" not in body["message"] and "rate 5" in body["message"]

    imgs = np.stack([_photo(16, 24), _photo(16, 24, top=200)])
    status, body = _post(f"{server}/invocations", {"inputs": imgs.tolist(), "params": {"mode": "e2e"}})
    assert status == 200, body
    assert np.asarray(body["predictions"]["reconstruction"]).shape == (2, 16, 24, 3)
    assert len(body["predictions"]["stream"]) == 2
