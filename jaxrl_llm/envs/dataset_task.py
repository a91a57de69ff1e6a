"""`data.task="dataset"`: a verifiable math task over prompts read from a file.

    python -m jaxrl_llm.cli rl --config configs/quickstart.py --config.data.task=dataset \
        --config.data.task_kwargs.path=gsm8k_train.parquet

Records come from `data/datasets.py: read_records` (JSONL, Parquet, `save_to_disk` folders), the
question and answer from `field_map`, the reference from `reference_answer` (GSM8K `#### 42`,
MATH `\\boxed{...}`, plain). The held-out split is a separate file (`eval_path`), another split of a
`DatasetDict` folder (`eval_split`), or a stable hash of the question (`eval_fraction`, as for
`MathAnswerTask`). Responses are scored by `math_answer.check_answer` with `verifier`.
"""

from __future__ import annotations

import numpy as np

from jaxrl_llm.data.datasets import ANSWER_FORMATS, epoch_walk, field_map, read_records, reference_answer
from jaxrl_llm.envs.math_task import DEFAULT_MATH_TEMPLATE, MathAnswerTask
from jaxrl_llm.envs.task import Problem, check_split

__all__ = ["DatasetTask", "load_math_records"]


def load_math_records(path: str, *, split: str = "", prompt_field: str = "auto", answer_field: str = "auto",
                      answer_format: str = "auto", max_records: int = 0) -> list[tuple[str, str, str | None]]:
    """`(question, reference, solution)` per record of `path` (the first `max_records`; 0: all).

    `solution` is the record's worked solution text (its `solution` field, else the answer text when
    the reference was extracted from it: GSM8K's reasoning before `####`, a MATH solution), or None.
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}; got {answer_format!r}")
    if isinstance(max_records, bool) or not isinstance(max_records, (int, np.integer)) or max_records < 0:
        raise ValueError(f"max_records must be an integer >= 0 (0: all); got {max_records!r}")
    records = read_records(path, split=split)
    if max_records:
        records = records[:max_records]
    out = []
    for i, ((question, answer), record) in enumerate(zip(field_map(records, prompt_field, answer_field, source=path),
                                                          records)):
        reference = reference_answer(answer, answer_format, where=f"{path}, record {i + 1}")
        solution = record.get("solution")
        if not isinstance(solution, str) or not solution.strip():
            solution = answer if answer.strip() != reference else None
        out.append((question, reference, solution))
    return out


class DatasetTask(MathAnswerTask):
    """Math problems from a file; `sample_batch` walks shuffled epochs of the training records.

    Args:
      path: a `.jsonl` / `.json` / `.parquet` file or a `save_to_disk` folder of training records.
      eval_path: a separate held-out file or folder ("" = none).
      eval_fraction: without `eval_path` / `eval_split`, the share of questions held out by stable
        hash (the `data.eval_fraction` field).
      prompt_field, answer_field: field names, or "auto" (`data/datasets.py: field_map`).
      answer_format: "auto", "gsm8k", "boxed" or "plain" (`reference_answer`).
      template: the prompt, with a `{question}` field (default: `DEFAULT_MATH_TEMPLATE`).
      split: the split of a `DatasetDict` folder at `path` (e.g. "train").
      eval_split: the held-out split of the `DatasetDict` folder at `eval_path` (or at `path`
        when `eval_path` is ""), e.g. "test".
      max_records: read only the first this many records of each file (0: all).
      verifier: "auto" (math-verify when installed, else built-in), "math_verify" or "builtin".
    """

    name = "dataset"

    def __init__(self, path: str, *, eval_path: str = "", eval_fraction: float = 0.1, prompt_field: str = "auto",
                 answer_field: str = "auto", answer_format: str = "auto", template: str = DEFAULT_MATH_TEMPLATE,
                 split: str = "", eval_split: str = "", max_records: int = 0, verifier: str = "auto"):
        if not isinstance(path, str) or not path:
            raise ValueError("the dataset task needs a file: set data.task_kwargs.path (or data.path)")
        fields = {"prompt_field": prompt_field, "answer_field": answer_field, "answer_format": answer_format,
                  "max_records": max_records}
        records = load_math_records(path, split=split, **fields)
        held_out = None
        if eval_path or eval_split:
            held_out = load_math_records(eval_path or path, split=eval_split, **fields)
        super().__init__(records, eval_fraction=float(eval_fraction), template=template, eval_records=held_out,
                         verifier=verifier)
        self.path = path
        if self.num_problems("train") == 0:
            raise ValueError(f"{path}: no training records left after the eval split "
                             f"(eval_fraction={eval_fraction})")

    def sample_batch(self, n: int, seed: int, split: str = "train") -> list[Problem]:
        """Batch number `seed` (`n` problems) of an endless walk through shuffled epochs of `split`.

        Positions `[seed * n, (seed + 1) * n)` of `epoch_walk`: consecutive seeds give consecutive
        batches, so the RL trainer's seeds (run seed * 1_000_003 + step) visit every record once per
        epoch, in a new grain order each epoch, and the same on every process.
        """
        check_split(split)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be an integer >= 0; got {n!r}")
        size = self._nonempty(split)
        return [self.problem(int(i), split) for i in epoch_walk(size, int(seed) * int(n), int(n))]

    def eval_set(self, n: int, seed: int = 0) -> list[Problem]:
        """The first `n` held-out problems in file order (`n` = 0 or more than there are: all of them);
        the same whatever `seed`."""
        size = self._nonempty("eval")
        count = size if n <= 0 or n > size else int(n)
        return [self.problem(i, "eval") for i in range(count)]

    def _nonempty(self, split: str) -> int:
        size = self.num_problems(split)
        if size == 0:
            raise ValueError(f"{self.path}: the {split!r} split holds no records; set eval_path / eval_split or "
                             "an eval_fraction > 0")
        return size
