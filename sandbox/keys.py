"""The key-geometry penalties of sandbox training: subject keys at the edited layer kept apart from other
subjects' (in the batch, and world-wide through a bank of every subject's latest key) and alike across one
subject's sentences, so that a rank-one edit of one subject reaches it in every phrasing and few others."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


# Nearest other subjects a key is kept apart from by the `key_bank` penalty.
_BANK_NEIGHBOURS = 8


class KeyBank:
    """Every subject's latest (centred, unit-length, detached) key at the edited layer, by subject name.

    A batch holds ~50 of a large world's subjects, so the in-batch ``overlap`` penalty sees a subject's
    collisions with the rest of the world only by chance; averaged over all pairs, a world whose keys share
    a few hundred units is already "orthogonal" (CounterFact, 1,000 subjects: mean |cos| 0.005, rank 344).
    Against the bank each key meets its nearest neighbours at every step.
    """

    def __init__(self, width: int, device: str = "cpu") -> None:
        import torch

        self.index: dict[str, int] = {}
        self.keys = torch.zeros(0, width, device=device)

    def ids(self, names: list[str]) -> "torch.Tensor":
        import torch

        for n in names:
            self.index.setdefault(n, len(self.index))
        grow = len(self.index) - len(self.keys)
        if grow > 0:
            self.keys = torch.cat([self.keys, self.keys.new_zeros(grow, self.keys.shape[1])])
        return torch.tensor([self.index[n] for n in names], dtype=torch.long, device=self.keys.device)

    def crowding(self, k: "torch.Tensor", ids: "torch.Tensor") -> "torch.Tensor":
        """Mean squared cosine between each key and its nearest other subjects in the bank; then store k."""
        import torch

        own = torch.zeros(len(ids), len(self.keys), dtype=torch.bool, device=k.device)
        own[torch.arange(len(ids), device=k.device), ids] = True  # a subject is not its own neighbour
        cos = (k @ self.keys.T).masked_fill(own, 0.0)  # unseen subjects are zero rows: cosine 0
        crowd = cos.pow(2).topk(min(_BANK_NEIGHBOURS, cos.shape[1]), dim=1).values.mean()
        # out of place: the product above still needs the old bank for its gradient
        self.keys = self.keys.index_put((ids,), k.detach().to(self.keys.dtype))
        return crowd


def key_geometry(keys, labels, packs, bank: KeyBank | None = None) -> tuple["torch.Tensor", ...]:
    """Penalties on the keys at the edited layer (the subject's last token, input of ``c_proj``).

    ``overlap``: mean squared cosine between different subjects' keys. ``spread``: mean (1 - cosine)
    between one subject's keys in two sentences of the batch. ``crowding`` (with a bank): mean squared cosine
    between each key and its nearest other subjects' latest keys, world-wide. Keys are centred on the mean key of the batch's
    real tokens: the shared part is what the covariance adjustment of ROME/MEMIT already discounts. A model
    trained with both stores each subject's facts under one key of its own, whatever the words around the
    subject: a rank-one edit of one subject then barely reaches the others, and reaches the subject in every
    phrasing, as in large pretrained models whose subject keys are high-dimensional and nearly orthogonal.
    """
    import torch

    from .corpus import subject_ends

    zero = keys.new_zeros((), dtype=torch.float32)
    rows, pos, subj = (t.to(keys.device) for t in subject_ends(packs))
    if len(rows) < 2:
        return zero, zero, zero
    keys = keys.float()
    real = labels != -100
    mean = keys[real].mean(0)
    k = torch.nn.functional.normalize(keys[rows, pos] - mean, dim=-1)
    cos = k @ k.T
    same = subj[:, None] == subj[None, :]
    other = ~same
    same &= ~torch.eye(len(subj), dtype=torch.bool, device=keys.device)
    overlap = (cos[other] ** 2).mean() if other.any() else zero
    spread = (1 - cos[same]).mean() if same.any() else zero
    crowding = zero
    if bank is not None:
        names = [n for p in packs for (_, span, _), n in zip(p.spans, p.names) if span is not None and n is not None]
        crowding = bank.crowding(k, bank.ids(names))
    return overlap, spread, crowding
