"""Sharding a sweep grid: ``--shard k/n`` takes the cells whose index in the canonical grid order (``grid.cells``)
satisfies ``index % n == k - 1``. The canonical order does not depend on the order of the flags (every axis is
sorted), so machines given the same grid flags split it into disjoint shards whose union is the grid. Changing the
grid changes the split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from .grid import Cell


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'k/n' (1 <= k <= n) -> (k, n); None -> None."""
    if text is None or text == "":
        return None
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise UserError(f"--shard must look like k/n (e.g. 2/4), got {text!r}") from None
    if not 1 <= k <= n:
        raise UserError(f"--shard {text}: need 1 <= k <= n")
    return k, n


def as_shard(shard: tuple[int, int] | str | None) -> tuple[int, int] | None:
    """A shard given as 'k/n' or (k, n), checked."""
    if shard is None or isinstance(shard, str):
        return parse_shard(shard)
    return parse_shard(f"{shard[0]}/{shard[1]}")


def shard_cells(all_cells: list[Cell], shard: tuple[int, int] | str | None) -> list[Cell]:
    """The cells of shard k of n: grid index % n == k - 1."""
    shard = as_shard(shard)
    if shard is None:
        return list(all_cells)
    k, n = shard
    return [c for c in all_cells if c.index % n == k - 1]
