"""Caption data: COCO and Karpathy annotation files, the built-in shapes dataset, transforms, the datamodule.

Only `datamodule.py` imports lightning; import it from `captioning.data.datamodule`.
"""

from captioning.data.coco import ImageRecord, load_coco_captions, load_karpathy_split

__all__ = ["ImageRecord", "load_coco_captions", "load_karpathy_split"]
