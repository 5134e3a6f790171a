"""The CamVid verdict's variants and the classes it reports apart: shared by the runner
(`benchmarks.camvid`) and the report (`benchmarks.camvid_report`), which import this module and
not each other."""

from __future__ import annotations

SMALL_CLASSES = ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist")

AUX = {"aux_seed_weight": 0.4}
WALK_LR = {"walk_lr_mult": 30.0, "walk_weight_decay": 0.0}
TRANSITIONS = {"transition_loss_weight": 0.4}
DISTANCE_LOCAL = {"kernel": "distance", "kernel_radius": 3}
SEPARATE = {"shared_backbone": False}
GUIDED_OPTIONS = {"guided_walk_stride": 2}
# the second-stage candidates that have a committed record: a transition kernel, and how its walks
# start and learn (the candidates retired from the runner, whose records were lost or which never
# ran, are listed with their results in docs/experiments/camvid-walks.md)
STAGE_TWO: dict[str, dict] = {
    "dot": {},
    "dist-r1": {"kernel": "distance", "kernel_radius": 1},
    "dist-r1-walklr": {"kernel": "distance", "kernel_radius": 1, **WALK_LR},
    "dist-r3-s4": {**DISTANCE_LOCAL, "diffusion_stride": 4},
    # the paper's separate similarity backbone, trained from the first stage's backbone
    "dist-r1-sep": {**SEPARATE, "kernel": "distance", "kernel_radius": 1},
    "dist-r3-sep": {**SEPARATE, **DISTANCE_LOCAL},
    "dist-r3-sep-trans1": {**SEPARATE, **DISTANCE_LOCAL, "transition_loss_weight": 1.0},
    "dist-sep-trans1": {**SEPARATE, "kernel": "distance", "transition_loss_weight": 1.0},
    # the cascade ends with a learned bilateral walk on the image at stride 2 (`GuidedWalk`): the
    # staged verdict's second stage (what it adds alone, on the seed, is in its diagnostics)
    "dist-r1-guided": {"kernel": "distance", "kernel_radius": 1, **GUIDED_OPTIONS},
    # the guided walk's settings at the walks' own rate, and on the image's full grid
    "dist-r1-guided-walklr": {"kernel": "distance", "kernel_radius": 1, **GUIDED_OPTIONS, **WALK_LR},
    "dist-r1-guided1": {"kernel": "distance", "kernel_radius": 1, "guided_walk_stride": 1},
    # the winner on the paper's separate similarity backbone
    "dist-r1-guided-sep": {**SEPARATE, "kernel": "distance", "kernel_radius": 1, **GUIDED_OPTIONS},
    # the first ResNet stage's features join the colours in the guided walk's kernel
    "dist-r1-guided-l1-walklr": {
        "kernel": "distance",
        "kernel_radius": 1,
        **GUIDED_OPTIONS,
        "guided_walk_level": 1,
        **WALK_LR,
    },
}
STAGE_ONE = "seed-aux-shared"
DRIVE_RATE_GRID = (0.007, 0.01, 0.02, 0.04)  # every family's rate search in the cross-drive protocol
DRIVE_EDGE_RATES = (0.0035, 0.08)  # searched too where a family's best rate is at that end of the grid
SEARCHED_RATES = tuple(sorted((*DRIVE_RATE_GRID, *DRIVE_EDGE_RATES)))
STAGE_ONE_EPOCHS = {"remedy": 8, "verdict": 16, "drive-screen": 8, "drive-verdict": 16}
# name: (model, recipe overrides); the DifNet remedies start from DeepLab's head init
VARIANTS: dict[str, tuple[str, dict]] = {
    "sim-he": ("simdeeplab", {"head_init": "he"}),
    "sim-normal": ("simdeeplab", {"head_init": "normal"}),
    "dif-he": ("difnet", {"head_init": "he"}),
    "dif-normal": ("difnet", {"head_init": "normal"}),
    # the joint training's remedies (the ones never screened are retired: docs/experiments/camvid-verdict.md)
    "dif-aux": ("difnet", {"head_init": "normal", **AUX}),
    "dif-aux-shared": ("difnet", {"head_init": "normal", "shared_backbone": True, **AUX}),
    "dif-aux-trans": ("difnet", {"head_init": "normal", **AUX, **TRANSITIONS}),
    # staged training's first stage: the selected DifNet with every P_t = I, so y_5 is its seed
    "seed-aux-shared": (
        "difnet",
        {"head_init": "normal", "shared_backbone": True, "kernel": "identity", **AUX},
    ),
    # staged training's second stage: only Psi_t, the kernel and the walks train, on the frozen seed
    # branch of the first stage's run of the same seed and phase (`stage_one_checkpoint`)
    **{
        f"walk-{name}": ("difnet", {"head_init": "normal", "shared_backbone": True, **options})
        for name, options in STAGE_TWO.items()
    },  # fmt: skip
    # the baseline's rate search at DeepLab's init (the recipe's rate is 0.01; 0.014 and 0.02 are retired,
    # their records lost)
    **{f"sim-lr{lr}": ("simdeeplab", {"head_init": "normal", "lr": lr}) for lr in (0.007, 0.01)},
    # the cross-drive rate search, the same rates for every model (0.014 and 0.02 of the old search
    # are retired with their records; 0.02 is searched again here)
    **{
        f"sim-lr{lr}": ("simdeeplab", {"head_init": "normal", "lr": lr})
        for lr in SEARCHED_RATES
        if lr not in (0.007, 0.01)
    },
    # the models a user would pick instead (benchmarks/smp_models.py), on smp's ResNet-18, at DeepLab's
    # head init as every model here
    **{
        f"{model}-lr{lr}": (model, {"head_init": "normal", "depth": 18, "lr": lr})
        for model in ("smp-deeplabv3plus", "smp-unet")
        for lr in SEARCHED_RATES
    },  # fmt: skip
    # DifNet's head on the smp model at each of its rates, trained the staged way on that rate's frozen
    # run (FIRST_STAGES): the distance kernel within 1 cell and the guided walk at stride 2, DifNet's
    # best walks
    **{
        f"smp-deeplabv3plus-lr{lr}-difhead": (
            "smp-deeplabv3plus-difhead",
            {
                "head_init": "normal",
                "depth": 18,
                "kernel": "distance",
                "kernel_radius": 1,
                "guided_walk_stride": 2,
            },
        )
        for lr in SEARCHED_RATES
    },  # fmt: skip
}
# the class-balanced loss CamVid papers train with (SegNet's median-frequency weights), screened once on
# every model of the cross-drive rate search and on the staged DifNet's first stage
VARIANTS.update({
    f"{variant}-mfw": (model, {**options, "class_weighting": "median-frequency"})
    for variant, (model, options) in list(VARIANTS.items())
    if variant == STAGE_ONE or (variant.startswith(("sim-lr", "smp-")) and "difhead" not in variant)
})  # fmt: skip
# the run a second stage starts from, besides the walks' STAGE_ONE: the smp model it puts DifNet's head on
FIRST_STAGES = {f"smp-deeplabv3plus-lr{lr}-difhead": f"smp-deeplabv3plus-lr{lr}" for lr in SEARCHED_RATES}
INIT_VARIANTS = ("sim-he", "sim-normal", "dif-he", "dif-normal")
# what each selection step of `benchmarks.camvid.select` chooses among, besides a model's init
REMEDIES = tuple(v for v in VARIANTS if v.startswith("dif-") and v not in INIT_VARIANTS)
RATES = ("sim-lr0.007", "sim-lr0.01")
SECOND_STAGES = tuple(v for v in VARIANTS if v.startswith("walk-"))
