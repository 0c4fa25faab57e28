"""The `nettrim` command: `nettrim trim MODEL --calib FILE --out PATH`, `nettrim compress MODEL --calib FILE
--train FILE --val FILE --max-drop X --out PATH` and `nettrim demo`.

Errors print one line naming the argument and exit with status 2 (1 when a worker fails); Ctrl-C exits with
status 130 and writes no output (outputs are written at the very end, each through a temporary file renamed into
place): the layers trimmed so far stay in the checkpoint folder (OUT.partial), and the same command resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__, save, trim
from .arguments import BUDGETS, MODES, RELU_PROGRAMS, STRUCTURES
from .compression import DEFAULT_FINETUNE, CompressInterrupted, compress
from .finetune import ShuffledBatches
from .io import FORMATS, write_atomically
from .schedule import BlockError
from .trim import DEFAULT_EPSILON, TrimInterrupted


def _layer_epsilon(text: str) -> tuple[str, float]:
    name, separator, value = text.rpartition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=G (a layer name or regex and a relative budget), got {text!r}")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number after '=', got {value!r}") from None


def _add_trim_options(parser: argparse.ArgumentParser, epsilon: float) -> None:
    parser.add_argument("--epsilon", type=float, default=epsilon,
                        help=f"relative budget g: eps = g ||Y||_F per layer (default {epsilon})")
    parser.add_argument("--mode", choices=MODES, default="cascade")
    parser.add_argument("--backend", choices=("admm", "cvxpy"), default="admm")
    parser.add_argument("--device", default="cpu", help="where the ADMM runs: cpu, cuda or cuda:K (default cpu)")
    parser.add_argument("--max-samples", type=int, default=20_000, help="per-layer sample budget P")
    parser.add_argument("--reweight", type=int, default=None,
                        help="rounds of reweighted l1 (sparser); default: 1 with a target sparsity, else 0")
    parser.add_argument("--structure", choices=STRUCTURES, default="weights",
                        help="weights: scattered zeros (default); neurons: remove whole neurons and channels, "
                             "and write a smaller model")
    parser.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                        help="fit the kept weights again by least squares (the zeros stay; the report gives each "
                             "layer's output error before and after); default: on with a target sparsity")
    parser.add_argument("--relu-program", choices=RELU_PROGRAMS, default=None,
                        help="for layers followed by a ReLU: Net-Trim's relu program, or the pre-activation kept "
                             "within the budget; default: pre-activation with a target sparsity, else relu")
    parser.add_argument("--gather-inputs", action="store_true",
                        help="with --structure neurons: the first layer reads only the inputs it still uses")
    parser.add_argument("--target-sparsity", type=float,
                        help="fraction of zero weights each layer must reach (its budget is found by a search)")
    parser.add_argument("--model-sparsity", type=float,
                        help="fraction of zero weights for the whole model, shared among the layers by the "
                             "weights' saliencies and reached by each layer's own budget search")
    parser.add_argument("--max-epsilon", type=float, default=1.0, help="the largest g a target may use")
    parser.add_argument("--max-iter", type=int, help="ADMM iterations per layer (default 10,000)")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="seconds per layer; neurons not converged by then keep their original weights")
    parser.add_argument("--workers", type=int, help="solve on a local pool of this many worker processes")
    parser.add_argument("--dask", metavar="ADDRESS",
                        help="solve on the Dask cluster whose scheduler is at ADDRESS (pip install 'nettrim[dask]')")
    parser.add_argument("--block-size", type=int, help="neurons per task with --workers or --dask")
    parser.add_argument("--report", type=Path, help="write the report as JSON to this path")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nettrim", description="Net-Trim: convex pruning of trained torch models")
    parser.add_argument("--version", action="version", version=f"nettrim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    trim_parser = commands.add_parser("trim", help="trim a saved model on calibration inputs")
    trim_parser.add_argument("model", type=Path, help="a model saved with torch.save(model, path) or a TorchScript "
                                                         "file (which needs --relu-layers)")
    trim_parser.add_argument("--calib", type=Path, required=True, help="calibration inputs: a .pt tensor or .npy")
    trim_parser.add_argument("--out", type=Path, required=True,
                             help="where to write the trimmed model: *.safetensors (weights and report), or any "
                                  "other suffix for the input's format (pickled module or TorchScript)")
    trim_parser.add_argument("--format", choices=FORMATS, default="dense",
                             help="with a .safetensors --out: the layers' weights dense, or in compressed sparse row "
                                  "form where that is smaller (loaded back dense by nettrim.load)")
    _add_trim_options(trim_parser, DEFAULT_EPSILON)
    trim_parser.add_argument("--layer-epsilon", type=_layer_epsilon, action="append", default=[],
                             metavar="NAME=G", help="per-layer g (name or regex); repeatable")
    trim_parser.add_argument("--layers", nargs="+", help="names or regexes of the layers to trim (default all)")
    trim_parser.add_argument("--exclude", nargs="+", help="names or regexes of layers to leave alone")
    trim_parser.add_argument("--relu-layers", nargs="*",
                             help="layers followed by a ReLU, for models torch.fx cannot trace (TorchScript); "
                                  "give the flag alone if there are none")
    trim_parser.add_argument("--budget", choices=BUDGETS, default="neuron")
    trim_parser.add_argument("--gamma", type=float, default=1.1, help="cascade slack factor (>= 1)")
    trim_parser.add_argument("--kappa", type=float, help="cascade factor for the last layer")
    trim_parser.add_argument("--seed", type=int, default=0)
    trim_parser.add_argument("--checkpoint", type=Path,
                             help="folder where each trimmed layer is kept until the trim ends (default OUT.partial): "
                                  "after Ctrl-C or a crash, the same command resumes after those layers")

    squeeze = commands.add_parser("compress", help="alternate trims and masked fine-tuning while the validation "
                                                   "accuracy stays within --max-drop")
    squeeze.add_argument("model", type=Path, help="a model saved with torch.save(model, path)")
    squeeze.add_argument("--calib", type=Path, required=True, help="calibration inputs: a .pt tensor or .npy")
    squeeze.add_argument("--train", type=Path, required=True,
                         help="labelled training data: a .pt file holding (inputs, labels), or an .npz with x and y")
    squeeze.add_argument("--val", type=Path, required=True, help="labelled validation data, as --train")
    squeeze.add_argument("--max-drop", type=float, required=True,
                         help="the validation accuracy's allowed drop from the original model's (0.005: half a point)")
    squeeze.add_argument("--out", type=Path, required=True, help="where to write the model: *.safetensors or *.pt")
    squeeze.add_argument("--rounds", type=int, default=8, help="rounds of trim and fine-tuning (default 8)")
    squeeze.add_argument("--epsilon", type=float, default=0.1, help="the first round's g (default 0.1)")
    squeeze.add_argument("--epochs", type=int, default=DEFAULT_FINETUNE["epochs"], help="fine-tuning epochs a round")
    squeeze.add_argument("--lr", type=float, default=DEFAULT_FINETUNE["lr"], help="fine-tuning learning rate")
    squeeze.add_argument("--batch-size", type=int, default=128, help="fine-tuning batch size (default 128)")
    squeeze.add_argument("--reweight", type=int, default=2, help="reweighting rounds in each trim (default 2)")
    squeeze.add_argument("--refit", action="store_true",
                         help="each trim fits its kept weights again by least squares (trim's --refit)")
    squeeze.add_argument("--distill", type=float, default=0.0, metavar="WEIGHT",
                         help="fine-tune by distillation from the original model with this weight in [0, 1] on it "
                              "(for class logits; 0.9 reached docs/compress.md's sparsest schedules; default 0: off)")
    squeeze.add_argument("--renormalize", action="store_true",
                         help="fine-tune with a batch normalization after every convolution, folded back at the end "
                              "(for networks whose BatchNorm the trim folds away)")
    squeeze.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                         help="fine-tune on mixed pairs of inputs, their weights drawn from Beta(ALPHA, ALPHA) "
                              "(default 0: off)")
    squeeze.add_argument("--structure", default="weights",
                         help="weights: scattered zeros; neurons: remove whole neurons and channels, a smaller model; "
                              "stages separated by commas, e.g. neurons,weights: neurons first, then weights")
    squeeze.add_argument("--max-samples", type=int, default=20_000, help="per-layer sample budget P")
    squeeze.add_argument("--history", type=Path, help="write every round (g, sparsity, accuracy, seconds) as JSON")
    squeeze.add_argument("--seed", type=int, default=0, help="seeds the calibration subsample and the batch order")
    squeeze.add_argument("--quiet", action="store_true", help="no progress bars and no table")

    demo = commands.add_parser("demo", help="train LeNet-300-100 on the bundled MNIST (cached), trim it, compare")
    _add_trim_options(demo, 0.1)
    demo.add_argument("--samples", type=int, default=5000, help="calibration images (default 5000)")
    demo.add_argument("--epochs", type=int, default=10, help="training epochs of the cached model")
    demo.add_argument("--cache", type=Path, default=None, help="where the trained model is cached (default .cache/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"trim": _run_trim, "compress": _run_compress, "demo": _run_demo}[args.command](args)
    except (TrimInterrupted, CompressInterrupted) as interrupted:
        print(f"nettrim: {interrupted}; nothing else was written", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("nettrim: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as error:
        print(f"nettrim: error: {error}", file=sys.stderr)
        return 2
    except BlockError as error:
        print(f"nettrim: error: {error}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _scheduling(args):
    """The trim's executor options: a local pool (--workers), a Dask cluster (--dask) or this process."""
    if args.dask is None:
        yield {"workers": args.workers, "block_size": args.block_size}
        return
    if args.workers is not None:
        raise ValueError("--workers and --dask: pass one of them")
    try:
        from distributed import Client
    except ImportError:
        raise ValueError("--dask needs Dask's distributed package: pip install 'nettrim[dask]'") from None
    try:
        client = Client(args.dask, timeout="10s")
    except OSError as error:
        raise ValueError(f"--dask: cannot reach a Dask scheduler at {args.dask!r} ({error})") from None
    with client:
        yield {"executor": client, "block_size": args.block_size}


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_model(path: Path) -> nn.Module:
    """A pickled nn.Module (torch.save(model, path)) or a TorchScript archive (torch.jit.save)."""
    if not path.exists():
        raise FileNotFoundError(f"MODEL: {path} does not exist")
    if _is_torchscript(path):
        return torch.jit.load(path, map_location="cpu")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as error:  # the pickle names a class this Python cannot find
        raise ValueError(f"MODEL: {path} needs its model class to load, and {error}; run nettrim from the folder "
                         "of the module that defines it, or add that folder to PYTHONPATH") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"MODEL: {path} holds a {type(model).__name__}, not an nn.Module (a state dict needs its "
                         "model class: build the model, load the state dict, then torch.save(model, path))")
    return model


