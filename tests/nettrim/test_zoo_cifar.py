"""The CIFAR-10 ResNet-20 definition and the CIFAR-10 loader (the shared checkpoint and images are not in CI: the
benchmark loads them exactly, strict; here the architecture and the file format)."""

import numpy as np
import pytest
import torch

from nettrim.datasets import CIFAR_MEAN, CIFAR_STD, load_cifar10
from nettrim.zoo import CifarResNet, ZeroPadShortcut, cifar_resnet20


def test_resnet20_has_the_published_modules_and_size():
    model = cifar_resnet20()
    names = [name for name, _ in model.named_parameters()]
    assert names[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert "layer3.2.conv2.weight" in names and names[-2:] == ["linear.weight", "linear.bias"]
    assert sum(p.numel() for p in model.parameters()) == 269_722  # He et al. 2016, table 6: 0.27M
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 19 and not model.training
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_checkpoint_loads_exactly_with_or_without_the_dataparallel_prefix(tmp_path):
    torch.manual_seed(0)
    source = CifarResNet()
    path = tmp_path / "resnet20.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    loaded = cifar_resnet20(path)
    for (name, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    torch.save({"state_dict": {"conv1.weight": source.conv1.weight}}, path)
    with pytest.raises(RuntimeError, match="Missing key"):
        cifar_resnet20(path)


def test_option_a_shortcut_subsamples_and_pads_channels_with_zeros():
    x = torch.randn(1, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, 2)(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and not y[:, :8].any() and not y[:, 24:].any()


def test_cifar_images_are_normalized_nchw_float32(tmp_path):
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    images[1, 0, 0] = (255, 0, 128)
    np.savez(tmp_path / "part.npz", images=images, labels=np.array([3, 7]))
    x, y = load_cifar10(tmp_path / "part.npz")
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32 and y.tolist() == [3, 7]
    expected = [(v - m) / s for v, m, s in zip((1.0, 0.0, 128 / 255), CIFAR_MEAN, CIFAR_STD, strict=True)]
    assert x[1, :, 0, 0] == pytest.approx(expected, rel=1e-6)
    assert x[0, 0, 5, 5] == pytest.approx(-CIFAR_MEAN[0] / CIFAR_STD[0], rel=1e-6)
