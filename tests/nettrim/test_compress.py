"""nettrim.compress: rounds of trim and masked fine-tuning judged by the user's metric."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import nettrim
import nettrim.compression as compress_module
from nettrim.compression import CompressInterrupted, compress, sparsity, weight_count
from networks import inputs, mlp


@pytest.fixture(scope="module")
def task():
    """A teacher's own labels on 400 inputs (its accuracy is 1), split into training batches and a validation
    set, and calibration inputs."""
    teacher = mlp(seed=3)
    x = inputs(400, seed=4)
    with torch.no_grad():
        labels = teacher(x).argmax(dim=1)
    train = [(x[i:i + 50], labels[i:i + 50]) for i in range(0, 300, 50)]
    validation = (x[300:], labels[300:])
    return teacher, train, validation, x[:200]


def accuracy_on(validation):
    def evaluate(model):
        assert not model.training
        with torch.no_grad():
            return float((model(validation[0]).argmax(dim=1) == validation[1]).double().mean())
    return evaluate


def test_compress_keeps_the_sparsest_model_within_the_allowed_drop(task, monkeypatch):
    teacher, train, validation, calibration = task
    evaluate = accuracy_on(validation)
    original = copy.deepcopy(teacher.state_dict())
    trimmed_zeros = []

    def recording_trim(*args, **kwargs):
        model, report = nettrim.trim(*args, **kwargs)
        trimmed_zeros.append({name: p == 0 for name, p in model.named_parameters()})
        return model, report

    monkeypatch.setattr(compress_module, "trim", recording_trim)
    teacher.train()
    model, history = compress(teacher, calibration, train, evaluate=evaluate, max_drop=0.05, epsilon=0.1, rounds=4,
                              epochs=2, lr=1e-2, progress=False, max_samples=None)
    assert teacher.training and model.training  # the caller's mode, kept and given back
    assert all(torch.equal(value, original[key]) for key, value in teacher.state_dict().items())
    assert history.original_metric == 1.0 and len(history.rounds) == 4
    accepted = [entry for entry in history.rounds if entry.accepted]
    assert accepted, history
    assert all(entry.metric >= 1.0 - 0.05 for entry in accepted)
    assert all(entry.sparsity > ([history.original_sparsity] + [r.sparsity for r in history.rounds])[entry.source]
               for entry in accepted)  # sparser than the model it trimmed
    assert all(not entry.accepted for entry in history.rounds
               if entry.metric < 0.95 or entry.sparsity <= history.original_sparsity)
    assert sparsity(model) == history.best.sparsity > 0.2
    assert evaluate(model.eval()) == history.best.metric
    round_of_best = max(index for index, entry in enumerate(history.rounds) if entry.accepted)
    for name, parameter in model.named_parameters():  # fine-tuning kept that round's zeros
        assert torch.all(parameter[trimmed_zeros[round_of_best][name]] == 0), name
    assert "| round | from | g | sparsity" in str(history) and history.to_dict()["rounds"][0]["epsilon"] == 0.1


def scripted_rounds(monkeypatch, outcomes):
    """compress's rounds replaced by `outcomes`, (sparsity, metric) in order; records (source round, g)."""
    trimmed = []

    def scripted_round(current, calibration, train_data, evaluate, g, selection, options, tuning):
        trimmed.append((current.round_number, g))
        candidate = torch.nn.Linear(1, 1)
        candidate.round_number = len(trimmed)
        return candidate, compress_module.Round(g, *outcomes[len(trimmed) - 1], False, 0.0, 0.0, 0.0)

    monkeypatch.setattr(compress_module, "_round", scripted_round)
    monkeypatch.setattr(compress_module, "sparsity", lambda *args, **kwargs: 0.0)
    return trimmed


