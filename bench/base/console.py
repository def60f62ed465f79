"""Terminal output during a run: a rich progress bar on an interactive terminal, plain lines otherwise."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Sequence
from typing import Any


def _score(event: dict[str, Any]) -> str:
    """An evaluated epoch's headline: test accuracy, or test perplexity for a language model."""
    return f"test_ppl {event['test_ppl']:.2f}" if "test_ppl" in event else f"test_acc {event['test_acc']:.4f}"


class LiveProgress:
    """A rich progress display (set `self.progress` when the terminal is interactive) started and stopped as a
    context manager; None off a terminal, where the subclasses print plain lines instead."""

    progress: Any = None

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


class RunUI(LiveProgress):
    """Receives launcher events (rank 0's progress) and workers' output lines."""

    def __init__(self, algorithms: tuple[str, ...], interactive: bool | None = None) -> None:
        from rich.console import Console

        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        # Off a terminal (CI logs, mpirun output) rich would wrap tables at 80 columns: give them room.
        self.console = Console(highlight=False, width=None if self.interactive else 180)
        self.progress = None
        self.tasks: dict[str, Any] = {}
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description:<10}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            for name in algorithms:
                self.tasks[name] = self.progress.add_task(name, total=None, note="waiting")

    def event(self, event: dict[str, Any]) -> None:
        kind, algo = event.get("type"), event.get("algorithm")
        if self.progress is not None and algo in self.tasks:
            task = self.tasks[algo]
            if kind == "progress":
                note = f"epoch {event['epoch']} {_score(event)}" if "epoch" in event else "training"
                self.progress.update(task, completed=event["step"], total=event["total"], note=note)
            elif kind == "cell_done":
                self.progress.update(task, note="done")
        elif kind == "progress" and "epoch" in event:
            print(f"{algo}: epoch {event['epoch']} step {event['step']}/{event['total']} {_score(event)}", flush=True)
        elif kind == "cell_start":
            rounds = event.get("rounds", 1)
            what = "kept from the interrupted run" if event.get("resumed") else "started"
            print(f"{algo}: {what}" + (f" (round {event['round']} of {rounds})" if rounds > 1 else ""), flush=True)

    def worker_line(self, rank: int, line: str) -> None:
        text = f"[rank {rank}] {line}"
        if self.progress is not None:
            self.progress.console.print(text, markup=False)
        else:
            print(text, flush=True)


def suggestion(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice closest to a mistyped `word`, or None (the one "did you mean" of every error message)."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return match[0] if match else None


def closest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when a choice is close to `word`, else ''."""
    match = suggestion(word, choices, cutoff=0.5)
    return f" (did you mean '{match}'?)" if match else ""


def print_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    title: str | None = None,
    title_justify: str = "center",
    justify: Sequence[str] | None = None,
    console: Any = None,
) -> None:
    """Headers and rows of text as one rich table on `console` (a new rich Console by default): the first column
    left-aligned and the others right-aligned, unless `justify` gives each column's alignment."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify=title_justify)
    for i, header in enumerate(headers):
        table.add_column(header, justify=justify[i] if justify is not None else ("left" if i == 0 else "right"))
    for row in rows:
        table.add_row(*row)
    (console or Console()).print(table)
