"""LoKr rows: defaults, Conv2d (whole, low-rank, effective), decompose_both, decompose_factor, patterns."""

from __future__ import annotations

from method_rows import MethodRow
from method_rows.loha import CONV_TARGETS, FIRST_TARGET, LINEAR_MODELS, lycoris
from peft_core.methods.lokr import LoKrConfig

# On the tiny models (32 = 4 x 8) the default r=8 keeps both Kronecker factors
# whole; r=1 or 2 makes them low-rank products (lokr_w*_a / lokr_w*_b).
ROWS = [
    MethodRow("lokr", lycoris(LoKrConfig), models=LINEAR_MODELS),
    MethodRow("lokr_conv", lycoris(LoKrConfig, target_modules=CONV_TARGETS, alpha=64), models=("vit",)),
    MethodRow("lokr_conv_low_rank", lycoris(LoKrConfig, target_modules=CONV_TARGETS, r=2, alpha=64), models=("vit",)),
    MethodRow(
        "lokr_conv_effective",
        lycoris(LoKrConfig, target_modules=CONV_TARGETS, r=2, alpha=256, use_effective_conv2d=True),
        models=("vit",),
    ),
    MethodRow("lokr_decompose_both", lycoris(LoKrConfig, r=1, alpha=4, decompose_both=True), models=LINEAR_MODELS),
    # 32 split with factor 8 is (8, 4): the left factor is the larger one
    MethodRow("lokr_decompose_factor", lycoris(LoKrConfig, r=1, alpha=4, decompose_factor=8), models=LINEAR_MODELS),
    MethodRow(
        "lokr_rank_pattern",
        lycoris(
            LoKrConfig, rank_pattern=lambda m: {FIRST_TARGET[m]: 1}, alpha_pattern=lambda m: {FIRST_TARGET[m]: 16},
            rank_dropout=0.2, module_dropout=0.2, rank_dropout_scale=True,
        ),
        models=LINEAR_MODELS,
    ),
]
