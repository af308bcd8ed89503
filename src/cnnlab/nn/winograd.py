"""A 3x3 convolution with stride 1 by Winograd's minimal filtering, F(4x4, 3x3).

The output is cut into tiles of 4x4 pixels; each needs the 6x6 patch ``d`` of the input under
it. With the transforms of Lavin & Gray (2016), the tile of filter ``f`` is::

    Y = A^T [ sum_c (G g[c, f] G^T) * (B^T d[c] B) ] A        (* element-wise, 6x6)

for the patch ``d[c]`` of channel ``c`` and the 3x3 filter ``g[c, f]``: transform the filters
(``U = G g G^T``) and the patches (``V = B^T d B``), multiply them element by element and sum
over the channels, and transform the 6x6 product back (``A^T M A``) into 4x4 outputs. The sum
over channels, for each of the 36 positions, is a matrix product ``V[p] @ U[p]``: 36 products
of ``C`` terms for 16 outputs, where im2col's product (:mod:`cnnlab.nn.conv`) takes
``9 * C`` terms for each of them: 2.25x fewer multiplications. The same numbers as
:func:`cnnlab.nn.conv.conv2d_forward`, up to rounding (the transforms' fractions round a
little more than the direct sums).

The matrices, for the points 0, 1, -1, 2, -2 and infinity::

    B^T = [[4,  0, -5,  0, 1, 0],        G = [[ 1/4,     0,    0],
           [0, -4, -4,  1, 1, 0],             [-1/6,  -1/6, -1/6],
           [0,  4, -4, -1, 1, 0],             [-1/6,   1/6, -1/6],
           [0, -2, -1,  2, 1, 0],             [1/24,  1/12,  1/6],
           [0,  2, -1, -2, 1, 0],             [1/24, -1/12,  1/6],
           [0,  4,  0, -5, 0, 1]]             [   0,     0,    1]]

    A^T = [[1, 1,  1, 1,  1, 0],
           [0, 1, -1, 2, -2, 0],
           [0, 1,  1, 4,  4, 0],
           [0, 1, -1, 8, -8, 1]]

Shapes: ``x: (N, H, W, C)``, ``kernel: (3, 3, C, F)``, ``y: (N, H, W, F)`` ("same" padding,
one pixel each side) or ``(N, H - 2, W - 2, F)`` ("valid").
"""

from __future__ import annotations

import numpy as np

from cnnlab.nn.padding import window_geometry
from cnnlab.nn.windows import windows

B_T = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=np.float64,
)
G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ]
)
A_T = np.array(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    dtype=np.float64,
)

TILE = 4  # output pixels per side of a tile
PATCH = TILE + 2  # input pixels per side of the patch under it
G_KRON_G = np.kron(G, G)  # (36, 9): G_KRON_G[6*i + j, 3*a + b] = G[i, a] * G[j, b]


def filter_transform(kernel: np.ndarray) -> np.ndarray:
    """``U = G g G^T`` for every filter: ``kernel: (3, 3, C, F)`` -> ``U: (36, C, F)``, with
    ``U[6*i + j] = (G g G^T)[i, j]``. Written as one matrix product with ``kron(G, G)``
    (:data:`G_KRON_G`), in float64, rounded once to the kernel's dtype."""
    _, _, c, f = kernel.shape
    u = G_KRON_G @ kernel.reshape(9, c * f).astype(np.float64)
    return u.astype(kernel.dtype).reshape(PATCH * PATCH, c, f)


def winograd_conv3x3(x: np.ndarray, kernel: np.ndarray, padding: str = "same") -> np.ndarray:
    """``y``, the convolution of ``x`` with the 3x3 filters ``kernel`` at stride 1, by
    F(4x4, 3x3): the patches, their transform, the products, and the tiles transformed back."""
    n, h, w, c = x.shape
    f = kernel.shape[-1]
    (oh, ow), ((top, _), (left, _)) = window_geometry((h, w), (3, 3), (1, 1), padding)
    rows, cols = -(-oh // TILE), -(-ow // TILE)
    # The input with the padding, and zeros beyond it for the last tiles' patches.
    xp = np.zeros((n, TILE * rows + 2, TILE * cols + 2, c), x.dtype)
    xp[:, top : top + h, left : left + w] = x
    d = windows(xp, (PATCH, PATCH), (TILE, TILE), (rows, cols))  # (N, rows, cols, 6, 6, C)
    b_t, a_t = B_T.astype(x.dtype), A_T.astype(x.dtype)
    v = np.einsum("ia,nrsabc,jb->nrsijc", b_t, d, b_t)  # B^T d B
    u = filter_transform(kernel).reshape(PATCH, PATCH, c, f)  # G g G^T
    m = np.einsum("nrsijc,ijcf->nrsijf", v, u)  # the sum over channels
    tiles = np.einsum("pi,nrsijf,qj->nrspqf", a_t, m, a_t)  # A^T M A: (N, rows, cols, 4, 4, F)
    y = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(n, TILE * rows, TILE * cols, f)
    return y[:, :oh, :ow]
