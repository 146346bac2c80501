"""The nn training tests run on the simulator in ``kernels.strict_transfers()`` mode: a
hidden device-to-host read (``float(loss)``, ``int(count)``...) in the code they exercise
fails them with ``ImplicitTransferError`` instead of passing silently (on a GPU it would be
a stall per call)."""
import pytest

import kernels as K

# (test_cuda_transfers switches the mode on and off itself.)
STRICT_MODULES = {"test_train", "test_input_grad", "test_optimizers"}


@pytest.fixture(autouse=True)
def _strict_transfers_on_the_simulator(request):
    if (K.SIMULATOR and request.node.get_closest_marker("cuda") is not None
            and request.module.__name__.rsplit(".", 1)[-1] in STRICT_MODULES):
        with K.strict_transfers():
            yield
    else:
        yield
