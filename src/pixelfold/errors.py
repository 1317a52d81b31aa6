"""The one exception pixelfold raises for input it cannot handle exactly."""

from __future__ import annotations

__all__ = ["FoldError"]


class FoldError(ValueError):
    """A rewrite or rearrangement that cannot be done exactly.

    The message names the violated condition, with the actual numbers, and
    what to do instead. It subclasses :class:`ValueError`, so code that
    already catches bad arguments keeps working.

    Example:
        >>> import pixelfold
        >>> try:
        ...     raise pixelfold.FoldError("stride 3 is not divisible by block 2")
        ... except ValueError as err:
        ...     print(err)
        stride 3 is not divisible by block 2
    """
