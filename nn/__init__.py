"""A torch.nn-style module system over the :mod:`kernels`, with hand-written backward passes."""
from .module import (BackwardError, Module, Parameter, UnusedContextWarning,  # noqa: F401
                     as_array, enable_grad, is_grad_enabled, no_grad)
from .gradcheck import GradcheckError, gradcheck, gradcheck_module  # noqa: F401
from .activation import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .container import *  # noqa: F401,F403
from . import init  # noqa: F401
from .init import manual_seed  # noqa: F401
from .summary import summary  # noqa: F401
from . import models  # noqa: F401
from . import distributed  # noqa: F401
from .losses import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss  # noqa: F401
from . import optim  # noqa: F401
from .checkpoint import CheckpointError, load, save  # noqa: F401
from . import data  # noqa: F401
from .train import NonFiniteLossError, Trainer, fit  # noqa: F401
from . import curvature, diagnostics, landscape  # noqa: F401
from .onnx_export import OnnxExportError, export_onnx, register_onnx  # noqa: F401
