"""The files and signals of a training run: losses.csv (:class:`_LossLog`, :func:`read_losses`), sample
grids, checkpoints (train_state.pt, latest_net_G.pth, run.json), the check that a resumed folder's files
belong to one run (:func:`check_run_folder`), and SIGINT/SIGTERM (:class:`_StopOnSignal`)."""

from __future__ import annotations

import csv
import dataclasses
import io
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from asapbench.errors import UserError
from asapbench.training.config import CSV_COLUMNS, CSV_FILE, GEN_FILE, LEGACY_RUN_ID, RUN_FILE, STATE_FILE
from asapbench.training.setup import _rng_state, _Run

if TYPE_CHECKING:
    from typing_extensions import Self

    from asapbench.training.step import _StepOut

def _save_grid(path: Path, label_rgb: torch.Tensor, fake: torch.Tensor, real: torch.Tensor, max_rows: int = 4) -> None:
    """A PNG grid: one row per sample, columns label | output | photo (all [-1, 1])."""
    from PIL import Image

    from asapbench.fsutil import atomic_write_bytes

    rows = []
    for i in range(min(max_rows, fake.shape[0])):
        rows.append(torch.cat([label_rgb[i], fake[i], real[i]], dim=2))  # (3, H, 3W)
    grid = torch.cat(rows, dim=1)  # (3, rows*H, 3W)
    a = ((grid.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _read_csv_rows(path: Path, max_step: int) -> list[dict[str, str]]:
    """Rows of an existing losses CSV up to ``max_step`` (a torn last line after kill -9 is dropped)."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                if None in row or any(v is None or v == "" for v in row.values()):
                    continue
                if int(row["step"]) <= max_step:
                    rows.append(row)
            except (KeyError, ValueError):
                continue
    return rows


def read_losses(out: str | Path) -> list[dict[str, float]]:
    """The losses CSV of a run as a list of ``{column: float}`` (``step`` and ``epoch`` as int)."""
    rows = []
    for r in _read_csv_rows(Path(out) / CSV_FILE, 1 << 62):
        rows.append({k: (int(v) if k in ("step", "epoch") else float(v)) for k, v in r.items() if k != "run_id"})
    return rows


class _LossLog:
    """losses.csv, open for appending while the run goes (rank 0; the other ranks write nothing).

    On entry the file is rewritten with its header and, on resume, its rows up to the checkpoint's
    step (rows logged after the last checkpoint, and a line torn by kill -9, are dropped). Every row
    carries the run id in its last column (rows of a legacy run get :data:`LEGACY_RUN_ID`).
    """

    def __init__(self, path: Path, resumed_at: int | None, main: bool, run_id: str = LEGACY_RUN_ID):
        self.path, self.resumed_at, self.main, self.run_id = path, resumed_at, main, run_id
        self.file = None
        self.writer = None

    def __enter__(self) -> Self:
        from asapbench.fsutil import atomic_write_text

        if self.main:
            rows = _read_csv_rows(self.path, self.resumed_at) if self.resumed_at is not None else []
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({**{k: r.get(k, "") for k in CSV_COLUMNS}, "run_id": self.run_id})
            atomic_write_text(self.path, buf.getvalue())
            self.file = open(self.path, "a", newline="")
            self.writer = csv.DictWriter(self.file, fieldnames=CSV_COLUMNS, lineterminator="\n")
        return self

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (tagged with the run id) and flush it."""
        if self.writer is not None:
            self.writer.writerow({**row, "run_id": self.run_id})
            self.file.flush()

    def flush(self) -> None:
        """Flush what was written (a no-op once closed)."""
        if self.file is not None and not self.file.closed:
            self.file.flush()

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()


class _StopOnSignal:
    """While active, SIGINT/SIGTERM ask the loop to finish the current step, save and stop.

    ``sig`` is the signal received (None if none); a second signal aborts at once (KeyboardInterrupt).
    Handlers are installed only in the main thread and restored on exit.
    """

    def __init__(self):
        self.sig: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.sig is not None:
            raise KeyboardInterrupt  # a second signal aborts at once
        self.sig = signum

    def __enter__(self) -> Self:
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def _save_checkpoint(run: _Run, log: _LossLog) -> None:
    """Write train_state.pt (with every rank's RNG states), latest_net_G.pth and run.json; flush losses.csv.

    Every rank takes part (RNG states are gathered, then a barrier); rank 0 writes. Each file goes to a
    temporary name first, so a full disk leaves the previous checkpoint intact: UserError naming the
    folder and the space the checkpoint needs.
    """
    from asapbench.checkpoint import save_generator
    from asapbench.fsutil import atomic_torch_save

    dist, pos, m = run.dist, run.pos, run.models
    rng = _rng_state()
    if dist.enabled:
        rngs = [None] * dist.world_size
        torch.distributed.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    if dist.main:
        state = {
            "version": 1, "run_id": run.run_id, "step": pos.step, "epoch": pos.epoch,
            "batch_in_epoch": pos.batch_in_epoch, "world_size": dist.world_size,
            "dataset_len": len(run.data.dataset), "total_steps": run.data.total,
            "G": m.G.state_dict(), "D": m.D.state_dict(), **run.optim.state_dicts(),
            "rng": rngs, "config": dataclasses.asdict(run.cfg),
        }
        try:
            atomic_torch_save(state, run.out / STATE_FILE)
            save_generator(m.G, run.out / GEN_FILE)
            _write_run_json(run, pos.step, pos.epoch)
            log.flush()
        except (OSError, RuntimeError) as exc:
            _raise_if_disk_full(exc, run, state)
            raise
        run.saved_step = pos.step
    if dist.enabled:
        torch.distributed.barrier()


def _write_run_json(run: _Run, step: int, epoch: int) -> None:
    """run.json: the run's configuration, the step and epoch of the checkpoint, the generator file's SHA-256."""
    from asapbench.fsutil import atomic_write_json, sha256_file

    atomic_write_json(run.out / RUN_FILE, {**run.run_info, "step": step, "epoch": epoch,
                                           "generator_sha256": sha256_file(run.out / GEN_FILE),
                                           "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _sync_generator(run: _Run, saved_state: dict[str, Any]) -> None:
    """On resume, make latest_net_G.pth the generator of the state's step.

    A checkpoint writes train_state.pt, then latest_net_G.pth, then run.json (the step and the SHA-256 of
    the generator file). A kill between them leaves a generator (or a run.json) of the step before: when
    run.json does not record the state's step with the generator file's SHA-256, both are rewritten from
    the state (the generator ``run.models.G`` now holds).
    """
    import json

    from asapbench.checkpoint import save_generator
    from asapbench.fsutil import sha256_file

    step, gen = int(saved_state["step"]), run.out / GEN_FILE
    try:
        info = json.loads((run.out / RUN_FILE).read_text())
        if info.get("step") == step and info.get("generator_sha256") == sha256_file(gen):
            return
    except (OSError, ValueError, AttributeError):
        pass
    save_generator(run.models.G, gen)
    _write_run_json(run, step, int(saved_state["epoch"]))
    run.say(f"{GEN_FILE} or {RUN_FILE} was not that of the checkpoint's step {step} (a save was cut short): "
            f"rewrote both from {STATE_FILE}")


def _raise_if_disk_full(exc: BaseException, run: _Run, state: dict[str, Any]) -> None:
    """UserError (one line: folder, space needed, the checkpoint still there) when ``exc`` means a full disk."""
    from asapbench.fsutil import format_bytes, is_out_of_space, tensor_nbytes

    needed = tensor_nbytes(state) + tensor_nbytes(state["G"])  # the state, then the generator file
    if not is_out_of_space(exc, run.out, needed):
        return
    kept = (f"the checkpoint of step {run.saved_step} is intact: after freeing space, continue with --resume"
            if run.saved_step is not None else "no checkpoint was saved yet")
    raise UserError(f"no space left in {str(run.out)!r} to save the checkpoint of step {run.pos.step}: it needs "
                    f"about {format_bytes(needed)} free there; {kept}") from None


def _save_sample(run: _Run, batch: dict[str, Any], step: _StepOut) -> None:
    """samples/step_XXXXXXX.png: label (or input image) | output | photo of the step's batch."""
    from asapbench.data import colorize_labels

    G = run.models.G
    lab = step.x if G.input_kind == "image" else colorize_labels(batch["label"].to(run.device), run.models.label_nc)
    path = run.out / "samples" / f"step_{run.pos.step:07d}.png"
    _save_grid(path, lab, step.fake, step.real)
    run.samples_written.append(path)


def _describe(run_id: str, model: Any, step: Any) -> str:
    return f"run {run_id}" + (f", {model}" if model else "") + (f", step {step}" if step is not None else "")


def check_run_folder(out: Path, state: dict[str, Any]) -> None:
    """Check, before anything is written, that run.json, losses.csv and latest_net_G.pth belong to the run
    of ``state`` (the train_state.pt of ``out``); UserError naming the files that disagree otherwise.

    Every file carries the run id drawn when the run started (the generator file, a plain state dict,
    is tied to it through run.json's ``generator_sha256``, or by holding exactly the state's
    generator). Runs from before run ids read as :data:`LEGACY_RUN_ID`. For every run, run.json must
    also name the state's model and a step no later than the state's (it is written after it), and the
    generator's tensors must have the state's names and shapes. A file that is absent agrees (a kill
    before the first checkpoint completed leaves some out; nothing of another run can be lost).
    """
    from asapbench.fsutil import sha256_file

    sid = str(state.get("run_id") or LEGACY_RUN_ID)
    smodel = (state.get("config") or {}).get("model")
    sstep = int(state.get("step", 0))
    mine = f"{STATE_FILE} ({_describe(sid, smodel, sstep)})"
    bad: list[str] = []
    info: dict[str, Any] = {}
    run_json = out / RUN_FILE
    if run_json.exists():
        from asapbench.fsutil import BadJsonFile, read_json

        try:
            info = read_json(run_json, RUN_FILE)
            if not isinstance(info, dict):
                raise BadJsonFile("", "not an object")
        except BadJsonFile as exc:  # unreadable, not JSON, too large or nested too deeply
            info = {}
            bad.append(f"{RUN_FILE} (unreadable: {exc.why})")
        else:
            rid = str(info.get("run_id") or LEGACY_RUN_ID)
            step = info.get("step")
            if rid != sid or (smodel and info.get("model") != smodel) or (isinstance(step, int) and step > sstep):
                bad.append(f"{RUN_FILE} ({_describe(rid, info.get('model'), step)})")
    csv_path = out / CSV_FILE
    if csv_path.exists():
        try:
            text = csv_path.read_text()
            if text and not text.endswith("\n"):
                text = text[: text.rfind("\n") + 1]  # a line torn by kill -9 (its run id may be cut short)
            reader = csv.DictReader(io.StringIO(text, newline=""))
            ids = {r.get("run_id") for r in reader if r.get("run_id")} if "run_id" in (reader.fieldnames or []) \
                else {LEGACY_RUN_ID}
        except (OSError, UnicodeDecodeError, csv.Error):
            ids = {"(unreadable)"}
        if ids - {sid}:
            bad.append(f"{CSV_FILE} (run {', '.join(sorted(ids - {sid}))})")
    gen = out / GEN_FILE
    if gen.exists():
        trusted = info if not any(b.startswith(RUN_FILE) for b in bad) else {}
        if not _generator_agrees(gen, state, trusted, sha256_file):
            bad.append(f"{GEN_FILE} (not a generator this run saved)")
    if bad:
        raise UserError(f"cannot resume {str(out)!r}: its files belong to different runs: {mine} vs "
                        f"{'; '.join(bad)}; nothing was changed: train into another --out (copy the files "
                        "you want to keep there first)")


def _generator_agrees(gen: Path, state: dict[str, Any], info: dict[str, Any], sha256_file) -> bool:
    """Whether latest_net_G.pth is the one this run saved last (the state's G, or the file run.json names)."""
    from asapbench.checkpoint import read_state_dict

    G = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state["G"].items()}
    if info.get("generator_sha256"):
        try:
            if sha256_file(gen) == info["generator_sha256"]:
                return True
        except OSError:
            return False
    try:
        sd = read_state_dict(gen)
    except UserError:
        return False
    if set(sd) != set(G) or any(tuple(sd[k].shape) != tuple(G[k].shape) for k in sd):
        return False
    if state.get("run_id") is None:
        return True  # a legacy run: names and shapes are all there is to compare
    return all(torch.equal(sd[k], G[k].cpu()) for k in sd)
