"""lm-evaluation-harness tasks on the in-memory model, so every perturbation is evaluated on
exactly the weights it left (`HFLM(pretrained=model)`; no reload, no hub).

Task definitions are lm-eval YAML files under an include directory (the project ships
`configs/lm_eval/` for the built-in task files); any task lm-eval knows works the same way
where its data is available offline. Results are per document, so paired statistics apply.
"""

from __future__ import annotations

import os

import numpy as np

from cwa import CwaError
from cwa.evaluation.tasks import Task, TaskResult


def task_manager(names, include: str):
    """lm-eval's task index holding every name: the tasks under `include` alone when they
    suffice (indexing lm-eval's own thousands of tasks takes seconds), else with lm-eval's."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise CwaError(
            "params: `lm_eval_tasks` needs lm-evaluation-harness: pip install 'lm_eval==0.4.13'"
        ) from err
    manager = TaskManager(include_path=include, include_defaults=False)
    if not set(names) <= set(manager.all_tasks):  # not local: look among lm-eval's own
        manager = TaskManager(include_path=include)
    unknown = sorted(set(names) - set(manager.all_tasks))
    if unknown:
        raise CwaError(
            f"params: `lm_eval_tasks` {unknown} are not lm-eval tasks: neither under "
            f"{include} nor built into lm-eval"
        )
    return manager


class LmEval:
    """One harness session: the model wrapper and the task objects are built once, then `run`
    evaluates whatever the model's weights are at that moment."""

    def __init__(self, model, tokenizer, names, include: str, max_len: int, batch_size: int, limit):
        names = list(names)
        manager = task_manager(names, include)  # first: it sets the offline flags
        from lm_eval.models.huggingface import HFLM

        self.tasks = manager.load(names)
        self.names, self.limit = names, limit
        device = str(next(model.parameters()).device)
        self.lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=batch_size,
            max_length=max_len,
            device=device,
        )

    def run(self) -> dict[str, TaskResult]:
        """{"lm_eval:<task>": per-document acc (and acc_norm where the task reports it)}."""
        from lm_eval.evaluator import evaluate

        out = evaluate(
            lm=self.lm,
            task_dict=self.tasks,
            limit=self.limit,
            bootstrap_iters=0,
            log_samples=True,
            verbosity="ERROR",
        )
        results = {}
        for name in self.names:
            docs = sorted(out["samples"][name], key=lambda s: s["doc_id"])
            acc = np.array([float(d["acc"]) for d in docs])
            norm = np.array([float(d.get("acc_norm", np.nan)) for d in docs])
            n = len(docs)
            results[f"lm_eval:{name}"] = TaskResult(acc, norm, np.zeros(n), np.zeros(n, np.int64))
        return results

    def as_tasks(self) -> list[Task]:
        """Placeholders that carry each harness task's name and kind into the tasks table."""
        return [Task(f"lm_eval:{n}", "lm_eval", []) for n in self.names]
