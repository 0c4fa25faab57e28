"""The benchmark scripts run end to end in their quick mode (so they cannot rot), and say what they measure."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_solvers_benchmark_quick(tmp_path):
    out = tmp_path / "solvers.json"
    report = _load("solvers").main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["layer"]["P"] == 400 and saved["layer"]["N"] == 785
    assert set(saved["runs"]) == {"admm", "cvxpy-scs", "published"}
    admm = report["runs"]["admm"]
    assert admm["status"] == "optimal"
    assert admm["neurons_over_budget_1e-3"] == 0
    assert admm["max_violation_over_max_y"] <= 1e-5
    assert "| admm |" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_compression_benchmark_quick(tmp_path):
    out = tmp_path / "compression.json"
    report = _load("compression").main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == report["rows"] and len(saved["rows"]) == 8  # 2 modes x 2 reweightings x 2 methods
    for ours, theirs in zip(saved["rows"][::2], saved["rows"][1::2], strict=True):
        assert ours["method"] == "nettrim" and theirs["method"] == "magnitude"
        assert theirs["layer_nonzeros"] == ours["layer_nonzeros"] and theirs["kept"] == ours["kept"]
        assert 0 < ours["kept"] < 1 and 0 <= ours["test_error"] <= 1
    plain, reweighted = saved["rows"][0], saved["rows"][2]
    assert reweighted["reweight"] == 1 and reweighted["kept"] < plain["kept"]
    assert "| parallel | 0 | 0.1 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 10_000
    again = _load("compression").main(["--quick", "--out", str(out), "--resume"])  # every row reused
    assert again["rows"] == report["rows"]


def test_magnitude_pruning_keeps_the_largest_entries_per_layer():
    import torch

    from nettrim.layers import select_layers

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    pruned = _load("compression").magnitude_pruned(model, {"0": 7, "2": 2})
    for layer, original, keep in zip(select_layers(pruned), select_layers(model), (7, 2), strict=True):
        U, W = layer.weight_matrix(), original.weight_matrix()
        assert np.count_nonzero(U) == keep
        assert np.abs(W[U == 0]).max() <= np.abs(W[U != 0]).min()
        np.testing.assert_array_equal(U[U != 0], W[U != 0])


@pytest.mark.slow
def test_scaling_benchmark_quick(tmp_path):
    out = tmp_path / "scaling.json"
    _load("scaling").main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert {row["varied"] for row in saved["sweeps"]} == {"P", "N", "M"}
    assert all(row["within_budget"] for row in saved["sweeps"])
    in_process = [row for row in saved["workers"] if row["workers"] == 0 and row["block_size"] is not None]
    assert [row["difference_to_same_blocks_in_process"] for row in in_process] == [0.0, 0.0]
    assert {row["workers"] for row in saved["workers"]} == {0, 2}
    whole, chunked, streamed = saved["memory"]
    assert (chunked["chunks"], chunked["sample_blocks"]) == (5, 1) and streamed["chunks"] == 5
    assert streamed["sample_blocks"] > 1 and all(row["within_budget"] for row in saved["memory"])
    assert "| mode | where |" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_gpu_benchmark_quick_measures_the_cpu_proxies(tmp_path):
    """Its CPU part runs everywhere: operations counted on the strict device, transfers per check, the NumPy solve."""
    out = tmp_path / "gpu.json"
    report = _load("gpu").main(["--quick", "--out", str(out)])
    proxies = json.loads(out.read_text())["cpu_proxies"]
    assert proxies == report["cpu_proxies"] and report["gpu"] is None
    assert proxies["strict_status"] == proxies["numpy_status"] == "optimal"
    assert 20 < proxies["operations_per_iteration"] < proxies["operations_per_check"]
    assert 1 <= proxies["transfers_per_check_mean"] <= proxies["transfers_per_check_max"] <= 61
    assert proxies["l1_strict_over_numpy"] == pytest.approx(1.0, rel=1e-3)
    assert "| operations / iteration |" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_wide_benchmark_quick_solves_in_chunks_on_the_samples_side(tmp_path):
    out = tmp_path / "wide.json"
    report = _load("wide").main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["layer"]["factored_side"] == "samples"
    assert report["whole_layer"]["chunks"] > 1 and report["whole_layer"]["iterations"] == 10
    subset = report["neurons_to_the_end"]
    assert subset["status"] == "optimal" and subset["within_budget"] and 0 < subset["kept"] < 1
    assert "| neurons to the end |" in out.with_suffix(".md").read_text()
    vgg = report["vgg11_bn"]  # its input repeats each of 512 channels 49 times; the bias row is distinct
    assert vgg["inputs"] == 25_088 and vgg["distinct_inputs"] <= 512 and vgg["samples"] == 64
    assert vgg["fit_ratio"] <= 1 + 1e-3 and 0 < vgg["kept"] < 1


@pytest.mark.slow
def test_architectures_benchmark_quick(tmp_path):
    """On the bundled MNIST (the same idx files as Fashion-MNIST's, which CI does not have)."""
    out = tmp_path / "architectures.json"
    mnist = BENCHMARKS.parent / "data" / "mnist"
    report = _load("architectures").main(["--quick", "--out", str(out), "--data", str(mnist)])
    saved = json.loads(out.read_text())
    assert [(run["mode"], run["g"]) for run in saved["trims"]] == [("parallel", 0.1), ("cascade", 0.1)]
    assert saved["model"]["parameters"] == report["model"]["parameters"] == 77_754
    for run in saved["trims"]:
        assert 0 < run["removed"] < 1 and 0 <= run["test_error"] <= 1
        assert len(run["layers"]) == 10  # the stem, 2 convs per block, 2 shortcut convs, the classifier
    assert "| cascade | 0.1 | 0 |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        _load("architectures").main(["--quick", "--out", str(out), "--data", str(tmp_path)])


@pytest.mark.slow
def test_neurons_benchmark_quick(tmp_path):
    out = tmp_path / "neurons.json"
    report = _load("neurons").main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    run = saved["models"]["lenet_300_100"]["trims"][0]
    assert run == json.loads(json.dumps(report["models"]["lenet_300_100"]["trims"][0]))
    assert run["widths"]["0"][0] == 300 and run["widths"]["2"][0] == 100 and run["widths"]["4"] == [10, 10]
    assert run["size"]["flops"]["after"] < run["size"]["flops"]["before"]
    assert 0 <= run["test_error"] <= 1 and 0 <= run["test_error_finetuned"] <= 1
    assert "| lenet_300_100 | 0.2 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_storage_benchmark_quick_saves_smaller_files_and_times_both_products(tmp_path):
    out = tmp_path / "storage.json"
    report = _load("storage").main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    row = report["rows"][0]
    # a nonzero costs its float32 value and a uint16 or uint8 column index where a dense weight costs 4 bytes
    assert row["bytes"]["sparse"] <= row["bytes"]["dense"] * (1.5 * row["kept"] + 0.05)
    assert all(timing["dense"] > 0 and timing["sparse_csr"] > 0 for timing in row["latency_ms"].values())
    assert "| lenet_300_100 (cascade" in out.with_suffix(".md").read_text()
