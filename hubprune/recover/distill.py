"""Distillation after pruning: the pruned member learns to predict what the base model predicts.

Objective, per predicted position t of a training sequence: the forward KL divergence from the base's
next-token distribution to the member's,

    KL(p_base(. | x_<t) || p_member(. | x_<t)) = sum_v p_base(v) (log p_base(v) - log p_member(v)),

averaged over positions (knowledge distillation, Hinton et al. 2015, at temperature 1; the objective NVIDIA's
Minitron recovers pruned models with). Only the MLP tensors of every layer are trained (gate, up, down): they are
what pruning changed, and the member stays a plain checkpoint of the same tensors, names and shapes, written
back in the source dtype.

Data, disjoint from every evaluation text: by default sequences the base model samples itself (temperature 1,
no top-k or top-p, from the tokenizer's start token; self-data distillation), so no text of any benchmark is
read; or a UTF-8 text the user gives (distill_data.py). One sequence in 8 is held out: the KL on it, before and
after, says whether the member learned the model or the sequences.

The loop is written to accelerate's API (prepare, accumulate, backward, get_state_dict, save_state), so one loop
runs in hubprune's own process (on the CPU, or one GPU with `--device cuda`) and in the processes a launcher
starts (launch.py: `accelerate launch` with its config, or torchrun), where each process takes its share
of every step's sequences and the gradients are averaged across them: the same global batch, the same steps. The
state (weights, optimizer, schedule) is saved with accelerate every SAVE_EVERY_SECONDS, so a stopped run resumes.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hubprune.device import resolve_device
from hubprune.errors import CriterionError, LaunchError
from hubprune.fields import setting
from hubprune.files import write_json_atomic
from hubprune.progress import Progress, ProgressCallback, report

if TYPE_CHECKING:
    from hubprune.recover.settings import RecoverySettings
from hubprune.model_inputs import loaded_modules
from hubprune.recover.distill_data import DistillData, Teacher, sha256_hex
from hubprune.texts import read_text

DEFAULT_TOKENS = 32_768
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_BATCH = 8
DEFAULT_SEQ_LEN = 256
WARMUP_FRACTION = 0.05
SAVE_EVERY_SECONDS = 300.0  # a saved state holds the whole model and the optimizer's moments: not too often
# Logits are the largest tensors of a step (sequences x positions x vocabulary, for the base and the member, and
# the member's gradient): a step runs in micro-batches of at most this many logits each.
LOGITS_PER_MICRO_BATCH = 2**27
OBJECTIVE = "KL(p_base || p_member) of the next-token distributions, mean over predicted positions (temperature 1)"
TRAINED = "the gate, up and down projections of every layer (the MLP tensors pruning changed); nothing else"
STATE = "accelerate"
PROGRESS_FILE = "hubprune-progress.json"


@dataclass(frozen=True)
class DistillSettings:
    tokens: int = setting(
        DEFAULT_TOKENS,
        f"Distillation budget in training tokens ({DEFAULT_BATCH} sequences of {DEFAULT_SEQ_LEN} tokens a step).",
        flag="--distill-tokens",
        minimum=1,
    )
    steps: int | None = setting(
        None, "Stop distilling after N steps, if that comes before the token budget.", flag="--distill-steps", minimum=1
    )
    text: Path | None = setting(
        None,
        "Distil on this UTF-8 text (default: text the base model generates itself, disjoint from every benchmark).",
        flag="--distill-text",
        parse="distill-file",
    )
    learning_rate: float = setting(
        DEFAULT_LEARNING_RATE, "Distillation learning rate (AdamW, linear warm-up then decay).", flag="--distill-lr"
    )
    batch: int = DEFAULT_BATCH  # sequences per optimizer step
    seq_len: int = DEFAULT_SEQ_LEN
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("tokens", "batch", "seq_len"):
            if getattr(self, name) < 1:
                raise CriterionError(f"distillation {name} must be at least 1, not {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise CriterionError(f"distillation steps must be at least 1, not {self.steps}: leave it out for no cap")
        if self.seq_len < 2:
            raise CriterionError("distillation sequences need at least 2 tokens: raise the sequence length")
        if not self.learning_rate > 0:
            raise CriterionError(f"the distillation learning rate must be positive, not {self.learning_rate}")

    @property
    def planned_steps(self) -> int:
        """Optimizer steps: the token budget in whole batches (at least one), capped by `steps`."""
        by_tokens = max(1, self.tokens // (self.batch * self.seq_len))
        return min(by_tokens, self.steps) if self.steps else by_tokens

    def identity(self) -> dict[str, Any]:
        """What makes a distillation: every setting, the text by name and sha256 (never its location)."""
        found = asdict(self)
        if self.text is not None:
            text = read_text(self.text, "distillation text")
            found["text"] = {"source": Path(self.text).name, "sha256": sha256_hex(text.encode("utf-8"))}
        return found


# --- the objective ---------------------------------------------------------------------------------------------


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Sum over positions of KL(p_teacher || p_student), from logits of the same shape (..., vocabulary)."""
    log_student = student_logits.float().log_softmax(-1)
    log_teacher = teacher_logits.float().log_softmax(-1)
    return torch.nn.functional.kl_div(log_student, log_teacher, log_target=True, reduction="sum")


