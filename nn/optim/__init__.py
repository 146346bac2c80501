"""Optimizers (fused update kernels on both devices) and learning-rate schedules, as torch.optim.

``nn.optim.SGD``, ``nn.optim.Adam``, ``nn.optim.AdamW``, ``nn.optim.RMSprop``,
``nn.optim.Adagrad``; schedules are importable both as
``nn.optim.StepLR`` and as ``nn.optim.lr_scheduler.StepLR``.
"""
from . import lr_scheduler  # noqa: F401
from .lr_scheduler import *  # noqa: F401,F403
from .optimizer import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop  # noqa: F401