def load_calibration(path: Path) -> torch.Tensor:
    if not path.exists():
        raise FileNotFoundError(f"--calib: {path} does not exist")
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path, allow_pickle=False))
    if path.suffix == ".pt":
        try:
            tensor = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # weights_only refuses anything but tensors and plain containers
            tensor = None
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"--calib: {path} does not hold a tensor (save one with torch.save(tensor, path))")
        return tensor
    raise ValueError(f"--calib: expected a .pt or .npy file, got {path}")


def check_writable(path: Path, option: str) -> None:
    """Refuse, before any work, an output path whose folder does not exist, is not a folder, or is not writable."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"{option}: cannot write {path}: {folder} {what}")
    if path.is_dir():
        raise ValueError(f"{option}: {path} is a folder; give a file name")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option}: cannot write {path}: {folder} is not writable")


def _run_trim(args) -> int:
    check_writable(args.out, "--out")
    if args.format == "sparse" and args.out.suffix != ".safetensors":
        raise ValueError(f"--format sparse: writes safetensors, so --out must end in .safetensors, got {args.out}")
    if args.report is not None:
        check_writable(args.report, "--report")
    if args.model_sparsity is not None and args.checkpoint is not None:
        raise ValueError("--checkpoint: a --model-sparsity search repeats whole trims and is not checkpointed; "
                         "give one of the two")
    model = load_model(args.model)
    calibration = load_calibration(args.calib)
    epsilon = {".*": args.epsilon, **dict(args.layer_epsilon)} if args.layer_epsilon else args.epsilon
    checkpoint = None
    if args.model_sparsity is None:  # a model sparsity search repeats whole trims: nothing to resume
        checkpoint = args.checkpoint or args.out.with_name(args.out.name + ".partial")
    with _scheduling(args) as scheduling:
        trimmed, report = trim(
            model, calibration, epsilon=epsilon, mode=args.mode, backend=args.backend, device=args.device,
            progress=not args.quiet, layers=args.layers, exclude=args.exclude, relu_layers=args.relu_layers,
            budget=args.budget, gamma=args.gamma, kappa=args.kappa, checkpoint=checkpoint,
            seed=args.seed, **_shared_options(args), **scheduling)
    _write_model(trimmed, args.out, report, args.format)
    if args.report is not None:
        write_atomically(args.report, report.to_json)
    if checkpoint is not None:
        shutil.rmtree(checkpoint, ignore_errors=True)
    if not args.quiet:
        print(report)
        print(f"wrote {args.out}" + (f" and {args.report}" if args.report else ""))
    return 0


def _write_model(model: nn.Module, path: Path, report, format: str = "dense") -> None:
    """*.safetensors through nettrim.save; any other suffix in the model's own format (TorchScript or pickle)."""
    if path.suffix == ".safetensors":
        save(model, path, report, format=format)
    elif isinstance(model, torch.jit.ScriptModule):
        write_atomically(path, lambda temporary: torch.jit.save(model, temporary))
    else:
        write_atomically(path, lambda temporary: torch.save(model, temporary))


