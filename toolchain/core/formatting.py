"""How a fraction (mIoU, IoU, pixel accuracy, a share of pixels) is printed."""
from __future__ import annotations


def percent(x: float | None, digits: int = 2, *, width: int = 0, missing: str = "n/a") -> str:
    """`x` in percent with `digits` decimals, right-aligned in `width` characters,
    without the % sign (tables say % in their header). `missing` stands for a
    value that was not measured: None, or NaN (the IoU of a class that occurs
    in neither labels nor predictions)."""
    if x is None or x != x:
        return f"{missing:>{width}}"
    return f"{100 * x:{width}.{digits}f}"
