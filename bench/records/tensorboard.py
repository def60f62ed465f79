"""TensorBoard event files beside records.jsonl, written from the records with torch's `SummaryWriter`.

One TensorBoard run per algorithm under `DIR/tensorboard/` (a simulated series has one folder per node count):
the averaged model's accuracy (perplexity for a language model), loss and consensus distance per epoch
(`avg_model/...`), every node's training loss, own-model accuracy (perplexity) and elapsed training time per epoch
(`node<r>/...`), and the run's totals (`run/...`: throughput, bytes, communication share). Each run also carries
its hyperparameters and final metrics for the HParams view, so `tensorboard --logdir` on a sweep's or a suite's
folder compares every cell side by side.

Written into a temporary folder and renamed into place: a crash never leaves half of it.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

FOLDER = "tensorboard"
GLOBAL = (
    "test_acc",
    "test_ppl",
    "test_loss",
    "val_acc",
    "val_ppl",
    "val_loss",
    "consensus_distance",
)  # the averaged model's, per evaluated epoch
PER_NODE = ("train_loss", "node_acc", "node_ppl", "node_loss", "train_seconds")  # each node's, per epoch
TOTALS = ("samples_per_s", "tokens_per_s", "train_seconds", "bytes_per_node_per_step", "comm_fraction", "serve_seconds")
HPARAMS = ("nodes", "topology", "bits", "local_steps", "seed", "epochs")  # summary columns kept as hyperparameters
CONFIG_HPARAMS = ("lr", "momentum", "batch_size", "model", "dataset", "partition", "quantizer", "repeat")
FINAL = (
    "val_acc",
    "test_acc",
    "best_test_acc",
    "val_ppl",
    "test_ppl",
    "best_test_ppl",
    "samples_per_s",
    "train_seconds",
    "bytes_per_node_per_step",
    "comm_fraction",
)


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _hparam(value: Any) -> Any:
    """TensorBoard's HParams take bool, int, float or str."""
    if isinstance(value, bool | str):
        return value
    number = _number(value)
    if number is None:
        return str(value)
    return int(number) if number.is_integer() else number


def _curves(writer, r) -> None:
    """The averaged model's and every node's per-epoch values of one algorithm (one round of it)."""
    for metric in GLOBAL:
        rows = r[(r["metric"] == metric) & r["rank"].isna()]
        for epoch, value in zip(rows["epoch"], rows["value"], strict=True):
            writer.add_scalar(f"avg_model/{metric}", float(value), int(epoch))
    for metric in PER_NODE:
        rows = r[(r["metric"] == metric) & r["rank"].notna() & r["epoch"].notna()]
        for rank, epoch, value in zip(rows["rank"], rows["epoch"], rows["value"], strict=True):
            writer.add_scalar(f"node{int(rank)}/{metric}", float(value), int(epoch))


def write_events(out_dir: Path, records, summary, cfg) -> Path:
    """Write DIR/tensorboard from the run's records and summary; returns the folder."""
    from torch.utils.tensorboard import SummaryWriter

    final, tmp = out_dir / FOLDER, out_dir / f".{FOLDER}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for _, row in summary.iterrows():
        algorithm = row["algorithm"]
        r = records[records["algorithm"] == algorithm]
        writer = SummaryWriter(log_dir=str(tmp / algorithm))
        try:
            rounds = sorted(r["round"].dropna().unique()) if "round" in r.columns else []
            if len(rounds) > 1:  # --repeat: each round's curves in a run of their own, the totals (medians) here
                for number in rounds:
                    with SummaryWriter(log_dir=str(tmp / algorithm / f"round{int(number)}")) as sub:
                        _curves(sub, r[r["round"] == number])
            else:
                _curves(writer, r)
            last_epoch = int(_number(row.get("epochs")) or 0)
            for metric in TOTALS:
                value = _number(row.get(metric))
                if value is not None:
                    writer.add_scalar(f"run/{metric}", value, last_epoch)
            hparams = {"algorithm": algorithm}
            hparams.update({key: _hparam(row.get(key)) for key in HPARAMS if key in row})
            hparams.update({key: _hparam(getattr(cfg, key)) for key in CONFIG_HPARAMS if hasattr(cfg, key)})
            metrics = {f"final/{key}": v for key in FINAL if (v := _number(row.get(key))) is not None}
            writer.add_hparams(hparams, metrics, run_name=".")
        finally:
            writer.close()
    shutil.rmtree(final, ignore_errors=True)
    if tmp.exists():
        tmp.rename(final)
    return final
