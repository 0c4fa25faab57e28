"""The nettrim command: trim end to end, errors, Ctrl-C, and the demo in a small configuration."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import nettrim
from nettrim import cli
from nettrim.compression import sparsity
from nettrim.io import read_metadata
from networks import inputs, mlp


@pytest.fixture
def files(tmp_path):
    model, x = mlp(dtype=torch.float32), inputs(300, dtype=torch.float32)
    torch.save(model, tmp_path / "model.pt")
    torch.save(x, tmp_path / "calib.pt")
    np.save(tmp_path / "calib.npy", x.numpy())
    return tmp_path, model, x


def test_trim_end_to_end_in_a_subprocess(files):
    folder, model, x = files
    out, report = folder / "trimmed.safetensors", folder / "report.json"
    completed = subprocess.run(
        [sys.executable, "-m", "nettrim.cli", "trim", str(folder / "model.pt"), "--calib", str(folder / "calib.npy"),
         "--out", str(out), "--report", str(report), "--mode", "parallel", "--epsilon", "0.1",
         "--layer-epsilon", "4=0.02"],
        capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr
    assert "fit/eps" in completed.stdout and "nettrim" in completed.stderr  # the table, the progress bars
    rows = {row["name"]: row for row in json.loads(report.read_text())["layers"]}
    assert rows["4"]["eps"] < rows["2"]["eps"]
    loaded, saved_report = nettrim.load(out, mlp(seed=9, dtype=torch.float32))
    assert saved_report.nonzeros_after == sum(int((p != 0).sum()) for n, p in loaded.named_parameters()
                                              if n.endswith("weight"))
    assert saved_report.total("bias_nonzeros_after") == sum(int((p != 0).sum())
                                                            for n, p in loaded.named_parameters() if n.endswith("bias"))
    assert saved_report.nonzeros_after < saved_report.nonzeros_before


def test_trim_on_worker_processes_in_a_subprocess(files):
    folder, model, x = files
    out = folder / "trimmed.pt"
    completed = subprocess.run(
        [sys.executable, "-m", "nettrim.cli", "trim", str(folder / "model.pt"), "--calib", str(folder / "calib.pt"),
         "--out", str(out), "--workers", "2", "--block-size", "4", "--quiet"],
        capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr
    serial, _ = nettrim.trim(model, x, progress=False, block_size=4)
    pooled = torch.load(out, weights_only=False)
    assert all(torch.equal(a, b) for a, b in zip(serial.state_dict().values(), pooled.state_dict().values(),
                                                 strict=True))


def test_trim_writes_a_pickled_module_for_other_suffixes(files):
    folder, model, x = files
    code = cli.main(["trim", str(folder / "model.pt"), "--calib", str(folder / "calib.pt"),
                     "--out", str(folder / "trimmed.pt"), "--quiet"])
    assert code == 0
    trimmed = torch.load(folder / "trimmed.pt", weights_only=False)
    assert isinstance(trimmed, torch.nn.Sequential)
    assert int((trimmed[0].weight == 0).sum()) > 0


def test_structure_neurons_writes_a_smaller_sparse_model_that_loads_into_the_original_architecture(files):
    folder, model, x = files
    code = cli.main(["trim", str(folder / "model.pt"), "--calib", str(folder / "calib.pt"), "--epsilon", "0.3",
                     "--reweight", "2", "--structure", "neurons", "--out", str(folder / "small.safetensors"),
                     "--format", "sparse", "--quiet"])
    assert code == 0
    small, report = nettrim.load(folder / "small.safetensors", model)
    assert report.structure == "neurons" and "sparse" in read_metadata(folder / "small.safetensors")
    assert [small[i].out_features for i in (0, 2, 4)] == [row.width_after for row in report.layers]
    assert sum(row.width_after for row in report.layers) < sum(row.width_before for row in report.layers)


def test_refit_and_gather_inputs_reach_the_trim(files):
    folder, model, x = files
    code = cli.main(["trim", str(folder / "model.pt"), "--calib", str(folder / "calib.pt"), "--epsilon", "0.3",
                     "--structure", "neurons", "--refit", "--gather-inputs", "--out", str(folder / "fit.safetensors"),
                     "--quiet"])
    assert code == 0
    small, report = nettrim.load(folder / "fit.safetensors", model)
    assert all(row.refit_error[1] <= row.refit_error[0] for row in report.layers)
    assert small(x).shape == model(x).shape


@pytest.mark.parametrize(("arguments", "message"), [
    (["--calib", "missing.pt"], "--calib: .* does not exist"),
    (["--calib", "model.pt"], "--calib: .* does not hold a tensor"),
    (["--calib", "calib.pt", "--mode", "parallel", "--layers", "fc"], "layers: 'fc' matches no"),
    (["--calib", "wrong.npy"], r"layer '0' \(Linear, in_features=12\)"),
    (["--calib", "calib.pt", "--workers", "0"], "workers must be a positive int"),
    (["--calib", "calib.pt", "--workers", "2", "--dask", "tcp://127.0.0.1:1"], "--workers and --dask"),
    (["--calib", "calib.pt", "--format", "sparse"], "--format sparse: .* must end in .safetensors"),
    (["--calib", "calib.pt", "--model-sparsity", "0.5", "--checkpoint", "ckpt"], "--checkpoint: a --model-sparsity"),
])
def test_trim_errors_exit_2_and_write_nothing(files, capsys, arguments, message):
    folder, _, _ = files
    np.save(folder / "wrong.npy", np.zeros((5, 3), dtype=np.float32))
    arguments = [str(folder / a) if a.endswith((".pt", ".npy")) else a for a in arguments]
    code = cli.main(["trim", str(folder / "model.pt"), *arguments, "--out", str(folder / "out.pt"), "--quiet"])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (folder / "out.pt").exists()


def test_torchscript_model_with_named_relu_layers(files, capsys):
    folder, model, x = files
    torch.jit.save(torch.jit.script(model), folder / "scripted.pt")
    arguments = ["trim", str(folder / "scripted.pt"), "--calib", str(folder / "calib.pt"), "--quiet"]
    assert cli.main([*arguments, "--out", str(folder / "out.pt")]) == 2
    assert "TorchScript module" in capsys.readouterr().err and not (folder / "out.pt").exists()
    assert cli.main([*arguments, "--out", str(folder / "out.pt"), "--relu-layers", "0", "2"]) == 0
    scripted = torch.jit.load(folder / "out.pt")
    python = cli.main(["trim", str(folder / "model.pt"), "--calib", str(folder / "calib.pt"), "--quiet",
                       "--out", str(folder / "python.pt")])
    assert python == 0
    expected = torch.load(folder / "python.pt", weights_only=False)
    torch.testing.assert_close(scripted(x), expected(x), rtol=0, atol=0)  # same signals, same weights


def test_non_module_files_are_explained(files, capsys):
    folder, model, _ = files
    torch.save(model.state_dict(), folder / "state.pt")
    code = cli.main(["trim", str(folder / "state.pt"), "--calib", str(folder / "calib.pt"), "--out",
                     str(folder / "out.pt"), "--quiet"])
    assert code == 2 and "not an nn.Module" in capsys.readouterr().err


def test_ctrl_c_exits_130_and_writes_nothing(files, monkeypatch, capsys):
    folder, _, _ = files

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "trim", interrupted)
    code = cli.main(["trim", str(folder / "model.pt"), "--calib", str(folder / "calib.pt"),
                     "--out", str(folder / "out.safetensors"), "--report", str(folder / "r.json")])
    assert code == 130 and "nothing was written" in capsys.readouterr().err
    assert not (folder / "out.safetensors").exists() and not (folder / "r.json").exists()


def test_demo_runs_end_to_end_small(tmp_path, capsys):
    code = cli.main(["demo", "--epochs", "1", "--samples", "300", "--cache", str(tmp_path), "--quiet"])
    assert code == 0
    output = capsys.readouterr().out
    assert "test accuracy" in output and "weights kept" in output
    report = json.loads((tmp_path / "demo-report.json").read_text())
    assert [row["name"] for row in report["layers"]] == ["0", "2", "4"]
    assert report["mode"] == "cascade"
    assert len(list(tmp_path.glob("lenet_300_100_e1_*.pt"))) == 1  # the cached model


def test_an_output_path_that_cannot_be_written_is_refused_before_trimming(tmp_path, capsys):
    """--out under a file (or in a missing folder): one line naming --out, status 2, before any work is done."""
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    for out, reason in [(blocker / "o.safetensors", "is a file, not a folder"),
                        (tmp_path / "missing" / "o.pt", "does not exist")]:
        arguments = ["trim", str(tmp_path / "no-model.pt"), "--calib", str(tmp_path / "no.npy"), "--out", str(out)]
        status = cli.main(arguments)
        error = capsys.readouterr().err
        assert status == 2 and error.count("\n") == 1 and "--out" in error and reason in error


def test_a_device_that_is_not_there_is_one_line(files, capsys):
    """--device cuda on a machine without a GPU (CI's): one line naming the device, status 2, before any work."""
    import solvers

    try:
        solvers.backend("cuda")
        pytest.skip("a GPU is present here")
    except ValueError:
        pass
    folder, _, _ = files
    status = cli.main(["trim", str(folder / "model.pt"), "--calib", str(folder / "calib.pt"), "--out",
                       str(folder / "o.pt"), "--device", "cuda", "--quiet"])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and "device='cuda:0' needs an NVIDIA GPU" in error


def test_a_model_whose_class_cannot_be_imported_is_one_line(tmp_path, capsys):
    """A model pickled from the user's own module, loaded where that module is not importable: one line with the
    hint (run from its folder or set PYTHONPATH), status 2."""
    (tmp_path / "mymodels.py").write_text(
        "import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(3, 2)\n    def forward(self, x):\n        return self.fc(x)\n")
    script = (f"import sys, torch; sys.path.insert(0, {str(tmp_path)!r}); import mymodels; "
              f"torch.save(mymodels.Net(), {str(tmp_path / 'net.pt')!r})")
    subprocess.run([sys.executable, "-c", script], check=True)
    np.save(tmp_path / "calib.npy", np.zeros((4, 3), dtype=np.float32))
    status = cli.main(["trim", str(tmp_path / "net.pt"), "--calib", str(tmp_path / "calib.npy"), "--out",
                       str(tmp_path / "o.pt"), "--quiet"])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert "No module named 'mymodels'" in error and "PYTHONPATH" in error


@pytest.fixture
def labelled(files):
    """The model's own labels on 300 inputs: (inputs, labels) files for --train (.pt) and --val (.npz)."""
    folder, model, x = files
    with torch.no_grad():
        labels = model(x).argmax(dim=1)
    torch.save((x[:200], labels[:200]), folder / "train.pt")
    np.savez(folder / "val.npz", x=x[200:].numpy(), y=labels[200:].numpy())
    return folder


def test_compress_writes_the_sparsest_model_within_the_drop_and_its_history(labelled, capsys):
    folder = labelled
    out, history = folder / "small.pt", folder / "history.json"
    code = cli.main(["compress", str(folder / "model.pt"), "--calib", str(folder / "calib.pt"),
                     "--train", str(folder / "train.pt"), "--val", str(folder / "val.npz"), "--max-drop", "0.05",
                     "--rounds", "2", "--epochs", "1", "--lr", "0.01", "--batch-size", "50", "--refit",
                     "--distill", "0.5", "--mixup", "0.2", "--renormalize", "--out", str(out), "--history",
                     str(history), "--quiet"])
    assert code == 0, capsys.readouterr().err
    rounds = json.loads(history.read_text())["rounds"]
    assert len(rounds) == 2 and any(entry["accepted"] for entry in rounds)
    best = [entry for entry in rounds if entry["accepted"]][-1]
    compressed = torch.load(out, weights_only=False)
    val = np.load(folder / "val.npz")
    with torch.no_grad():
        accuracy = float((compressed(torch.from_numpy(val["x"])).argmax(dim=1).numpy() == val["y"]).mean())
    assert accuracy == pytest.approx(best["metric"]) and accuracy >= 0.95
    assert sparsity(compressed) == pytest.approx(best["sparsity"]) and best["sparsity"] > 0


def test_compress_by_neurons_then_weights_writes_the_smaller_model_that_load_restores(labelled, capsys):
    folder = labelled
    out, history = folder / "small.safetensors", folder / "history.json"
    code = cli.main(["compress", str(folder / "model.pt"), "--calib", str(folder / "calib.pt"),
                     "--train", str(folder / "train.pt"), "--val", str(folder / "val.npz"), "--max-drop", "0.05",
                     "--rounds", "2", "--epsilon", "0.3", "--epochs", "1", "--lr", "0.01", "--batch-size", "50",
                     "--structure", "neurons,weights", "--out", str(out), "--history", str(history), "--quiet"])
    assert code == 0, capsys.readouterr().err
    small, _ = nettrim.load(out, torch.load(folder / "model.pt", weights_only=False))
    widths = [layer.out_features for layer in small if isinstance(layer, torch.nn.Linear)]
    assert widths[-1] == 4 and sum(widths) < 16 + 10 + 4
    rounds = json.loads(history.read_text())["rounds"]
    assert [entry["structure"] for entry in rounds] == ["neurons"] * 2 + ["weights"] * 2


@pytest.mark.parametrize(("arguments", "message"), [
    (["--train", "missing.pt"], "--train: .* does not exist"),
    (["--val", "calib.pt"], "--val: .* must hold \\(inputs, labels\\)"),
    (["--train", "calib.npy"], "--train: expected a .pt or .npz file"),
    (["--max-drop", "-1"], "max_drop must be a finite number >= 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--distill", "1.5"], "distill must be a number in \\[0, 1\\]"),
    (["--mixup", "-1"], "mixup must be a number >= 0"),
    (["--structure", "neurons,channels"], "structure must be one of")])
