"""captioning: cross-attention image captioning with any timm encoder, trained with Lightning.

`from captioning import Captioner` loads a trained checkpoint, captions images and scores given captions.
"""

__all__ = ["Caption", "CaptionScore", "Captioner"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use, so that `captioning --help` and the command-line tools start without torch.
    if name in __all__:
        from captioning import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'captioning' has no attribute '{name}'")
