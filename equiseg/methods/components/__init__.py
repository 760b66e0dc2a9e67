"""Pieces the semi-supervised methods share instead of copying: the EMA teacher and its
pseudo-labels (teacher.py), the teacher-student base (semisup.py), mixing (mixing.py), losses
(losses.py), AEL's confidence and class-presence banks (confidence_bank.py), DebiasPL and distribution
alignment (debias.py), DST-CBC's class-balanced thresholds and offline labeling (class_balanced.py,
offline_labeling.py),
their online counterpart for the teacher-student methods (class_quantiles.py), HagSeg's hardness
(hardness.py) and generator-driven random draws (rng.py)."""
from .confidence_bank import ClassPresenceBank, ConfidenceBank, class_sums, pixel_indicator
from .losses import (Ohem, equalization_sampling_mask, normalized_weights, partial_label_cross_entropy,
                     pixel_cross_entropy, reweighting_weights, sigmoid_rampup, softmax_mse, supervised_loss,
                     weighted_mean)
from .mixing import (class_region_masks, connected_components, copy_paste_mask, foot_pixels, ground_below,
                     large_scale_jitter, mixing_partners, paste, random_boxes, shift)
from .semisup import (LogitAdjustedConfig, LossDenominator, PseudoLabelConfig, TeacherStudentConfig,
                      TeacherStudentMethod, masked_mean)
from .teacher import EMATeacher, PseudoLabels, make_pseudo_labels

__all__ = [
    "ClassPresenceBank", "ConfidenceBank", "class_sums", "pixel_indicator",
    "Ohem", "equalization_sampling_mask", "normalized_weights", "partial_label_cross_entropy", "pixel_cross_entropy",
    "reweighting_weights", "sigmoid_rampup", "softmax_mse", "supervised_loss", "weighted_mean",
    "class_region_masks", "connected_components", "copy_paste_mask", "foot_pixels", "ground_below",
    "large_scale_jitter", "mixing_partners", "paste", "random_boxes", "shift",
    "LogitAdjustedConfig", "LossDenominator", "PseudoLabelConfig", "TeacherStudentConfig", "TeacherStudentMethod",
    "masked_mean",
    "EMATeacher", "PseudoLabels", "make_pseudo_labels",
]
