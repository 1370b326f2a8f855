"""Which clip each training example comes from: the paper's balanced sampler, or uniform."""

from __future__ import annotations

from typing import Any

import numpy as np


class BalancedSampler:
    """Round robin over classes in a shuffled order; within a class, the next clip of its
    shuffled list, reshuffled when it runs out. Every class is drawn equally often, however
    imbalanced the data (Pellegrini 2021, after PANNs).

    The state is plain data (``state_dict``) so that ``--resume`` needs no pickle.
    """

    def __init__(self, labels: list[int], num_classes: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.by_class = [np.flatnonzero(np.asarray(labels) == k) for k in range(num_classes)]
        empty = [k for k, idx in enumerate(self.by_class) if len(idx) == 0]
        if empty:
            raise ValueError(f"class index(es) {empty} have no clip")
        self.orders = [self.rng.permutation(idx) for idx in self.by_class]
        self.positions = [0] * num_classes
        self.class_order = self.rng.permutation(num_classes)
        self.class_position = 0

    def _next_class(self) -> int:
        if self.class_position == len(self.class_order):
            self.class_order = self.rng.permutation(len(self.by_class))
            self.class_position = 0
        k = int(self.class_order[self.class_position])
        self.class_position += 1
        return k

    def draw(self, n: int) -> np.ndarray:
        """Indices of the next ``n`` clips."""
        out = np.empty(n, dtype=np.int64)
        for i in range(n):
            k = self._next_class()
            if self.positions[k] == len(self.orders[k]):
                self.orders[k] = self.rng.permutation(self.by_class[k])
                self.positions[k] = 0
            out[i] = self.orders[k][self.positions[k]]
            self.positions[k] += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "orders": [o.tolist() for o in self.orders],
            "positions": list(self.positions),
            "class_order": self.class_order.tolist(),
            "class_position": self.class_position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.orders = [np.asarray(o, dtype=np.int64) for o in state["orders"]]
        self.positions = list(state["positions"])
        self.class_order = np.asarray(state["class_order"], dtype=np.int64)
        self.class_position = int(state["class_position"])


class RandomSampler:
    """Uniform draws with replacement: the ablation without class balancing."""

    def __init__(self, labels: list[int], num_classes: int, seed: int) -> None:
        del num_classes
        self.n = len(labels)
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int) -> np.ndarray:
        return self.rng.integers(0, self.n, size=n)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


SAMPLERS = {"balanced": BalancedSampler, "random": RandomSampler}
