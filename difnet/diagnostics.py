"""Is the diffusion at work? Per-walk accuracy, the importance map and how far each P_t mixes.

`walk_diagnostics` answers the three questions a trained DifNet raises: do the walks improve on
the seed (mIoU of the seed and of every y_t), did the importance map M collapse, and are the
transition matrices near the identity (mean self-weight P_t[i, i] near 1: a walk that leaves y
unchanged, as an unscaled softmax of high-dimensional features does at init).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from difnet.metrics import ConfusionMatrix
from difnet.models import DifNet
from difnet.models.heads import upsample


@dataclass
class WalkDiagnostics:
    """`miou`: {"seed", "walk 1".."walk 5"} -> val mIoU; `importance`: M's mean, min, max and
    fraction below 0.05; `mean_self_weight`: mean P_t[i, i] per level; `mu`, `beta`: the walks'."""

    miou: dict[str, float]
    importance: dict[str, float]
    mean_self_weight: list[float]
    mu: list[float]
    beta: list[float]

    def to_dict(self) -> dict:
        """Plain-typed values for JSON."""
        return asdict(self)

    def format(self) -> str:
        """A markdown table of the per-stage mIoU, then M's statistics and the self-weights."""
        names = list(self.miou)
        m = self.importance
        return "\n".join([
            "| | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
            "| val mIoU (%) | " + " | ".join(f"{100 * v:.1f}" for v in self.miou.values()) + " |",
            "",
            f"Importance map M: mean {m['mean']:.3f}, min {m['min']:.3f}, max {m['max']:.3f}, "
            f"{100 * m['fraction_below_0.05']:.1f}% of nodes below 0.05.",
            "",
            "Mean self-weight P_t[i, i] of levels 0-4 (1 = the walk leaves y unchanged): "
            + ", ".join(f"{v:.3f}" for v in self.mean_self_weight) + ".",
            "",
            "mu: " + ", ".join(f"{v:.3f}" for v in self.mu)
            + "; beta: " + ", ".join(f"{v:.3f}" for v in self.beta) + ".",
        ])  # fmt: skip


def self_weights(features: Tensor) -> Tensor:
    """Diagonal `P[:, i, i]` `[B, N]` of `P = softmax(f f^T)` for features `[B, N, d]`."""
    logits = features @ features.transpose(1, 2)
    return torch.exp(logits.diagonal(dim1=1, dim2=2) - logits.logsumexp(dim=-1))


@torch.no_grad()
def walk_diagnostics(model: DifNet, dataset: Dataset) -> WalkDiagnostics:
    """Diagnostics of `model` (in eval mode) over every `(image, label)` of `dataset`."""
    model.eval()
    names = ["seed", *(f"walk {t}" for t in range(1, len(model.cascade.walks) + 1))]
    matrices = {name: ConfusionMatrix(model.num_classes) for name in names}
    importance, diagonals = [], []
    for index in range(len(dataset)):
        image, label = dataset[index]
        levels = model.similarity_branch(image[None])
        out = model.diffuse(model.seed_branch(image[None]), levels)
        features, _ = model._diffusion_features(levels)
        diagonals.append(torch.stack([self_weights(f).mean() for f in features]))
        for name, maps in zip(names, [out.seed, *out.walks], strict=True):
            matrices[name].update(upsample(maps, label.shape).argmax(1)[0], label)
        importance.append(out.importance.flatten())
    m = torch.cat(importance)
    walks = model.walk_parameters()
    return WalkDiagnostics(
        miou={name: matrix.compute().miou for name, matrix in matrices.items()},
        importance={
            "mean": float(m.mean()),
            "min": float(m.min()),
            "max": float(m.max()),
            "fraction_below_0.05": float((m < 0.05).float().mean()),
        },  # fmt: skip
        mean_self_weight=torch.stack(diagonals).mean(0).tolist(),
        mu=walks["mu"],
        beta=walks["beta"],
    )
