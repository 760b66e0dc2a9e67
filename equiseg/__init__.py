"""equiseg: semi-supervised semantic segmentation (AEL, DST-CBC, HagSeg/iMAS and baselines)."""

__version__ = "0.1.0"
