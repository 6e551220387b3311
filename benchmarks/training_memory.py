"""Peak memory of a training step: the stock loss (full logits) against the chunked one, and
the estimate (smalltolarge.estimate.training_memory) beside each measurement.

    python benchmarks/training_memory.py --out DIR            # a CUDA machine, about a minute
    python benchmarks/training_memory.py --smoke --out DIR    # any CPU, seconds (no peaks)

Shapes (random weights, built on the device): SmolLM2-135M (Llama, 30 layers, width 576,
49,152-token vocabulary, tied embeddings) and its 4-layer cut (42M parameters: issue 23's
proxy that the kernel killed at batch 128). Every batch is ``batch`` rows of ``--length``
tokens (the longest batch of a run: no padding), the first third of each row a prompt (no
loss). A step is AdamW on ``loss.backward()`` under bf16 autocast (or fp32), the peak is
``torch.cuda.max_memory_allocated`` over the second step (weights, gradients and AdamW's
moments already allocated). One JSON line per measurement, also in ``DIR/memory.jsonl``:
the peak, the estimate and its parts, seconds per step, the loss (the stock and the chunked
loss of the same weights and batch must agree) or ``"error": "out of memory"``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
try:
    import datasets  # noqa: F401
except ImportError:  # a device machine without it: the loss kernel only needs the names
    stub = types.ModuleType("datasets")
    for name in ("Dataset", "DatasetDict", "Features", "List", "Sequence", "Value"):
        setattr(stub, name, type(name, (), {"__init__": lambda self, *args, **kwargs: None}))
    stub.load_from_disk = stub.load_dataset = None
    sys.modules["datasets"] = stub

from smalltolarge.estimate import training_memory  # noqa: E402
from smalltolarge.losses import chunked_lm_loss  # noqa: E402

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152),
    "smollm2-4layer": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=4,
                           num_attention_heads=9, num_key_value_heads=3, vocab_size=49152),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=4096),
}  # fmt: skip


def build(shape: str, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=True, max_position_embeddings=2048)
    torch.manual_seed(0)
    with device:
        return LlamaForCausalLM(config).train()


def measure(model, state, shape, loss_kind, batch, length, precision, device) -> dict:
    model.load_state_dict(state)
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(batch)
    ids = torch.randint(3, vocab, (batch, length), generator=gen).to(device)
    labels = ids.clone()
    labels[:, : length // 3] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    amp = precision == "bf16"
    est = training_memory(
        model, batch_size=batch, longest=length, precision=precision, device=device,
        chunked=loss_kind == "chunked",
    )  # fmt: skip
    record = {"shape": shape, "loss": loss_kind, "precision": precision, "batch": batch,
              "length": length, "estimate_gib": est.total / 2**30,
              "estimate_parts_gib": {k: getattr(est, k) / 2**30 for k in
                                     ("weights", "gradients", "optimizer", "activations",
                                      "logits")}}  # fmt: skip

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if loss_kind == "chunked":
                loss = chunked_lm_loss(model, inputs)
            else:
                loss = model(**inputs, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    try:
        first = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            record["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            record["estimate_over_peak"] = record["estimate_gib"] / record["peak_gib"]
        record["seconds_per_step"] = time.perf_counter() - started
        record["first_loss"] = first
    except torch.OutOfMemoryError:
        record["error"] = "out of memory"
    finally:
        optimizer.state.clear()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny shape on a CPU")
    parser.add_argument("--length", type=int, default=339)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    plan = (
        [("smoke", "bf16", (2, 4)), ("smoke", "fp32", (4,))]
        if args.smoke
        else [
            ("smollm2-4layer", "fp32", (16, 128)),
            ("smollm2-4layer", "bf16", (128,)),
            ("smollm2-135m", "bf16", (16, 64, 128)),
        ]
    )
    length = 24 if args.smoke else args.length
    with open(args.out / "memory.jsonl", "w", encoding="utf-8") as log:
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        env = {"kind": "env", "device": str(device), "torch": torch.__version__, "gpu": gpu}
        print(json.dumps(env), flush=True)
        log.write(json.dumps(env) + "\n")
        for shape, precision, batches in plan:
            model = build(shape, device)
            state = {k: v.clone() for k, v in model.state_dict().items()}
            for batch in batches:
                for loss_kind in ("stock", "chunked"):
                    record = measure(
                        model, state, shape, loss_kind, batch, length, precision, device
                    )
                    print(json.dumps(record), flush=True)
                    log.write(json.dumps(record) + "\n")
            del model, state


if __name__ == "__main__":
    main()
