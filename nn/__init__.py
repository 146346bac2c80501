"""A torch.nn-style module system over the :mod:`kernels`, with hand-written backward passes."""
from .module import BackwardError, Module, Parameter  # noqa: F401
from .gradcheck import GradcheckError, gradcheck, gradcheck_module  # noqa: F401
