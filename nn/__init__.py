"""A torch.nn-style module system over the :mod:`kernels`, with hand-written backward passes."""
from .gradcheck import GradcheckError, gradcheck, gradcheck_module  # noqa: F401
