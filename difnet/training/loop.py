"""The training loop: the paper's recipe on one process or many (torchrun + DDP), evaluation
after each epoch, atomic checkpoints, exact resumption and a guard against non-finite steps.

Reproducibility: every random generator (torch, NumPy, Python, DataLoader workers) is seeded
from `(seed, epoch, rank)` at the start of each epoch, the data order is a permutation drawn
from `(seed, epoch)`, and each sample is augmented from its own seed `(seed, epoch, index)`, so
the batches do not depend on the number of workers. A run resumed from the checkpoint of epoch `e` therefore repeats
epochs `e+1, ...` exactly as the uninterrupted run would (bit for bit on CPU; on CUDA as far as
its kernels are deterministic). A checkpoint written mid-epoch (`save_every`) records how many
steps of the epoch it holds; the resumed run re-seeds the epoch and draws (and discards) the
batches of those steps, so the data and every random state continue from the same sample. This
relies on the steps themselves drawing no random numbers, which holds for these models.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from difnet.evaluation import evaluate
from difnet.models import build_model
from difnet.models.serialization import (
    initialize_from,
    load_seed_branch,
    load_state,
    read_checkpoint,
    save_pretrained,
    unwrap,
)
from difnet.progress import progress_bar
from difnet.training import distributed
from difnet.training.checkpoint import remove_partial_saves, save_model
from difnet.training.class_weights import class_weights
from difnet.training.config import TrainConfig, check_resume_recipe
from difnet.training.losses import training_loss
from difnet.training.optim import build_optimizer, set_learning_rate
from difnet.training.preflight import check_first_samples
from difnet.training.records import LOG_NAME, RunLog, keep_steps
from difnet.training.sample_seeds import SampleSeeded, epoch_seed, seed_everything

LAST, BEST = "last.pt", "best.pt"
BEST_FOLDER = "best"  # the best model again as a save_pretrained folder, for sharing
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# fp16: when the gradient scaler skipped more than half of the last SKIP_WINDOW steps, the run stops
# or warns (--on-nonfinite); a few skips while the scale settles from 2^16 are normal
SKIP_WINDOW = 50


class NonFiniteLossError(RuntimeError):
    """A step produced a NaN or infinite loss or gradient (the weights were left untouched), or the
    fp16 gradient scaler skipped most of the recent steps."""


@dataclass
class TrainResult:
    """The trained model (unwrapped, on its device), the best validation mIoU (None without
    validation), the checkpoints written, the per-epoch history and the class weights of the loss
    (None: unweighted)."""

    model: nn.Module
    best_miou: float | None
    checkpoint_paths: dict[str, Path]
    history: list[dict] = field(default_factory=list)
    class_weights: list[float] | None = None


class EpochSampler(Sampler[int]):
    """This process's share of a permutation of the dataset drawn from `(seed, epoch)`.

    Shares are equal (the permutation's last `size % world_size` items are dropped), so every
    process runs the same number of steps.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator)
        return iter(order[self.rank : len(self) * self.world_size : self.world_size].tolist())

    def __len__(self) -> int:
        return self.size // self.world_size


def gradient_norm(parameters: list[nn.Parameter]) -> Tensor:
    """The L2 norm of all gradients together (inf or NaN if any gradient is)."""
    norms = [p.grad.detach().norm() for p in parameters if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())


LATER_MODEL_OPTIONS = {"in_channels": 3, "head_init": "he", "shared_backbone": False,
                       "normalize_importance": False, "kernel": "dot", "kernel_radius": None,
                       "learn_temperature": False, "beta_init": 0.5, "guided_walk_stride": None,
                       "guided_walk_steps": 15, "guided_walk_level": None}  # fmt: skip


