"""Fine-tuning with the folded BatchNorm put back (nettrim/renormalize.py) and with mixup."""

import copy

import pytest
import torch
from torch import nn

import nettrim
from nettrim.renormalize import renormalized
from networks import images, inputs, mlp, small_cnn


@pytest.fixture(scope="module")
def trimmed_cnn():
    x = images(16)
    trimmed, _ = nettrim.trim(small_cnn(), x, epsilon=0.1, max_samples=400, progress=False)
    convs = [module for module in trimmed.modules() if isinstance(module, nn.Conv2d)]
    with torch.no_grad():  # a zero bias to keep, a free one, and a conv without bias
        convs[0].bias[0] = 0.0
        convs[1].bias = None
    assert bool((convs[0].bias != 0).any())
    return x, trimmed


def labelled(x):
    labels = torch.randint(0, 3, (len(x),), generator=torch.Generator().manual_seed(0))
    return [(x[:8], labels[:8]), (x[8:], labels[8:])]


def test_the_normalization_starts_as_the_identity_and_the_first_batch_sees_the_models_function(trimmed_cnn):
    x, trimmed = trimmed_cnn
    model = copy.deepcopy(trimmed)
    with torch.no_grad():
        expected = model.eval()(x)
        with renormalized(model):
            torch.testing.assert_close(model.eval()(x), expected, rtol=1e-6, atol=1e-9)
            first = model.train()(x)  # gamma and beta start at this batch's statistics: the same function
    assert not any(module._forward_hooks for module in model.modules())
    expected_train = copy.deepcopy(trimmed).train()(x)
    torch.testing.assert_close(first, expected_train, rtol=1e-4, atol=1e-4)


def test_folding_gives_the_function_of_the_normalized_model_and_keeps_every_zero(trimmed_cnn):
    x, trimmed = trimmed_cnn
    model = copy.deepcopy(trimmed)
    zeros = {name: parameter == 0 for name, parameter in model.named_parameters()}
    with renormalized(model) as norms:
        optimizer = torch.optim.SGD(norms.parameters(), lr=0.5)
        for _ in range(3):  # move gamma and beta away from their start, and the running averages
            optimizer.zero_grad()
            model.train()(x * 2 + 1).square().mean().backward()
            optimizer.step()
        with torch.no_grad():
            normalized = model.eval()(x)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), normalized)
        assert not torch.allclose(normalized, trimmed.eval()(x))
    for name, parameter in model.named_parameters():
        assert torch.all(parameter[zeros[name]] == 0), name
    assert sorted(model.state_dict()) == sorted(trimmed.state_dict())


def test_finetune_renormalized_keeps_zeros_and_folds_even_when_interrupted(trimmed_cnn):
    x, trimmed = trimmed_cnn
    model = copy.deepcopy(trimmed)
    zeros = {name: parameter == 0 for name, parameter in model.named_parameters()}
    labels = labelled(x)
    before = nn.functional.cross_entropy(model(x), labels[0][1].repeat(2)).item()

    class Interrupted:
        def __len__(self):
            return 2

        def __iter__(self):
            yield labels[0]
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nettrim.finetune(model, Interrupted(), epochs=1, lr=1e-2, renormalize=True, progress=False)
    assert not any(module._forward_hooks for module in model.modules())
    nettrim.finetune(model, labels, epochs=10, lr=1e-2, renormalize=True, progress=False)
    after = nn.functional.cross_entropy(model(x), labels[0][1].repeat(2)).item()
    assert after < before
    for name, parameter in model.named_parameters():
        assert torch.all(parameter[zeros[name]] == 0), name


def test_mixup_is_seeded_and_trains_on_mixed_inputs(trimmed_cnn):
    x, trimmed = trimmed_cnn
    runs = [nettrim.finetune(copy.deepcopy(trimmed), labelled(x), epochs=2, lr=1e-2, mixup=0.4, progress=False)
            for _ in range(2)]
    plain = nettrim.finetune(copy.deepcopy(trimmed), labelled(x), epochs=2, lr=1e-2, progress=False)
    for name, parameter in runs[0].named_parameters():
        assert torch.equal(parameter, runs[1].get_parameter(name)), name
    assert any(not torch.equal(parameter, plain.get_parameter(name))
               for name, parameter in runs[0].named_parameters())


def test_mixup_trains_on_mixed_samples_against_their_mixed_labels():
    seen = []

    def loss(output, labels):
        seen.append(labels.clone())
        return output.sum() * 0

    x, y = inputs(6, features=12), torch.arange(6) % 4
    nettrim.finetune(mlp(), [(x, y)], mixup=1.0, loss=loss, progress=False)
    (labels,) = seen
    assert labels.shape == (6, 4) and torch.allclose(labels.sum(1), torch.ones(6, dtype=labels.dtype))
    assert (labels > 0).sum(1).max() == 2 and (labels.max(1).values < 1).any()  # pairs mixed in various shares
    assert torch.all(labels[torch.arange(6), y] > 0)  # each sample's own label keeps its share


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(mixup=-0.1), "mixup"), (dict(mixup=True), "mixup"), (dict(mixup=float("inf")), "mixup"),
    (dict(renormalize=1), "renormalize")])
def test_finetune_refuses_bad_mixup_and_renormalize(kwargs, message):
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        nettrim.finetune(model, [(inputs(4), torch.zeros(4, dtype=torch.long))], **kwargs)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


class Watching:
    """Validation batches that record the accuracy `model` has each time they are read (finetune reads them
    after every epoch, in eval mode)."""

    def __init__(self, model, x, y):
        self.model, self.batches, self.accuracies = model, [(x, y)], []

    def __iter__(self):
        with torch.no_grad():
            self.accuracies.append(float((self.model(self.batches[0][0]).argmax(1) == self.batches[0][1]).float()
                                         .mean()))
        return iter(self.batches)


@pytest.mark.parametrize("renormalize", [False, True])
def test_validation_keeps_the_most_accurate_epoch(trimmed_cnn, renormalize):
    x, trimmed = trimmed_cnn
    model = copy.deepcopy(trimmed)
    with torch.no_grad():  # validation labels the model starts out right on; it then trains toward others
        agreed = trimmed.eval()(x).argmax(1)
    watching = Watching(model, x, agreed)
    nettrim.finetune(model, labelled(x), epochs=6, lr=1e-2, renormalize=renormalize, validation=watching,
                     progress=False)
    assert len(watching.accuracies) == 6
    assert max(watching.accuracies) > watching.accuracies[-1]  # the last epoch is not the one kept
    with torch.no_grad():
        kept = float((model.eval()(x).argmax(1) == agreed).float().mean())
    assert kept == max(watching.accuracies)


@pytest.mark.parametrize("validation, message", [(3, "validation must be batches"),
                                                 ([], "validation: holds no examples"),
                                                 ([torch.zeros(2)], "validation: each batch must be")])
def test_bad_validation_is_refused_by_name_and_leaves_the_model(trimmed_cnn, validation, message):
    x, trimmed = trimmed_cnn
    model = copy.deepcopy(trimmed)
    with pytest.raises(ValueError, match=message):
        nettrim.finetune(model, labelled(x), epochs=1, lr=1e-2, validation=validation, progress=False)
    if message.startswith("validation must"):
        for name, parameter in model.named_parameters():
            assert torch.equal(parameter, trimmed.get_parameter(name)), name
