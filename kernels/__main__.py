"""``python -m kernels``: print the device report."""
from .report import doctor

print(doctor())
