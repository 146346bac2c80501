"""Tests of the gradient checker itself (nn/gradcheck.py): it passes right backward passes,
catches wrong ones and names the input, reports the worst element, and handles zero
gradients through its absolute floor.
"""
import numpy as np
import pytest

import kernels as K
from nn import GradcheckError, gradcheck
from nn.gradcheck import GradcheckReport, relative_error, sample_away_from_kinks


def _product(a, b):
    return a * b


def _product_backward(g, a, b):
    return g * b, g * a


def _inputs(rng):
    return {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal((3, 4))}


def test_right_backward_passes_with_a_report(rng):
    report = gradcheck(_product, _product_backward, _inputs(rng))
    assert isinstance(report, GradcheckReport) and report.ok
    assert [t.name for t in report.tensors] == ["a", "b"]
    assert all(t.shape == (3, 4) for t in report.tensors)
    assert report.worst_error < 1e-8 and report.tolerance == 1e-6


def test_wrong_backward_raises_naming_the_input(rng):
    def wrong(g, a, b):
        grad_a, grad_b = _product_backward(g, a, b)
        grad_b = grad_b.copy()
        grad_b[1, 2] *= 1.01   # one element off by 1%
        return grad_a, grad_b

    with pytest.raises(GradcheckError) as info:
        gradcheck(_product, wrong, _inputs(rng))
    message = str(info.value)
    assert "b (3, 4)" in message and "at (1, 2)" in message and "a (3, 4)" not in message
    assert "worst relative error 0.00498" in message   # 0.01 / 2.01
    assert "_product" in message and "tolerance 1e-06" in message


def test_report_without_raising_points_at_the_worst_element(rng):
    inputs = _inputs(rng)

    def wrong(g, a, b):
        return g * b * 2, g * a   # every element of grad_a is twice too large

    report = gradcheck(_product, wrong, inputs, raise_on_failure=False)
    assert not report.ok
    bad, good = report.tensors
    assert bad.name == "a" and good.name == "b" and good.worst_error < 1e-8
    np.testing.assert_allclose(bad.worst_error, 1 / 3, rtol=1e-6)   # |2n - n| / (2|n| + |n|)
    np.testing.assert_allclose(bad.analytic, 2 * bad.numeric, rtol=1e-6)
    assert bad.worst_index in np.ndindex(3, 4)
    assert "a (3, 4): worst relative error 0.333" in str(report)


def test_wrt_restricts_the_check(rng):
    def wrong_for_a(g, a, b):
        return g * b * 2, g * a

    assert gradcheck(_product, wrong_for_a, _inputs(rng), wrt=["b"]).ok


def test_none_gradients_are_skipped(rng):
    report = gradcheck(_product, lambda g, a, b: (g * b, None), _inputs(rng))
    assert [t.name for t in report.tensors] == ["a"]


def test_scalar_outputs_and_list_inputs(rng):
    x = rng.standard_normal(5)
    report = gradcheck(lambda x: np.sum(x ** 3), lambda g, x: g * 3 * x ** 2, [x])
    assert report.ok and report.tensors[0].name == "input 0"


def test_floor_keeps_zero_gradients_from_dividing_by_zero(rng):
    # step: zero gradient everywhere away from the kink; analytic and numeric are both 0
    x = sample_away_from_kinks(rng, (10,))
    report = gradcheck(K.step_forward, K.step_backward, {"x": x})
    assert report.ok and report.worst_error == 0
    assert relative_error(0.0, 0.0) == 0
    # below the floor, differences count against the floor, not against their own size
    np.testing.assert_allclose(relative_error(1e-12, 0.0), 1e-12 / 1e-8)
    np.testing.assert_allclose(relative_error(1e-12, 0.0, floor=1e-20), 1.0)
    np.testing.assert_allclose(relative_error(2.0, 1.0), 1 / 3)


def test_small_wrong_gradient_is_caught_above_the_floor(rng):
    x = rng.uniform(1, 2, 6)
    # gradient of 1e-3 * x**2 is 2e-3 x; claiming 2.1e-3 x must fail although it is tiny
    with pytest.raises(GradcheckError, match=r"x \(6,\)"):
        gradcheck(lambda x: 1e-3 * x ** 2, lambda g, x: g * 2.1e-3 * x, {"x": x})


def test_shape_and_count_mistakes_in_backward(rng):
    inputs = _inputs(rng)
    with pytest.raises(ValueError, match=r"gradient for b has shape \(4, 3\), expected \(3, 4\)"):
        gradcheck(_product, lambda g, a, b: (g * b, (g * a).T), inputs)
    with pytest.raises(ValueError, match=r"backward returned 1 gradients for 2 inputs"):
        gradcheck(_product, lambda g, a, b: (g * b,), inputs)


def test_inputs_are_not_modified(rng):
    inputs = _inputs(rng)
    saved = {k: v.copy() for k, v in inputs.items()}
    gradcheck(_product, _product_backward, inputs)
    for k in inputs:
        np.testing.assert_array_equal(inputs[k], saved[k])


@pytest.mark.cuda
def test_runs_on_the_cuda_device(cuda_device, rng):
    x = K.to_device(sample_away_from_kinks(rng, (2, 3)), cuda_device)
    assert gradcheck(K.relu_forward, K.relu_backward, {"x": x}).ok


def test_sample_away_from_kinks(rng):
    x = sample_away_from_kinks(rng, (2000,), kinks=(0.0, 1.0), margin=0.1, scale=2.0,
                               dtype=np.float32)
    assert x.dtype == np.float32 and x.shape == (2000,)
    assert (np.abs(x) >= 0.1 - 1e-7).all() and (np.abs(x - 1) >= 0.1 - 1e-7).all()
    assert x.std() > 1.5   # still spread like the scaled normal
