"""Where does DifNet's diffusion help and where does it hurt? Diagnostics of a model on labelled data.

`diagnose` scores the seed and every walk class by class, measures how much of each transition
row stays inside the node's ground-truth class (all nodes, and nodes of the small classes), and
runs an oracle: the model's own seed diffused, with its learned mu and beta, through transition
matrices built from the labels. The oracle's lead over the learned cascade is what a better
similarity branch could still gain; a walk below the seed is a walk that erases.

Nodes and their labels: a node is a cell of the diffusion grid, the same cells adaptive pooling
uses for Psi_t. Its label is the majority label of the labelled pixels in its cell; a node whose
cell is more than half void (255) is void: it is left out of every statistic, and in the oracle
its row keeps all its mass on itself. A label-built row is uniform over the labelled nodes of the
node's class (itself included).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from difnet.data.palettes import IGNORE_INDEX
from difnet.diffusion import flatten_nodes, transition_matrix, unflatten_nodes, walk_step
from difnet.metrics import ConfusionMatrix
from difnet.models import DifNet
from difnet.models.heads import upsample

VOID_FRACTION = 0.5  # a node whose cell is more void than this is void


@dataclass
class DiffusionDiagnostics:
    """Per-stage scores ("seed", "walk 1".."walk 5", "oracle") in [0, 1], and per level t = 0..4
    the mean in-class transition mass over labelled nodes (`in_class_mass`) and over nodes of the
    small classes (`small_class_mass`, None without such nodes); M's statistics; mu, beta."""

    class_names: list[str]
    small_classes: list[str]
    miou: dict[str, float]
    per_class_iou: dict[str, list[float | None]]
    small_class_miou: dict[str, float | None]
    in_class_mass: list[float]
    small_class_mass: list[float | None]
    importance: dict[str, float]
    mean_self_weight: list[float]
    mu: list[float]
    beta: list[float]

    def to_dict(self) -> dict:
        """Plain-typed values for JSON."""
        return asdict(self)

    def format(self) -> str:
        """Markdown: per-class IoU by stage, then the transition masses, M, mu and beta."""
        stages = list(self.miou)
        lines = ["| class | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
        for index, name in enumerate(self.class_names):
            cells = [_percent(self.per_class_iou[stage][index]) for stage in stages]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("| **mIoU** | " + " | ".join(_percent(self.miou[s]) for s in stages) + " |")
        if self.small_classes:
            lines.append(
                "| small-class mIoU | "
                + " | ".join(_percent(self.small_class_miou[s]) for s in stages)
                + " |"
            )
        m = self.importance
        return "\n".join([
            *lines,
            "",
            "In-class transition mass of levels 0-4 (1 = every row stays in its node's class): "
            + ", ".join(f"{v:.3f}" for v in self.in_class_mass)
            + "; nodes of small classes: " + ", ".join(_fraction(v) for v in self.small_class_mass) + ".",
            f"Importance map M: mean {m['mean']:.3f}, min {m['min']:.3f}, max {m['max']:.3f}.",
            "Mean self-weight P_t[i, i] of levels 0-4: " + ", ".join(f"{v:.3f}" for v in self.mean_self_weight)
            + ".",
            "mu: " + ", ".join(f"{v:.3f}" for v in self.mu) + "; beta: " + ", ".join(f"{v:.3f}" for v in self.beta)
            + ".",
        ])  # fmt: skip


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def self_weights(features: Tensor) -> Tensor:
    """Diagonal `P[:, i, i]` `[B, N]` of `P = softmax(f f^T)` for features `[B, N, d]`, without P."""
    logits = features @ features.transpose(1, 2)
    return torch.exp(logits.diagonal(dim1=1, dim2=2) - logits.logsumexp(dim=-1))


def node_labels(labels: Tensor, grid: Sequence[int], num_classes: int) -> Tensor:
    """Labels `[B, H, W]` (255 = void) -> node labels `[B, h*w]` on the grid: the majority label of
    each cell's labelled pixels, or 255 where more than half the cell is void."""
    void = labels == IGNORE_INDEX
    one_hot = F.one_hot(labels.masked_fill(void, num_classes).long(), num_classes + 1)
    fractions = F.adaptive_avg_pool2d(one_hot.permute(0, 3, 1, 2).float(), tuple(grid))
    majority = fractions[:, :num_classes].argmax(1)
    majority[fractions[:, num_classes] > VOID_FRACTION] = IGNORE_INDEX
    return majority.flatten(1)


def label_transitions(nodes: Tensor) -> Tensor:
    """Transition matrices `[B, N, N]` built from node labels `[B, N]`: each labelled node's row
    uniform over the labelled nodes of its class, a void node's row all on itself."""
    same = (nodes[:, :, None] == nodes[:, None, :]) & (nodes[:, :, None] != IGNORE_INDEX)
    same = same | torch.eye(nodes.shape[1], dtype=torch.bool, device=nodes.device)
    same = same.float()
    return same / same.sum(-1, keepdim=True)


def in_class_mass(matrices: Tensor, nodes: Tensor) -> Tensor:
    """For `P` `[B, N, N]` and node labels `[B, N]`: each node's row mass on nodes of its own
    class, `[B, N]` (NaN for void nodes)."""
    same = (nodes[:, :, None] == nodes[:, None, :]).to(matrices.dtype)
    mass = (matrices * same).sum(-1)
    return mass.masked_fill(nodes == IGNORE_INDEX, float("nan"))


def oracle_walks(seed: Tensor, nodes: Tensor, mu: Sequence[float], beta: Sequence[float]) -> list[Tensor]:
    """The cascade of Eqs. 4-5 from seed nodes `[B, N, K]` with every P_t built from the node
    labels (`label_transitions`) and the given mu_t, beta_t; returns `[y_1, ..., y_T]`."""
    matrices = label_transitions(nodes).to(seed.dtype)
    walks, y = [], seed
    for m, b in zip(mu, beta, strict=True):
        y = walk_step(matrices @ y, y, seed, float(m), float(b))
        walks.append(y)
    return walks


class _StageScores:
    """Confusion matrices of the seed, every walk and the oracle, at the labels' resolution."""

    def __init__(self, stages: Sequence[str], num_classes: int) -> None:
        self.matrices = {stage: ConfusionMatrix(num_classes) for stage in stages}

    def update(self, stage: str, maps: Tensor, labels: Tensor) -> None:
        self.matrices[stage].update(upsample(maps, labels.shape[-2:]).argmax(1).cpu(), labels.cpu())

    def metrics(self) -> dict:
        return {stage: matrix.compute() for stage, matrix in self.matrices.items()}


class _MassMeans:
    """Running means of the in-class mass per level over all labelled nodes and small-class nodes."""

    def __init__(self, levels: int, small: Sequence[int]) -> None:
        self.small = torch.tensor(list(small), dtype=torch.long)
        self.sums = torch.zeros(2, levels, dtype=torch.float64)
        self.counts = torch.zeros(2, levels, dtype=torch.float64)

    def update(self, level: int, mass: Tensor, nodes: Tensor) -> None:
        labelled = nodes != IGNORE_INDEX
        small = torch.isin(nodes, self.small.to(nodes.device))
        for row, chosen in enumerate((labelled, small)):
            self.sums[row, level] += float(mass[chosen].double().sum())
            self.counts[row, level] += int(chosen.sum())

    def means(self) -> tuple[list[float], list[float | None]]:
        values = (self.sums / self.counts).tolist()
        small = [None if c == 0 else v for v, c in zip(values[1], self.counts[1].tolist(), strict=True)]
        return values[0], small


def transition_mass(
    model: DifNet,
    dataset: Dataset,
    small_classes: Sequence[int] = (),
    *,
    batch_statistics: bool = False,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> tuple[list[float], list[float | None]]:
    """Mean in-class mass of each P_t over the labelled nodes of `dataset` (and over nodes of
    `small_classes`). `batch_statistics=True` computes P_t with BN in training mode on batches of
    `batch_size`, as training sees them (e.g. at init, whose running statistics are meaningless),
    on a copy of the model so its running statistics stay as they were."""
    if batch_statistics:
        model = copy.deepcopy(model).train()
    else:
        model.eval()
    means = _MassMeans(len(model.projections), small_classes)
    loader = DataLoader(dataset, batch_size=batch_size if batch_statistics else 1)
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            features, grid = model._diffusion_features(model.similarity_branch(images))
            nodes = node_labels(labels, grid, model.num_classes)
            for level, f in enumerate(features):
                means.update(level, in_class_mass(transition_matrix(f.float()), nodes), nodes)
    return means.means()


@torch.no_grad()
def diagnose(
    model: DifNet,
    dataset: Dataset,
    small_classes: Sequence[str] = (),
    *,
    device: str | torch.device = "cpu",
    limit: int | None = None,
) -> DiffusionDiagnostics:
    """Diagnostics of `model` (in eval mode) over every whole `(image, label)` of `dataset` (the
    first `limit` when given); `small_classes` names the classes also shown apart."""
    if not isinstance(model, DifNet):
        raise TypeError(f"diagnose needs a DifNet (got {type(model).__name__}): only DifNet diffuses")
    names = list(dataset.class_names)
    unknown = [name for name in small_classes if name not in names]
    if unknown:
        raise ValueError(f"small_classes {unknown} are not classes of the dataset ({', '.join(names)})")
    small = [names.index(name) for name in small_classes]
    model.eval().to(device)
    walk_names = [f"walk {t}" for t in range(1, len(model.cascade.walks) + 1)]
    scores = _StageScores(["seed", *walk_names, "oracle"], model.num_classes)
    masses = _MassMeans(len(model.projections), small)
    mu, beta = model.cascade.mu.tolist(), model.cascade.beta.tolist()
    importance, diagonals = [], []
    items = dataset if limit is None else Subset(dataset, range(min(limit, len(dataset))))
    for images, labels in DataLoader(items, batch_size=1):
        images, labels = images.to(device), labels.to(device)
        levels = model.similarity_branch(images)
        out = model.diffuse(model.seed_branch(images), levels)
        features, grid = model._diffusion_features(levels)
        nodes = node_labels(labels, grid, model.num_classes)
        for level, f in enumerate(features):
            matrices = transition_matrix(f.float())
            masses.update(level, in_class_mass(matrices, nodes), nodes)
            diagonals.append(matrices.diagonal(dim1=1, dim2=2).mean())
        for stage, maps in zip(["seed", *walk_names], [out.seed, *out.walks], strict=True):
            scores.update(stage, maps, labels)
        seed_nodes = flatten_nodes(upsample(out.seed, grid)).float()
        scores.update("oracle", unflatten_nodes(oracle_walks(seed_nodes, nodes, mu, beta)[-1], grid), labels)
        importance.append(out.importance.flatten())
    metrics = scores.metrics()
    mass, small_mass = masses.means()
    m = torch.cat(importance)
    levels_count = len(model.projections)
    return DiffusionDiagnostics(
        class_names=names,
        small_classes=list(small_classes),
        miou={stage: result.miou for stage, result in metrics.items()},
        per_class_iou={stage: result.per_class_iou for stage, result in metrics.items()},
        small_class_miou={
            stage: _mean_over(result.per_class_iou, small) for stage, result in metrics.items()
        },
        in_class_mass=mass,
        small_class_mass=small_mass,
        importance={"mean": float(m.mean()), "min": float(m.min()), "max": float(m.max())},
        mean_self_weight=torch.stack(diagonals).view(-1, levels_count).mean(0).tolist(),
        mu=mu,
        beta=beta,
    )


def _mean_over(values: list[float | None], indices: Sequence[int]) -> float | None:
    """Mean of the defined `values` at `indices` (as mIoU skips absent classes); None if none is."""
    defined = [values[i] for i in indices if values[i] is not None]
    return sum(defined) / len(defined) if defined else None