def test_compress_errors_exit_2_and_write_nothing(labelled, capsys, arguments, message):
    folder = labelled
    options = {"--train": "train.pt", "--val": "val.npz", "--max-drop": "0.01"}
    for flag, value in zip(arguments[::2], arguments[1::2], strict=True):
        options[flag] = value
    argv = ["compress", str(folder / "model.pt"), "--calib", str(folder / "calib.pt"), "--out",
            str(folder / "small.pt"), "--quiet"]
    files = ("--train", "--val")
    for flag, value in options.items():
        argv += [flag, str(folder / value) if flag in files else value]
    assert cli.main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (folder / "small.pt").exists()


def test_library_warnings_print_one_line_without_a_source_path(files, capsys):
    folder, _, _ = files
    code = cli.main(["trim", str(folder / "model.pt"), "--calib", str(folder / "calib.pt"), "--quiet",
                     "--target-sparsity", "0.99", "--max-epsilon", "0.02", "--out", str(folder / "out.pt")])
    err = capsys.readouterr().err
    assert code == 0 and "nettrim: warning: layer '0': target sparsity 0.99 not reached" in err
    assert ".py:" not in err and "UserWarning" not in err


@pytest.mark.parametrize("damage", ["state", "layer"])
def test_a_damaged_checkpoint_gives_one_line_that_names_it(files, capsys, damage):
    folder, model, x = files
    checkpoint = folder / "ckpt"
    nettrim.trim(model, x, progress=False, checkpoint=checkpoint)
    damaged = checkpoint / "state.json" if damage == "state" else sorted(checkpoint.glob("layer-*"))[0]
    damaged.write_bytes(damaged.read_bytes()[:30])
    code = cli.main(["trim", str(folder / "model.pt"), "--calib", str(folder / "calib.pt"), "--quiet",
                     "--checkpoint", str(checkpoint), "--out", str(folder / "out.pt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"nettrim: error: checkpoint: {damaged}")
    assert not (folder / "out.pt").exists()
