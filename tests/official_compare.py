"""Element-wise comparison with official fixture tensors, with the tolerance stated per call."""

from __future__ import annotations


def assert_close(actual, expected, rtol: float, atol_of_max: float = 0.0, atol: float = 0.0):
    """Element-wise ``|a - e| <= atol + atol_of_max * max|e| + rtol * |e|``.

    ``rtol`` covers float32 rounding that grows with a value's magnitude (accumulation order
    in convolutions and matrix products: thread count, kernel choice); ``atol_of_max`` covers
    values near zero, where a relative bound is meaningless, as a fraction of the tensor's
    scale. Shapes must match exactly.
    """
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert a.shape == e.shape, f"shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    bound = atol + atol_of_max * e.abs().max() + rtol * e.abs()
    excess = (a - e).abs() - bound
    worst = int(excess.argmax())
    assert excess.max() <= 0, (
        f"{int((excess > 0).sum())} of {e.numel()} elements out of tolerance; worst: "
        f"{a.flatten()[worst].item():.6g} vs expected {e.flatten()[worst].item():.6g} "
        f"(bound {bound.flatten()[worst].item():.3g})"
    )
