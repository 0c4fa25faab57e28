"""Sparse storage and sparse inference of trimmed models: file sizes of nettrim.save's two formats, and CPU latency
of the dense model against the same model with torch's sparse CSR products in its Linear layers.

One run, same process: the zoo's LeNet-300-100 and LeNet-5 trained as in benchmarks/compression.py (cached),
trimmed at that benchmark's sparsest point within its error (cascade, 3 reweighting rounds; 5,000 seeded
calibration images); each trimmed model saved with format="dense" and format="sparse" (sizes in bytes, the
loaded model checked equal), and its latency (median ms of repeated forward passes, batch 1 and 256,
nettrim.neurons.latency_ms) measured dense and with every Linear's weight as a torch sparse CSR tensor (torch has
no sparse convolution: LeNet-5's convs stay dense). Writes benchmarks/results/storage.json and storage.md.

    python -m benchmarks.storage           # about 15 minutes on 2 cores (LeNet-300-100 trained once)
    python -m benchmarks.storage --quick   # LeNet-300-100 after one epoch, one plain trim
"""

from __future__ import annotations

import copy
import sys
import tempfile
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this file's folder would shadow the `solvers` package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import nettrim  # noqa: E402
from benchmarks.compression import TRAINING_LR  # noqa: E402
from benchmarks.results_files import benchmark_parser, write_results  # noqa: E402
from nettrim.neurons import latency_ms  # noqa: E402
from nettrim.zoo import mnist_inputs, test_error, trained  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FULL = {"samples": 5000, "models": {"lenet_300_100": {"epochs": 30, "g": 0.3, "reweight": 3},
                                    "lenet5": {"epochs": 10, "g": 0.2, "reweight": 3}}}
QUICK = {"samples": 500, "models": {"lenet_300_100": {"epochs": 1, "g": 0.3, "reweight": 0}}}
BATCHES = (1, 256)


class SparseLinear(nn.Module):
    """A Linear whose weight is a torch sparse CSR tensor: y = (W x^T)^T + b."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sparse.mm(self.weight, x.reshape(-1, x.shape[-1]).T).T
        return y if self.bias is None else y + self.bias


def with_sparse_linears(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.Linear replaced by a SparseLinear."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            model.set_submodule(name, SparseLinear(module))
    return model


def measure(name: str, settings: dict, samples: int, seed: int = 0) -> dict:
    model = trained(name, epochs=settings["epochs"], lr=TRAINING_LR[name], seed=seed)
    train_images, _ = mnist_inputs(name, "train")
    test = mnist_inputs(name, "test")
    chosen = np.sort(np.random.default_rng(seed).choice(len(train_images), samples, replace=False))
    trimmed, report = nettrim.trim(model, train_images[torch.from_numpy(chosen)], epsilon=settings["g"],
                                   mode="cascade", reweight=settings["reweight"], max_samples=samples,
                                   progress=False, seed=seed)
    sizes = {}
    with tempfile.TemporaryDirectory() as folder:
        for storage in nettrim.io.FORMATS:
            path = nettrim.save(trimmed, Path(folder) / f"{storage}.safetensors", format=storage)
            sizes[storage] = path.stat().st_size
            loaded, _ = nettrim.load(path, model)
            assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                         trimmed.state_dict().values(), strict=True))
    sparse_model = with_sparse_linears(trimmed)
    example = test[0][:1]
    with torch.no_grad():
        assert torch.allclose(sparse_model(test[0][:256]), trimmed(test[0][:256]), atol=1e-5)
    latency = {str(batch): {"dense": round(latency_ms(trimmed, example, batch), 3),
                            "sparse_csr": round(latency_ms(sparse_model, example, batch), 3)} for batch in BATCHES}
    return {"model": name, **settings, "kept": round(report.nonzeros_after / report.weights, 4),
            "test_error": test_error(trimmed, *test), "bytes": sizes, "latency_ms": latency,
            "linear_weights": sum(m.weight.numel() for m in trimmed.modules() if isinstance(m, nn.Linear)),
            "weights": report.weights}


def markdown(report: dict) -> str:
    lines = ["| model | weights kept | test error | dense file | sparse file | ratio | batch 1: dense / CSR ms "
             "| batch 256: dense / CSR ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        dense, sparse = row["bytes"]["dense"], row["bytes"]["sparse"]
        timing = [f"{row['latency_ms'][str(b)]['dense']} / {row['latency_ms'][str(b)]['sparse_csr']}" for b in BATCHES]
        lines.append(f"| {row['model']} (cascade, reweight {row['reweight']}, g = {row['g']}) | {row['kept']:.1%} | "
                     f"{row['test_error']:.2%} | {dense / 1024:.0f} KiB | {sparse / 1024:.0f} KiB | "
                     f"{dense / sparse:.1f}x | {timing[0]} | {timing[1]} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "one small model, in a minute", RESULTS / "storage.json")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    report = {"config": config, "threads": torch.get_num_threads(),
              "rows": [measure(name, settings, config["samples"]) for name, settings in config["models"].items()]}
    write_results(args.out, report, markdown(report))
    return report


if __name__ == "__main__":
    main()
