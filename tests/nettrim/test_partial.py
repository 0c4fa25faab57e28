"""Partial results: per-layer limits, Ctrl-C keeps the layers trimmed so far, a checkpoint resumes after them."""

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import nettrim
import nettrim.passes
from instances import random_problem
from networks import inputs, mlp
from solvers import solve


def _wait(finished: list, until) -> None:
    deadline = time.monotonic() + 60
    while not until(finished) and time.monotonic() < deadline:
        time.sleep(0.01)


def _interrupt_at(monkeypatch, name: str, calls: list, after: int = 0, last: str | None = None):
    """Make the solve of layer `name` raise KeyboardInterrupt (Ctrl-C) once `after` other layers have been
    solved (layers run concurrently in parallel mode on an executor), and layer `last` finish after the
    others; record every layer solved."""
    solve_layer = nettrim.passes.solve_layer
    finished = []

    def interrupted(layer, *args, **kwargs):
        calls.append(layer.name)
        if layer.name == name:
            _wait(finished, lambda done: len(done) >= after)
            raise KeyboardInterrupt
        if layer.name == last:
            _wait(finished, lambda done: len(done) >= after - 1)
        solved = solve_layer(layer, *args, **kwargs)
        finished.append(layer.name)
        return solved

    monkeypatch.setattr(nettrim.passes, "solve_layer", interrupted)


@pytest.mark.parametrize(("mode", "threads"), [("cascade", False), ("parallel", False), ("parallel", True)])
def test_ctrl_c_keeps_the_layers_trimmed_and_the_same_call_resumes_after_them(mode, threads, monkeypatch, tmp_path):
    """In parallel mode on an executor the layers run concurrently: the ones done when Ctrl-C comes are kept."""
    model, x = mlp(), inputs(200)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    whole, whole_report = nettrim.trim(model, x, mode=mode, progress=False)
    calls = []
    _interrupt_at(monkeypatch, "4", calls, after=2, last="0" if threads else None)  # "2" is checkpointed first
    scheduling = {"executor": ThreadPoolExecutor(1)} if threads else {}
    with pytest.raises(nettrim.TrimInterrupted, match=r"after 2 layers; they are kept in .*ckpt") as caught:
        nettrim.trim(model, x, mode=mode, progress=False, checkpoint=tmp_path / "ckpt", inplace=True,
                     **scheduling)
    partial = caught.value
    assert [row.name for row in partial.report.layers] == ["0", "2"]
    for name in ("0", "2"):  # trimmed, exactly as in the whole trim
        torch.testing.assert_close(partial.model.get_submodule(name).weight, whole.get_submodule(name).weight,
                                   rtol=0, atol=0)
    torch.testing.assert_close(partial.model.get_submodule("4").weight, model.get_submodule("4").weight)
    for key, value in model.state_dict().items():  # inplace=True, yet the caller's model is untouched
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)

    monkeypatch.setattr(nettrim.passes, "solve_layer", nettrim.programs.solve_layer)
    calls.clear()
    _interrupt_at(monkeypatch, "never", calls)
    resumed, report = nettrim.trim(model, x, mode=mode, progress=False, checkpoint=tmp_path / "ckpt")
    assert calls == ["4"]  # only the layer left
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    assert [row.name for row in report.layers] == ["0", "2", "4"]
    assert report.nonzeros_after == whole_report.nonzeros_after


def test_a_checkpoint_of_another_trim_is_refused(tmp_path):
    model, x = mlp(), inputs(200)
    nettrim.trim(model, x, progress=False, checkpoint=tmp_path / "ckpt")
    with pytest.raises(ValueError, match="checkpoint: .* holds layers of another trim"):
        nettrim.trim(model, x, epsilon=0.1, progress=False, checkpoint=tmp_path / "ckpt")
    with pytest.raises(ValueError, match="checkpoint: .* holds layers of another trim"):
        nettrim.trim(model, inputs(200, seed=5), progress=False, checkpoint=tmp_path / "ckpt")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="checkpoint: .* is a file"):
        nettrim.trim(model, x, progress=False, checkpoint=tmp_path / "file")