def test_the_descent_steps_back_from_a_model_that_leaves_no_slack(monkeypatch):
    """After RETRIES rejections in a row from a kept model, or a candidate no sparser than it, the next round trims
    the model it came from at half the budget that led away from it; the result is the sparsest kept model."""
    original = torch.nn.Linear(1, 1)
    original.round_number = 0
    outcomes = [(0.3, 0.99), (0.5, 0.97), (0.7, 0.951),  # kept: g = 0.1, 0.15, 0.225
                (0.8, 0.90), (0.75, 0.94),               # from round 3: rejected twice
                (0.6, 0.98), (0.75, 0.96),               # from round 2 at 0.225 / 2: kept, and sparser than round 3
                (0.74, 0.99),                            # no sparser than round 7: back to round 6
                (0.72, 0.90), (0.73, 0.90)]              # rejected twice from round 6: back to round 2
    trimmed = scripted_rounds(monkeypatch, outcomes)
    model, history = compress(original, None, [], evaluate=lambda m: getattr(m, "metric", 1.0), max_drop=0.05,
                              epsilon=0.1, rounds=10, epochs=0, progress=False)
    assert [source for source, _ in trimmed] == [0, 1, 2, 3, 3, 2, 6, 7, 6, 6]
    assert [entry.source for entry in history.rounds] == [source for source, _ in trimmed]
    assert [g for _, g in trimmed] == pytest.approx([0.1, 0.15, 0.225, 0.3375, 0.16875, 0.1125, 0.16875, 0.253125,
                                                     0.084375, 0.0421875])
    assert [entry.accepted for entry in history.rounds] == [True] * 3 + [False] * 2 + [True] * 2 + [False] * 3
    assert model.round_number == 7 and history.best is history.rounds[6]


def test_a_later_stage_steps_back_into_the_models_of_the_earlier_one(monkeypatch):
    """The weights stage starts from the sparsest model of the neurons stage; when that one leaves no slack, the
    descent goes back to the model it was trimmed from, a neurons-stage model with more neurons left."""
    original = torch.nn.Linear(1, 1)
    original.round_number = 0
    trimmed = scripted_rounds(monkeypatch, [(0.3, 0.99), (0.5, 0.951), (0.6, 0.90),   # neurons
                                            (0.55, 0.94), (0.52, 0.94), (0.45, 0.97)])  # weights
    model, history = compress(original, None, [], evaluate=lambda m: 1.0, max_drop=0.05, rounds=3, epochs=0,
                              structure=("neurons", "weights"), progress=False)
    assert [source for source, _ in trimmed] == [0, 1, 2, 2, 2, 1]
    assert [g for _, g in trimmed] == pytest.approx([0.1, 0.15, 0.225, 0.1, 0.05, 0.075])
    assert [entry.accepted for entry in history.rounds] == [True, True, False, False, False, True]
    assert model.round_number == 2 and history.best is history.rounds[1]  # still the sparsest kept


def test_the_original_model_is_retried_at_halved_budgets_until_a_candidate_is_no_sparser(monkeypatch):
    original = torch.nn.Linear(1, 1)
    original.round_number = 0
    trimmed = scripted_rounds(monkeypatch, [(0.5, 0.5), (0.4, 0.5), (0.2, 0.5), (0.0, 0.99)])
    model, history = compress(original, None, [], evaluate=lambda m: 1.0, max_drop=0.05, rounds=8, epochs=0,
                              progress=False)
    assert trimmed == [(0, 0.1), (0, 0.05), (0, 0.025), (0, 0.0125)] and history.best is None
    assert model is not original and model.round_number == 0


def test_compress_by_neurons_returns_a_smaller_model_within_the_allowed_drop(task):
    teacher, train, validation, calibration = task
    evaluate, original = accuracy_on(validation), copy.deepcopy(teacher.state_dict())
    model, history = compress(teacher, calibration, train, evaluate=evaluate, max_drop=0.05, epsilon=0.2, rounds=3,
                              structure="neurons", epochs=2, lr=1e-2, progress=False, max_samples=None)
    assert all(torch.equal(value, original[key]) for key, value in teacher.state_dict().items())
    best = history.best
    assert best is not None and best.metric >= 0.95, history
    widths = [layer.out_features for layer in model if isinstance(layer, torch.nn.Linear)]
    assert widths == list(best.widths.values()) and widths[-1] == 4 and sum(widths) < 16 + 10 + 4
    assert best.sparsity == sparsity(model, total=weight_count(teacher)) > 0
    assert evaluate(model.eval()) == best.metric
    kept = [entry.sparsity for entry in history.rounds if entry.accepted]
    assert kept == sorted(set(kept)) and "(widths " in str(history)


