"""Evaluation: confusion-matrix metrics, whole/slide/center inference with flip, the evaluator,
and visualisation helpers."""
from .evaluator import collate_samples, collect_samples, eval_mode, evaluate, make_eval_loader, shard_indices
from .inference import (
    center_crop,
    center_crop_box,
    default_stride,
    predict_logits,
    predict_probs,
    sliding_windows,
    window_starts,
)
from .metrics import ClassConfusion, ConfusionMatrix, EvalResult, class_confusions
from .visualize import colorize, denormalize, make_grid, sample_grid, sample_row, save_prediction

__all__ = [
    "ClassConfusion",
    "ConfusionMatrix",
    "EvalResult",
    "center_crop",
    "class_confusions",
    "center_crop_box",
    "collate_samples",
    "collect_samples",
    "colorize",
    "default_stride",
    "denormalize",
    "eval_mode",
    "evaluate",
    "make_eval_loader",
    "make_grid",
    "predict_logits",
    "predict_probs",
    "sample_grid",
    "sample_row",
    "save_prediction",
    "shard_indices",
    "sliding_windows",
    "window_starts",
]
