"""The LightningModule that trains a CaptioningModel: cross-entropy (XE) with label smoothing, then self-critical
sequence training (SCST, Rennie et al., 2017) on CIDEr-D, started from an XE checkpoint with `init_from`.

AdamW with parameter groups (a gentler learning rate for a pretrained encoder, no weight decay on biases, norms and
embeddings), linear warm-up and cosine decay. Validation, test and predict decode greedily or with beam search
(`eval_beam_size`); their captions are gathered, scored and written by the module's `Evaluation` (`evaluation`).
"""

from __future__ import annotations

import math
import os
import time
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import rank_zero_warn

from captioning.checkpoint import checkpoint_metadata, load_checkpoint, missing_entries
from captioning.data.transforms import data_config
from captioning.decoding import DecodeSpec
from captioning.errors import CheckpointError, TrainingDiverged, UserError, UserNotice
from captioning.metrics.scorer import metric_families
from captioning.model.captioner import CaptioningModel, ModelConfig
from captioning.model.generation import decode
from captioning.seeds import SEED_VARIABLE, default_seed, derived_seed, seed_generators
from captioning.text.packing import PackedRows
from captioning.text.tokenizer import CaptionTokenizer
from captioning.training import scst
from captioning.training.checkpoint_data import check_data_for_checkpoint
from captioning.training.distributed import share_from_first
from captioning.training.ema import WeightAverage
from captioning.training.evaluation import Evaluation
from captioning.training.nonfinite import NonFiniteGuard
from captioning.training.optim import apply_lr_scales, frozen_encoder_factor, parameter_groups, use_fused_kernel
from captioning.training.progress import showing_logged_metrics
from captioning.training.schedule import build_schedule, describe, scaled_lr


