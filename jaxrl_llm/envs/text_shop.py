"""TextShop: a small WebShop-like shopping environment (search, open, pick a size, buy).

A seeded catalog of products (category, color, material, price, sizes) and a goal such as
"red cotton shirt, size M, under $20". Pages: search -> results (5 per page) -> item.
Actions: `search[query]`, `click[<product id>]`, `click[<size>]`, `click[buy]`, `click[back]`,
`click[next]`.

Reward (WebShop form, simplified), given at `click[buy]`:
  r = 1[category ok] * (#matched attributes + #matched options + 1[price ok])
      / (#attributes + #options + 1),
with attributes = color (and material for the "color_material" task type), options = size,
price ok iff price < the goal's bound. `won` iff r = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxrl_llm.envs.text_env import extract_action

__all__ = ["Product", "ShopGoal", "TextShop", "shop_reward"]

CATEGORIES = ("shirt", "pants", "shoes", "hat", "jacket", "bag")
COLORS = ("red", "blue", "green", "black", "white", "yellow")
MATERIALS = ("cotton", "wool", "leather", "denim", "silk")
SIZES = ("S", "M", "L", "XL")
PAGE_SIZE = 5


@dataclass(frozen=True)
class Product:
    id: str
    category: str
    color: str
    material: str
    price: int
    sizes: tuple[str, ...]

    @property
    def title(self) -> str:
        return f"{self.color} {self.material} {self.category}"


@dataclass(frozen=True)
class ShopGoal:
    category: str
    attributes: dict[str, str]  # e.g. {"color": "red"} or {"color": "red", "material": "cotton"}
    size: str
    max_price: int

    @property
    def text(self) -> str:
        return f"{self.query}, size {self.size}, under ${self.max_price}"

    @property
    def query(self) -> str:
        return " ".join([*self.attributes.values(), self.category])


def shop_reward(goal: ShopGoal, product: Product, size: str | None) -> float:
    """WebShop-style score in [0, 1] of buying `product` with option `size`."""
    if product.category != goal.category:
        return 0.0
    matched = sum(getattr(product, k) == v for k, v in goal.attributes.items())
    matched += int(size == goal.size) + int(product.price < goal.max_price)
    return matched / (len(goal.attributes) + 1 + 1)


def _satisfies(goal: ShopGoal, product: Product) -> bool:
    return (
        product.category == goal.category
        and all(getattr(product, k) == v for k, v in goal.attributes.items())
        and product.price < goal.max_price
        and goal.size in product.sizes
    )


class TextShop:
    """One TextShop episode (see the module docstring). `catalog_size` products per episode."""

    name = "textshop"
    task_types: tuple[str, ...] = ("color", "color_material")

    def __init__(self, *, catalog_size: int = 60, max_steps: int = 15):
        if catalog_size < 2:
            raise ValueError(f"catalog_size must be >= 2; got {catalog_size}")
        if max_steps < 4:
            raise ValueError(f"max_steps must be >= 4 (search, open, size, buy); got {max_steps}")
        self.catalog_size = catalog_size
        self.max_steps = max_steps
        self._catalog: list[Product] = []

    def describe(self) -> str:
        return (
            "TextShop: a web shop. Search with search[words], open a product with click[id], "
            "choose a size with click[size], go back with click[back], see more results with "
            "click[next], and finish with click[buy]. The bought item should match the "
            "instruction's category, attributes, size and price limit."
        )

    # ----- episode state -------------------------------------------------------------------
    def reset(self, seed: int, task_id: int = 0) -> str:
        rng = np.random.default_rng([int(seed), int(task_id)])
        self.task_id = int(task_id)
        self.task_type = self.task_types[self.task_id % len(self.task_types)]
        self._catalog = [self._random_product(rng, i) for i in range(self.catalog_size)]
        # Overwrite one random slot with the target so every goal is achievable.
        target_idx = int(rng.integers(self.catalog_size))
        target = self._random_product(rng, target_idx)
        self._catalog[target_idx] = target
        attributes = {"color": target.color}
        if self.task_type == "color_material":
            attributes["material"] = target.material
        size = str(rng.choice(target.sizes))
        self.goal = ShopGoal(
            target.category, attributes, size, target.price + int(rng.integers(1, 11))
        )
        self._page, self._query, self._results, self._result_page = "search", "", [], 0
        self._item: Product | None = None
        self._size: str | None = None
        self._steps, self._done, self._score, self._invalid = 0, False, 0.0, False
        self._obs = self._render()
        return self._obs

    @staticmethod
    def _random_product(rng: np.random.Generator, index: int) -> Product:
        mask = rng.random(len(SIZES)) < 0.6
        mask[rng.integers(len(SIZES))] = True  # at least one size
        return Product(
            id=f"P{index:03d}",
            category=str(rng.choice(CATEGORIES)),
            color=str(rng.choice(COLORS)),
            material=str(rng.choice(MATERIALS)),
            price=int(rng.integers(5, 61)),
            sizes=tuple(s for s, keep in zip(SIZES, mask) if keep),
        )

    def _search(self, query: str) -> list[Product]:
        words = set(query.lower().split())
        scored = [(sum(w in words for w in (p.category, p.color, p.material)), p)
                  for p in self._catalog]
        hits = [(s, p) for s, p in scored if s > 0]
        hits.sort(key=lambda sp: (-sp[0], sp[1].price, sp[1].id))
        return [p for _, p in hits]

    def _visible_results(self) -> list[Product]:
        start = self._result_page * PAGE_SIZE
        return self._results[start : start + PAGE_SIZE]

    def _has_next(self) -> bool:
        return (self._result_page + 1) * PAGE_SIZE < len(self._results)

    # ----- rendering and admissible actions ------------------------------------------------
    def _render(self) -> str:
        if self._page == "search":
            return (
                f"TextShop search page.\nInstruction: {self.goal.text}.\n"
                "Type search[your query]."
            )
        if self._page == "results":
            num_pages = max(1, -(-len(self._results) // PAGE_SIZE))
            lines = [f"Results for '{self._query}' (page {self._result_page + 1}/{num_pages}):"]
            lines += [f"[{p.id}] {p.title} ${p.price}" for p in self._visible_results()]
            if not self._results:
                lines.append("No products found.")
            return "\n".join(lines)
        item = self._item
        selected = self._size if self._size is not None else "none"
        return (
            f"[{item.id}] {item.title}\nPrice: ${item.price}\n"
            f"Size options: {', '.join(item.sizes)}\nSelected size: {selected}"
        )

    def admissible_actions(self) -> list[str]:
        if self._done:
            return []
        if self._page == "search":
            return ["search[...]"]
        if self._page == "results":
            acts = [f"click[{p.id}]" for p in self._visible_results()]
            return acts + (["click[next]"] if self._has_next() else []) + ["click[back]"]
        return [f"click[{s}]" for s in self._item.sizes] + ["click[buy]", "click[back]"]

    def oracle_action(self) -> str | None:
        """Next action of a shortest plan to a full-score purchase."""
        if self._done:
            return None
        if self._page == "search":
            return f"search[{self.goal.query}]"
        if self._page == "results":
            for p in self._visible_results():
                if _satisfies(self.goal, p):
                    return f"click[{p.id}]"
            return "click[next]" if self._has_next() else "click[back]"
        if not _satisfies(self.goal, self._item):
            return "click[back]"
        return "click[buy]" if self._size == self.goal.size else f"click[{self.goal.size}]"

    @property
    def info(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "goal": self.goal.text,
            "step": self._steps,
            "admissible_actions": self.admissible_actions(),
            "won": self._done and self._score == 1.0,
            "score": self._score,
            "invalid": self._invalid,
            "privileged": (
                "Search for the attributes and category together; open the first listed item "
                "that matches every attribute and is under the price limit; pick the size; buy."
            ),
            "oracle_action": self.oracle_action(),
        }

    # ----- transitions ----------------------------------------------------------------------
    def _apply(self, action: str) -> bool:
        """Applies an admissible action; returns False (and changes nothing) otherwise."""
        if action.startswith("search[") and action.endswith("]") and self._page == "search":
            query = action[len("search[") : -1].strip()
            if not query:
                return False
            self._query, self._results, self._result_page = query, self._search(query), 0
            self._page = "results"
            return True
        if action not in self.admissible_actions():
            return False
        target = action[len("click[") : -1]
        if target == "back":
            self._page = "search" if self._page == "results" else "results"
            self._item, self._size = None, None
        elif target == "next":
            self._result_page += 1
        elif target == "buy":
            self._score = shop_reward(self.goal, self._item, self._size)
            self._done = True
        elif self._page == "results":
            self._item = next(p for p in self._visible_results() if p.id == target)
            self._size, self._page = None, "item"
        else:
            self._size = target
        return True

    def step(self, action_text: str) -> tuple[str, float, bool, dict[str, Any]]:
        if not self._catalog:
            raise RuntimeError("reset must be called before step")
        if self._done:
            self._invalid = False
            return self._obs, 0.0, True, self.info
        action = extract_action(action_text)
        self._invalid = action is None or not self._apply(action)
        self._steps += 1
        if not self._done and self._steps >= self.max_steps:
            self._done = True  # out of steps: nothing bought, score stays 0
        reward = self._score if self._done else 0.0
        if not self._invalid:
            self._obs = self._render() if not self._done else "Episode finished."
        elif self._done:
            self._obs = "Episode finished."
        return self._obs, float(reward), self._done, self.info