def load_labelled(path: Path, option: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) from a .pt file holding a pair of tensors or an .npz file with arrays x and y."""
    if not path.exists():
        raise FileNotFoundError(f"{option}: {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            if not {"x", "y"} <= set(arrays.files):
                raise ValueError(f"{option}: {path} must hold arrays named x and y, found {sorted(arrays.files)}")
            pair = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    elif path.suffix == ".pt":
        try:
            pair = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            pair = None
    else:
        raise ValueError(f"{option}: expected a .pt or .npz file, got {path}")
    if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)
            and len(pair[0]) == len(pair[1]) > 0):
        raise ValueError(f"{option}: {path} must hold (inputs, labels): two tensors with as many rows")
    return pair[0], pair[1].long()


def _accuracy(images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024):
    def accuracy(model: nn.Module) -> float:
        with torch.no_grad():
            hits = sum(int((model(x).argmax(dim=1) == y).sum())
                       for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True))
        return hits / len(labels)
    return accuracy


def _run_compress(args) -> int:
    check_writable(args.out, "--out")
    if args.history is not None:
        check_writable(args.history, "--history")
    model = load_model(args.model)
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError("MODEL: compress fine-tunes the model, which a TorchScript file cannot; save the nn.Module")
    calibration = load_calibration(args.calib)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    train = ShuffledBatches(*load_labelled(args.train, "--train"), args.batch_size, args.seed)
    evaluate = _accuracy(*load_labelled(args.val, "--val"))
    compressed, history = compress(
        model, calibration, train, evaluate=evaluate, max_drop=args.max_drop, epsilon=args.epsilon,
        rounds=args.rounds, epochs=args.epochs, lr=args.lr, reweight=args.reweight,
        structure=args.structure.split(","), refit=args.refit, distill=args.distill,
        renormalize=args.renormalize, mixup=args.mixup, max_samples=args.max_samples, seed=args.seed,
        progress=not args.quiet)
    _write_model(compressed, args.out, None)
    if args.history is not None:
        write_atomically(args.history, lambda temporary: Path(temporary).write_text(
            json.dumps(history.to_dict(), indent=2)))
    if not args.quiet:
        print(history)
        print(f"wrote {args.out}" + (f" and {args.history}" if args.history else ""))
    return 0


def _shared_options(args) -> dict:
    """trim()'s options that `nettrim trim` and `nettrim demo` share."""
    return dict(reweight=args.reweight, structure=args.structure, refit=args.refit, relu_program=args.relu_program,
                gather_inputs=args.gather_inputs,
                target_sparsity=args.target_sparsity,
                model_sparsity=args.model_sparsity,
                max_epsilon=args.max_epsilon, max_samples=args.max_samples, max_iter=args.max_iter,
                time_limit=args.time_limit)


