"""captioning: cross-attention image captioning with any timm encoder, trained with Lightning.

`from captioning import Captioner` loads a trained checkpoint and captions images.
"""

from captioning.inference import Caption, Captioner

__all__ = ["Caption", "Captioner"]
__version__ = "0.1.0"