class CaptioningModule(LightningModule):
    """Trains the captioning model; the model itself is built once the tokenizer is known (`configure_model`).

    Args:
        encoder: timm model name of the image encoder.
        pretrained: load the encoder's pretrained timm weights.
        freeze_encoder: keep the encoder's weights fixed. None: as the `init_from` checkpoint was trained (not frozen
            for a new model); true after an unfrozen one, e.g. for SCST on cached encoder tokens (data.feature_cache).
        image_size: square input size in pixels, None for the encoder's default.
        encoder_output_stride: input pixels per memory token of a CNN encoder, e.g. 16 instead of its 32: timm
            dilates the last stage instead of striding it (same weights, 4x the memory tokens, more compute).
            None: the encoder's own. Transformers have none.
        dim: decoder width D.
        depth: number of decoder blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of D.
        max_length: caption length limit in tokens, end token included.
        dropout: dropout in the decoder.
        memory_positions: how the memory tokens carry their place on the encoder's grid: "sincos" (fixed 2D
            sine-cosine), "rowcol" (a learned row and a learned column embedding, added) or "learned" (a learned
            vector per token, the layout of checkpoints before this option).
        memory_layers: Transformer encoder blocks of self-attention over the memory tokens before the decoder reads
            them, so that each token learns where the others are ("above", "left of") and what else is in the image.
        focus_offsets: each decoder block adds where its cross-attention heads looked, as offsets from where the
            block before looked, so that a word can compare two places ("above", "left of"); see `model.focus`.
        head_offsets: with focus_offsets, each block also adds where each of its heads looked relative to each other
            head: "the shape named" against "all the shapes" gives "above" or "below" in one block.
        memory_sink: a learned memory token in front of the grid that every attention over the memory may attend to
            instead: softmax attention averages what it finds, and the share left to the sink tells how much was
            found. With `memory_layers`, each token can so learn how many tokens look like it: "two" or "five red
            circles" (see the README's hard-shapes measurements).
        label_smoothing: cross-entropy label smoothing.
        init_from: start from this checkpoint's weights and tokenizer, with a fresh optimizer and schedule (e.g.
            SCST after XE); its architecture replaces the model settings above. `--ckpt_path` resumes a run instead,
            from that checkpoint alone: this one may be gone by then.
        optimizer: optimizer factory, given the parameter groups; its learning rate is the decoder's.
        encoder_lr_scale: the encoder's learning rate as a share of the optimizer's.
        layer_decay: layer-wise learning-rate decay for the encoder trunk (e.g. 0.75): each layer below the top gets
            this factor once more. None: one rate for the whole encoder.
        encoder_frozen_epochs: the encoder's learning rate is 0 for this many epochs (the decoder settles first).
        warmup_steps: steps of linear learning-rate warm-up (older configs); `warmup_epochs` replaces it when set.
        warmup_epochs: linear learning-rate warm-up in epochs (e.g. 1.0, or 0.25): the same share of the run on any
            number of GPUs, where a warm-up in steps covers 8 times as many epochs on 8 GPUs.
        lr_scaling: how the optimizer's learning rate follows the global batch (images per optimizer step, over all
            processes and accumulated batches): "linear", "sqrt" (the usual rule for Adam) or "none".
        reference_batch_size: the global batch at which the optimizer's learning rate was tuned (for `lr_scaling`).
        min_lr_ratio: the cosine decay ends at this fraction of the peak learning rate.
        scst: train with self-critical sequence training on CIDEr-D instead of cross-entropy.
        scst_samples: K captions sampled per image in each SCST step.
        scst_baseline: "mean": the mean reward of the image's other K-1 samples; "greedy": the greedy caption's.
        scst_xe_weight: in SCST, add this weight x the cross-entropy of the batch's reference captions (a mixed
            objective, as Paulus et al., 2018): CIDEr-D's document frequencies make words that every reference has,
            such as counts, cheap to get wrong, and the references keep them right. 0: the policy gradient alone.
        eval_beam_size: beams for validation, test and predict captions (1: greedy decoding).
        eval_length_penalty: alpha of the beam search ranking log P / length^alpha.
        val_metrics: metric families scored during validation (CIDEr-D drives checkpointing).
        test_metrics: metric families scored at test time; None: all of them (SPICE only where its jars are, METEOR
            and SPICE only for English), e.g. ["BLEU", "CIDEr"] to leave out the Java metrics in a quick check.
        compile: torch.compile the encoder and the decoder blocks (worth it on GPU; on CPU it needs a C++ compiler).
        ema_decay: keep an exponential moving average of the weights with this decay (e.g. 0.995), and validate,
            test, checkpoint and caption with it; None: the trained weights themselves.
        max_nonfinite_steps: stop the run after this many optimizer steps in a row with a non-finite (NaN or inf)
            loss or gradient; each such step is skipped (no weight update) and counted in train/nonfinite_steps.
    """

    def __init__(
        self,
        encoder: str = "test_convnext",
        pretrained: bool = False,
        freeze_encoder: bool | None = None,
        image_size: int | None = None,
        encoder_output_stride: int | None = None,
        dim: int = 256,
        depth: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_length: int = 24,
        dropout: float = 0.1,
        memory_positions: Literal["sincos", "rowcol", "learned"] = "sincos",
        memory_layers: int = 0,
        focus_offsets: bool = True,
        head_offsets: bool = True,
        memory_sink: bool = False,
        label_smoothing: float = 0.1,
        init_from: str | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        encoder_lr_scale: float = 1.0,
        layer_decay: float | None = None,
        encoder_frozen_epochs: int = 0,
        warmup_steps: int = 200,
        warmup_epochs: float | None = None,
        lr_scaling: Literal["none", "linear", "sqrt"] = "none",
        reference_batch_size: int | None = None,
        min_lr_ratio: float = 0.05,
        scst: bool = False,
        scst_samples: int = 5,
        scst_baseline: Literal["mean", "greedy"] = "mean",
        scst_xe_weight: float = 0.0,
        eval_beam_size: int = 1,
        eval_length_penalty: float = 1.0,
        val_metrics: tuple[str, ...] = ("BLEU", "CIDEr"),
        test_metrics: tuple[str, ...] | None = None,
        ema_decay: float | None = None,
        max_nonfinite_steps: int = 20,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if scst and scst_baseline == "mean" and scst_samples < 2:
            raise UserError(f"model.scst_samples must be at least 2 with the 'mean' baseline, got {scst_samples}")
        for field, metrics in (("val_metrics", val_metrics), ("test_metrics", test_metrics)):
            try:
                metric_families(metrics)
            except UserError as error:
                raise UserError(f"model.{field}: {error}") from None
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.model: CaptioningModel | None = None
        self.ema: WeightAverage | None = None
        self.tokenizer: CaptionTokenizer | None = None
        self.evaluation = Evaluation(self)  # validation, test and predict: gathering, scoring, results files
        self._reward: scst.CiderReward | None = None
        self._reward_seconds = 0.0
        self._step_started = 0.0
        self.skipped_images = 0
        self.skipped_batches = 0  # batches without a readable image, trained on a zero-weight placeholder
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        self._guard_read_at = -1  # the step at which the guard's counters were last read
        self._training_data: dict | None = None  # kept in checkpoints (see `CaptionDataModule.training_data`)
        # The checkpoint that the trainer will restore (`--ckpt_path`, set by the CLI): the model is built from it, so
        # a resumed SCST run no longer needs its `init_from` checkpoint.
        self.restore_from: str | None = None

    # ----------------------------------------------------------------------------------------------- set-up
    def configure_model(self) -> None:
        """Builds the model: from `restore_from` (its weights follow in `on_load_checkpoint`, which Lightning calls
        after this hook), else from `init_from`, else from the hyper-parameters and the datamodule's tokenizer."""
        if self.model is not None:
            return
        hp = self.hparams
        if hp.scst and not hp.init_from and self.trainer.state.fn == "fit":
            rank_zero_warn(
                "model.scst without model.init_from: self-critical training starts from random weights",
                category=UserNotice,
            )
        path = self.restore_from or hp.init_from
        if path:
            config, tokenizer, state = load_checkpoint(path, mmap=True)
            values = {**config.to_dict(), "pretrained": False}
            if not self.restore_from and hp.freeze_encoder is not None:  # a choice of this run, not of the architecture
                values["freeze_encoder"] = hp.freeze_encoder
            self._build(ModelConfig.from_dict(values), tokenizer)
            check_data_for_checkpoint(path, tokenizer, self.trainer, hp.max_length, resuming=bool(self.restore_from))
            if not self.restore_from:
                self.model.load_state_dict(state)
            self._start_average()  # from the weights it starts from
            return
        datamodule = self.trainer.datamodule
        if datamodule is not None and datamodule.tokenizer is not None:
            architecture = ("encoder", "pretrained", "image_size", "encoder_output_stride", "dim", "depth")
            architecture += ("num_heads", "mlp_ratio", "max_length", "dropout", "memory_positions")
            architecture += ("memory_layers", "focus_offsets", "head_offsets", "memory_sink")
            settings = {k: hp[k] for k in architecture}
            config = ModelConfig(
                vocab_size=datamodule.tokenizer.vocab_size, freeze_encoder=bool(hp.freeze_encoder), **settings
            )
            self._build(config, datamodule.tokenizer)
            self._start_average()

    @property
    def eval_model(self) -> CaptioningModel:
        """The weights that validation, test and predict use: the moving average when there is one."""
        return self.ema.model if self.ema is not None else self.model

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        problem = missing_entries(checkpoint)  # our checkpoint IO checks first, naming the file
        if problem:
            raise CheckpointError(problem)
        entry = checkpoint["captioning"]
        config = ModelConfig.from_dict({**entry["model_config"], "pretrained": False})  # its weights follow
        if self.model is None or self.model.config != config or self.tokenizer.to_json() != entry["tokenizer"]:
            self._build(config, CaptionTokenizer.from_json(entry["tokenizer"]))
            self._start_average()  # its saved state follows
        if "nonfinite" in checkpoint:
            self.nonfinite.load_state_dict(checkpoint["nonfinite"])
        state = checkpoint["state_dict"]
        has_average = any(key.startswith("ema.") for key in state)
        if has_average and self.ema is None:  # evaluating without an average of its own: the average is the model
            averaged = {k.removeprefix("ema.model."): v for k, v in state.items() if k.startswith("ema.model.")}
            checkpoint["state_dict"] = {f"model.{k}": v for k, v in averaged.items()}
        elif self.ema is not None and not has_average:  # e.g. an EMA run resumed from a checkpoint without one
            trained = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
            state.update({f"ema.model.{k}": v for k, v in trained.items()})
            state["ema.updates"] = self.ema.updates.clone()

    def _feature_cache_wanted(self) -> bool:
        datamodule = self.trainer.datamodule
        return self.trainer.state.fn == "fit" and bool(getattr(datamodule, "hparams", {}).get("feature_cache"))

    def _use_feature_cache(self) -> None:
        """Hands the frozen encoder to the datamodule, which computes its tokens of the training images once and
        serves them instead of the images: on the first process while the others wait. Called from
        configure_optimizers: after a resumed run's weights are loaded (it trains on its own encoder's tokens) and
        before the training loader is built. Checkpoints still hold the whole model, encoder included."""
        if not self._feature_cache_wanted():
            return
        if not self.model.config.freeze_encoder:
            raise UserError("data.feature_cache needs model.freeze_encoder true: a trained encoder's tokens change")
        strategy = self.trainer.strategy
        if strategy.restore_checkpoint_after_setup:  # a resumed run's encoder would arrive after its tokens
            raise UserError(f"data.feature_cache does not work with {type(strategy).__name__}: use ddp or one device")
        datamodule, keys = self.trainer.datamodule, None
        if strategy.is_global_zero:
            encoder = self.model.encoder.to(strategy.root_device)
            keys = datamodule.fill_feature_cache(encoder, self.trainer.precision_plugin.forward_context)
        keys = share_from_first(keys)  # the others wait here (for as long as it takes), then read that cache
        datamodule.open_feature_cache(keys)

    def _build(self, config: ModelConfig, tokenizer: CaptionTokenizer) -> None:
        self.model, self.tokenizer = CaptioningModel(config), tokenizer
        if self.hparams.compile:
            self.model.compile_parts()
        datamodule = self.trainer.datamodule
        if datamodule is not None:
            datamodule.tokenizer = tokenizer  # training captions must use the model's vocabulary
            if "max_length" in getattr(datamodule, "hparams", {}):  # and fit its position table
                datamodule.hparams.max_length = config.max_length

    def _start_average(self) -> None:
        """Starts the moving average of the weights (model.ema_decay) from the model's current ones, when fitting;
        evaluation reads a checkpoint's average as the model instead (`on_load_checkpoint`)."""
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        self.ema = WeightAverage(self.model, self.hparams.ema_decay) if self.hparams.ema_decay and fitting else None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Refused before the file is written: a diverged model never replaces the last good checkpoint.
        self.nonfinite.check_limit(self.global_step)
        checkpoint["nonfinite"] = self.nonfinite.state_dict()  # a resumed run keeps its counts and its run in a row
        weights = checkpoint["state_dict"].items()
        broken = next((k for k, v in weights if v.is_floating_point() and not v.isfinite().all()), None)
        if broken is not None:
            raise TrainingDiverged(
                f"step {self.global_step}: the weights hold non-finite values ({broken}); no checkpoint is saved, "
                "so the last one on disk stays the last good one"
            )
        metadata = checkpoint_metadata(self.model.config, self.tokenizer, self._training_data, self._eval_spec())
        checkpoint["captioning"] = metadata  # the spec: `caption`, `serve` and exports decode as validation did

    def configure_callbacks(self) -> list:
        """Lightning's bar (tqdm, or rich where it is installed) is replaced by the same one showing the logged
        training metrics (see `progress`)."""
        bars = [c for c in self.trainer.callbacks if type(c) in (TQDMProgressBar, RichProgressBar)]
        return [showing_logged_metrics(bars[0])] if bars else []

    def _require_model(self) -> None:
        if self.model is None:
            raise UserError("no model to evaluate: pass --ckpt_path with a checkpoint written by `captioning fit`")

    on_validation_start = on_test_start = on_predict_start = _require_model

    def configure_optimizers(self):
        self._use_feature_cache()
        hp = self.hparams
        groups = parameter_groups(self.model, hp.encoder_lr_scale, hp.layer_decay)
        optimizer = self.optimizer_factory(groups)
        use_fused_kernel(optimizer)
        lr, global_batch = optimizer.defaults["lr"], self._global_batch()
        rule, reference = hp.get("lr_scaling", "none"), hp.get("reference_batch_size")
        optimizer.defaults["lr"] = scaled_lr(lr, global_batch, reference, rule)
        apply_lr_scales(optimizer)
        total = max(1, self.trainer.estimated_stepping_batches)  # sets up the training data, so its length is known
        frozen_steps = hp.encoder_frozen_epochs * self._steps_per_epoch() if hp.encoder_frozen_epochs else 0
        schedule = build_schedule(
            hp.warmup_steps, hp.get("warmup_epochs"), self._steps_per_epoch, total, hp.min_lr_ratio
        )
        if self.trainer.is_global_zero:
            print(describe(lr, optimizer.defaults["lr"], global_batch, rule, reference, schedule), flush=True)
        if schedule.warmup >= schedule.total:
            setting = "model.warmup_epochs" if hp.get("warmup_epochs") is not None else "model.warmup_steps"
            rank_zero_warn(
                f"{setting}: the warm-up ({schedule.warmup:g} steps) is as long as the whole run ({schedule.total} "
                "optimizer steps), so the learning rate never reaches its peak; a small dataset needs a shorter one",
                category=UserNotice,
            )

        groups = optimizer.param_groups
        lambdas = [lambda step, g=g: schedule(step) * frozen_encoder_factor(g, step, frozen_steps) for g in groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _global_batch(self) -> int:
        """Images per optimizer step over all processes: the data's batch size x processes x accumulated batches."""
        batch_size = getattr(self.trainer.datamodule, "hparams", {}).get("batch_size", 0)
        return batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def _steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch, as Lightning counts them (not total / max_epochs: max_steps may cut a run)."""
        batches = self.trainer.num_training_batches
        if not math.isfinite(batches):
            raise UserError("model.encoder_frozen_epochs needs training data of known length (epochs to count)")
        return math.ceil(batches / self.trainer.accumulate_grad_batches)

    # --------------------------------------------------------------------------------------------- training
    def batch_memory(self, batch: dict, model: CaptioningModel | None = None) -> torch.Tensor:
        """The memory (B, M, D) of a batch under `model` (default: the trained one): from its cached encoder tokens
        (B, M, C_enc) when it has them, else from its images (B, 3, H, W)."""
        model = model or self.model
        if "features" in batch:
            return model.project(batch["features"].to(model.projection[0].weight.dtype))  # stored as float16
        return model.encode(batch["images"])

    def training_step(self, batch: dict, batch_idx: int):
        self.skipped_images += batch["skipped"]
        if not len(batch["image_ids"]):  # every image of the batch was unreadable
            return self._placeholder_step()
        if self.hparams.scst:
            return self._self_critical_step(batch)
        loss = self._reference_loss(batch, self.batch_memory(batch))
        # Not on the progress bar: Lightning reads its values back at every step (the bars show the logged ones).
        self.log("train/loss", loss, batch_size=len(batch["image_ids"]))
        return loss

    def _reference_loss(self, batch: dict, memory: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of the batch's reference captions, packed one image of `memory` (B, M, D)
        per row (see `packing`)."""
        logits = self.model.decoder(batch["inputs"], memory, packing=PackedRows.of(batch))  # (B, T, V)
        # Fixed shapes, no boolean indexing (a host sync): padding targets count in neither the sum nor the mean.
        return F.cross_entropy(
            logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=self.tokenizer.pad_id,
            label_smoothing=self.hparams.label_smoothing,
        )  # fmt: skip

    def _placeholder_step(self) -> torch.Tensor:
        """A zero-weight loss on a blank image and an empty caption, for a batch without a readable image.

        Every process must run the same forward, backward and gradient all-reduce (DDP); returning None instead
        would stop a distributed run. The gradients are all zero, so the weights learn nothing from it.
        """
        self.skipped_batches += 1
        tok, config = self.tokenizer, self.model.config
        images = torch.zeros(1, *data_config(config.encoder, config.image_size)["input_size"], device=self.device)
        tokens = torch.tensor([[tok.bos_id, tok.eos_id]], device=self.device)  # (1, 2): an empty caption
        logits = self.model(images, tokens[:, :-1])  # (1, 1, V)
        return logits.float().sum() * 0.0

    def _self_critical_step(self, batch: dict):
        """Samples K captions per image, rewards each with CIDEr-D, and returns the policy-gradient loss."""
        K, tok, image_ids = self.hparams.scst_samples, self.tokenizer, batch["image_ids"]
        memory = self.batch_memory(batch)  # (B, M, D)
        never = self._never_tokens()
        decoder = self.model.decoder
        # One policy (REINFORCE): samples come from the decoder without dropout, and so do their log-probabilities below
        decoder.eval()
        spec = self._eval_spec()  # evaluation's rules: the captions that are sampled are those that are scored
        samples = decode(decoder, memory.detach(), spec.with_options(sample=True, num_samples=K), tok)
        greedy = None
        if self.hparams.scst_baseline == "greedy":
            greedy = decode(decoder, memory.detach(), spec.with_options(beam_size=1), tok)

        tokens = samples.tokens  # (B*K, L) after the start token, padded after the end token
        mask, ended = scst.caption_mask(tokens, tok.eos_id)  # (B*K, L), (B*K,)
        started = time.perf_counter()
        rewards = self._reward(tokens, mask, [i for i in image_ids for _ in range(K)])
        rewards = torch.where(ended, rewards, 0.0)  # a caption cut at max_length is not a caption: no reward
        if greedy is None:
            baselines = scst.leave_one_out_baseline(rewards, K)
        else:
            greedy_mask, greedy_ended = scst.caption_mask(greedy.tokens, tok.eos_id)
            greedy_rewards = torch.where(greedy_ended, self._reward(greedy.tokens, greedy_mask, image_ids), 0.0)
            baselines = greedy_rewards.repeat_interleave(K)
        self._reward_seconds += time.perf_counter() - started

        inputs = torch.cat([torch.full_like(tokens[:, :1], tok.bos_id), tokens[:, :-1]], dim=1)  # (B*K, L)
        logits = decoder(inputs, memory)  # (B*K, L, V): the K samples of an image share its memory
        decoder.train()  # dropout off until here: the gradient pass scores the policy that sampled
        banned = torch.tensor(never, device=logits.device)
        logits = logits.index_fill(-1, banned, float("-inf"))  # the policy that was sampled never writes these
        log_probs, entropy = scst.sequence_log_probs(logits, tokens, mask)
        loss = scst.self_critical_loss(log_probs, rewards, baselines)
        B = len(image_ids)
        if self.hparams.scst_xe_weight:
            reference_loss = self._reference_loss(batch, memory)
            self.log("scst/reference_loss", reference_loss, batch_size=B)
            loss = loss + self.hparams.scst_xe_weight * reference_loss
        self.log("train/loss", loss, batch_size=B)
        self.log("scst/reward", rewards.mean(), batch_size=B)
        self.log("scst/baseline", baselines.mean(), batch_size=B)
        self.log("scst/advantage_std", (rewards - baselines).std(), batch_size=B)
        self.log("scst/sample_length", mask.sum(dim=1).float().mean(), batch_size=B)
        self.log("scst/ended", ended.float().mean(), batch_size=B)
        self.log("scst/entropy", entropy, batch_size=B)
        return loss

    def on_train_start(self) -> None:
        datamodule = self.trainer.datamodule
        self._training_data = datamodule.training_data() if hasattr(datamodule, "training_data") else None
        if self.hparams.scst:  # the training references, tokenized and counted once
            references = self.trainer.datamodule.references("train")
            self._reward = scst.CiderReward(references, self.tokenizer)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._step_started, self._reward_seconds = time.perf_counter(), 0.0
        if SEED_VARIABLE in os.environ:  # dropout and SCST's samples drawn as in an uninterrupted run (see seeds)
            seed_generators(derived_seed(default_seed(), self.current_epoch, batch_idx, self.global_rank), self.device)

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self.hparams.scst:  # the reward must stay a small share of the step: measured, not assumed
            share = self._reward_seconds / max(1e-9, time.perf_counter() - self._step_started)
            self.log("scst/reward_time_share", share, batch_size=len(batch["image_ids"]))
        if self.global_step % self.trainer.log_every_n_steps == 0 and self.global_step != self._guard_read_at:
            self._report_nonfinite()  # the guard's counters are read at logging steps only

    def on_before_zero_grad(self, optimizer) -> None:
        if self.ema is not None:  # after each optimizer step (Lightning calls this once the step is taken)
            self.ema.update(self.model)

    def on_train_epoch_end(self) -> None:
        counts = torch.tensor([float(self.skipped_images), float(self.skipped_batches)], device=self.device)
        skipped, empty = self.trainer.strategy.reduce(counts, reduce_op="sum").tolist()  # all processes together
        if skipped:
            rank_zero_warn(
                f"skipped {int(skipped)} unreadable training images this epoch (named above)", category=UserNotice
            )
        if empty:
            rank_zero_warn(
                f"{int(empty)} training batches had no readable image; each took a zero-weight step",
                category=UserNotice,
            )
        self.log("train/skipped_images", skipped)
        self.log("train/skipped_batches", empty)
        self.skipped_images = self.skipped_batches = 0
        self._report_nonfinite()

    # ------------------------------------------------------------------------------------- non-finite guard
    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        self.nonfinite.observe_loss(loss)
        super().backward(loss, *args, **kwargs)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Lightning calls it after mixed precision unscales the gradients and before it clips them (with the norm the
        guard takes here: `configure_gradient_clipping`). A fused optimizer skips a non-finite step on the device; the
        guard's counters are read at logging steps (`_report_nonfinite`)."""
        scaled = self._grad_scaler() is not None  # "16-mixed": the scaler skips the steps that overflow
        if self.nonfinite.check(optimizer, self._on_any_process, scaled):  # only an unfused optimizer gets a verdict
            self._report_nonfinite()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clipping by norm reuses the norm that the guard took of the same gradients just before, and a fused
        optimizer applies the factor in its update (see `NonFiniteGuard.clip`): one pass over the gradients instead
        of three, wherever Lightning would clip with torch's `clip_grad_norm_` over every parameter."""
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and self._clips_whole_gradients(optimizer):
            self.nonfinite.clip(optimizer, gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _clips_whole_gradients(self, optimizer) -> bool:
        """Whether Lightning's clipping by norm is torch's `clip_grad_norm_` over every parameter's unscaled gradient:
        the plain, half and mixed precision plugins, but not FSDP's sharded gradients, nor DeepSpeed's own clipping, nor
        a GradScaler that leaves the unscaling to a fused optimizer's step (Lightning refuses to clip that)."""
        plugin = self.trainer.precision_plugin
        kind = type(plugin)
        plain = (
            kind.clip_grad_by_norm is Precision.clip_grad_by_norm
            and kind.main_params is Precision.main_params
            and kind.clip_gradients in (Precision.clip_gradients, MixedPrecision.clip_gradients)
        )
        scaler = self._grad_scaler()
        return plain and (scaler is None or not getattr(optimizer, "_step_supports_amp_scaling", False))

    def _grad_scaler(self) -> torch.amp.GradScaler | None:
        """The precision plugin's GradScaler (float16 mixed precision), else None."""
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def _report_nonfinite(self) -> None:
        """Logs and warns about the steps skipped since the last report, and stops a run that hit the limit."""
        guard, self._guard_read_at = self.nonfinite, self.global_step
        new = guard.newly_skipped()
        if new:
            rank_zero_warn(
                f"step {self.global_step}: {new} step(s) with a non-finite loss or gradient skipped since the last "
                f"report ({guard.in_a_row} in a row now, {guard.skipped} in this run; the run stops at {guard.limit} "
                "in a row)",
                category=UserNotice,
            )
        if guard.skipped:
            self.log("train/nonfinite_steps", float(guard.skipped))
        guard.check_limit(self.global_step)

    def _on_any_process(self, flag: torch.Tensor) -> torch.Tensor:
        """Max of a flag over all processes: an all-reduce that the device queues, without Lightning's barrier."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag

    # ---------------------------------------------------------------------------------- validation and test
    def _eval_spec(self) -> DecodeSpec:
        """How validation, test and predict decode; a checkpoint's captions default to it (see `default_spec`)."""
        return DecodeSpec.beams(self.hparams.eval_beam_size, length_penalty=self.hparams.eval_length_penalty)

    def _never_tokens(self) -> list[int]:
        """Tokens no caption may contain (the spec's rule), which the SCST loss bans as its sampler did."""
        return self._eval_spec().never(self.tokenizer)

    @torch.no_grad()
    def caption_batch(self, batch: dict) -> dict:
        """Captions of a batch by image id (`eval_model`'s): greedy, or beam search with `eval_beam_size` beams."""
        if not len(batch["image_ids"]):
            return {}
        return self.caption_memory(self.eval_model, self.batch_memory(batch, self.eval_model), batch["image_ids"])

    def caption_memory(self, model: CaptioningModel, memory: torch.Tensor, image_ids: list) -> dict:
        """Captions by image id of a batch's memory (B, M, D) under `model`, decoded as `_eval_spec` says."""
        generated = decode(model.decoder, memory, self._eval_spec(), self.tokenizer)
        return dict(zip(image_ids, self.tokenizer.decode_batch(generated.tokens), strict=True))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation.caption(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation.caption(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation.caption(batch)

    def on_validation_epoch_end(self) -> None:
        self.evaluation.end_validation()

    def on_test_epoch_end(self) -> None:
        self.evaluation.end_test()

    def on_predict_epoch_end(self) -> None:
        self.evaluation.end_predict()

    @property
    def test_counts(self) -> dict[str, int]:
        """Images scored and images in the split, of the last test (the CLI fails a test that missed some)."""
        return self.evaluation.test_counts
