"""Search and listing filters as clients write them -> the index's `ProductFilter`.

Categories match on whole levels in any letter case ("footwear > shoes" finds
"Footwear > Shoes" and everything below it); when nothing matches, the caller gets a notice
saying so instead of a silent empty answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from huse_common.categories import join_path, split_path, top_level
from index.metadata import ProductFilter

# How many top-level categories a "matches nothing" notice names.
NOTICE_CATEGORIES = 8


@dataclass(frozen=True)
class ResolvedFilter:
    where: ProductFilter | None  # None: no filter at all
    notice: str | None  # set when the category matches no product: nothing to search


def matching_prefixes(category: str, categories: Sequence[str]) -> tuple[str, ...]:
    """The stored spellings of `category` as a whole-level prefix of `categories`, any case."""
    wanted = [level.casefold() for level in split_path(category)]
    found = set()
    for stored in categories:
        levels = split_path(stored)
        if len(levels) >= len(wanted) and all(
            a.casefold() == b for a, b in zip(levels, wanted, strict=False)
        ):
            found.add(join_path(levels[: len(wanted)]))
    return tuple(sorted(found))


def resolve_filter(
    category: str | None, attributes: Mapping[str, str], categories: Callable[[], Sequence[str]]
) -> ResolvedFilter:
    """`categories()`: the index's distinct categories, read only when `category` is given.
    A notice means nothing can match: the caller answers empty without searching."""
    if category is None and not attributes:
        return ResolvedFilter(None, None)
    prefixes = None
    if category is not None:
        known = categories()
        prefixes = matching_prefixes(category, known)
        if not prefixes:
            tops = sorted({top_level(c) for c in known})
            shown = ", ".join(tops[:NOTICE_CATEGORIES])
            shown += ", ..." if len(tops) > NOTICE_CATEGORIES else ""
            return ResolvedFilter(
                None, f"no product is in category {category!r}; categories start with: {shown}"
            )
    return ResolvedFilter(ProductFilter(prefixes, tuple(sorted(attributes.items()))), None)


def empty_notice(category: str | None, attributes: Mapping[str, str]) -> str | None:
    """Why a filtered answer came back empty."""
    if not attributes:
        return None
    pairs = ", ".join(f"{k}={v!r}" for k, v in sorted(attributes.items()))
    where = f" in category {category!r}" if category else ""
    return f"no product{where} has {pairs}"
