"""The benchmark scripts run end to end in their quick mode (so they cannot rot), and say what they measure."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


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
    assert saved["rows"] == report["rows"] and len(saved["rows"]) == 16  # 2 modes x 2 reweightings x 4 methods
    for start in range(0, 16, 4):
        ours, *theirs = saved["rows"][start:start + 4]
        assert [row["method"] for row in theirs] == ["magnitude", "sparsegpt", "wanda"]
        assert ours["method"] == "nettrim" and 0 < ours["kept"] < 1
        for row in (ours, *theirs):  # every method reached Net-Trim's nonzeros in every layer
            assert row["layer_nonzeros"] == ours["layer_nonzeros"] and 0 <= row["test_error"] <= 1
    plain, reweighted = saved["rows"][0], saved["rows"][4]
    assert reweighted["reweight"] == 1 and reweighted["kept"] < plain["kept"]
    assert "| parallel | 0 | 0.1 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 10_000
    again = _load("compression").main(["--quick", "--out", str(out), "--resume"])  # every row reused
    assert again["rows"] == report["rows"]


def test_a_model_fingerprint_tells_apart_weights_that_differ_in_one_bit():
    import torch

    from benchmarks.results_files import fingerprint

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    copy = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    copy.load_state_dict(model.state_dict())
    assert fingerprint(copy) == fingerprint(model) and len(fingerprint(model)) == 16
    with torch.no_grad():
        copy[2].weight[1, 2] = torch.nextafter(copy[2].weight[1, 2], torch.tensor(1.0))
    assert fingerprint(copy) != fingerprint(model)


def test_resumed_compression_rows_are_reused_only_for_the_same_trained_model(capsys):
    compression = _load("compression")
    baseline = {"test_error": 0.015, "fingerprint": "0123456789abcdef"}
    rows = [{"model": name, "mode": "cascade", "reweight": 0, "g": 0.1, "method": "nettrim"}
            for name in ("lenet_300_100", "lenet5")]
    previous = {"seed": 0, "config": {"samples": 600}, "rows": rows,
                "baselines": {"lenet_300_100": baseline, "lenet5": {"test_error": 0.008}}}
    reused = compression._reusable(previous, "lenet_300_100", baseline, 0, 600)
    assert list(reused.values()) == rows[:1]  # its own rows only
    assert capsys.readouterr().out == ""
    other = {**baseline, "fingerprint": "fedcba9876543210"}
    assert compression._reusable(previous, "lenet_300_100", other, 0, 600) == {}
    assert "not known to be of this trained model" in capsys.readouterr().out
    # an earlier file without a fingerprint: the same test error is not the same model
    assert compression._reusable(previous, "lenet5", {**baseline, "test_error": 0.008}, 0, 600) == {}
    assert "not known to be of this trained model" in capsys.readouterr().out
    assert compression._reusable(previous, "lenet_300_100", baseline, 1, 600) == {}  # another seed
    assert compression._reusable(previous, "lenet_300_100", baseline, 0, 2000) == {}  # another P


def test_compression_for_some_models_keeps_the_others_results_of_the_same_seed_and_p(capsys):
    compression = _load("compression")

    def report(names, seed=0, machine="this"):
        return {"seed": seed, "machine": {"platform": machine},
                "config": {"samples": 600, "models": {name: {"epochs": len(name)} for name in names}},
                "baselines": {name: {"test_error": 0.01} for name in names},
                "rows": [{"model": name, "g": g, "by": machine} for name in names for g in (0.1, 0.2)]}

    earlier = report(["lenet_300_100", "lenet5"], machine="earlier")
    merged = compression.with_other_models(report(["lenet5"]), earlier)
    assert list(merged["baselines"]) == list(merged["config"]["models"]) == ["lenet_300_100", "lenet5"]
    assert merged["baselines"]["lenet_300_100"]["machine"] == {"platform": "earlier"}  # who measured it
    assert merged["baselines"]["lenet5"]["machine"] == {"platform": "this"}
    assert merged["rows"] == earlier["rows"][:2] + report(["lenet5"])["rows"]  # each model's from who ran it
    assert compression.with_other_models(report(["lenet5"]), report(["lenet_300_100"], seed=1))["rows"] == \
        report(["lenet5"])["rows"]  # another seed: nothing carried, and the user is told
    assert "results of lenet_300_100 in --out (seed 1, P = " in capsys.readouterr().err
    compression.with_other_models(report(["lenet5"]), report(["lenet5"], seed=1))
    assert capsys.readouterr().err == ""  # nothing lost: nothing to say
    assert compression.with_other_models(report(["lenet5"]), None) == report(["lenet5"])


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
    # a few neurons end past gap_patience, within the widened gap tolerance only (0.51 to 0.58% at gap_tol 0.5%)
    assert {proxies["strict_status"], proxies["numpy_status"]} <= {"optimal", "suboptimal"}
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
    assert [(run["mode"], run["g"], run["budget"]) for run in saved["trims"]] == [("parallel", 0.1, "neuron"),
                                                                                 ("cascade", 0.1, "layer")]
    assert saved["model"]["parameters"] == report["model"]["parameters"] == 77_754
    for run in saved["trims"]:
        assert 0 < run["removed"] < 1 and 0 <= run["test_error"] <= 1
        assert len(run["layers"]) == 10  # the stem, 2 convs per block, 2 shortcut convs, the classifier
    assert "| cascade | 0.1 | 0 | layer |" in out.with_suffix(".md").read_text()
    again = _load("architectures").main(["--quick", "--out", str(out), "--data", str(mnist), "--resume"])
    assert again["trims"] == saved["trims"]  # every trim reused
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
    assert "| lenet_300_100 | 0.2 | 1.1, - |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0
    resumed = _load("neurons").main(["--quick", "--resume", "--out", str(out)])  # the trim is reused, not redone
    assert resumed["models"]["lenet_300_100"]["trims"][0] == run


@pytest.mark.slow
def test_conv_budgets_benchmark_quick(tmp_path):
    out = tmp_path / "conv_budgets.json"
    report = _load("conv_budgets").main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert {(trim["max_samples"], trim["budget"]) for trim in report["trims"]} == {
        (500, "neuron"), (500, "layer"), (2000, "neuron"), (2000, "layer")}
    for trim in report["trims"]:
        assert all(0 < kept < 1 for kept in trim["kept"].values())
        assert all(0 < error < 1 for error in trim["held_out_response_error"].values())
    assert "| 0.2 | 2,000 | layer |" in out.with_suffix(".md").read_text()


def test_conv_response_errors_are_relative_to_the_original_convs():
    import copy

    import torch

    from nettrim.zoo import lenet5

    benchmark = _load("conv_budgets")
    torch.manual_seed(0)
    model, images = lenet5().eval(), torch.randn(3, 1, 28, 28)
    assert benchmark.response_errors(model, copy.deepcopy(model), images) == {"0": 0.0, "2": 0.0}
    halved = copy.deepcopy(model)
    for name in benchmark.CONVS:  # every output halved: the error is half the response
        layer = dict(halved.named_modules())[name]
        layer.weight.data /= 2
        layer.bias.data /= 2
    assert benchmark.response_errors(model, halved, images) == pytest.approx({"0": 0.5, "2": 0.5})


@pytest.mark.slow
def test_torchvision_trims_benchmark_quick(tmp_path):
    out = tmp_path / "torchvision_trims.json"
    report = _load("torchvision_trims").main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    (row,) = report["rows"]
    assert row["model"] == "mobilenet_v3_small" and row["layers"] > 40 and 0 < row["kept"] < 1
    assert sum(row["statuses"].values()) == row["layers"] and not row["not_trimmed"]
    assert "| mobilenet_v3_small |" in out.with_suffix(".md").read_text()


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


def test_sparsegpt_pruning_one_input_gives_the_least_squares_fit_of_the_others():
    peers = _load("peers")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 50))
    U = rng.standard_normal((6, 4))
    U[0] *= 1e-3  # the lowest scores: input 0 is the one pruned
    pruned = peers.sparsegpt(U, X, zeros=4, damping=1e-12)
    assert np.all(pruned[0] == 0) and np.count_nonzero(pruned[1:]) == 20
    optimum = np.linalg.lstsq(X[1:].T, X.T @ U, rcond=None)[0]
    np.testing.assert_allclose(pruned[1:], optimum, rtol=1e-8, atol=1e-10)


def test_sparsegpt_reaches_exactly_the_zeros_asked_in_blocks():
    peers = _load("peers")
    rng = np.random.default_rng(1)
    X, U = rng.standard_normal((300, 400)), rng.standard_normal((300, 7))
    X[5] = 0.0  # a dead input
    for zeros in (0, 1, 1000, 2099):
        pruned = peers.sparsegpt(U, X, zeros, block=128)
        assert U.size - np.count_nonzero(pruned) == zeros
    np.testing.assert_allclose(peers.sparsegpt(U, X, 0), U, rtol=0, atol=1e-12)  # nothing pruned, nothing moved


def test_wanda_drops_the_smallest_weight_times_input_norm_per_output():
    peers = _load("peers")
    U = np.array([[1.0, -4.0], [2.0, 1.0], [-3.0, 0.5]])
    X = np.array([[10.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # input norms 10, 1, 1: scores [[10, 40], [2, 1], [3, 0.5]]
    # 3 zeros: 2 for output 0 (drops scores 2 and 3), 1 for output 1 (drops 0.5)
    np.testing.assert_array_equal(peers.wanda(U, X, zeros=3), [[1.0, -4.0], [0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(peers.even_split(5, 3), [2, 1, 2])


def test_gradual_magnitude_pruning_follows_the_cubic_schedule_to_the_final_sparsity():
    import torch

    from nettrim.compression import sparsity

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 10), torch.nn.ReLU(), torch.nn.Linear(10, 5))
    reached = []
    pruned = _load("schedules").gradual_magnitude(model, 0.8, 4, lambda m: reached.append(sparsity(m)))
    total = 20 * 10 + 10 + 10 * 5 + 5
    expected = [round(total * 0.8 * (1 - (1 - k / 4) ** 3)) / total for k in range(1, 5)]
    assert reached == pytest.approx(expected) and sparsity(pruned) == pytest.approx(0.8, abs=1 / total)
    values = torch.cat([p.detach().abs().flatten() for p in model.parameters()])
    kept = torch.cat([p.detach().flatten() for p in pruned.parameters()]) != 0
    assert values[kept].min() >= values[~kept].max()  # without tuning in between: the largest survive
    assert all(type(p) is torch.nn.Parameter for p in pruned.parameters()) and not list(model.buffers())


@pytest.mark.slow
@pytest.mark.parametrize(("option", "label"), [("--refit", "refit on"), ("--distill", "neurons then weights")])
def test_schedules_benchmark_variants_quick(tmp_path, option, label):
    out = tmp_path / "schedules.json"
    report = _load("schedules").main(["--quick", option, "--out", str(out)])
    name = f"schedules_{option.removeprefix('--')}"
    saved = json.loads((tmp_path / f"{name}.json").read_text())
    assert saved["config"]["refit"] is True and not out.exists()
    row = report["rows"][0]
    assert row["nettrim"]["history"]["rounds"] and 0 <= row["nettrim"]["sparsity"] < 1
    assert abs(row["gmp"]["sparsity"] - row["nettrim"]["sparsity"]) < 0.01
    assert row["gmp"]["steps"] == len(row["nettrim"]["history"]["rounds"])  # the same fine-tuning budget
    assert len(row["fingerprint"]) == 16  # which trained model it was
    assert label in (tmp_path / f"{name}.md").read_text()
    if option == "--distill":
        structures = [entry["structure"] for entry in row["nettrim"]["history"]["rounds"]]
        assert structures == ["neurons"] * 2 + ["weights"] * 2
        assert row["nettrim"]["widths"][-1] == 10


@pytest.mark.slow
def test_cifar_benchmark_quick_runs_every_section_on_a_stand_in(tmp_path):
    """benchmarks/cifar.py end to end on random images and a random-weight ResNet-20 (CI has no ../shared)."""
    rng = np.random.default_rng(0)
    for name, count in (("cifar10_train_prefix.npz", 120), ("cifar10_test_prefix.npz", 30)):
        np.savez(tmp_path / name, images=rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
                 labels=rng.integers(0, 10, count))
    out = tmp_path / "cifar.json"
    report = _load("cifar").main(["--quick", "--out", str(out), "--data", str(tmp_path), "--weights", "none"])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    assert [(row["mode"], row["optimal"] == row["layers"]) for row in saved["robustness"]] == [
        ("cascade", True), ("parallel", True)]
    methods = [row["method"] for row in saved["oneshot"]]
    assert methods == ["Net-Trim", "Net-Trim, parallel", "magnitude", "SparseGPT", "Wanda", "SparseGPT, uniform"]
    default = saved["oneshot"][0]
    assert abs(default["sparsity"] - 0.7) <= 0.02
    for row in saved["oneshot"][2:5]:  # the peers at exactly the default trim's per-layer nonzeros
        assert row["layer_nonzeros"] == default["layer_nonzeros"]
        assert set(row["paired"]) == {"", " recalibrated"}
    assert [row["method"] for row in saved["finetune"]] == [
        "Net-Trim + fine-tuning", "Net-Trim + fine-tuning, no mixup", "gradual magnitude + fine-tuning"]
    assert all(row["layer_nonzeros"] == saved["finetune"][0]["layer_nonzeros"] for row in saved["finetune"])
    assert all(set(row["paired"]) == {"", " recalibrated"} for row in saved["finetune"][1:])
    assert "| Net-Trim | 70% |" in out.with_suffix(".md").read_text()
    # one section again: the others are kept from the earlier report made with the same settings
    again = _load("cifar").main(["--quick", "--out", str(out), "--data", str(tmp_path), "--weights", "none",
                                 "--sections", "robustness"])
    assert again["oneshot"] == saved["oneshot"] and again["finetune"] == saved["finetune"]
    # a fine-tuning setting changed: the sections that do not read it are kept
    changed = _load("cifar")
    changed.QUICK = {**changed.QUICK, "tuning_variants": []}
    third = changed.main(["--quick", "--out", str(out), "--data", str(tmp_path), "--weights", "none",
                          "--sections", "finetune"])
    assert third["oneshot"] == saved["oneshot"] and third["robustness"] == again["robustness"]
    assert [row["method"] for row in third["finetune"]] == ["Net-Trim + fine-tuning", "gradual magnitude + fine-tuning"]


def test_recalibration_restores_each_channels_mean_and_spread():
    """A conv whose output channels were scaled and shifted gets the reference's moments back, and a model equal
    to the reference is left as it is."""
    import torch

    cifar = _load("cifar")
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=True), torch.nn.ReLU(),
                                    torch.nn.Conv2d(4, 2, 3, bias=False)).eval()
    images = torch.randn(16, 3, 8, 8)
    assert torch.allclose(cifar.recalibrated(reference, reference, images)(images), reference(images), atol=1e-5)
    damaged = cifar.recalibrated(reference, reference, images)
    with torch.no_grad():
        damaged[0].weight.mul_(torch.tensor([2.0, 0.5, 1.0, 3.0])[:, None, None, None])
        damaged[0].bias.add_(1.0)
    repaired = cifar.recalibrated(damaged, reference, images)
    assert torch.allclose(repaired(images), reference(images), atol=1e-4)
    with torch.no_grad():
        damaged[0].weight[1] = 0.0  # a channel pruned empty: shifted to its mean, not scaled by a ratio of zeros
    repaired = cifar.recalibrated(damaged, reference, images)
    assert torch.isfinite(repaired[0].weight).all() and repaired[0].weight.abs().max() < 10
    assert torch.allclose(repaired[0](images)[:, 1], reference[0](images)[:, 1].mean(), atol=1e-5)
