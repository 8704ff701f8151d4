"""The DyCON mean-teacher training iteration as a MONAI / PyTorch-Ignite engine."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from ignite.engine import Events
from ignite.metrics import Metric
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn, default_prepare_batch
from monai.transforms import Transform
from monai.utils import CommonKeys as Keys
from monai.utils import convert_to_tensor
from torch import nn
from torch.optim import Optimizer
from torch.profiler import record_function

from ..flags import as_bool
from ..losses.dycon import DyCONLoss
from ..precision import AMP_DTYPES, resolve_amp, resolve_amp_dtype, resolve_channels_last
from ..samplers import InfiniteSeededSampler, seed_iteration
from ..schedules import optimizer_step

__all__ = ["MeanTeacherTrainer", "PHASES"]

# the phases of one iteration, as torch.profiler ranges (record_function): benchmarks/train_step.py --profile
# reports the time per phase from them (the teacher EMA is custom.handlers.TeacherEMAHandler's "dycon.teacher_ema")
PHASES = ("dycon.student_forward", "dycon.teacher_forward", "dycon.losses", "dycon.backward", "dycon.optimizer_step")

logger = logging.getLogger(__name__)


def _stream_sampler(loader: Any) -> InfiniteSeededSampler | None:
    """The :class:`InfiniteSeededSampler` behind a DataLoader, if any."""
    for candidate in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        if isinstance(candidate, InfiniteSeededSampler):
            return candidate
    return None


def _plain(t: Any) -> torch.Tensor:
    """``t`` as a plain ``torch.Tensor`` (a MetaTensor's data without its metadata, no copy)."""
    return convert_to_tensor(t, track_meta=False)


def _batch_size(loader: Any) -> int:
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    if size is None:
        raise ValueError("cannot resume an InfiniteSeededSampler stream: the loader has no batch_size")
    return int(size)


class MeanTeacherTrainer(SupervisedTrainer):
    """Semi-supervised mean-teacher trainer running the DyCON objective (:class:`custom.losses.DyCONLoss`).

    The labeled loader is the engine's data (``image`` (L, C_in, *spatial), ``label`` (L, 1, *spatial)); the
    unlabeled loader (``image`` only, (U, C_in, *spatial); a ``label`` key is refused) is drawn from an iterator
    that restarts when exhausted. One iteration:

    1. student forward on ``cat(labeled, unlabeled)`` -> logits (L+U, C, *spatial) and embeddings (L+U, D, *grid);
    2. teacher forward (train mode, dropout on) under ``inference_mode`` (or ``no_grad``) on the same batch plus
       ``clamp(N(0, noise_std^2), -noise_clip, noise_clip)``;
    3. ``loss_function(...)`` -> the total and its parts; FeCL patch labels come from the ground truth of the
       labeled volumes and from the teacher for the unlabeled ones;
    4. a non-finite loss skips the optimizer step (counted in ``engine.state.skipped_steps``,
       ``engine.state.step_skipped`` is set: the teacher EMA is not updated and the schedules, functions of
       :func:`custom.schedules.optimizer_step`, do not advance, as in the released loop); otherwise backward,
       gradient clipping to ``grad_clip_norm`` and the optimizer step.

    Without an unlabeled loader it trains supervised only (no teacher forward). The teacher's EMA update, beta
    and eta are handlers (:class:`custom.handlers.TeacherEMAHandler`, :class:`custom.handlers.ScheduleHandler`)
    that set ``engine.state.beta`` / ``engine.state.eta`` from the iteration, so a resumed run continues them.

    ``engine.state.output`` holds ``image``, ``label``, ``pred`` (student logits of the labeled part), ``loss``
    and the parts ``supervised``, ``uncl``, ``fecl``, ``mse``, ``beta``, ``eta`` for StatsHandler / TensorBoard.

    Reproducibility: with ``seed`` set, torch's generators are re-seeded from ``(seed, iteration)`` at every
    iteration, and loaders built on :class:`custom.samplers.InfiniteSeededSampler` are positioned at the
    iteration the run (re)starts from, so a run resumed from a checkpoint draws what the uninterrupted run drew.

    Args:
        device: device to train on.
        max_epochs: number of epochs; training is iteration based: ``max_epochs * epoch_length`` iterations.
        train_data_loader: labeled loader.
        network: the student; needs ``forward_with_embeddings`` when FeCL is on.
        optimizer: optimizer of the student.
        loss_function: a :class:`DyCONLoss`.
        teacher: the teacher (same architecture as the student); required with an unlabeled loader.
        unlabeled_data_loader: unlabeled loader or None (supervised training).
        epoch_length: iterations per epoch (required for endless loaders).
        noise_std, noise_clip: teacher input noise.
        grad_clip_norm: max gradient norm (None: no clipping).
        seed: per-iteration seeding (None: off).
        amp: autocast the forward passes: true / false, or "auto" (bfloat16 where the device computes it natively:
            :mod:`custom.precision`); ``amp_dtype`` "float16" (with a GradScaler on CUDA), "bfloat16" or "auto".
        channels_last: convert the student's and teacher's weights (in place) and the inputs to
            ``torch.channels_last_3d`` (convolutions, pooling, upsampling and :class:`custom.networks.InstanceNorm3d`
            then keep that layout); "auto": with bfloat16 autocast on the CPU, where it pays
            (:func:`custom.precision.resolve_channels_last`).
        teacher_inference_mode: run the teacher under ``torch.inference_mode`` (no autograd bookkeeping at all;
            its outputs are cloned into normal tensors for the losses) instead of ``torch.no_grad``.
        compile: ``torch.compile`` the forward passes the trainer calls (student and teacher; the modules themselves
            are not changed, so checkpoints and the EMA see the plain networks): ``True`` (default backend,
            inductor) or a backend name. Pays on GPUs (benchmarks/README.md: 1.46x with bf16 on an H200); the first
            iterations pay the compilation (about a minute).
        other args: as :class:`monai.engines.SupervisedTrainer`.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: DyCONLoss,
        teacher: nn.Module | None = None,
        unlabeled_data_loader: Iterable | None = None,
        epoch_length: int | None = None,
        noise_std: float = 0.1,
        noise_clip: float = 0.2,
        grad_clip_norm: float | None = 1.0,
        seed: int | None = None,
        amp: bool | str = False,
        amp_dtype: str = "float16",
        channels_last: bool | str = False,
        teacher_inference_mode: bool = True,
        compile: bool | str = False,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        postprocessing: Transform | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        decollate: bool = False,
        optim_set_to_none: bool = True,
        to_kwargs: dict | None = None,
    ) -> None:
        if not isinstance(loss_function, DyCONLoss):
            raise TypeError(f"loss_function must be a custom.losses.DyCONLoss, got {type(loss_function).__name__}")
        if unlabeled_data_loader is not None and teacher is None:
            raise ValueError("a teacher network is required when an unlabeled loader is given")
        amp = resolve_amp(amp, device)
        amp_dtype = resolve_amp_dtype(amp_dtype, device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            postprocessing=postprocessing,
            key_train_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            train_handlers=train_handlers,
            amp=amp,
            decollate=decollate,
            optim_set_to_none=optim_set_to_none,
            to_kwargs=to_kwargs,
        )
        self.teacher = teacher
        self.unlabeled_data_loader = unlabeled_data_loader
        self._unlabeled_iter: Iterator | None = None
        self.noise_std = float(noise_std)
        self.noise_clip = float(noise_clip)
        self.grad_clip_norm = grad_clip_norm
        self.seed = seed
        self.amp_dtype = AMP_DTYPES[amp_dtype]
        self.channels_last = resolve_channels_last(channels_last, amp, amp_dtype, device)
        if self.channels_last:  # weights too: a 1-channel input alone does not make oneDNN pick the layout
            for net in (network, teacher):
                if isinstance(net, nn.parallel.DistributedDataParallel):  # its gradient buckets follow the layout
                    logger.warning("channels_last: convert the network before wrapping it in DDP; left as it is")
                elif net is not None:
                    net.to(memory_format=torch.channels_last_3d)  # in place: the optimizer keeps its parameters
        self.teacher_inference_mode = as_bool(teacher_inference_mode, "teacher_inference_mode")
        # True / False (also as the strings "true" / "false" of a command line) or a torch.compile backend name
        try:
            self.compile: bool | str = as_bool(compile, "compile")
        except ValueError:
            self.compile = str(compile)
        self._compiled: dict[tuple[int, bool], Callable] = {}
        self.state.skipped_steps = 0
        self.state_dict_user_keys.append("skipped_steps")
        if seed is not None:
            self.add_event_handler(Events.ITERATION_STARTED, self._seed_iteration)

    @property
    def semi_supervised(self) -> bool:
        """True when an unlabeled loader is attached (teacher forward, UnCL, FeCL)."""
        return self.unlabeled_data_loader is not None

    # ------------------------------------------------------------------ set-up
    def run(self) -> None:  # type: ignore[override]
        """Train; a GradScaler is used only for float16 autocast on CUDA."""
        use_scaler = self.amp and self.amp_dtype == torch.float16 and self.state.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        super(SupervisedTrainer.__mro__[1], self).run()  # Workflow.run (Trainer.run would make a cuda scaler)

    def _setup_engine(self) -> None:
        """Position seeded streams at the iteration this run starts from, then let Ignite create the iterator."""
        sampler = _stream_sampler(self.data_loader)
        if sampler is not None:
            sampler.set_start(self.state.iteration * _batch_size(self.data_loader))
        self._unlabeled_iter = None
        super()._setup_engine()

    def _seed_iteration(self, engine: MeanTeacherTrainer) -> None:
        seed_iteration(int(self.seed), engine.state.iteration)  # type: ignore[arg-type]

    def _next_unlabeled(self) -> dict[str, Any]:
        loader = self.unlabeled_data_loader
        # this runs inside the seeded iteration, and iter(DataLoader) draws a base seed from torch's global
        # generator: fetch on a fork of it, so dropout and teacher noise do not depend on whether the iterator was
        # (re)created here (e.g. on the first iteration after resuming from a checkpoint)
        with torch.random.fork_rng(devices=[]):
            if self._unlabeled_iter is None:
                sampler = _stream_sampler(loader)
                if sampler is not None:
                    sampler.set_start((self.state.iteration - 1) * _batch_size(loader))
                self._unlabeled_iter = iter(loader)  # type: ignore[arg-type]
            try:
                batch = next(self._unlabeled_iter)
            except StopIteration:  # a finite loader: start a new pass (re-shuffled by the loader)
                self._unlabeled_iter = iter(loader)  # type: ignore[arg-type]
                try:
                    batch = next(self._unlabeled_iter)
                except StopIteration:
                    raise RuntimeError("the unlabeled data loader yields no batch") from None
        if not isinstance(batch, dict) or Keys.IMAGE not in batch:
            raise ValueError("unlabeled batches must be dictionaries with an 'image' key")
        if Keys.LABEL in batch:
            raise ValueError(
                "unlabeled batches must not carry a 'label': the labels of unlabeled cases are never loaded "
                "(check the unlabeled datalist and transforms)"
            )
        names = getattr(batch[Keys.IMAGE], "meta", {}).get("filename_or_obj", [])
        self.state.unlabeled_files = [str(n) for n in ([names] if isinstance(names, str) else names)]  # cases drawn
        return batch

    # --------------------------------------------------------------- iteration
    def _forward(self, net: nn.Module, x: torch.Tensor, embeddings: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and (if asked) embeddings. A DistributedDataParallel network is always called through its own
        ``forward`` (wrap the network in :class:`custom.networks.EmbeddingForward` first: it returns both)."""
        if isinstance(net, nn.parallel.DistributedDataParallel):
            out = self._callable(net, net, False)(x)
            if isinstance(out, (tuple, list)):
                return out[0], (out[1] if embeddings else None)
            if embeddings:
                raise TypeError("FeCL under DDP needs DDP(custom.networks.EmbeddingForward(net))")
            return out, None
        if not embeddings:
            return self._callable(net, net, False)(x), None
        fwd = getattr(net, "forward_with_embeddings", None)
        if fwd is None:
            raise TypeError(
                f"{type(net).__name__} has no forward_with_embeddings: FeCL needs embeddings (use custom.networks.UNet3D "
                "or wrap a backbone with custom.networks.EmbeddingNet), or set fecl_weight to 0"
            )
        return self._callable(net, fwd, True)(x)

    def _callable(self, net: nn.Module, fn: Callable, embeddings: bool) -> Callable:
        """``fn`` itself, or (with ``compile``) its ``torch.compile``d version, built once per network and kind."""
        if not self.compile:
            return fn
        key = (id(net), embeddings)
        if key not in self._compiled:
            backend = self.compile if isinstance(self.compile, str) else "inductor"
            self._compiled[key] = torch.compile(fn, backend=backend)
        return self._compiled[key]

    def _iteration(self, engine: MeanTeacherTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x_lab, y_lab = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
        # plain tensors for the compute (MONAI's MetaTensor would wrap every operation of the networks and losses;
        # state.output keeps the loader's tensors with their metadata)
        x = _plain(x_lab)
        y = _plain(y_lab)
        if engine.semi_supervised:
            unl = engine._next_unlabeled()
            x_unl = unl[Keys.IMAGE].to(engine.state.device, non_blocking=engine.non_blocking)
            x = torch.cat([x, _plain(x_unl)], 0)
        if engine.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        loss_fn: DyCONLoss = engine.loss_function
        embeddings = engine.semi_supervised and loss_fn.needs_embeddings
        beta = float(getattr(engine.state, "beta", math.nan))
        eta = getattr(engine.state, "eta", None)
        if engine.semi_supervised and math.isnan(beta) and loss_fn.uncl_weight != 0:
            raise RuntimeError("engine.state.beta is not set: attach a custom.handlers.ScheduleHandler for 'beta'")

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        # running statistics (BatchNorm) of student and teacher before their forward passes (train mode updates them),
        # restored if this step turns out non-finite: a skipped step leaves both networks exactly as they were
        nets = [engine.network] + ([engine.teacher] if engine.semi_supervised else [])
        saved_buffers = [(b, b.detach().clone()) for n in nets for b in n.buffers()]
        autocast = torch.autocast(engine.state.device.type, dtype=engine.amp_dtype, enabled=bool(engine.amp))
        with autocast:
            with record_function(PHASES[0]):
                s_logits, s_emb = engine._forward(engine.network, x, embeddings)
            t_logits = t_emb = None
            if engine.semi_supervised:
                engine.teacher.train()  # type: ignore[union-attr]
                no_grad = torch.inference_mode if engine.teacher_inference_mode else torch.no_grad
                with record_function(PHASES[1]):
                    with no_grad():
                        noise = torch.randn_like(x).mul_(engine.noise_std).clamp_(-engine.noise_clip, engine.noise_clip)
                        t_logits, t_emb = engine._forward(engine.teacher, x + noise, embeddings)  # type: ignore[arg-type]
                    if engine.teacher_inference_mode:  # inference tensors cannot enter autograd: normal copies
                        t_logits = t_logits.clone()
                        t_emb = None if t_emb is None else t_emb.clone()
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        # the losses run in float32 (softmax / entropy / logsumexp are precision sensitive)
        with record_function(PHASES[2]):
            parts = loss_fn(
                s_logits.float(),
                y,
                None if t_logits is None else t_logits.float(),
                beta=beta if not math.isnan(beta) else 0.0,
                eta=None if eta is None else float(eta),
                student_embeddings=None if s_emb is None else s_emb.float(),
                teacher_embeddings=None if t_emb is None else t_emb.float(),
                step=optimizer_step(engine.state),
            )
        loss = parts["loss"]
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.state.step_skipped = not bool(torch.isfinite(loss))  # read by TeacherEMAHandler: no EMA update then
        if not engine.state.step_skipped:
            if engine.scaler is not None:
                engine.scaler.scale(loss).backward()
                engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
                if engine.grad_clip_norm is not None:
                    engine.scaler.unscale_(engine.optimizer)
                    torch.nn.utils.clip_grad_norm_(engine.network.parameters(), engine.grad_clip_norm)
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                with record_function(PHASES[3]):
                    loss.backward()
                engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
                with record_function(PHASES[4]):
                    if engine.grad_clip_norm is not None:
                        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), engine.grad_clip_norm)
                    engine.optimizer.step()
        else:
            engine.state.skipped_steps += 1
            engine.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for buf, before in saved_buffers:
                    buf.copy_(before)
            logger.warning(
                "iteration %d: non-finite loss (%s), optimizer step and running-statistics update skipped "
                "(%d skipped so far)",
                engine.state.iteration,
                {k: float(v.detach()) for k, v in parts.items()},
                engine.state.skipped_steps,
            )
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        n_lab = y.shape[0]
        engine.state.output = {
            Keys.IMAGE: x_lab,
            Keys.LABEL: y_lab,
            Keys.PRED: s_logits[:n_lab].detach(),
            Keys.LOSS: loss.detach(),
            **{k: v for k, v in parts.items() if k != "loss"},
            "beta": torch.tensor(beta if not math.isnan(beta) else 0.0),
            "eta": torch.tensor(loss_fn.eta if eta is None else float(eta)),
        }
        return engine.state.output