def held_out_kl(student: Any, teacher: Any, data: DistillData, micro_batch: int) -> float:
    """The mean per-position KL of the held-out sequences."""
    device = next(student.parameters()).device
    total, positions = 0.0, 0
    with torch.no_grad():
        for chunk in data.held_out.split(micro_batch):
            chunk = chunk.to(device)
            total += token_kl(_predicting(student, chunk, data.start), _predicting(teacher, chunk, data.start)).item()
            positions += chunk.shape[0] * (chunk.shape[1] - data.start)
    return total / positions


def _predicting(model: Any, chunk: torch.Tensor, start: int) -> torch.Tensor:
    """The logits that predict positions start..end of `chunk`."""
    return model(chunk).logits[:, start - 1 : -1]


def micro_batch_size(sequences: int, seq_len: int, vocabulary: int) -> int:
    """The largest divisor of `sequences` (a process's share of a step) whose logits stay within
    LOGITS_PER_MICRO_BATCH: equal micro-batches, so that the mean of their means is the step's mean."""
    limit = max(1, LOGITS_PER_MICRO_BATCH // (seq_len * vocabulary))
    return max(size for size in range(1, min(sequences, limit) + 1) if sequences % size == 0)


# --- the loop --------------------------------------------------------------------------------------------------


def mlp_parameters(model: Any, roles: dict[str, tuple[int, str]]) -> dict[str, torch.nn.Parameter]:
    """The loaded model's parameter for each MLP tensor of the checkpoint (`roles`: tensor name -> (layer, role),
    as prune.MlpLayout keeps them; module names are matched as calibrate.loaded_modules does)."""
    found = {}
    for name, (layer, _) in roles.items():
        module_name, attribute = name.rsplit(".", 1)
        found[name] = getattr(loaded_modules(model, {layer: module_name})[layer], attribute)
    return found


@dataclass(frozen=True)
class DistillRun:
    """Where and as what one member's distillation runs: the same for the loop (train), one member on disk
    (distill_member) and one member in launched processes (launch.distill_launched).

    `state`: a folder where the run saves its state every SAVE_EVERY_SECONDS and resumes from when it was saved by
    the same settings, data, processes and `member` (an identity of the pruned model the run started from).
    `launched`: this process is one of those a launcher started, so several are expected; otherwise several are
    refused. `item`: the member's name in progress reports."""

    state: Path | None = None
    member: str = ""
    device: str = "cpu"
    launched: bool = False
    item: str = ""
    on_progress: ProgressCallback | None = None


@dataclass(frozen=True)
class Trained:
    """What a distillation returns: the record hubprune.json keeps, and the trained tensors by checkpoint name
    (gathered whole, on the CPU; only in the main process when several ran)."""

    record: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def train(
    student: Any,
    teacher: Any,
    data: DistillData,
    settings: DistillSettings,
    trained: dict[str, torch.nn.Parameter],
    run: DistillRun | None = None,
    *,
    on_step: Callable[[int, int], None] | None = None,
) -> Trained:
    """Train the `trained` parameters of `student` (checkpoint name -> parameter; the rest frozen) to the KL
    objective on `data`, for settings.planned_steps steps, as `run` says (see DistillRun). `on_step(step, tokens)`
    is called after each step (bench/ uses it for its curve)."""
    began = time.perf_counter()
    run = run or DistillRun()
    accelerator = _accelerator(run.device, run.launched)
    processes, rank = accelerator.num_processes, accelerator.process_index
    micro = _micro_batches(accelerator, settings, student.config.get_text_config().vocab_size)
    names = {id(parameter): name for name, parameter in student.named_parameters()}
    qualified = {checkpoint_name: names[id(parameter)] for checkpoint_name, parameter in trained.items()}
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    for parameter in trained.values():
        parameter.requires_grad_(True)
    teacher.to(accelerator.device).eval()
    steps = settings.planned_steps
    optimizer = torch.optim.AdamW(trained.values(), lr=settings.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then_decay(steps))
    student, optimizer, schedule = accelerator.prepare(student, optimizer, schedule)
    # eval mode throughout: no dropout, so a resumed run computes what an uninterrupted one does
    student.eval()
    kl_before = held_out_kl(student, teacher, data, micro)
    engine = _engine(accelerator)
    identity = {"settings": settings.identity(), "data": data.record["sha256"], "member": run.member, "engine": engine}
    first, earlier_seconds = _resume(accelerator, run.state, identity)
    per_step = settings.batch * settings.seq_len
    saved_at = time.perf_counter()
    step_kl = float("nan")
    for step in range(first, steps):
        share_of_step = _batch(data.train, step, settings)[rank::processes]
        step_kl = _step(accelerator, student, teacher, (optimizer, schedule), share_of_step, micro, data.start)
        done = (step + 1) * per_step
        rate = (step + 1 - first) * per_step / (time.perf_counter() - began)
        if accelerator.is_main_process:
            report(
                run.on_progress,
                Progress("distill", f"KL {step_kl:.4f}, {rate:.0f} tok/s", run.item, done, steps * per_step, "tok"),
            )
            if on_step is not None:
                on_step(step + 1, done)
        if run.state is not None and step + 1 < steps and _agreed(accelerator, time.perf_counter() - saved_at):
            _save(accelerator, run.state, identity, step + 1, earlier_seconds + time.perf_counter() - began)
            saved_at = time.perf_counter()
    kl_after = held_out_kl(student, teacher, data, micro)
    whole = accelerator.get_state_dict(student)  # gathered from every process where the engine shards weights
    keeps = whole and accelerator.is_main_process  # the one process that writes the member back
    tensors = {name: whole[qualified[name]].detach().to("cpu") for name in trained} if keeps else {}
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()) or not math.isfinite(kl_after):
        raise CriterionError(
            f"distillation diverged (KL {kl_after:.4g} on held-out sequences; weights not finite): lower "
            f"`distill_lr` (now {settings.learning_rate:g})"
        )
    record = {
        "method": "distill",
        "objective": OBJECTIVE,
        "trained": TRAINED,
        "data": data.record,
        "optimizer": optimizer_text(settings),
        "steps": steps,
        "tokens": steps * per_step,
        "batch": settings.batch,
        "seq_len": settings.seq_len,
        "held_out_kl": {"before": kl_before, "after": kl_after},
        "last_step_kl": step_kl if first < steps else None,
        "resumed_at_step": first or None,
        "device": accelerator.device.type,
        "engine": engine,
        "seconds": round(earlier_seconds + time.perf_counter() - began, 1),  # every session of a resumed run
    }
    return Trained(record, tensors)


