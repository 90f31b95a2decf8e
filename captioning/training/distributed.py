"""Sharing what the first process computed alone, for as long as it takes.

Validation and test scores are computed on the first process (METEOR and SPICE start a JVM; on 5,000 COCO captions
that can take longer than the process group's timeout, 30 minutes by default) while the others wait. They wait on a
gloo group of their own with a timeout of hours, so that no collective of the training group runs out meanwhile. The
same holds for the feature cache, which the first process fills while the others wait.
"""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

SCORING_TIMEOUT = timedelta(hours=6)
_groups: dict[timedelta, object] = {}


def share_from_first(value, timeout: timedelta = SCORING_TIMEOUT):
    """The first process's `value` on every process (a picklable object), waiting up to `timeout` for it.

    Every process must call it, in the same order as the other collectives (it creates its group on the first call).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    if timeout not in _groups:
        _groups[timeout] = dist.new_group(backend="gloo", timeout=timeout)
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_groups[timeout])
    return box[0]