def test_a_round_no_sparser_than_the_current_model_ends_its_stage(task, monkeypatch):
    """Smaller budgets remove no more, so halving g after a candidate that removed nothing would only repeat it."""
    teacher, train, validation, calibration = task
    monkeypatch.setattr(compress_module, "trim", lambda model, *args, **kwargs: (copy.deepcopy(model), None))
    model, history = compress(teacher, calibration, train, evaluate=accuracy_on(validation), max_drop=0.05,
                              rounds=5, structure=("weights", "weights"), epochs=0, progress=False)
    assert len(history.rounds) == 2 and not any(entry.accepted for entry in history.rounds)
    assert [entry.epsilon for entry in history.rounds] == [0.1, 0.1]


def test_compress_in_stages_removes_neurons_then_weights_of_the_smaller_model(task):
    teacher, train, validation, calibration = task
    evaluate, original = accuracy_on(validation), copy.deepcopy(teacher.state_dict())
    model, history = compress(teacher, calibration, train, evaluate=evaluate, max_drop=0.05, epsilon=0.2, rounds=2,
                              structure=("neurons", "weights"), gather_inputs=True, epochs=2, lr=1e-2,
                              progress=False, max_samples=None)
    assert all(torch.equal(value, original[key]) for key, value in teacher.state_dict().items())
    assert [entry.structure for entry in history.rounds] == ["neurons"] * 2 + ["weights"] * 2
    assert history.rounds[2].epsilon == 0.2  # the second stage starts again at the first g
    assert all(entry.widths for entry in history.rounds[:2]) and not any(entry.widths for entry in history.rounds[2:])
    neuron_rounds = [entry for entry in history.rounds[:2] if entry.accepted]
    assert neuron_rounds and history.best.structure == "weights", history  # both stages kept a round
    assert history.best.metric >= 0.95 and history.best.sparsity > neuron_rounds[-1].sparsity
    assert history.best.sparsity == sparsity(model, total=weight_count(teacher))
    assert evaluate(model.eval()) == history.best.metric
    linear = [layer for layer in model.modules() if isinstance(layer, torch.nn.Linear)]
    assert sum(layer.out_features for layer in linear) < 16 + 10 + 4 and any(
        bool((layer.weight == 0).any()) for layer in linear)


def test_compress_distills_every_round_from_a_frozen_copy_of_the_original(task, monkeypatch):
    teacher, train, validation, calibration = task
    original, teachers = copy.deepcopy(teacher.state_dict()), []

    def recording_finetune(model, loader, **kwargs):
        teachers.append((kwargs["teacher"], kwargs["distill"]))
        assert all(torch.equal(value, original[key]) for key, value in kwargs["teacher"].state_dict().items())
        return nettrim.finetune(model, loader, **kwargs)

    monkeypatch.setattr(compress_module, "finetune", recording_finetune)
    model, history = compress(teacher, calibration, train, evaluate=accuracy_on(validation), max_drop=0.05,
                              rounds=2, epochs=1, lr=1e-2, distill=0.9, progress=False, max_samples=None)
    assert len(teachers) == 2 and all(distill == 0.9 for _, distill in teachers)
    assert teachers[0][0] is teachers[1][0] and teachers[0][0] is not teacher
    assert not any(parameter.requires_grad for parameter in teachers[0][0].parameters())
    assert all(torch.equal(value, original[key]) for key, value in teacher.state_dict().items())
    assert history.best is not None and sparsity(model) == history.best.sparsity > 0


def test_with_no_round_accepted_the_original_comes_back_as_a_copy(task):
    teacher, train, validation, calibration = task
    with torch.no_grad():
        logits = teacher(validation[0])

    def closeness(model):  # 0 for the teacher, negative for anything else
        with torch.no_grad():
            return -float(((model(validation[0]) - logits) ** 2).mean())

    model, history = compress(teacher, calibration, train, evaluate=closeness, max_drop=0.0, epsilon=0.5,
                              rounds=1, epochs=0, progress=False, max_samples=None)
    assert history.original_metric == 0.0 and history.rounds[0].metric < 0.0 < history.rounds[0].sparsity
    assert history.best is None and not history.rounds[0].accepted
    assert model is not teacher
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), teacher.state_dict().values(),
                                                 strict=True))


