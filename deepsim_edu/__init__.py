"""deepsim_edu: a small, readable PyTorch library that teaches and reproduces DeepSim.

DeepSim (Czolbe et al.) is a semantic similarity metric for learned deformable image registration:
the mean cosine similarity of the feature maps of a segmentation U-Net trained on the same data.
See README.md for a one-line description of every module.
"""

__version__ = "0.1.0"