def _micro_batches(accelerator: Any, settings: DistillSettings, vocabulary: int) -> int:
    """The micro-batch this process runs its share of a step's sequences in; the accelerator set to
    accumulate the share's micro-batches into one optimizer step."""
    processes = accelerator.num_processes
    if settings.batch % processes:
        raise CriterionError(
            f"a distillation step's {settings.batch} sequences do not split evenly over {processes} processes: "
            f"launch a number of processes that divides {settings.batch}"
        )
    share = settings.batch // processes
    micro = micro_batch_size(share, settings.seq_len, vocabulary)
    accelerator.gradient_accumulation_steps = share // micro  # one optimizer step per step's share
    _fit_deepspeed(accelerator, micro)
    return micro


def _step(
    accelerator: Any, student: Any, teacher: Any, stepping: tuple[Any, Any], share: torch.Tensor, micro: int, start: int
) -> float:
    """One optimizer step on this process's `share` of the step's sequences, in micro-batches of `micro`; the
    step's mean KL over every process."""
    optimizer, schedule = stepping
    positions = micro * (share.shape[1] - start)
    kl_sum = torch.zeros((), device=accelerator.device)
    for chunk in share.split(micro):
        chunk = chunk.to(accelerator.device)
        with accelerator.accumulate(student):  # gradients are averaged across processes at the last chunk
            with torch.no_grad():
                target = _predicting(teacher, chunk, start)
            loss = token_kl(_predicting(student, chunk, start), target) / positions  # the chunk's mean
            accelerator.backward(loss)  # accelerate divides by the chunks of a step: the step's mean
            optimizer.step()  # these three act once the step's last chunk is in
            schedule.step()
            optimizer.zero_grad()
        kl_sum += loss.detach()
    return accelerator.reduce(kl_sum / (len(share) // micro), "mean").item()


def optimizer_text(settings: DistillSettings) -> str:
    return (
        f"AdamW, learning rate {settings.learning_rate:g}, weight decay 0, linear warm-up over "
        f"{WARMUP_FRACTION:.0%} of the steps, then linear decay toward 0; seed {settings.seed}"
    )


def _accelerator(device: str, launched: bool) -> Any:
    """accelerate's Accelerator on `device` (see resolve_device), or CriterionError (LaunchError for processes
    hubprune did not launch itself). Its scheduler steps once per optimizer step whatever the processes
    (split_batches: the step's batch is split among them, not multiplied)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    resolved = resolve_device(device, CriterionError)
    if resolved.startswith("cuda:"):
        raise CriterionError(
            f"distillation takes cpu or cuda, not {resolved}: choose the GPU with CUDA_VISIBLE_DEVICES"
        )
    try:
        accelerator = Accelerator(cpu=resolved == "cpu", dataloader_config=DataLoaderConfiguration(split_batches=True))
    except ValueError as exc:  # accelerate keeps one state per process: a device already chosen there stays
        raise CriterionError(
            f"accelerate cannot run distillation on {resolved} in this process ({exc}): run it in a new process"
        ) from None
    if accelerator.num_processes > 1 and not launched:
        raise LaunchError(
            f"hubprune runs in one process, and a launcher started {accelerator.num_processes}: run hubprune without "
            "one, and give the launcher to `distill_launcher` to distil in several processes"
        )
    return accelerator


def _fit_deepspeed(accelerator: Any, micro: int) -> None:
    """Under DeepSpeed, which takes its batch sizes from its own config, the step hubprune defines: `micro`
    sequences a pass, the step's share in as many passes, and no gradient clipping (the other engines clip none).
    Written to accelerate's documented config keys; not run here (DeepSpeed starts on GPUs only)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config.update(
            {
                "train_micro_batch_size_per_gpu": micro,
                "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
                "gradient_clipping": 0.0,
            }
        )


def _engine(accelerator: Any) -> dict[str, Any]:
    """How the loop ran, for the record and the resume identity (a state saved by other processes or another
    engine is not loaded)."""
    return {
        "distributed_type": str(accelerator.distributed_type).rsplit(".", 1)[-1],
        "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
    }


def _agreed(accelerator: Any, since_saved: float) -> bool:
    """Whether to save now: the main process's clock decides for every process, since all must save together."""
    from accelerate.utils import broadcast

    due = torch.tensor([float(since_saved > SAVE_EVERY_SECONDS)], device=accelerator.device)
    return bool(broadcast(due).item())


def _warmup_then_decay(steps: int) -> Callable[[int], float]:
    """The learning rate's factor at each step: rising linearly over the first WARMUP_FRACTION of the steps to 1
    (reached at the last warm-up step), then falling linearly, to 1 / (decay steps) at the last step."""
    warmup = max(1, round(steps * WARMUP_FRACTION))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return (steps - step) / (steps - warmup + 1)

    return factor


def _batch(train: torch.Tensor, step: int, settings: DistillSettings) -> torch.Tensor:
    """The sequences of one step: the training set in a fixed shuffled order (seeded), one pass after another. A
    function of the step alone, so a resumed run sees what it would have."""
    order = _order(len(train), settings.seed)
    first = step * settings.batch
    return train[[order[(first + i) % len(train)] for i in range(settings.batch)]]


def _order(count: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator).tolist()


def _save(accelerator: Any, state: Path, identity: dict[str, Any], step: int, seconds: float) -> None:
    """Save the state and its step as one folder, written beside the last one and then swapped in: a stop at any
    moment leaves one whole state to resume from (the new one, else the previous one)."""
    fresh, current, previous = state / f"{STATE}.new", state / STATE, state / f"{STATE}.old"
    if accelerator.is_main_process:
        shutil.rmtree(fresh, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(fresh))  # every process: engines that shard the state write a part each
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(fresh / PROGRESS_FILE, {"identity": identity, "step": step, "seconds": seconds})
        shutil.rmtree(previous, ignore_errors=True)
        if current.exists():
            current.rename(previous)
        fresh.rename(current)
        shutil.rmtree(previous, ignore_errors=True)
    accelerator.wait_for_everyone()


def _resume(accelerator: Any, state: Path | None, identity: dict[str, Any]) -> tuple[int, float]:
    """The step to start from and the seconds spent before: those of the saved state when `state` holds a whole
    one of the same identity, else (0, 0)."""
    if state is None:
        return 0, 0.0
    for folder in (state / STATE, state / f"{STATE}.old"):
        progress = folder / PROGRESS_FILE
        if progress.exists():
            saved = json.loads(progress.read_text(encoding="utf-8"))
            if saved.get("identity") != identity:
                return 0, 0.0
            accelerator.load_state(str(folder))
            return int(saved["step"]), float(saved.get("seconds", 0.0))
    return 0, 0.0


# --- a member on disk --------------------------------------------------------------------------------------------


def distill_member(
    folder: Path, teacher: Teacher, settings: DistillSettings, roles: dict[str, tuple[int, str]], run: DistillRun
) -> dict[str, Any]:
    """Distil the member checkpoint in `folder` from the teacher, write its MLP tensors back in place (same
    names, shapes and dtypes; from the main process alone when several ran), and return the record for its
    hubprune.json."""
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    done = train(student, teacher.model, teacher.data, settings, mlp_parameters(student, roles), run)
    if done.tensors:
        write_back(folder, done.tensors)
    return done.record


def describe(settings: RecoverySettings) -> str:
    """The registry's one-line plan of a member step, said before it runs (methods.py)."""
    return f"{settings.distill.planned_steps} steps"


def recover_folder(
    folder: Path, teacher: Teacher, settings: RecoverySettings, roles: dict[str, tuple[int, str]], run: DistillRun
) -> dict[str, Any]:
    """The registry's member step on disk (methods.py): in this process, or in those settings.launcher starts."""
    if settings.launcher is None:
        return distill_member(folder, teacher, settings.distill, roles, run)
    from hubprune.recover.launch import distill_launched, parse_launcher  # launch.py imports this module

    return distill_launched(folder, teacher, settings.distill, roles, run, parse_launcher(settings.launcher))


def recover_model(
    student: Any, teacher: Teacher, settings: RecoverySettings, roles: dict[str, tuple[int, str]], run: DistillRun
) -> dict[str, Any]:
    """The registry's member step in memory (methods.py): train `student` in place."""
    trained = mlp_parameters(student, roles)
    return train(student, teacher.model, teacher.data, settings.distill, trained, run).record


def write_back(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace `tensors` in the checkpoint in `folder`, each in the dtype the file holds it in; one shard at a time,
    each written beside the old one and renamed over it."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    left = set(tensors)
    for file in files:
        with safe_open(folder / file, framework="pt") as f:
            names, metadata = set(f.keys()), f.metadata()
        if not names & left:
            continue
        loaded = load_file(folder / file)
        for name in names & left:
            loaded[name] = tensors[name].to(device="cpu", dtype=loaded[name].dtype).contiguous()
        temporary = folder / f".{file}.tmp"
        save_file(loaded, str(temporary), metadata=metadata)
        temporary.replace(folder / file)
        left -= names
    if left:
        raise CriterionError(
            f"the member in {folder.name} lacks the tensors {sorted(left)[:3]}: it is not this family's"
        )
