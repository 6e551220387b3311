"""The CPU side of ``benchmarks/gpu.py --match-dir``: a trained tiny proxy, 200 of its examples
and this CPU's fp32 scores of them, for a GPU run to score again and compare.

    python benchmarks/gpu_match_fixture.py --out .gpu-match     # about a minute on 2 cores

Trains the ``tiny`` proxy on the bundled pool with the package's own stages (``prepare``, then
``train_proxy`` for 1 epoch with 2 checkpoints; the trained weights make the losses those of a
real proxy, not of random weights), draws 200 examples (seed 0), and writes into ``--out``:
``model/`` (the last checkpoint with its tokenizer, about 3 MB), ``arrays.npz`` (the 200
tokenised examples) and ``cpu.json`` (fp32 scores by ``score_model``, with the CPU, torch
version and pad id). Nothing of it belongs in git: the folder is a build output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from smalltolarge.demo_data import DEMO_POOL  # noqa: E402
from smalltolarge.formatting import TokenArrays, load_tokenised  # noqa: E402
from smalltolarge.losses import score_model  # noqa: E402
from smalltolarge.models import load_causal_lm, load_tokenizer, pad_token_id  # noqa: E402
from smalltolarge.prepare import prepare  # noqa: E402
from smalltolarge.proxy import train_proxy  # noqa: E402
from smalltolarge.runs import RunDir  # noqa: E402

EXAMPLES = 200


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out: Path = args.out
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.of(Path(tmp) / "run")
        prepare(DEMO_POOL, run, proxy="tiny", max_length=256, progress=False)
        steps = train_proxy(run, epochs=1.0, n_checkpoints=2, record=False, progress=False)
        step, last = steps[-1]
        tok = load_tokenizer(run.tokenizer_dir)
        model = load_causal_lm(last).eval()
        arrays = TokenArrays.from_dataset(load_tokenised(run).dataset)
        rows = np.sort(
            np.random.default_rng(args.seed).choice(
                len(arrays.response_start), size=EXAMPLES, replace=False
            )
        )
        starts, ends = arrays.offsets[rows], arrays.offsets[rows + 1]
        values = np.concatenate([arrays.values[s:e] for s, e in zip(starts, ends, strict=True)])
        offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        sample = TokenArrays(values, offsets, arrays.response_start[rows].copy())
        pad = pad_token_id(tok)
        scores = score_model(model, sample, precision="fp32", device="cpu", pad_id=pad)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        model.save_pretrained(out / "model")
        tok.save_pretrained(out / "model")
        np.savez(
            out / "arrays.npz",
            values=values,
            offsets=offsets,
            response_start=sample.response_start,
        )
        (out / "cpu.json").write_text(
            json.dumps(
                {
                    "cpu": f"{platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} threads",
                    "torch": torch.__version__,
                    "pad_id": pad,
                    "proxy_step": step,
                    "rows": rows.tolist(),
                    "fp32": scores.astype(float).tolist(),
                }
            )
        )
    print(f"wrote {out} (mean fp32 loss {float(scores.mean()):.4f} over {EXAMPLES} examples)")
    return out


if __name__ == "__main__":
    main()