def test_the_admm_stops_at_its_time_limit_as_at_max_iter():
    problem = random_problem(3, N=20, P=100, M=4)
    stopped = solve(problem, time_limit=0)
    assert stopped.status == "max_iter" and stopped.iterations == 10  # the first check
    assert "time_limit" in stopped.message
    with pytest.raises(ValueError, match="time_limit must be a number of seconds"):
        solve(problem, time_limit=-1)


def test_per_layer_limits_keep_the_original_weights_of_unconverged_neurons():
    model, x = mlp(), inputs(300)
    with pytest.warns(UserWarning, match="kept their original"):
        _, by_iterations = nettrim.trim(model, x, max_iter=3, progress=False)
    assert all(row.iterations <= 3 and row.status == "max_iter" for row in by_iterations.layers)
    with pytest.warns(UserWarning, match="kept their original"):
        _, by_time = nettrim.trim(model, x, time_limit=1e-9, progress=False)
    assert all(row.iterations == 10 and row.dense_fallback for row in by_time.layers)
    for row in by_time.layers:
        assert row.fit_ratio <= 1 + 1e-3
    for kwargs, message in [({"max_iter": 0}, "max_iter must be a positive int"),
                            ({"time_limit": 0}, "time_limit must be a positive number"),
                            ({"time_limit": 5, "backend": "cvxpy"}, "the cvxpy backend takes")]:
        with pytest.raises(ValueError, match=message):
            nettrim.trim(model, x, progress=False, **kwargs)


@pytest.mark.slow
def test_the_cli_resumes_from_its_checkpoint_and_removes_it_when_done(tmp_path):
    model, x = mlp(seed=9, dtype=torch.float32), inputs(200, dtype=torch.float32)
    torch.save(model, tmp_path / "model.pt")
    np.save(tmp_path / "calib.npy", x.numpy())
    out = tmp_path / "trimmed.safetensors"
    checkpoint = tmp_path / "trimmed.safetensors.partial"
    # a checkpoint holding the first layer, as a Ctrl-C after it leaves one
    command = [sys.executable, "-m", "nettrim.cli", "trim", str(tmp_path / "model.pt"), "--calib",
               str(tmp_path / "calib.npy"), "--out", str(out), "--layers", "0", "2", "4"]
    script = ("import sys, nettrim.passes as p; from nettrim.cli import main\n"
              "solve = p.solve_layer\n"
              "def stop(layer, *a, **k):\n"
              "    if layer.name == '2': raise KeyboardInterrupt\n"
              "    return solve(layer, *a, **k)\n"
              "p.solve_layer = stop\nsys.exit(main(sys.argv[1:]))\n")
    interrupted = subprocess.run([sys.executable, "-c", script, *command[3:]], capture_output=True, text=True,
                                 timeout=300, check=False, cwd=tmp_path)
    assert interrupted.returncode == 130, interrupted.stderr
    assert interrupted.stderr.strip().splitlines()[-1] == (
        f"nettrim: trim interrupted after 1 layers; they are kept in {checkpoint}, and the same call resumes after "
        "them; nothing else was written")
    assert not out.exists() and json.loads((checkpoint / "state.json").read_text())["layers"][0]["name"] == "0"
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "1 of 3 layers already trimmed" in resumed.stderr
    assert out.exists() and not checkpoint.exists()


def _another_model_outside_the_trimmed_layers(change: str):
    """mlp() with a BatchNorm after the first ReLU; `change` alters, outside the trimmed layers' weights and the
    first trimmed layer's input, the BatchNorm's statistics or an excluded layer's weights."""
    def model(seed=0):
        base = mlp(seed=seed)
        return torch.nn.Sequential(base[0], base[1], torch.nn.BatchNorm1d(16).double().eval(), *base[2:]).eval()
    original, changed = model(), model()
    with torch.no_grad():
        if change == "batchnorm":
            changed[2].running_mean.add_(0.5)
        else:
            changed[3].weight.mul_(2.0)
    return original, changed


