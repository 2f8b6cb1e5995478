"""What a shop's filter menus offer: category paths and attribute values, counted in the index.

The web page fills its category and attribute dropdowns from this, so a filter can only name
something that exists. One read of the metadata store per call (no cache: the counts follow
every PUT/DELETE at once).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from huse_common.categories import join_path, split_path


class CategoryFacetPublic(BaseModel):
    path: str = Field(description='a category path or any prefix of one, e.g. "Footwear > Shoes"')
    depth: int = Field(description="number of levels in `path` (1 = top level)")
    count: int = Field(description="live products in this category or below it")


class ValueCountPublic(BaseModel):
    value: str
    count: int


class AttributeFacetPublic(BaseModel):
    name: str = Field(description="catalog attribute column, e.g. colour")
    distinct: int = Field(description="distinct values in the index (may exceed `values`)")
    values: list[ValueCountPublic] = Field(description="most frequent values first")


class FacetsPublic(BaseModel):
    total: int = Field(description="live products in the index")
    categories: list[CategoryFacetPublic] = Field(description="every path prefix, sorted")
    attributes: list[AttributeFacetPublic] = Field(description="attribute columns, sorted")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "total": 3,
                    "categories": [
                        {"path": "Footwear", "depth": 1, "count": 3},
                        {"path": "Footwear > Boots", "depth": 2, "count": 2},
                        {"path": "Footwear > Sneakers", "depth": 2, "count": 1},
                    ],
                    "attributes": [
                        {
                            "name": "colour",
                            "distinct": 2,
                            "values": [
                                {"value": "black", "count": 2},
                                {"value": "white", "count": 1},
                            ],
                        }
                    ],
                }
            ]
        }
    }


def facets(index: Any, max_values: int) -> FacetsPublic:
    """Counts of every category prefix and of the `max_values` commonest values per attribute."""
    if max_values < 1:
        raise ValueError(f"max_values must be >= 1, got {max_values}")
    leaf_counts, attribute_counts = index.facet_counts()
    prefixes: dict[str, int] = {}
    for path, count in leaf_counts.items():
        levels = split_path(path)
        for depth in range(1, len(levels) + 1):
            prefix = join_path(levels[:depth])
            prefixes[prefix] = prefixes.get(prefix, 0) + count
    categories = [
        CategoryFacetPublic(path=p, depth=len(split_path(p)), count=n)
        for p, n in sorted(prefixes.items())
    ]
    attributes = [
        AttributeFacetPublic(
            name=name,
            distinct=len(values),
            values=[
                ValueCountPublic(value=v, count=n)
                for v, n in sorted(values.items(), key=lambda vn: (-vn[1], vn[0]))[:max_values]
            ],
        )
        for name, values in sorted(attribute_counts.items())
    ]
    return FacetsPublic(
        total=sum(leaf_counts.values()), categories=categories, attributes=attributes
    )
