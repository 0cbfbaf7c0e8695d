"""The notes' documented tensor and autograd facts, asserted against torch.

Each test below checks one behaviour that the notes (sections "Tensor", "AUTOGRAD", and "旧的"
on ``torch.no_grad`` / ``detach``) state or show by example.  Every assertion is written so that
it fails if torch behaved differently from what the notes say.  Where the notes
leave an open question (which formula ``y.backward(v)`` computes; whether
``reshape`` can produce a 1-D tensor) the test answers it.
"""

import warnings

import numpy as np
import pytest
import torch


def _assert_close(actual, expected):
    """Shape, dtype and value check (cheap stand-in for torch.testing.assert_close,
    whose first call costs ~0.5 s of lazy imports)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert torch.allclose(actual, expected, rtol=1e-7, atol=1e-7), (actual, expected)

# ---------------------------------------------------------------------------
# Tensor creation
# ---------------------------------------------------------------------------


def test_empty_shape_and_default_dtype():
    x = torch.empty(5, 3)
    assert x.shape == (5, 3)
    assert x.dtype == torch.float32  # contents are uninitialised: not checked


def test_rand_shape_dtype_and_range():
    torch.manual_seed(0)
    x = torch.rand(5, 3)
    assert x.shape == (5, 3)
    assert x.dtype == torch.float32
    # uniform on [0, 1): never negative, never reaching 1
    assert bool((x >= 0).all()) and bool((x < 1).all())
    # a large draw covers the interval (not, e.g., a constant)
    big = torch.rand(10_000)
    assert float(big.min()) < 0.01 and float(big.max()) > 0.99


def test_zeros_long():
    x = torch.zeros(5, 3, dtype=torch.long)
    assert x.shape == (5, 3)
    assert x.dtype == torch.int64
    assert not x.is_floating_point()
    assert bool((x == 0).all())


@pytest.mark.parametrize(
    "dtype, expected",
    [(torch.float, torch.float32), (float, torch.float64), (torch.double, torch.float64)],
    ids=["torch.float", "python-float", "torch.double"],
)
def test_randn_like_keeps_shape_overrides_dtype(dtype, expected):
    x = torch.zeros(5, 3, dtype=torch.long)
    r = torch.randn_like(x, dtype=dtype)
    assert r.shape == x.shape
    assert r.dtype == expected
    assert r.data_ptr() != x.data_ptr()  # a new tensor, not x


def test_tensor_from_list():
    x = torch.tensor([5.5, 3])
    assert x.shape == (2,)
    assert x.dtype == torch.float32  # the int 3 is promoted to the default float
    assert x.tolist() == [5.5, 3.0]


def test_from_numpy_ones():
    a = np.ones((5, 3))
    t = torch.from_numpy(a)
    assert t.shape == (5, 3)
    assert t.dtype == torch.float64  # keeps numpy's dtype
    assert bool((t == 1).all())


# ---------------------------------------------------------------------------
# Arithmetic: the add variants and in-place (underscore) methods
# ---------------------------------------------------------------------------


def test_add_variants_agree_and_out_writes_into_result():
    torch.manual_seed(0)
    x = torch.rand(5, 3)
    y = torch.rand(5, 3)
    expected = x.numpy() + y.numpy()

    a = torch.add(x, y)
    b = x + y
    result = torch.empty(5, 3)
    ptr = result.data_ptr()
    c = torch.add(x, y, out=result)

    np.testing.assert_allclose(a.numpy(), expected, rtol=0, atol=0)
    assert torch.equal(a, b)
    assert torch.equal(a, result)
    assert c is result  # out= returns the out tensor itself
    assert result.data_ptr() == ptr  # written into result's own storage


def test_add_inplace_mutates_and_returns_self():
    torch.manual_seed(0)
    x = torch.rand(5, 3)
    y = torch.rand(5, 3)
    expected = y + x
    ptr = y.data_ptr()
    ret = y.add_(x)
    assert ret is y
    assert y.data_ptr() == ptr
    assert torch.equal(y, expected)


def test_copy_inplace():
    x = torch.zeros(2, 3)
    y = torch.arange(6.0).reshape(2, 3)
    ptr = x.data_ptr()
    ret = x.copy_(y)
    assert ret is x
    assert x.data_ptr() == ptr
    assert torch.equal(x, y)
    y += 100  # a copy, not an alias: x no longer follows y
    assert torch.equal(x, torch.arange(6.0).reshape(2, 3))


def test_t_inplace_transposes():
    x = torch.arange(6.0).reshape(2, 3)
    original = x.clone()
    ret = x.t_()
    assert ret is x
    assert x.shape == (3, 2)
    assert torch.equal(x, original.t())


# ---------------------------------------------------------------------------
# size, indexing, view / reshape
# ---------------------------------------------------------------------------


def test_size_is_torch_size():
    x = torch.empty(5, 3)
    s = x.size()
    assert isinstance(s, torch.Size)
    assert isinstance(s, tuple)
    assert s == torch.Size([5, 3])
    assert s == x.shape


def test_numpy_style_indexing_is_a_view():
    x = torch.arange(15.0).reshape(5, 3)
    col = x[:, 1]
    assert col.shape == (5,)
    assert col.tolist() == [1.0, 4.0, 7.0, 10.0, 13.0]
    assert col.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    col[0] = -1.0  # writing through the view changes x
    assert x[0, 1].item() == -1.0


def test_view_shapes_share_storage():
    x = torch.randn(4, 4)
    y = x.view(16)
    z = x.view(-1, 8)
    assert y.shape == (16,)
    assert z.shape == (2, 8)
    assert y.data_ptr() == x.data_ptr() == z.data_ptr()
    x[0, 0] = 42.0
    assert y[0].item() == 42.0 and z[0, 0].item() == 42.0


def test_view_on_non_contiguous_raises_reshape_copies():
    x = torch.arange(16.0).reshape(4, 4).t()
    assert not x.is_contiguous()
    with pytest.raises(RuntimeError):
        x.view(16)
    r = x.reshape(16)
    assert torch.equal(r, x.contiguous().view(16))
    assert r.data_ptr() != x.data_ptr()  # reshape had to copy here


def test_reshape_to_1d_works():
    """The notes wonder whether reshape cannot go to 1-D: it can, and on a
    contiguous tensor it returns a view exactly like ``view(16)``."""
    x = torch.randn(4, 4)
    r = x.reshape(16)
    assert r.shape == (16,)
    assert r.data_ptr() == x.data_ptr()
    assert torch.equal(r, x.view(16))


# ---------------------------------------------------------------------------
# Conversions: item(), numpy() / from_numpy memory sharing
# ---------------------------------------------------------------------------


def test_item_single_element_is_python_float():
    x = torch.tensor([[1.5, 2.0], [3.0, 4.0]])
    v = x[0][0].item()
    assert type(v) is float
    assert v == 1.5


def test_item_multi_element_raises():
    x = torch.ones(2, 2)
    with pytest.raises(RuntimeError):
        x.item()


def test_numpy_shares_memory_with_tensor():
    x = torch.ones(2)
    y = x.numpy()
    x += 1
    assert x.tolist() == [2.0, 2.0]
    np.testing.assert_array_equal(y, [2.0, 2.0])
    assert np.shares_memory(y, x.numpy())


def test_from_numpy_shares_memory_with_array():
    a = np.ones(5)
    b = torch.from_numpy(a)
    a += 1
    np.testing.assert_array_equal(a, [2.0] * 5)
    assert b.tolist() == [2.0] * 5
    assert b.data_ptr() == a.ctypes.data


# ---------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------


def test_requires_grad_default_false():
    assert torch.ones(2, 2).requires_grad is False


def test_requires_grad_set_by_keyword_or_attribute():
    a = torch.ones(2, 2, requires_grad=True)  # method 1
    b = torch.ones(2, 2)
    b.requires_grad = True  # method 2
    for x in (a, b):
        assert x.requires_grad is True
        assert x.is_leaf is True
        assert x.grad_fn is None


def test_requires_grad_propagates_and_grad_fn():
    x = torch.ones(2, 2, requires_grad=True)
    y = x + 2
    z = y * y * 3
    k = z.mean()
    for t in (y, z, k):
        assert t.requires_grad is True
        assert t.grad_fn is not None
    assert (x.is_leaf, y.is_leaf) == (True, False)


def _notes_graph():
    x = torch.ones(2, 2, requires_grad=True)
    y = x + 2
    z = y * y * 3
    k = z.mean()
    return x, y, z, k


def test_backward_gradient_is_4_5():
    """dk/dx_ij = 6 (x_ij + 2) / 4 = 4.5 at x = 1."""
    x, _, _, k = _notes_graph()
    k.backward()
    assert torch.equal(x.grad, torch.full((2, 2), 4.5))


def test_only_leaves_get_grad():
    _, y, z, k = _notes_graph()
    k.backward()
    with pytest.warns(UserWarning, match="not a leaf"):
        assert z.grad is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert y.grad is None


def test_retain_grad_keeps_nonleaf_grad():
    x, _, z, k = _notes_graph()
    z.retain_grad()
    k.backward()
    assert torch.equal(z.grad, torch.full((2, 2), 0.25))  # dk/dz = 1/4
    assert torch.equal(x.grad, torch.full((2, 2), 4.5))


def test_second_backward_without_retain_graph_raises():
    _, _, _, k = _notes_graph()
    k.backward()
    with pytest.raises(RuntimeError):
        k.backward()


def test_retain_graph_allows_repeat_and_accumulates():
    x, _, _, k = _notes_graph()
    k.backward(retain_graph=True)
    assert torch.equal(x.grad, torch.full((2, 2), 4.5))
    k.backward()
    assert torch.equal(x.grad, torch.full((2, 2), 9.0))


def _vjp_check(f, x0, v):
    x = x0.clone().requires_grad_(True)
    y = f(x)
    y.backward(v)
    J = torch.autograd.functional.jacobian(f, x0)  # J[i, j] = dy_i / dx_j
    _assert_close(x.grad, J.T @ v)
    return x.grad, J


def test_backward_with_vector_is_vjp_diagonal():
    """Answers the notes' question "which formula": ``y.backward(v)`` stores
    x.grad = J^T v (the vector-Jacobian product v^T J), J = dy/dx.
    Here y = 2 x*x + sin(x), whose Jacobian is diag(4x + cos x)."""
    torch.manual_seed(0)
    x0 = torch.randn(3, dtype=torch.float64)
    v = torch.tensor([1.0, 2, 3], dtype=torch.float64)
    grad, J = _vjp_check(lambda x: x * x * 2 + torch.sin(x), x0, v)
    _assert_close(J, torch.diag(4 * x0 + torch.cos(x0)))
    _assert_close(grad, v * (4 * x0 + torch.cos(x0)))


def test_backward_with_vector_is_vjp_matrix():
    """Answers the notes' question "which formula": x.grad = J^T v.
    For y = A @ x with A of shape (3, 4), J = A, so x.grad = A^T v (shape 4),
    and J v is not even defined."""
    torch.manual_seed(0)
    A = torch.randn(3, 4, dtype=torch.float64)
    x0 = torch.randn(4, dtype=torch.float64)
    v = torch.tensor([1.0, 2, 3], dtype=torch.float64)
    grad, J = _vjp_check(lambda x: A @ x, x0, v)
    _assert_close(J, A)
    assert grad.shape == (4,)
    _assert_close(grad, A.T @ v)


def test_backward_with_vector_is_vjp_not_jv_cumsum():
    """Answers the notes' question "which formula": x.grad = J^T v, not J v.
    cumsum has a lower-triangular Jacobian, so the two differ:
    J^T v = reversed cumsum of v = [6, 5, 3], while J v = [1, 3, 6]."""
    x0 = torch.randn(3, dtype=torch.float64)
    v = torch.tensor([1.0, 2, 3], dtype=torch.float64)
    grad, J = _vjp_check(lambda x: torch.cumsum(x, 0), x0, v)
    assert grad.tolist() == [6.0, 5.0, 3.0]
    assert not torch.allclose(grad, J @ v)


def test_no_grad_context():
    x = torch.randn(3, requires_grad=True)
    y = x * x
    assert y.requires_grad is True
    with torch.no_grad():
        assert y.requires_grad is True  # computed before: unchanged
        y2 = x * x
        assert y2.requires_grad is False
        assert y2.grad_fn is None
    assert y.requires_grad is True
    assert y2.requires_grad is False


def test_detach_shares_storage_without_grad():
    x = torch.randn(3, requires_grad=True)
    d = x.detach()
    assert x.requires_grad is True
    assert d.requires_grad is False
    assert d.grad_fn is None
    assert d.data_ptr() == x.data_ptr()
    before = x.detach().clone()
    d.add_(1.0)  # in-place on the detached tensor changes the original
    _assert_close(x.detach(), before + 1.0)


# ---------------------------------------------------------------------------
# Prediction (section "案例：分类模型", step6)
# ---------------------------------------------------------------------------


def test_torch_max_prediction_equals_the_suites_argmax_ties_included():
    """The notes predict with ``_, y_predicted = torch.max(my_net(X_test_tensor), 1)``; the suite
    with ``argmax(1)`` (``losses.accuracy``, the confusion matrix).  Both take the first of tied
    maxima: the same index on every row, ties included (frequent here: ``MyNet`` puts a ReLU on
    its logits, so rows of zeros tie)."""
    from workloads import classification
    from torchloops.core import losses

    outputs = torch.tensor([[0.0, 0.0, 0.0], [1.0, 3.0, 3.0], [2.0, 2.0, 1.0], [0.0, 5.0, 0.0], [0.0, 0.0, 4.0]])
    values, y_predicted = torch.max(outputs, 1)
    assert y_predicted.tolist() == [0, 1, 0, 1, 2]  # the first maximum of each row
    assert torch.equal(values, outputs.amax(1)) and torch.equal(y_predicted, outputs.argmax(1))
    labels = torch.tensor([0, 2, 1, 1, 2])
    assert losses.accuracy(outputs, labels) == (y_predicted == labels).double().mean().item() == 0.6
    torch.manual_seed(0)
    with torch.no_grad():
        logits = classification.MyNet()(torch.randn(1000, 10))
    tied = (logits == logits.amax(1, keepdim=True)).sum(1) > 1
    assert tied.sum() > 0  # ties on real outputs (3 rows of zeros here), not only on the hand-made rows
    assert torch.equal(torch.max(logits, 1)[1], logits.argmax(1))