@pytest.mark.parametrize("change", ["batchnorm", "excluded layer"])
def test_a_checkpoint_of_a_model_that_differs_outside_the_trimmed_weights_is_refused(tmp_path, change):
    original, changed = _another_model_outside_the_trimmed_layers(change)
    x = inputs(200)
    exclude = ["3"] if change == "excluded layer" else None
    nettrim.trim(original, x, progress=False, checkpoint=tmp_path / "ckpt", exclude=exclude)
    with pytest.raises(ValueError, match="checkpoint: .* holds layers of another trim"):
        nettrim.trim(changed, x, progress=False, checkpoint=tmp_path / "ckpt", exclude=exclude)


def _checkpointed(tmp_path):
    model, x = mlp(), inputs(200)
    nettrim.trim(model, x, progress=False, checkpoint=tmp_path / "ckpt")
    return model, x, tmp_path / "ckpt"


@pytest.mark.parametrize(("damage", "message"), [
    ("truncated state", r"state.json cannot be read \(JSONDecodeError"),
    ("state without rows", r"state.json has no valid rows of layers"),
    ("state of another shape", r"state.json is not a checkpoint's state"),
    ("truncated layer", r"layer-[0-9a-f]+\.safetensors \(layer '\d'\) cannot be read")])
def test_a_damaged_checkpoint_is_refused_by_name_before_any_layer_is_solved(tmp_path, monkeypatch, damage, message):
    model, x, folder = _checkpointed(tmp_path)
    state = folder / "state.json"
    if damage == "truncated state":
        state.write_text(state.read_text()[:40])
    elif damage == "state without rows":
        saved = json.loads(state.read_text())
        saved["layers"] = [{"name": "0"}]
        state.write_text(json.dumps(saved))
    elif damage == "state of another shape":
        state.write_text("[]")
    else:
        layer = sorted(folder.glob("layer-*.safetensors"))[0]
        layer.write_bytes(layer.read_bytes()[:30])
    calls = []
    _interrupt_at(monkeypatch, "never", calls)
    with pytest.raises(ValueError, match=f"checkpoint: .*{message}"):
        nettrim.trim(model, x, progress=False, checkpoint=folder)
    assert calls == []


def test_a_checkpoint_folder_that_cannot_be_written_is_refused_before_any_layer_is_solved(tmp_path, monkeypatch):
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    calls = []
    _interrupt_at(monkeypatch, "never", calls)
    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    with pytest.raises(ValueError, match="checkpoint: .* cannot be written \\(PermissionError"):
        nettrim.trim(mlp(), inputs(200), progress=False, checkpoint=tmp_path / "ckpt")
    assert calls == []


def test_a_budget_search_out_of_time_stops_after_its_solve_and_says_the_limit_stopped_it():
    """time_limit is the layer's, budget search included: past it no further solve starts, and the layer's note
    and warning blame the limit, not the target."""
    with pytest.warns(UserWarning) as warned:  # the neurons the limit stopped keep their weights: warned too
        _, report = nettrim.trim(mlp(), inputs(200), target_sparsity=0.95, time_limit=1e-6, progress=False)
    assert any("target sparsity 0.95 not reached within the time limit" in str(w.message) for w in warned)
    for row in report.layers:
        assert "after 1 solves" in row.message or "stopped by the time limit" in row.message, row.message


def test_reweighting_rounds_do_not_start_after_the_time_limit():
    """Past the layer's time_limit no reweighting round starts (each ran to its first check before), and the
    message says the limit stopped them; without a limit every round runs."""
    problem = random_problem(2, N=30, P=300, M=6, per_neuron=True, g=0.1)
    stopped = solve(problem, reweight=3, time_limit=1e-9)
    assert len(stopped.info["rounds"]) == 1 and "0 rounds of 3 (the time limit stopped them)" in stopped.message
    assert len(solve(problem, reweight=3).info["rounds"]) == 4
    with pytest.warns(UserWarning):  # the neurons the limit stopped keep their original weights
        _, report = nettrim.trim(mlp(), inputs(200), reweight=3, time_limit=1e-9, progress=False)
    assert all("(the time limit stopped them)" in row.message for row in report.layers)
