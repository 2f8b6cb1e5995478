"""Category paths: levels joined by " > ". One rule everywhere: levels are stripped, an empty
level is an error (never silently dropped), and a path has at least one level."""

from __future__ import annotations

from collections.abc import Sequence

SEPARATOR = " > "
SPLIT_ON = ">"  # levels are split on the bare character, so "A>B" and "A > B" are one path


def levels_of(path: str, separator: str = SPLIT_ON) -> tuple[str, ...]:
    """The stripped levels of a path, unchecked (for display; `split_path` validates)."""
    return tuple(level.strip() for level in str(path).split(separator.strip() or separator))


def split_path(path: str, separator: str = SPLIT_ON) -> tuple[str, ...]:
    """('A', 'B', 'C') from 'A > B > C'; ValueError naming the path on an empty level."""
    levels = levels_of(path, separator)
    if any(not level for level in levels):
        raise ValueError(f"category {path!r} has an empty level (levels are separated by "
                         f"{SEPARATOR.strip()!r})")
    return levels


def join_path(levels: Sequence[str]) -> str:
    """'A > B > C' from levels (validated as `split_path` does)."""
    if not levels or any(not str(level).strip() for level in levels):
        raise ValueError(f"category levels {list(levels)!r} have an empty level")
    return SEPARATOR.join(str(level).strip() for level in levels)


def normalize_path(path: str) -> str:
    """The canonical form of a category path: levels stripped, joined by ' > '."""
    return join_path(split_path(path))


def prefix(path: str, depth: int) -> str:
    """The first `depth` levels of a path (the whole path when it is shorter)."""
    return join_path(split_path(path)[:depth])


def top_level(path: str) -> str:
    return levels_of(path)[0]


def last_level(path: str) -> str:
    return levels_of(path)[-1]


def below(prefix: str) -> tuple[str, str]:
    """[low, high) text range holding exactly the paths strictly below `prefix` (whole
    levels), for range queries over sorted paths."""
    return prefix + SEPARATOR, prefix + SEPARATOR[:-1] + chr(ord(SEPARATOR[-1]) + 1)
