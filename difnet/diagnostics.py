"""Where does DifNet's diffusion help and where does it hurt? Diagnostics of a model on labelled data.

`diagnose` scores the seed and every walk class by class (the **walk gain** is the model's output,
the last walk's or the guided walk's after it, in mIoU minus the seed's), and asks three questions
of the transition matrices:

- *Do they carry what the seed lacks?* The in-class share of each level (`difnet.diffusion.label_statistics`):
  of the mass a row sends to other nodes, the share that reaches the node's class. The
  self-weight `P[i, i]` is reported apart; the identity scores no share at all. The same share
  at the nodes the seed gets wrong: how much of their mass reaches nodes whose seed holds their true
  class, against nodes whose seed makes the same mistake. Transitions that only echo the seed send it
  to the second, and cannot fix those nodes.
- *Could other walk scalars have made them help?* The cascade rerun on the same transition
  matrices with each of `WALK_OVERRIDES` (a fixed grid of mu and beta, and the learned values
  with some walks switched off): the best of them, and which it was. If no setting lifts the
  cascade above the seed, the transitions are useless, not the scalars. (The cascade alone: a
  model's guided walk does not follow the overridden cascades.)
- *What would better transitions give?* An oracle: the same seed through label-built transition
  matrices with the learned mu and beta.

Everything is computed from the model's public output (`DifNet(images, intermediates=True)`)
and no `N x N` matrix is built.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from difnet.data.palettes import IGNORE_INDEX
from difnet.diffusion import Transition, cascade_walk, flatten_nodes, propagate, unflatten_nodes
from difnet.diffusion.label_statistics import RowStatistics, label_propagate, node_labels, row_statistics
from difnet.metrics import ConfusionMatrix
from difnet.models import DifNet
from difnet.models.difnet import DifNetOutput
from difnet.models.heads import upsample

SCALAR_GRID_MU = (0.2, 0.5, 0.8, 0.95)
SCALAR_GRID_BETA = (0.25, 0.5, 1.0)
SWITCHED_OFF = ((1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5))  # walks (1-based) set to beta 0
GUIDED_STAGE = "guided walk"  # the stage of a model whose cascade ends with a guided walk (`GuidedWalk`)
GUIDED_SEED_STAGE = "seed, guided walk"  # its guided walk on the seed itself, the cascade skipped


@dataclass(frozen=True)
class WalkOverride:
    """One setting of the walk scalars: `mu` and `beta` per walk, None meaning the learned value;
    `off` names the walks (1-based) switched off (beta 0: the walk passes its input through)."""

    name: str
    mu: float | None = None
    beta: float | None = None
    off: tuple[int, ...] = ()

    def scalars(self, mu: Sequence[float], beta: Sequence[float]) -> tuple[list[float], list[float]]:
        """Per-walk `(mu, beta)` of this setting, given the learned ones."""
        mus = [self.mu if self.mu is not None else m for m in mu]
        betas = [0.0 if t + 1 in self.off else (self.beta if self.beta is not None else b)
                 for t, b in enumerate(beta)]  # fmt: skip
        return mus, betas


def _scalar_overrides() -> list[WalkOverride]:
    """The fixed grid: mu x beta for every walk, each with walk 1 on and off (24), then the learned
    scalars with walks 1, 1-2, 1-3, 1-4 or 2-5 switched off (5)."""
    grid = [
        WalkOverride(f"mu {mu}, beta {beta}" + (", walk 1 off" if off else ""), mu, beta, (1,) if off else ())
        for mu in SCALAR_GRID_MU
        for beta in SCALAR_GRID_BETA
        for off in (False, True)
    ]
    switched = [WalkOverride("learned, walks " + "-".join(map(str, (w[0], w[-1]))) + " off"
                             if len(w) > 1 else "learned, walk 1 off", off=w) for w in SWITCHED_OFF]  # fmt: skip
    return grid + switched


WALK_OVERRIDES = _scalar_overrides()


def cascade_output(
    transitions: Sequence[Transition], seed: Tensor, mu: Sequence[float], beta: Sequence[float]
) -> Tensor:
    """The last output of the cascade of Eqs. 4-5 (`cascade_walk`) from seed nodes `[B, N, K]`, walk
    t moving values with `transitions[t]` (`y -> P_t y`) and the scalars `mu[t]`, `beta[t]`."""
    if len(transitions) != len(mu) or len(mu) != len(beta):
        raise ValueError(
            f"one mu and one beta per transition (got {len(transitions)}, {len(mu)}, {len(beta)})"
        )
    outputs = list(cascade_walk(transitions, seed, map(float, mu), map(float, beta)))
    return outputs[-1] if outputs else seed


def model_transitions(out: DifNetOutput) -> list[Transition]:
    """`y -> P_t y` for each level of a DifNet output, with its kernel and learned temperatures."""
    grid = tuple(out.walks[-1].shape[-2:])
    temperatures = out.temperatures or [None] * len(out.features)

    def level(features: Tensor, temperature: Tensor | None) -> Transition:
        return lambda y: propagate(features, y, kernel=out.kernel, grid=grid, temperature=temperature)

    return [level(f, t) for f, t in zip(out.features, temperatures, strict=True)]


@dataclass
class DiffusionDiagnostics:
    """Per-stage scores ("seed", "walk 1".."walk T", "guided walk" where the model has one,
    "oracle", and "seed, guided walk": the guided walk on the seed, to tell its part from the
    cascade's) in [0, 1]; `walk_gain`, the model's output's mIoU (its last stage before the oracle)
    minus the seed's; `overrides`, the mIoU of the cascade under each walk-scalar
    setting, the `best_override` and its gain over the seed; per level t the mean in-class share
    over labelled nodes (`in_class_share`, None where no node has one, as under the identity) and
    over nodes of the small classes, and the mean self-weight `P_t[i, i]`; at the labelled nodes the
    seed gets wrong, the share of their mass reaching nodes whose seed holds their true class
    (`seed_error_share`) against the share reaching nodes whose seed holds the same wrong class
    (`seed_error_seed_share`): a walk can only correct such a node where the first outweighs the
    second; M's statistics; mu, beta."""

    class_names: list[str]
    small_classes: list[str]
    miou: dict[str, float]
    per_class_iou: dict[str, list[float | None]]
    small_class_miou: dict[str, float | None]
    walk_gain: float
    overrides: dict[str, float]
    best_override: dict[str, float | str]
    in_class_share: list[float | None]
    small_class_share: list[float | None]
    mean_self_weight: list[float]
    seed_error_share: list[float | None]
    seed_error_seed_share: list[float | None]
    importance: dict[str, float]
    mu: list[float]
    beta: list[float]

    def to_dict(self) -> dict:
        """Plain-typed values for JSON."""
        return asdict(self)

    def format(self) -> str:
        """Markdown: per-class IoU by stage, then the walk gain, the best override, the transition
        statistics, M, mu and beta."""
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
        m, best = self.importance, self.best_override
        return "\n".join([
            *lines,
            "",
            f"Walk gain (the output minus the seed): {100 * self.walk_gain:+.1f} mIoU. Best of "
            f"{len(self.overrides)} walk-scalar settings on the same transitions: {best['setting']}, "
            f"{_percent(best['miou'])} ({100 * best['gain']:+.1f} over the seed).",
            "In-class share of the mass sent to other nodes, levels 0-4: "
            + ", ".join(_fraction(v) for v in self.in_class_share)
            + "; nodes of small classes: " + ", ".join(_fraction(v) for v in self.small_class_share) + ".",
            "At the nodes the seed gets wrong, share reaching nodes whose seed is their true class: "
            + ", ".join(_fraction(v) for v in self.seed_error_share)
            + "; nodes whose seed is the same wrong class: " + ", ".join(_fraction(v) for v in self.seed_error_seed_share) + ".",
            "Mean self-weight P_t[i, i] of levels 0-4: " + ", ".join(f"{v:.3f}" for v in self.mean_self_weight)
            + ".",
            f"Importance map M: mean {m['mean']:.3f}, min {m['min']:.3f}, max {m['max']:.3f}.",
            "mu: " + ", ".join(f"{v:.3f}" for v in self.mu) + "; beta: " + ", ".join(f"{v:.3f}" for v in self.beta)
            + ".",
        ])  # fmt: skip


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


class _StageScores:
    """Confusion matrices of named stages, at the labels' resolution."""

    def __init__(self, stages: Sequence[str], num_classes: int) -> None:
        self.matrices = {stage: ConfusionMatrix(num_classes) for stage in stages}

    def update(self, stage: str, maps: Tensor, labels: Tensor) -> None:
        self.matrices[stage].update(upsample(maps, labels.shape[-2:]).argmax(1).cpu(), labels.cpu())

    def metrics(self) -> dict:
        return {stage: matrix.compute() for stage, matrix in self.matrices.items()}


class _LevelMeans:
    """Running means per level of the in-class share (over labelled nodes and over small-class
    nodes), of the self-weight (over labelled nodes), and, at the labelled nodes the seed gets wrong,
    of the share reaching nodes whose seed holds the true class and of the share reaching nodes
    whose seed holds the same wrong class (0 where no such node is in reach)."""

    ROWS = 5

    def __init__(self, levels: int, small: Sequence[int]) -> None:
        self.small = torch.tensor(list(small), dtype=torch.long)
        self.sums = torch.zeros(self.ROWS, levels, dtype=torch.float64)
        self.counts = torch.zeros(self.ROWS, levels, dtype=torch.float64)

    def update(
        self,
        level: int,
        stats: RowStatistics,
        nodes: Tensor,
        errors: tuple[RowStatistics, RowStatistics, Tensor] | None = None,
    ) -> None:
        """Add one level's statistics; `errors` is `(right, echo, predicted)`: the statistics
        against the seed's node predictions `predicted`, as `_update_levels` computes them."""
        share, labelled = stats.share, nodes != IGNORE_INDEX
        defined = labelled & ~share.isnan()
        small = defined & torch.isin(nodes, self.small.to(nodes.device))
        chosen = [(share, defined), (share, small), (stats.self_weight, labelled)]
        if errors is not None:
            right, echo, predicted = errors
            wrong = defined & (predicted != nodes)
            chosen += [(right.share.nan_to_num(0.0), wrong), (echo.share.nan_to_num(0.0), wrong)]
        for row, (values, mask) in enumerate(chosen):
            self.sums[row, level] += float(values[mask].double().sum())
            self.counts[row, level] += int(mask.sum())

    def means(self) -> list[list[float | None]]:
        """Per row (in-class, small-class, self-weight, at the seed's errors: right, echo), the mean
        of each level, None where no node counted."""
        values, counts = (self.sums / self.counts.clamp(min=1)).tolist(), self.counts.tolist()
        return [
            [None if c == 0 else v for v, c in zip(values[row], counts[row], strict=True)]
            for row in range(self.ROWS)
        ]


def _update_levels(
    means: _LevelMeans, out: DifNetOutput, labels: Tensor, num_classes: int, *, errors: bool = False
) -> Tensor:
    """Add one batch's transition statistics (with `errors`, also at the nodes the seed gets
    wrong); returns its node labels."""
    grid = tuple(out.walks[-1].shape[-2:])
    nodes = node_labels(labels, grid, num_classes)
    predicted = flatten_nodes(upsample(out.seed, grid)).argmax(-1) if errors else None
    temperatures = out.temperatures or [None] * len(out.features)
    for level, (features, temperature) in enumerate(zip(out.features, temperatures, strict=True)):
        options = {"kernel": out.kernel, "grid": grid, "temperature": temperature}
        stats = row_statistics(features, nodes, **options)
        errors_at = None
        if errors:
            right = row_statistics(features, nodes, targets=predicted, **options)
            errors_at = (right, row_statistics(features, predicted, **options), predicted)
        means.update(level, stats, nodes, errors_at)
    return nodes


@torch.no_grad()
def transition_shares(
    model: DifNet,
    dataset: Dataset,
    small_classes: Sequence[int] = (),
    *,
    batch_statistics: bool = False,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> dict[str, list[float | None]]:
    """Mean in-class share and self-weight of each P_t over the labelled nodes of `dataset`:
    `{"in_class_share", "small_class_share", "mean_self_weight"}`. `batch_statistics=True`
    computes P_t with BN in training mode on batches of `batch_size`, as training sees them (e.g.
    at init, whose running statistics are meaningless), on a copy of the model."""
    model = copy.deepcopy(model).train() if batch_statistics else model.eval()
    means = _LevelMeans(len(model.projections), small_classes)
    for images, labels in DataLoader(dataset, batch_size=batch_size if batch_statistics else 1):
        out = model(images.to(device), intermediates=True)
        _update_levels(means, out, labels.to(device), model.num_classes)
    share, small, self_weight, _, _ = means.means()
    return {"in_class_share": share, "small_class_share": small, "mean_self_weight": self_weight}


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
    first `limit` when given), each image scored as it comes; `small_classes` names the classes
    also shown apart."""
    if not isinstance(model, DifNet):
        raise TypeError(f"diagnose needs a DifNet (got {type(model).__name__}): only DifNet diffuses")
    names = list(dataset.class_names)
    unknown = [name for name in small_classes if name not in names]
    if unknown:
        raise ValueError(f"small_classes {unknown} are not classes of the dataset ({', '.join(names)})")
    small = [names.index(name) for name in small_classes]
    model.eval().to(device)
    walk_names = [f"walk {t}" for t in range(1, len(model.cascade.walks) + 1)]
    guided = model.head.guided_walk is not None
    outputs = [*walk_names, GUIDED_STAGE] if guided else walk_names
    scores = _StageScores(
        ["seed", *outputs, "oracle", *([GUIDED_SEED_STAGE] if guided else [])], model.num_classes
    )
    overridden = _StageScores([o.name for o in WALK_OVERRIDES], model.num_classes)
    means = _LevelMeans(len(model.projections), small)
    mu, beta = model.cascade.mu.tolist(), model.cascade.beta.tolist()
    importance = []
    items = dataset if limit is None else Subset(dataset, range(min(limit, len(dataset))))
    for images, labels in DataLoader(items, batch_size=1):
        images, labels = images.to(device), labels.to(device)
        out = model(images, intermediates=True)
        nodes = _update_levels(means, out, labels, model.num_classes, errors=True)
        for stage, maps in zip(["seed", *walk_names], [out.seed, *out.walks], strict=True):
            scores.update(stage, maps, labels)
        if guided:
            scores.update(GUIDED_STAGE, out.logits, labels)
            scores.update(
                GUIDED_SEED_STAGE,
                model.head.guided_walk(out.seed.float().softmax(1), images, out.guide),
                labels,
            )
        grid = tuple(out.walks[-1].shape[-2:])
        seed = flatten_nodes(upsample(out.seed, grid)).float()
        oracle = [lambda y, nodes=nodes: label_propagate(nodes, y)] * len(mu)
        scores.update("oracle", unflatten_nodes(cascade_output(oracle, seed, mu, beta), grid), labels)
        transitions = model_transitions(out)
        for override in WALK_OVERRIDES:
            final = cascade_output(transitions, seed, *override.scalars(mu, beta))
            overridden.update(override.name, unflatten_nodes(final, grid), labels)
        importance.append(out.importance.flatten())
    metrics = scores.metrics()
    override_miou = {name: result.miou for name, result in overridden.metrics().items()}
    best = max(override_miou, key=override_miou.get)
    seed_miou = metrics["seed"].miou
    share, small_share, self_weight, error_share, error_seed_share = means.means()
    m = torch.cat(importance)
    return DiffusionDiagnostics(
        class_names=names,
        small_classes=list(small_classes),
        miou={stage: result.miou for stage, result in metrics.items()},
        per_class_iou={stage: result.per_class_iou for stage, result in metrics.items()},
        small_class_miou={
            stage: _mean_over(result.per_class_iou, small) for stage, result in metrics.items()
        },
        walk_gain=metrics[outputs[-1]].miou - seed_miou,
        overrides=override_miou,
        best_override={"setting": best, "miou": override_miou[best], "gain": override_miou[best] - seed_miou},
        in_class_share=share,
        small_class_share=small_share,
        mean_self_weight=self_weight,
        seed_error_share=error_share,
        seed_error_seed_share=error_seed_share,
        importance={"mean": float(m.mean()), "min": float(m.min()), "max": float(m.max())},
        mu=mu,
        beta=beta,
    )


def _mean_over(values: list[float | None], indices: Sequence[int]) -> float | None:
    """Mean of the defined `values` at `indices` (as mIoU skips absent classes); None if none is."""
    defined = [values[i] for i in indices if values[i] is not None]
    return sum(defined) / len(defined) if defined else None