def _run_demo(args) -> int:
    from .datasets import load_mnist
    from .zoo import DEFAULT_CACHE, test_error, trained_lenet_300_100

    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    start = time.perf_counter()
    cache = args.cache or DEFAULT_CACHE
    print(f"LeNet-300-100 on the bundled MNIST (trained once, then cached in {cache})", flush=True)
    model = trained_lenet_300_100(epochs=args.epochs, cache=cache)
    trained = time.perf_counter()
    images, _ = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    chosen = np.sort(np.random.default_rng(0).choice(len(images), min(args.samples, len(images)), replace=False))
    error_before = test_error(model, test_images, test_labels)
    print(f"model ready in {trained - start:.1f} s; test accuracy {100 * (1 - error_before):.2f}%", flush=True)
    rounds = f", {args.reweight} reweighting rounds" if args.reweight else ""
    print(f"trimming in {args.mode} mode, g = {args.epsilon}{rounds}, on {len(chosen)} training images", flush=True)
    with _scheduling(args) as scheduling:
        trimmed, report = trim(model, torch.from_numpy(images[chosen]), epsilon=args.epsilon, mode=args.mode,
                               backend=args.backend, device=args.device, progress=not args.quiet,
                               **_shared_options(args), **scheduling)
    error_after = test_error(trimmed, test_images, test_labels)
    if not args.quiet:
        print(report)
    print(f"test accuracy {100 * (1 - error_before):.2f}% -> {100 * (1 - error_after):.2f}%; "
          f"weights kept {report.nonzeros_after} of {report.nonzeros_before} ({100 * report.kept:.1f}%); "
          f"trimmed in {report.seconds:.1f} s (total {time.perf_counter() - start:.1f} s)")
    path = args.report or cache / "demo-report.json"
    write_atomically(path, report.to_json)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