def test_an_interrupted_compress_leaves_the_model_untouched_and_hands_over_the_best(task):
    teacher, train, validation, calibration = task
    original = copy.deepcopy(teacher.state_dict())
    evaluate, calls = accuracy_on(validation), []

    def interrupted_in_round_two(model):
        calls.append(1)
        if len(calls) == 3:  # the original, round 1, then Ctrl-C while round 2 is scored
            raise KeyboardInterrupt
        return evaluate(model)

    with pytest.raises(CompressInterrupted) as caught:
        compress(teacher, calibration, train, evaluate=interrupted_in_round_two, max_drop=0.05, epochs=1, lr=1e-2,
                 progress=False, max_samples=None)
    assert all(torch.equal(value, original[key]) for key, value in teacher.state_dict().items())
    assert len(caught.value.history.rounds) == 1
    expected = caught.value.history.best.sparsity if caught.value.history.best else 0.0
    assert sparsity(caught.value.model) == expected


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(evaluate=None), "evaluate must be a function"), (dict(max_drop=-0.1), "max_drop"),
    (dict(max_drop=float("nan")), "max_drop"), (dict(epsilon=0.0), "epsilon"), (dict(epsilon=0.9), "epsilon"),
    (dict(rounds=0), "rounds"), (dict(grow=0.5), "grow"), (dict(epochs=-1), "epochs"), (dict(lr=0), "lr"),
    (dict(schedule="step"), "schedule"), (dict(distill=2), "distill"), (dict(inplace=True), "inplace"),
    (dict(mixup=-1), "mixup"), (dict(renormalize="yes"), "renormalize"),
    (dict(structure="channels"), "structure"), (dict(structure=("neurons", "channels")), "structure"),
    (dict(structure=()), "structure"), (dict(gather_inputs=True), "gather_inputs"),
    (dict(evaluate=lambda model: "good"), "evaluate must return a number"),
    (dict(evaluate=lambda model: float("nan")), "evaluate returned nan")])
def test_compress_refuses_bad_arguments_by_name(task, kwargs, message):
    teacher, train, validation, calibration = task
    original = copy.deepcopy(teacher.state_dict())
    arguments = {"evaluate": accuracy_on(validation), "max_drop": 0.01, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        compress(teacher, calibration, train, **arguments)
    assert all(torch.equal(value, original[key]) for key, value in teacher.state_dict().items())


def test_a_round_whose_metric_is_nan_is_dropped_and_the_kept_rounds_stay(task):
    teacher, train, validation, calibration = task
    accuracy, calls = accuracy_on(validation), []

    def evaluate(model):  # the original, then round 1, then NaN for round 2, then as before
        calls.append(1)
        return float("nan") if len(calls) == 3 else accuracy(model)
    with pytest.warns(UserWarning, match="evaluate returned nan .* that round is dropped"):
        model, history = compress(teacher, calibration, train, evaluate=evaluate, max_drop=0.05, rounds=3,
                                  epochs=1, lr=1e-2, progress=False, max_samples=None)
    assert history.rounds[0].accepted and not history.rounds[1].accepted
    assert math.isnan(history.rounds[1].metric) and len(history.rounds) == 3
    assert history.best is not None and sparsity(model) == history.best.sparsity > 0


@pytest.mark.parametrize("train", [[], "generator"])
def test_an_empty_training_loader_is_refused_by_name(task, train):
    teacher, _, validation, calibration = task
    train = (batch for batch in []) if train == "generator" else train
    with pytest.raises(ValueError, match="train_data: holds no batches|loader: yielded no batches"):
        compress(teacher, calibration, train, evaluate=accuracy_on(validation), max_drop=0.05, rounds=1, epochs=1,
                 progress=False, max_samples=None)
