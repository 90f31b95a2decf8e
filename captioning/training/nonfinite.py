"""The non-finite guard: an optimizer step whose loss or gradient is NaN or inf on any process is skipped (no weight
update), and the run stops after `limit` such steps in a row, with the last good weights and checkpoints kept.

The verdict stays on the device: the L2 norm of all gradients together (one fused `torch._foreach_norm`, as torch's
`clip_grad_norm_` takes it), non-finite when any gradient or loss is, all-reduced with max, and handed to a fused
optimizer as its `found_inf` flag, the way `torch.amp.GradScaler` skips a step. Clipping by norm then reuses that norm
(`clip`) instead of reading every gradient again, and hands a fused optimizer its factor as `grad_scale`. Gradients so
large that their sum of squares overflows float32 (one value above 1.8e19, or a million above 1.8e16) count as
non-finite: clipping by norm could not scale them (torch's own clip zeroes them). The guard's counters live on the
device too and are read only when someone asks (logging steps, checkpoints, the end of an epoch). An optimizer without a
fused kernel cannot skip on the device: for it the verdict is read on the host at every step, as before.
"""

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
        self._losses: list[torch.Tensor] = []
        # () float counters, moved to the device at the first step: skipped in this run, in a row now, longest run
        self._skipped, self._streak, self._longest = torch.zeros(()), torch.zeros(()), torch.zeros(())
        self._reported = 0  # skipped steps already reported (`newly_skipped`)
        self._grad_norm: torch.Tensor | None = None  # this step's, from `check` until `clip` uses it

    # ------------------------------------------------------------------------------------------ counters
    @property
    def skipped(self) -> int:
        """Steps skipped in this run (reads the device)."""
        return int(self._skipped)

    @property
    def in_a_row(self) -> int:
        """Skipped steps in a row up to the last one (reads the device)."""
        return int(self._streak)

    def state_dict(self) -> dict:
        """The counters, for checkpoints: a resumed run keeps its count and its run in a row."""
        return {"skipped": self.skipped, "in_a_row": self.in_a_row, "longest": int(self._longest)}

    def load_state_dict(self, state: dict) -> None:
        device = self._skipped.device
        self._skipped, self._streak, self._longest = (
            torch.tensor(float(state.get(key, state["in_a_row"])), device=device)
            for key in ("skipped", "in_a_row", "longest")
        )
        self._reported = int(state["skipped"])

    def newly_skipped(self) -> int:
        """Skipped steps since the last call (reads the device)."""
        skipped = self.skipped
        new, self._reported = skipped - self._reported, skipped
        return new

    # ------------------------------------------------------------------------------------------ per step
    def observe_loss(self, loss: torch.Tensor) -> None:
        """Before each backward pass (several per step with gradient accumulation); no work on the device."""
        self._losses.append(loss)

    def check(
        self,
        optimizer: torch.optim.Optimizer,
        any_process: Callable[[torch.Tensor], torch.Tensor] | None = None,
        scaled: bool = False,
    ) -> bool | None:
        """Flags this step for skipping when a loss or gradient was non-finite on any process.

        Where the optimizer is fused (`skips_on_device`) the flag goes to it as `found_inf` and nothing is read on
        the host; None is returned. Otherwise the verdict is read, the gradients are dropped on a bad step (optimizers
        leave a parameter without one alone: no update, no decay), and whether the step is skipped is returned.

        Args:
            any_process: reduces a () float 0/1 flag with max over all processes (in place or not), so that every
                process skips the same steps and the replicas stay equal; None for one process.
            scaled: the gradients passed through a `GradScaler` (float16 mixed precision), which skips the steps
                where they overflow and lowers its scale: then only a non-finite loss counts, or the scaler's search
                for its scale (an overflow at each of the first steps) would read as divergence.

        Raises:
            TrainingDiverged: on the host path, after `limit` skipped steps in a row.
        """
        with torch.no_grad():
            self._grad_norm = gradient_norm(_gradients(optimizer))
            start = self._grad_norm.new_zeros(()) if scaled else self._grad_norm  # scaled: the losses alone count
            found = sum(self._losses, start).mul(0).nan_to_num(1.0)  # () 1.0 for a NaN or inf anywhere
            found = found.float()  # as the fused kernel reads it, also in a float64 run
            self._losses = []
            if any_process is not None:
                found = any_process(found)
            if self._skipped.device != found.device:
                counters = (self._skipped, self._streak, self._longest)
                self._skipped, self._streak, self._longest = (t.to(found.device) for t in counters)
            self._skipped.add_(found)
            self._streak.mul_(found).add_(found)  # one more in a row, or back to 0
            self._longest = torch.maximum(self._longest, self._streak)
        if skips_on_device(optimizer):
            optimizer.found_inf = found  # read by the fused kernel, as GradScaler hands it over
            optimizer.grad_scale = None  # no scaling unless `clip` runs in this step
            return None
        if not found.item():
            return False
        optimizer.zero_grad(set_to_none=True)
        return True

    def clip(self, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        """Scales the gradients to an L2 norm of at most `max_norm`, as `torch.nn.utils.clip_grad_norm_` does, with the
        norm that `check` took of the same gradients in this step (taken now if `check` did not run).

        A fused optimizer takes the factor as its `grad_scale`, the way GradScaler hands it over: its update divides
        each gradient by max(1, norm / max_norm) as it reads it, so clipping costs no pass over the gradients of its
        own (it leaves the divided gradients in `.grad`, as GradScaler's unscaling would). Other optimizers get
        torch's in-place scaling."""
        norm = self._grad_norm if self._grad_norm is not None else gradient_norm(_gradients(optimizer))
        self._grad_norm = None
        if skips_on_device(optimizer):
            optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0).float()  # torch's clip's epsilon
        else:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)

    def check_limit(self, step: int) -> None:
        """Raises when a run of skipped steps reached the limit (reads the device)."""
        if int(self._longest) >= self.limit:
            raise TrainingDiverged(
                f"training diverged: {self.limit} optimizer steps in a row had a non-finite loss or gradient (up to "
                f"step {step}); the weights and checkpoints are those of the last good step. Lower the learning rate, "
                "train in bf16 or fp32 rather than fp16, or raise model.max_nonfinite_steps"
            )


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer runs torch's fused kernel, which takes a `found_inf` flag and skips on the device."""
    return all(group.get("fused") for group in optimizer.param_groups)


def gradient_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all `grads` together, a () tensor, computed as `torch.nn.utils.get_total_norm` does (one fused
    kernel for the norm of each, then the norm of those), but in float32 for half-precision gradients too (a float16
    norm would overflow at 65504), and in float64 if there are float64 gradients."""
    if not grads:
        return torch.zeros(())
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0, dtype=dtype)))


def _gradients(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
