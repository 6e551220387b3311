"""Download the paper setup's data from the Hugging Face hub into JSONL files beside the config.

Needs hub access (``pip install datasets``; nothing here runs offline)::

    python benchmarks/paper/fetch_data.py            # -> benchmarks/paper/data/*.jsonl
    python benchmarks/paper/fetch_data.py --no-math  # GSM8K only

Writes:

- ``data/mathinstruct.jsonl``: TIGER-Lab/MathInstruct (train, 262,039 rows, 14 sources) as
  ``{"id", "instruction", "output", "source"}``, ids ``mi-<row>``. Rows with an empty
  instruction or output are dropped, and so is every row whose instruction is, up to case and
  whitespace, the question of an eval item (``s2l experiment`` refuses an eval set that shares a
  prompt with the pool; GSM8K's and MATH's *training* questions are part of MathInstruct).
- ``data/eval.jsonl``: openai/gsm8k (config ``main``, split ``test``, 1,319 items, source
  ``gsm8k``) and, unless ``--no-math``, HuggingFaceH4/MATH-500 (500 items of the MATH test set,
  source ``math``), as ``{"id", "instruction", "output", "answer", "source"}``. ``answer`` is the
  reference final answer that exact match compares with (GSM8K: the text after ``####``; MATH:
  its ``answer`` field), so results come per source, GSM8K and MATH apart.

The hub loader cannot be named in the config directly: the experiment config takes files (paths
relative to the config), and GSM8K needs a config name (``main``) that a path cannot carry.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _key(text: str) -> str:
    # The same normalisation as smalltolarge.experiment.check_no_overlap's prompt keys.
    return " ".join(text.split()).casefold()


def eval_items(with_math: bool) -> list[dict]:
    from datasets import load_dataset

    items = []
    for k, row in enumerate(load_dataset("openai/gsm8k", "main", split="test")):
        solution = row["answer"]
        final = solution.rsplit("####", 1)[-1].strip().replace(",", "")
        items.append(
            {
                "id": f"gsm8k-test-{k}",
                "instruction": row["question"],
                "output": solution,
                "answer": final,
                "source": "gsm8k",
            }
        )
    if with_math:
        for k, row in enumerate(load_dataset("HuggingFaceH4/MATH-500", split="test")):
            items.append(
                {
                    "id": f"math500-{k}",
                    "instruction": row["problem"],
                    "output": row["solution"],
                    "answer": row["answer"],
                    "source": "math",
                }
            )
    return items


def pool_rows(eval_keys: set[str]) -> tuple[list[dict], int, int]:
    """MathInstruct rows, the number dropped as empty and as eval questions."""
    from datasets import load_dataset

    rows, empty, overlap = [], 0, 0
    for k, row in enumerate(load_dataset("TIGER-Lab/MathInstruct", split="train")):
        instruction, output = row["instruction"] or "", row["output"] or ""
        if not instruction.strip() or not output.strip():
            empty += 1
            continue
        if _key(instruction) in eval_keys:
            overlap += 1
            continue
        rows.append(
            {"id": f"mi-{k}", "instruction": instruction, "output": output, "source": row["source"]}
        )
    return rows, empty, overlap


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=HERE / "data")
    parser.add_argument("--no-math", action="store_true", help="evaluate on GSM8K only")
    args = parser.parse_args(argv)

    items = eval_items(with_math=not args.no_math)
    rows, empty, overlap = pool_rows({_key(item["instruction"]) for item in items})
    write_jsonl(args.out_dir / "eval.jsonl", items)
    write_jsonl(args.out_dir / "mathinstruct.jsonl", rows)
    sources = sorted({row["source"] for row in rows})
    print(
        f"eval: {len(items)} items -> {args.out_dir / 'eval.jsonl'}\n"
        f"pool: {len(rows)} examples from {len(sources)} sources -> "
        f"{args.out_dir / 'mathinstruct.jsonl'} (dropped {empty} empty, {overlap} sharing a "
        "question with the eval set)"
    )


if __name__ == "__main__":
    main()
