"""asv micro-benchmarks for the tensor facts in the notes that take time to run.

Covers tensor creation (empty / rand / zeros(long) / randn_like / tensor(list) /
from_numpy), the add variants (torch.add, ``+``, ``out=``, in-place ``add_``),
view vs reshape vs contiguous copy, and numpy round trips (zero-copy
``.numpy()`` / ``torch.from_numpy`` against the copying ``torch.tensor(ndarray)``).

Every ``setup`` pins torch to one intra-op thread so that all benchmarks run
under the same threading conditions.  Only torch and numpy are imported.
"""

import numpy as np
import torch

SHAPES = [(5, 3), (1000, 1000)]


def _pin_threads():
    torch.set_num_threads(1)


class TensorCreation:
    """torch.empty / rand / zeros(long) / randn_like / tensor(list) / from_numpy."""

    version = "1"
    params = [SHAPES]
    param_names = ["shape"]

    def setup(self, shape):
        _pin_threads()
        torch.manual_seed(0)
        self.x_long = torch.zeros(shape, dtype=torch.long)
        self.as_list = torch.rand(shape).tolist()
        self.ndarray = np.ones(shape)

    def time_empty(self, shape):
        torch.empty(shape)

    def time_rand(self, shape):
        torch.rand(shape)

    def time_zeros_long(self, shape):
        torch.zeros(shape, dtype=torch.long)

    def time_randn_like_float32(self, shape):
        torch.randn_like(self.x_long, dtype=torch.float)

    def time_randn_like_float64(self, shape):
        # dtype=float (the Python type) means torch.float64
        torch.randn_like(self.x_long, dtype=float)

    def time_tensor_from_list(self, shape):
        torch.tensor(self.as_list)

    def time_from_numpy(self, shape):
        torch.from_numpy(self.ndarray)


class AddVariants:
    """torch.add(x, y) vs x + y vs torch.add(x, y, out=r) vs in-place y.add_(x)."""

    version = "1"
    params = [SHAPES]
    param_names = ["shape"]

    def setup(self, shape):
        _pin_threads()
        torch.manual_seed(0)
        self.x = torch.rand(shape)
        self.y = torch.rand(shape)
        self.result = torch.empty(shape)

    def time_torch_add(self, shape):
        torch.add(self.x, self.y)

    def time_operator_add(self, shape):
        self.x + self.y

    def time_add_out(self, shape):
        torch.add(self.x, self.y, out=self.result)

    def time_add_inplace(self, shape):
        self.y.add_(self.x)


class ViewReshape:
    """view (always a view) vs reshape (a view when contiguous, else a copy)
    vs an explicit contiguous copy."""

    version = "1"
    params = [[(4, 4), (1000, 1000)]]
    param_names = ["shape"]

    def setup(self, shape):
        _pin_threads()
        torch.manual_seed(0)
        self.x = torch.randn(shape)
        self.xt = self.x.t()  # non-contiguous: view(-1) would raise
        self.n = self.x.numel()

    def time_view_flat(self, shape):
        self.x.view(self.n)

    def time_view_minus1_8(self, shape):
        self.x.view(-1, 8)

    def time_reshape_contiguous(self, shape):
        self.x.reshape(self.n)

    def time_reshape_noncontiguous(self, shape):
        self.xt.reshape(self.n)

    def time_contiguous_copy(self, shape):
        self.xt.contiguous()


class NumpyRoundTrip:
    """Zero-copy .numpy() / torch.from_numpy against torch.tensor(ndarray),
    which copies."""

    version = "1"
    params = [SHAPES]
    param_names = ["shape"]

    def setup(self, shape):
        _pin_threads()
        self.t = torch.ones(shape)
        self.a = np.ones(shape)

    def time_tensor_to_numpy(self, shape):
        self.t.numpy()

    def time_from_numpy(self, shape):
        torch.from_numpy(self.a)

    def time_round_trip(self, shape):
        torch.from_numpy(self.t.numpy())

    def time_tensor_from_ndarray_copy(self, shape):
        torch.tensor(self.a)
