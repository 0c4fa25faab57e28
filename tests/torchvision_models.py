"""torchvision's model definitions for the architecture tests, importable next to the CPU build of torch.

The torchvision 0.28.0 wheel that matches torch 2.13.0 is a CUDA build: its compiled extension does not load
against torch 2.13.0+cpu, and its import then fails registering fake kernels for two operators that only the
extension defines (`operator torchvision::nms does not exist`). The model definitions are pure Python and need
neither; declaring the two operators' schemas (as the extension would) lets the import finish. Nothing here
calls them: detection models are not tested.
"""

import sys

import torch

_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_library = None  # the declared operators live as long as this module


def models():
    """torchvision.models, with the two schemas declared first when the extension does not load."""
    global _library
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms does not exist" not in str(error):
            raise
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]  # the half-imported package
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            _library.define(schema)
        import torchvision
    return torchvision.models
