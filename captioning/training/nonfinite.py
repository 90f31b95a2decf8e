"""The non-finite guard: an optimizer step whose loss or gradient is NaN or inf on any process is skipped (no weight
update), and the run stops after `limit` such steps in a row, with the last good weights and checkpoints kept."""

from __future__ import annotations

from collections.abc import Callable

import torch

from captioning.errors import TrainingDiverged


class NonFiniteGuard:
    """Watches the losses of the backward passes since the last optimizer step and the gradients they left.

    Args:
        limit: non-finite steps in a row after which the run stops (`model.max_nonfinite_steps`).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.skipped = 0  # steps skipped in this run
        self.in_a_row = 0
        self._losses_finite: torch.Tensor | None = None

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Before each backward pass (several per step with gradient accumulation); no sync with the device."""
        finite = loss.detach().isfinite().all()
        self._losses_finite = finite if self._losses_finite is None else self._losses_finite & finite

    def skip_step(self, optimizer: torch.optim.Optimizer, any_process: Callable[[torch.Tensor], torch.Tensor]) -> bool:
        """Whether this step must be skipped: a loss or gradient was non-finite on any process. If so, drops the
        gradients (optimizers leave a parameter without one alone: no update, no decay) and counts the step.

        Args:
            any_process: reduces a 0/1 flag with max over all processes, so that every process skips the same steps
                and the replicas stay equal.

        Raises:
            TrainingDiverged: after `limit` skipped steps in a row.
        """
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = torch.stack([g.isfinite().all() for g in grads]).all() if grads else torch.tensor(True)
        if self._losses_finite is not None:
            finite = finite & self._losses_finite.to(finite.device)
        self._losses_finite = None
        if not any_process(~finite):
            self.in_a_row = 0
            return False
        optimizer.zero_grad(set_to_none=True)
        self.skipped += 1
        self.in_a_row += 1
        return True

    def check_limit(self, step: int) -> None:
        if self.in_a_row >= self.limit:
            raise TrainingDiverged(
                f"training diverged: {self.limit} optimizer steps in a row had a non-finite loss or gradient (up to "
                f"step {step}); the weights and checkpoints are those of the last good step. Lower the learning rate, "
                "train in bf16 or fp32 rather than fp16, or raise model.max_nonfinite_steps"
            )
