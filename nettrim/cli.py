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
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__, save, trim
from .compression import CompressInterrupted, compress
from .finetune import ShuffledBatches
from .flags import MODEL_FLAGS, RUN_FLAGS, TUNING_FLAGS, add_flags
from .io import FORMATS, write_atomically
from .schedule import BlockError
from .trim import TrimInterrupted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nettrim", description="Net-Trim: convex pruning of trained torch models")
    parser.add_argument("--version", action="version", version=f"nettrim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _trim_command(commands.add_parser("trim", help="trim a saved model on calibration inputs"))
    _compress_command(commands.add_parser("compress", help="alternate trims and masked fine-tuning while the "
                                                           "validation accuracy stays within --max-drop"))
    demo = commands.add_parser("demo", help="train LeNet-300-100 on the bundled MNIST (cached), trim it, compare")
    add_flags(demo, RUN_FLAGS, epsilon={"default": 0.1})
    _add_output_flags(demo)
    demo.add_argument("--samples", type=int, default=5000, help="calibration images (default 5000)")
    demo.add_argument("--epochs", type=int, default=10, help="training epochs of the cached model")
    demo.add_argument("--cache", type=Path, default=None, help="where the trained model is cached (default .cache/)")
    return parser


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", type=Path, help="write the report as JSON to this path")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no table")


def _trim_command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="a model saved with torch.save(model, path) or a TorchScript file "
                                                 "(which needs --relu-layers)")
    parser.add_argument("--calib", type=Path, required=True, help="calibration inputs: a .pt tensor or .npy")
    parser.add_argument("--out", type=Path, required=True,
                        help="where to write the trimmed model: *.safetensors (weights and report), or any other "
                             "suffix for the input's format (pickled module or TorchScript)")
    parser.add_argument("--format", choices=FORMATS, default="dense",
                        help="with a .safetensors --out: the layers' weights dense, or in compressed sparse row form "
                             "where that is smaller (loaded back dense by nettrim.load)")
    add_flags(parser, RUN_FLAGS + MODEL_FLAGS)
    _add_output_flags(parser)


def _compress_command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="a model saved with torch.save(model, path)")
    parser.add_argument("--calib", type=Path, required=True, help="calibration inputs: a .pt tensor or .npy")
    parser.add_argument("--train", type=Path, required=True,
                        help="labelled training data: a .pt file holding (inputs, labels), or an .npz with x and y")
    parser.add_argument("--val", type=Path, required=True, help="labelled validation data, as --train")
    parser.add_argument("--max-drop", type=float, required=True,
                        help="the validation accuracy's allowed drop from the original model's (0.005: half a point)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the model: *.safetensors or *.pt")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of trim and fine-tuning (default 8)")
    add_flags(parser, TUNING_FLAGS, table=TUNING_FLAGS)
    parser.add_argument("--structure", default="weights",
                        help="weights: scattered zeros; neurons: remove whole neurons and channels, a smaller model; "
                             "stages separated by commas, e.g. neurons,weights: neurons first, then weights")
    add_flags(parser, ("--epsilon", "--reweight", "--refit", "--max-samples", "--seed"),
               epsilon={"default": 0.1, "help": "the first round's g"},
               reweight={"default": 2, "help": "reweighting rounds in each trim"},
               seed={"help": "seeds the calibration subsample and the batch order"},
               refit={"help": "each trim fits its kept weights again by least squares (trim's --refit; default off)"})
    parser.add_argument("--history", type=Path, help="write every round (g, sparsity, accuracy, seconds) as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no table")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # each shown once where it arises
        warnings.showwarning = _one_line  # the library's warnings as the command's own lines, not Python's
        return _run(args)


def _run(args) -> int:
    """The command, its errors as one line each and its exit status (module docstring)."""
    try:
        return {"trim": _run_trim, "compress": _run_compress, "demo": _run_demo}[args.command](args)
    except (TrimInterrupted, CompressInterrupted) as interrupted:
        print(f"nettrim: {interrupted}; nothing else was written", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("nettrim: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:
        print(f"nettrim: error: {error}", file=sys.stderr)
        return 2
    except BlockError as error:
        print(f"nettrim: error: {error}", file=sys.stderr)
        return 1


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning for the command: "nettrim: warning: <message>" on stderr."""
    print(f"nettrim: warning: {message}", file=sys.stderr if file is None else file, flush=True)


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
