"""A local transition's product `P y` on the CPU as sparse-matrix products (CSR, one matrix per
image), forward and backward.

`P` of a local kernel holds `(2r + 1)^2` weights a row. Summed offset by offset (`kernels`), every
product reads and writes the whole value tensor once per offset; as a CSR matrix whose columns are
the nodes of the grid padded by `r`, it reads each weight and value once, and every row has all
its `(2r + 1)^2` entries (zero outside the grid), so one column structure serves every image of a
grid and the values need only a zero border. The backward is the same kind of product with `P^T`
(its rows are the reversed offsets' weights, read from the neighbours) and, for the weights, the
sampled products `g_i . y_j` at `P`'s entries. A whole walk with restart is one autograd node
(`CsrRestartWalk`): its backward takes those sampled products for many steps at once.
"""

from __future__ import annotations

import warnings
from functools import cached_property, lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor


def has_csr_product(weights: Tensor) -> bool:
    """Whether `y -> P y` for these offset weights runs as sparse-matrix products: on the CPU in
    float32 or float64, where it took a third of the offset sums' time (`benchmarks/image_walk.py`)."""
    return weights.device.type == "cpu" and weights.dtype in (torch.float32, torch.float64)


class CsrTransition:
    """`P` of the offset weights `[B, (2r + 1)^2, h, w]` (a softmax over the offsets, zero outside
    the grid) as CSR matrices over the padded grid; `P` and `P^T` are built at their first use."""

    def __init__(self, weights: Tensor, radius: int) -> None:
        self.weights, self.radius = weights.detach(), radius
        self.height, self.width = weights.shape[-2:]
        self._bordered: dict[tuple[torch.Size, torch.dtype], Tensor] = {}

    @cached_property
    def matrices(self) -> list[Tensor]:
        """`P`, one CSR matrix a image: row `(y, x)` holds the weights of its offsets in order."""
        return self._csr(self.weights.permute(0, 2, 3, 1))

    @cached_property
    def transposed(self) -> list[Tensor]:
        """`P^T` on the same columns: row `j` takes, at reversed offset `o`, the weight of the
        neighbour `j - o` towards `j` (zero where that neighbour is outside the grid)."""
        side, (height, width) = 2 * self.radius + 1, (self.height, self.width)
        padded = F.pad(self.weights, (self.radius,) * 4)
        reversed_weights = [
            padded[:, side * side - 1 - o, o // side : o // side + height, o % side : o % side + width]
            for o in range(side * side)
        ]
        return self._csr(torch.stack(reversed_weights, dim=-1))

    def product(self, matrices: list[Tensor], values: Tensor) -> Tensor:
        """`M y` for each image's matrix `M` of `matrices` and values `[B, N, K]` of the grid."""
        bordered = self.bordered(values)
        out = values.new_empty(values.shape)
        for matrix, nodes, rows in zip(matrices, bordered.flatten(1, 2), out, strict=True):
            torch.mm(matrix, nodes, out=rows)
        return out

    @cached_property
    def sampled(self) -> list[Tensor]:
        """CSR matrices of `P`'s pattern, one a image, that `weight_gradient` fills in place."""
        return self._csr(self.weights.new_zeros(self.weights.shape).permute(0, 2, 3, 1))

    def weight_gradient(self, grad: Tensor, values: Tensor) -> Tensor:
        """`d loss / d weights` `[B, (2r + 1)^2, h, w]` of `P y` given `grad` `[B, N, K]`: at each
        entry `(i, j)` of `P`, `grad_i . y_j` (a sampled matrix product, written into `sampled`).
        `values` `[B, N, ...]` may hold several value tensors side by side (`[B, N, c, K]` with
        `grad` `[B, N, c K]`): the sum of their products."""
        bordered = self.bordered(values).flatten(3).flatten(1, 2)
        gradient = values.new_empty(len(self.sampled), self.height, self.width, (2 * self.radius + 1) ** 2)
        for matrix, rows, nodes, image in zip(
            self.sampled, grad.contiguous(), bordered, gradient, strict=True
        ):
            matrix.values().zero_()  # beta 0 still multiplies what it holds: a NaN there would stay
            torch.sparse.sampled_addmm(matrix, rows, nodes.t(), beta=0.0, out=matrix)
            image.view(-1).copy_(matrix.values())
        return gradient.permute(0, 3, 1, 2)

    def bordered(self, values: Tensor) -> Tensor:
        """Values `[B, N, ...]` on the padded grid `[B, h + 2r, w + 2r, ...]`, its border zero and
        subnormal values zero (the CPU multiplies subnormals many times slower; a walk from sharp
        probabilities ran 2.3x faster without them): one buffer a shape and dtype, reused."""
        r = self.radius
        shape = torch.Size((values.shape[0], self.height + 2 * r, self.width + 2 * r, *values.shape[2:]))
        if (buffer := self._bordered.get((shape, values.dtype))) is None:
            buffer = self._bordered[shape, values.dtype] = values.new_empty(shape)
            for border in (buffer[:, :r], buffer[:, -r:], buffer[:, :, :r], buffer[:, :, -r:]):
                border.zero_()
        inner = buffer[:, r : r + self.height, r : r + self.width]
        torch.ops.aten.hardshrink.out(values.unflatten(1, (self.height, self.width)), torch.finfo(values.dtype).tiny,
                                      out=inner)  # fmt: skip
        return buffer

    def _csr(self, rows_of_weights: Tensor) -> list[Tensor]:
        """One CSR matrix a image from its entries `[B, h, w, (2r + 1)^2]` in column order."""
        offsets, columns = padded_grid_columns(self.height, self.width, self.radius)
        shape = (self.height * self.width, (self.height + 2 * self.radius) * (self.width + 2 * self.radius))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
            return [
                torch.sparse_csr_tensor(offsets, columns, entries, shape, check_invariants=False)
                for entries in rows_of_weights.reshape(rows_of_weights.shape[0], -1)
            ]


class CsrApply(torch.autograd.Function):
    """`P y` through a `CsrTransition`, with its gradients in the weights and the values."""

    @staticmethod
    def forward(ctx, weights: Tensor, values: Tensor, transition: CsrTransition) -> Tensor:  # noqa: ANN001
        ctx.transition = transition
        ctx.save_for_backward(values)
        return transition.product(transition.matrices, values)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # noqa: ANN001
        (values,) = ctx.saved_tensors
        transition, grad = ctx.transition, grad.contiguous()
        grad_weights = transition.weight_gradient(grad, values) if ctx.needs_input_grad[0] else None
        grad_values = transition.product(transition.transposed, grad) if ctx.needs_input_grad[1] else None
        return grad_weights, grad_values, None


class CsrRestartWalk(torch.autograd.Function):
    """The restart walk `p_t = mu P p_(t-1) + (1 - mu) p_0` through a `CsrTransition`, its states
    after each of `counts` steps (ascending) as one autograd node. The backward walks the adjoint
    back with `P^T` and takes the weights' gradient of many steps in one sampled product, their
    values side by side (a product a step, as `CsrApply` takes, ran twice as long)."""

    # value columns a sampled product takes at once (a chunk of steps: 3 at 21 classes, 5 at 11); its
    # two side-by-side copies hold 2 x 64 floats a node. The guided walk's pass at 505x505, paired:
    # 64 379 ms against 128's 388, 128 411 against 256's 435, 32 497 against 64's 440
    sampled_columns = 64

    @staticmethod
    def forward(ctx, weights: Tensor, start: Tensor, mu: Tensor, transition: CsrTransition,  # noqa: ANN001
                counts: tuple[int, ...]) -> tuple[Tensor, ...]:  # fmt: skip
        states = start.new_empty(counts[-1] + 1, *start.shape)  # p_0 .. p_n
        states[0] = start
        for t in range(1, counts[-1] + 1):
            torch.lerp(start, transition.product(transition.matrices, states[t - 1]), mu, out=states[t])
        ctx.transition, ctx.counts = transition, counts
        ctx.save_for_backward(mu, states)
        return tuple(states[n].clone() for n in counts)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        mu, states = ctx.saved_tensors
        transition, wanted, steps = ctx.transition, dict(zip(ctx.counts, grads, strict=True)), ctx.counts[-1]
        chunk = max(1, CsrRestartWalk.sampled_columns // states.shape[-1])
        adjoints = states.new_empty(*states.shape[1:3], min(chunk, steps), states.shape[-1])  # [B, N, c, K]
        adjoint, grad_start = torch.zeros_like(states[0]), torch.zeros_like(states[0])
        grad_mu, grad_weights = mu.new_zeros(()), None
        for t in range(steps, 0, -1):  # adjoint: d loss / d p_t
            if t in wanted:
                adjoint = adjoint + wanted[t]
            back = transition.product(transition.transposed, adjoint)  # P^T adjoint
            # d p_t / d mu = P p_(t-1) - p_0 = (p_t - p_0) / mu: the differences first, then the sum
            if ctx.needs_input_grad[2]:
                grad_mu += torch.dot(adjoint.view(-1), (states[t] - states[0]).view(-1))
            grad_start.add_(adjoint, alpha=float(1 - mu))
            if ctx.needs_input_grad[0]:  # the chunk of steps [bottom, top] that t is in, counted from the end
                top = steps - (steps - t) // chunk * chunk
                bottom = max(1, top - chunk + 1)
                adjoints[:, :, t - bottom] = adjoint
                if t == bottom:  # P's entries (i, j) take adjoint_t,i . p_(t-1),j summed over the chunk
                    part = transition.weight_gradient(
                        adjoints[:, :, : top - bottom + 1].flatten(2),
                        states[bottom - 1 : top].permute(1, 2, 0, 3),
                    )
                    grad_weights = part if grad_weights is None else grad_weights.add_(part)
            adjoint = back * mu
        if 0 in wanted:
            adjoint = adjoint + wanted[0]
        grad_start += adjoint
        grad_weights = None if grad_weights is None else grad_weights.mul_(mu)
        return grad_weights, grad_start, grad_mu / mu if ctx.needs_input_grad[2] else None, None, None


@lru_cache(maxsize=4)  # 50 MB of indices at 505x505: a few grids, not every image size
def padded_grid_columns(height: int, width: int, radius: int) -> tuple[Tensor, Tensor]:
    """The CSR row offsets `[N + 1]` and column indices `[N (2r + 1)^2]` of `CsrTransition`: node
    `(y, x)`'s row lists the padded grid's nodes `(y + dy, x + dx)`, `dy, dx <= 2r`, in order;
    int32, the indices MKL takes without a copy a product."""
    side, padded_width = 2 * radius + 1, width + 2 * radius
    corners = (torch.arange(height)[:, None] * padded_width + torch.arange(width)).reshape(-1, 1)
    offsets = (torch.arange(side)[:, None] * padded_width + torch.arange(side)).reshape(1, -1)
    rows = torch.arange(0, height * width * side * side + 1, side * side)
    return rows.int(), (corners + offsets).reshape(-1).int()
