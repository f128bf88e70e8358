"""InherNet: neural network inheritance.

Turn a pretrained PyTorch network (the teacher) into a smaller one by factorising the teacher's own
weights: every eligible ``Linear``/``Conv2d`` becomes one shared rank-r down-projection plus H gated
up-projection heads, initialised from the truncated SVD (Zhou et al., ICLR 2026).

    >>> import inhernet
    >>> teacher = inhernet.models.create_model("resnet56", num_classes=100)
    >>> model = inhernet.inherit(teacher, inhernet.InheritConfig(rank=8, heads=3))
    >>> print(inhernet.layer_report(model))
"""

from . import conv1d, factorise, kinds, latency, models, ranks
from .config import InheritConfig
from .conv1d import InherConv1d
from .diagnostics import head_report
from .errors import ConfigError, InherNetError, InherNetLoadError
from .export import export_onnx
from .inherit import inherit, inherit_checkpoint
from .io import load, save
from .layers import InherConv2d, InherLinear
from .optimize import optimize_for_inference
from .report import count_flops, count_parameters, layer_report

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "InheritConfig",
    "InherConv1d",
    "InherConv2d",
    "InherLinear",
    "InherNetError",
    "InherNetLoadError",
    "count_flops",
    "count_parameters",
    "export_onnx",
    "head_report",
    "inherit",
    "inherit_checkpoint",
    "layer_report",
    "load",
    "models",
    "optimize_for_inference",
    "save",
]
