"""Checking that a rendered report shows only numbers its JSON holds."""
from __future__ import annotations

import re

# A number standing alone, or with an `x` (a ratio) or `%` after it; not part of a name
# (int8, p50, AVX512) or a version (1.32.0).
NUMBER = re.compile(r"(?<![\w.])(\d+(?:,\d{3})*(?:\.\d+)?)(?=x(?!\w)|[^\w.]|\.(?!\d)|$)")


def numbers_not_in(text: str, data) -> list[str]:
    """The numbers in `text` that no value in `data` (any depth) renders as: a card or
    report that shows only what its JSON holds gives []. A number matches a value in
    the usual renderings (as is, thousands commas, fixed decimals, percent); numbers
    inside the JSON's strings count too (a version, a path)."""
    seen: set[str] = set()

    def add(x) -> None:
        if isinstance(x, dict):
            for v in x.values():
                add(v)
        elif isinstance(x, list):
            for v in x:
                add(v)
        elif isinstance(x, str):
            seen.update(NUMBER.findall(x))
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            a = abs(x)
            seen.update({str(a), f"{a:,}", f"{a:g}"})
            for d in range(5):
                seen.update({f"{a:.{d}f}", f"{a:,.{d}f}", f"{a * 100:.{d}f}"})

    add(data)
    return [n for n in NUMBER.findall(text) if n not in seen]
