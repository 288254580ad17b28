"""rapidun_placebo: RapidUn with its own weights shuffled across the rows of the same pack (forget weights among
forget rows, retain weights among retain rows): the same spread and mean, no signal. What RapidUn gains over this
placebo is what the influence signal buys, beyond merely having unequal weights.

The permutations are fixed for the run: drawn once from sha256(`unlearn.seed:rapidun_placebo:pack`) (the run's
`seed` is added to `unlearn.seed` when the config is built), so a resumed run and every rank shuffle alike. A row's
ascent and relabel weights move together. With `unlearn.reweight_every` each refresh is shuffled by the same
permutations."""

from __future__ import annotations

import hashlib

import torch

from rapidun_dist.config import UnlearnConfig
from rapidun_dist.unlearn.methods.base import BatchShape
from rapidun_dist.unlearn.methods.rapidun import RapidUn


def placebo_permutation(seed: int, pack: str, n: int) -> torch.Tensor:
    """A permutation of range(n) fixed by (seed, pack): torch's CPU generator seeded from a hash, so no global
    RNG state is read or changed."""
    digest = hashlib.sha256(f"{seed}:rapidun_placebo:{pack}".encode()).digest()
    gen = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little"))
    return torch.randperm(n, generator=gen)


class RapidUnPlacebo(RapidUn):
    name = "rapidun_placebo"

    def __init__(self, u: UnlearnConfig, shape: BatchShape, n_forget: int, n_retain: int):
        super().__init__(u, shape, n_forget, n_retain)
        self.forget_perm = placebo_permutation(u.seed, "forget", n_forget)
        self.retain_perm = placebo_permutation(u.seed, "retain", n_retain)

    def _set_weights(
        self, ascent_w: torch.Tensor, retain_w: torch.Tensor, relabel_w: torch.Tensor | None
    ) -> None:
        """Row i gets the weights of row perm[i] (RapidUn's, from the weights stage or a refresh)."""
        fp, rp = self.forget_perm, self.retain_perm
        super()._set_weights(ascent_w[fp], retain_w[rp], None if relabel_w is None else relabel_w[fp])

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """The saved weights are shuffled already: set them as they are."""
        if "ascent_w" in state:
            RapidUn._set_weights(self, state["ascent_w"], state["retain_w"], state.get("relabel_w"))

    def describe(self) -> dict:
        return super().describe() | {"placebo_seed": self.u.seed}
