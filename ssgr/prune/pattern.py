"""Sparsity patterns as users write them: ``0.5`` (unstructured fraction) or ``2:4`` / ``N:M``."""

from __future__ import annotations

from dataclasses import dataclass

from ssgr.errors import InputError


@dataclass(frozen=True)
class Pattern:
    """A sparsity target: ``sparsity`` (unstructured) or ``n`` kept of every ``m`` (N:M)."""

    sparsity: float | None = None
    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def fraction(self) -> float:
        """Fraction of weights removed."""
        return 1.0 - self.n / self.m if self.is_nm else float(self.sparsity)

    def op_kwargs(self) -> dict:
        """Keyword arguments for :func:`ssgr.ops.sparsegpt_prune`."""
        return {"n": self.n, "m": self.m} if self.is_nm else {"sparsity": self.sparsity}

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.sparsity:g}"


def parse_pattern(text: str | float) -> Pattern:
    """Parse ``"0.5"`` / ``0.5`` / ``"2:4"`` / ``"4:8"`` into a :class:`Pattern`.

    Raises:
        InputError (a ``ValueError``) for a fraction outside ``[0, 1)`` or a malformed N:M.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        s = float(text)
        if not 0.0 <= s < 1.0:
            raise InputError(f"sparsity must be in [0, 1), got {s}")
        return Pattern(sparsity=s)
    t = str(text).strip()
    if ":" in t:
        a, _, b = t.partition(":")
        try:
            n, m = int(a), int(b)
        except ValueError:
            raise InputError(f"bad N:M pattern {text!r}; write it like 2:4 or 4:8") from None
        if not 0 < n < m:
            raise InputError(f"bad N:M pattern {text!r}: need 0 < N < M (keep N of every M)")
        return Pattern(n=n, m=m)
    try:
        s = float(t)
    except ValueError:
        raise InputError(
            f"bad sparsity {text!r}; use a fraction like 0.5 or a pattern like 2:4"
        ) from None
    if not 0.0 <= s < 1.0:
        raise InputError(f"sparsity must be in [0, 1), got {text!r}")
    return Pattern(sparsity=s)