class Trainer:
    """One run of `train`; holds the state that the steps, evaluation and checkpoints share."""

    def __init__(
        self,
        config: TrainConfig,
        context: distributed.Context,
        datasets: Mapping[str, Dataset | None] | None = None,
    ) -> None:
        self.config, self.context = config, context
        self.device = context.device
        datasets = dict(datasets or {})
        if datasets.get("train") is not None:
            self.train_set = datasets["train"]
        else:
            self.train_set = config.build_dataset(config.train_split, config.train_transform())
        if "val" in datasets:
            self.val_set = datasets["val"]
        elif config.val_split is not None:
            self.val_set = config.build_dataset(config.val_split, config.eval_transform())
        else:
            self.val_set = None
        for role, dataset in (("training", self.train_set), ("validation", self.val_set)):
            if dataset is not None and len(dataset) == 0:
                raise ValueError(
                    f"the {role} dataset ({type(dataset).__name__}) holds no images"
                    + ("; pass None as the override to skip evaluation" if role == "validation" else "")
                )
        self.num_classes = self._num_classes()
        check_first_samples(self.train_set, self.val_set, config.crop_size, config.scale_range)
        self.class_weights = self._class_weights()
        self.output_dir = Path(config.output_dir)

        seed_everything(config.seed)
        model = build_model(**config.model_arguments(self.num_classes))
        model.class_names, model.palette = list(self.train_set.class_names), list(self.train_set.palette)
        model.preprocessing = config.preprocessing()
        if config.init_from is not None:
            initialize_from(model, config.init_from)
        model.freeze_backbones(config.freeze_backbone).set_norm_eval(config.norm_eval)
        if config.seed_from is not None:
            load_seed_branch(model, config.seed_from)
            model.freeze_seed_branch()
        if context.distributed and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        self.optimizer = build_optimizer(model, config)
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.model = (
            DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
            if context.distributed
            else model
        )
        self.parameters = [p for p in model.parameters() if p.requires_grad]

        self.sampler = EpochSampler(len(self.train_set), config.seed, context.rank, context.world_size)
        self.loader_generator = torch.Generator()
        self.seeded_train_set = SampleSeeded(self.train_set, config.seed)
        self.loader = DataLoader(
            self.seeded_train_set,
            batch_size=config.batch_size,
            sampler=self.sampler,
            num_workers=config.workers,
            drop_last=True,
            generator=self.loader_generator,
            pin_memory=self.device.type == "cuda",
        )
        batches = len(self.loader)
        if config.max_steps_per_epoch is not None:
            batches = min(batches, config.max_steps_per_epoch * config.accumulate)
        self.steps_per_epoch = batches // config.accumulate
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training split has {len(self.train_set)} images, fewer than one step needs "
                f"(batch_size {config.batch_size} x accumulate {config.accumulate} x "
                f"{context.world_size} process(es)); lower --batch-size or --accumulate"
            )
        self.total_steps = config.epochs * self.steps_per_epoch

        self.epoch, self.step = 0, 0
        self.steps_into_epoch = 0  # > 0 only when resuming from a mid-epoch checkpoint
        self.recent_skips: deque[bool] = deque(
            maxlen=SKIP_WINDOW
        )  # fp16: whether each recent step was skipped
        self.epoch_skips = 0
        self.best_miou: float | None = None
        self.history: list[dict] = []
        if config.resume:
            self._resume(Path(config.resume))
        self.log: RunLog | None = None

    def _num_classes(self) -> int:
        classes = self.train_set.num_classes
        if self.config.num_classes is not None and self.config.num_classes != classes:
            raise ValueError(
                f"--num-classes is {self.config.num_classes} but the training data has {classes} classes"
            )
        if self.val_set is not None and self.val_set.num_classes != classes:
            raise ValueError(
                f"the validation split has {self.val_set.num_classes} classes, the training split {classes}"
            )
        return classes

    def _class_weights(self) -> Tensor | None:
        """The loss's class weights, counted from the training labels (None: unweighted)."""
        if self.config.class_weighting is None:
            return None
        return class_weights(self.train_set, self.num_classes, self.config.class_weighting).to(self.device)

    def _weights_record(self) -> dict[str, float] | None:
        """The class weights by class name, as the log and checkpoints record them."""
        if self.class_weights is None:
            return None
        return dict(zip(unwrap(self.model).class_names, self.class_weights.tolist(), strict=True))

    # --- checkpoints -------------------------------------------------------------------------

    def _resume(self, path: Path) -> None:
        payload = read_checkpoint(path)
        check_resume_recipe(path, payload["config"], self.config)
        expected = unwrap(self.model).config
        # options added later take their default in checkpoints written before them
        later = {key: value for key, value in LATER_MODEL_OPTIONS.items() if key in expected}
        saved = {**later, **payload["model_spec"]}
        if saved != expected:
            raise ValueError(
                f"checkpoint {path} holds a model {saved} but this run builds "
                f"{expected}; resume with the settings of the run that wrote it"
            )
        if "optimizer" not in payload:
            raise ValueError(
                f"checkpoint {path} has no optimiser state (an inference checkpoint such as "
                f"{BEST}); resume from the run's {LAST}"
            )
        load_state(self.model, payload["model"], path)
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler.is_enabled() and "grad_scaler" in payload:
            self.scaler.load_state_dict(payload["grad_scaler"])
        self.epoch, self.step = payload["epoch"], payload["step"]
        self.steps_into_epoch = payload.get("steps_into_epoch", 0)
        self.best_miou = payload["best_miou"]
        self.history = list(payload["history"])

    def _save(self, name: str, *, with_optimizer: bool, steps_into_epoch: int = 0) -> Path:
        extra = {"optimizer": self.optimizer.state_dict()} if with_optimizer else {}
        if self.class_weights is not None:
            extra["class_weights"] = self._weights_record()
        if with_optimizer and self.scaler.is_enabled():
            extra["grad_scaler"] = self.scaler.state_dict()
        return save_model(
            self.output_dir / name,
            self.model,
            self.config,
            epoch=self.epoch,
            step=self.step,
            steps_into_epoch=steps_into_epoch,
            best_miou=self.best_miou,
            history=self.history,
            **extra,
        )

    def _prepare_output(self) -> None:
        existing = sorted(p.name for p in self.output_dir.iterdir()) if self.output_dir.is_dir() else []
        if existing and not (self.config.overwrite or self.config.resume):
            raise FileExistsError(
                f"output directory {self.output_dir} already holds {', '.join(existing[:4])}; pass "
                f"--overwrite to replace that run or --resume {self.output_dir / LAST} to continue it"
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for name in (LAST, BEST):  # left by a run killed mid-save
            remove_partial_saves(self.output_dir / name)
        if self.config.resume:
            keep_steps(self.output_dir, self.step)  # the steps after the checkpoint run again
        else:
            for name in (LAST, BEST, LOG_NAME):
                (self.output_dir / name).unlink(missing_ok=True)
        (self.output_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        self.log = RunLog(self.output_dir)
        if self.class_weights is not None:
            self.log.write(
                "class_weights", self.step, method=self.config.class_weighting, weights=self._weights_record()
            )

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        if self.context.is_main:
            self._prepare_output()
            if self.config.progress:
                tqdm.write(
                    f"training {self.config.model} ({unwrap(self.model).encoder}) with\n{self.config.format()}"
                )
                if self.class_weights is not None:
                    weights = ", ".join(f"{name} {w:.4g}" for name, w in self._weights_record().items())
                    tqdm.write(f"class weights ({self.config.class_weighting}): {weights}")
        try:
            while self.epoch < self.config.epochs:
                self._train_epoch()
                self.epoch += 1
                record = {"epoch": self.epoch, "step": self.step}
                if self.scaler.is_enabled():
                    record["fp16_skipped_steps"] = self.epoch_skips
                if self.val_set is not None and (
                    self.epoch % self.config.eval_every == 0 or self.epoch == self.config.epochs
                ):
                    record.update(self._validate())
                self.history.append(record)
                if self.context.is_main:
                    self._save(LAST, with_optimizer=True)
                    if record.get("is_best") or self.val_set is None:
                        self._save(BEST, with_optimizer=False)
                        save_pretrained(self.model, self.output_dir / BEST_FOLDER)
        finally:
            if self.log is not None:
                self.log.close()
        paths = {"last": self.output_dir / LAST, "best": self.output_dir / BEST}
        weights = None if self.class_weights is None else self.class_weights.tolist()
        return TrainResult(unwrap(self.model), self.best_miou, paths, self.history, weights)

    def _validate(self) -> dict:
        result = evaluate(
            unwrap(self.model),
            self.val_set,
            device=self.device,
            workers=min(self.config.workers, 2),
            progress=self.config.progress,
        )
        miou = result.metrics.miou
        is_best = self.best_miou is None or miou > self.best_miou
        self.best_miou = miou if is_best else self.best_miou
        if self.log is not None:
            self.log.write(
                "val",
                self.step,
                epoch=self.epoch,
                miou=miou,
                pixel_accuracy=result.metrics.pixel_accuracy,
                per_class_iou=result.metrics.per_class_iou,
            )
        if self.context.is_main and self.config.progress:
            tqdm.write(f"epoch {self.epoch}: val mIoU {100 * miou:.2f} (best {100 * self.best_miou:.2f})")
        return {"miou": miou, "is_best": is_best}

    def _train_epoch(self) -> None:
        config, rank = self.config, self.context.rank
        seed_everything(epoch_seed(config.seed, self.epoch, rank))
        self.sampler.set_epoch(self.epoch)
        self.seeded_train_set.epoch = self.epoch
        self.loader_generator.manual_seed(epoch_seed(config.seed, self.epoch, rank))
        self.model.train()
        start, self.steps_into_epoch, self.epoch_skips = self.steps_into_epoch, 0, 0
        bar = progress_bar(
            total=self.steps_per_epoch,
            initial=start,
            unit="step",
            leave=False,
            desc=f"epoch {self.epoch + 1}/{config.epochs}",
            enabled=self.context.is_main and config.progress,
        )
        batches = iter(self.loader)
        for _ in range(start * config.accumulate):  # the batches the checkpoint already trained on
            next(batches)
        # a window runs from one log record to the next; after a mid-epoch resume, the first holds
        # only the steps this run trained
        window_loss, window_steps, window_images, window_start = 0.0, 0, 0, time.perf_counter()
        for index in range(start, self.steps_per_epoch):
            lr = set_learning_rate(self.optimizer, config, self.step, self.total_steps)
            loss = self._step(batches, index)
            window_loss += loss
            window_steps += 1
            window_images += config.batch_size * config.accumulate * self.context.world_size
            speed = window_images / (time.perf_counter() - window_start)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
            bar.update()
            if (index + 1) % config.log_every == 0 or index == self.steps_per_epoch - 1:
                if self.log is not None:
                    self.log.write(
                        "train",
                        self.step,
                        epoch=self.epoch + 1,
                        lr=lr,
                        loss=window_loss / window_steps,
                        images_per_second=speed,
                    )
                window_loss, window_steps, window_images, window_start = 0.0, 0, 0, time.perf_counter()
            last_of_epoch = index == self.steps_per_epoch - 1
            if config.save_every and self.step % config.save_every == 0 and not last_of_epoch:
                if self.context.is_main:
                    self._save(LAST, with_optimizer=True, steps_into_epoch=index + 1)
        bar.close()

    def _step(self, batches: Iterator, index: int) -> float:
        """One optimiser step over `accumulate` batches; returns its mean loss (NaN if skipped)."""
        config = self.config
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        dtype = AUTOCAST_DTYPES.get(config.precision)
        for micro in range(config.accumulate):
            images, labels = next(batches)
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            last = micro == config.accumulate - 1
            sync = contextlib.nullcontext() if last or not self.context.distributed else self.model.no_sync()
            with sync, torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                loss = training_loss(
                    self.model, images, labels, config.aux_seed_weight, config.transition_loss_weight,
                    class_weights=self.class_weights,
                )  # fmt: skip
                self.scaler.scale(loss / config.accumulate).backward()
            total += loss.detach()
        loss = distributed.mean_over_processes(total / config.accumulate, self.context)
        finite = bool(torch.isfinite(loss))
        if not self.scaler.is_enabled():  # with fp16 the scaler skips steps whose gradients overflow
            finite = finite and bool(torch.isfinite(gradient_norm(self.parameters)))
        if distributed.any_true(not finite, self.context):
            return self._nonfinite(index, float(loss))
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        if scale is not None:  # the scaler lowers its scale exactly when it skipped the step
            self._count_skip(index, scale, skipped=self.scaler.get_scale() < scale)
        return float(loss)

    def _count_skip(self, index: int, scale: float, skipped: bool) -> None:
        """Log a step the fp16 gradient scaler skipped (its gradients overflowed at `scale`), and
        stop or warn (per `on_nonfinite`) when it skipped most of the last `SKIP_WINDOW` steps."""
        self.recent_skips.append(skipped)
        if not skipped:
            return
        self.epoch_skips += 1
        if self.log is not None:
            self.log.write("fp16_skipped", self.step, epoch=self.epoch + 1, batch=index + 1, scale=scale)
        count = sum(self.recent_skips)
        if len(self.recent_skips) < SKIP_WINDOW or 2 * count <= SKIP_WINDOW:
            return
        what = (
            f"the fp16 gradient scaler skipped {count} of the last {SKIP_WINDOW} steps (up to step "
            f"{self.step}, epoch {self.epoch + 1}; scale now {self.scaler.get_scale():g}): the gradients "
            "overflow or are NaN at every scale, so the weights barely train"
        )
        if self.config.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"{what}; stopped, the last checkpoint in {self.output_dir} is intact (--precision bf16 or "
                "fp32 need no scaler; --on-nonfinite skip would only warn)"
            )
        tqdm.write(f"warning: {what}")
        self.recent_skips.clear()  # warn once per window

    def _nonfinite(self, index: int, loss: float) -> float:
        config = self.config
        first = index * config.accumulate * config.batch_size
        count = config.accumulate * config.batch_size
        samples = list(self.sampler)[first : first + count]
        where = (
            f"non-finite loss or gradient (loss {loss}) at epoch {self.epoch + 1}, step "
            f"{self.step + 1} (batch {index + 1} of the epoch, samples {samples} of the training split)"
        )
        self.optimizer.zero_grad(set_to_none=True)
        if self.log is not None:
            self.log.write(
                "nonfinite",
                self.step + 1,
                epoch=self.epoch + 1,
                batch=index + 1,
                samples=samples,
                action=config.on_nonfinite,
            )
        if config.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"{where}; stopped before the weights changed, the last checkpoint in "
                f"{self.output_dir} is intact (--on-nonfinite skip would skip such steps)"
            )
        tqdm.write(f"skipped a step: {where}")
        self.step += 1  # the schedule moves on as if the step had run
        return math.nan


def train(config: TrainConfig, dataset_overrides: Mapping[str, Dataset | None] | None = None) -> TrainResult:
    """Train a model with `config` (on every process when run under torchrun).

    `dataset_overrides` may hold ready-made `"train"` and `"val"` datasets (with their own
    transforms) in place of the ones the config names; `"val": None` skips evaluation.
    """
    context = distributed.setup(config.device)
    try:
        return Trainer(config, context, dataset_overrides).run()
    finally:
        distributed.teardown(context)
