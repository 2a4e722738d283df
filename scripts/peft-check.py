#!/usr/bin/env python3
"""Check an adapter written by `deltacome export-lora` against PEFT.

    python3 scripts/peft-check.py BASE_DIR ADAPTER_DIR [--ft FT_DIR]

Loads BASE_DIR with transformers, puts the adapter on it with
peft.PeftModel.from_pretrained, and compares its logits on fixed random
token ids with those of a second copy of the base into which B A (times
lora_alpha / r, transposed when fan_in_fan_out) was merged by hand from the
adapter's files, modules_to_save tensors copied in. Both are the same
rank-r model if PEFT reads the names, shapes, scaling and orientation as
deltacome meant them, so the relative logit difference
|L_peft - L_merged|_F / |L_merged|_F is float rounding (about 1e-6 in
float32). It also checks that every lora_A / lora_B PEFT holds equals the
file's tensor, so that no module was silently left at PEFT's initial
values.

With --ft FT_DIR it also prints how far the rank-r model's logits are from
the full fine-tune's: |L_merged - L_ft| / |L_ft - L_base|, the share of
the fine-tune's logit change the adapter misses, and the agreement of the
most likely next token.

Needs torch, transformers, peft and safetensors; runs on a GPU when one is
present, else on the CPU. No tokenizer is needed. Exit status 0 when the
logits agree within --tol, 1 otherwise. Not run by the Go tests.
"""

import argparse
import json
import os
import re
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

PREFIX = "base_model.model."


def pattern(patterns, module, default):
    """The value of the first rank_pattern / alpha_pattern key that matches
    the module path the way PEFT matches it, else default."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load(path, dtype, device):
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except TypeError:  # transformers before 4.56 knows torch_dtype only
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype)
    return model.to(device=device, dtype=dtype).eval()


def merge(model, adapter_dir):
    """Adds scaling * B A to each target weight of model and copies the
    modules_to_save tensors in, from the adapter's files alone."""
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    sd = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    params = dict(model.named_parameters())
    ranks, alphas = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    merged = saved = 0
    for key, tensor in sd.items():
        assert key.startswith(PREFIX), key
        name = key[len(PREFIX):]
        if name.endswith(".lora_B.weight"):
            continue
        if name.endswith(".lora_A.weight"):
            module = name[: -len(".lora_A.weight")]
            a = tensor.double()
            b = sd[PREFIX + module + ".lora_B.weight"].double()
            rank = pattern(ranks, module, cfg["r"])
            assert rank == a.shape[0], (module, rank, a.shape)
            scaling = pattern(alphas, module, cfg["lora_alpha"]) / rank
            delta = scaling * (b @ a)
            if cfg.get("fan_in_fan_out"):
                delta = delta.T
            w = params[module + ".weight"]
            assert w.shape == delta.shape, (module, w.shape, delta.shape)
            with torch.no_grad():
                w.copy_((w.double() + delta.to(w.device)).to(w.dtype))
            merged += 1
        else:
            with torch.no_grad():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))
            saved += 1
    return cfg, sd, merged, saved


def check_loaded(peft_model, sd):
    """Returns the largest difference between a lora_A / lora_B that PEFT
    holds and the file's tensor, relative to the tensor's largest entry,
    and how many it compared."""
    inner = peft_model.base_model.model
    worst, n = 0.0, 0
    for key, tensor in sd.items():
        name = key[len(PREFIX):]
        for part in ("lora_A", "lora_B"):
            suffix = "." + part + ".weight"
            if name.endswith(suffix):
                layer = getattr(inner.get_submodule(name[: -len(suffix)]), part)["default"]
                got = layer.weight.detach().float().cpu()
                want = tensor.float()
                worst = max(worst, (got - want).abs().max().item() / max(want.abs().max().item(), 1e-30))
                n += 1
    return worst, n


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def rel(x, y):
    return (x - y).norm().item() / max(y.norm().item(), 1e-30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the base model folder")
    ap.add_argument("adapter", help="the adapter folder export-lora wrote")
    ap.add_argument("--ft", help="the full fine-tune's folder, to see what the adapter misses")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--tol", type=float, default=1e-3, help="largest relative logit difference accepted")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    base = load(args.base, dtype, device)
    vocab = base.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=gen).to(device)
    l_base = logits(base, ids)

    peft_model = PeftModel.from_pretrained(load(args.base, dtype, device), args.adapter).eval()
    worst, n = check_loaded(peft_model, load_file(os.path.join(args.adapter, "adapter_model.safetensors")))
    l_peft = logits(peft_model, ids)

    ref = load(args.base, dtype, device)
    cfg, _, merged, saved = merge(ref, args.adapter)
    l_merged = logits(ref, ids)

    print(f"device {device}, dtype {args.dtype}, {args.batch}x{args.seq} random tokens, vocab {vocab}")
    print(f"adapter: r {cfg['r']}, lora_alpha {cfg['lora_alpha']}, {merged} modules, {saved} modules_to_save tensors, "
          f"fan_in_fan_out {cfg.get('fan_in_fan_out')}")
    print(f"PEFT holds {n} factor tensors; largest relative difference from the file: {worst:.3g}")
    diff = rel(l_peft, l_merged)
    print(f"relative logit difference |L_peft - L_merged| / |L_merged|: {diff:.3e}")
    print(f"the adapter's effect |L_merged - L_base| / |L_base|: {rel(l_merged, l_base):.4f}")
    if args.ft:
        l_ft = logits(load(args.ft, dtype, device), ids)
        missed = (l_merged - l_ft).norm().item() / max((l_ft - l_base).norm().item(), 1e-30)
        agree = (l_merged.argmax(-1) == l_ft.argmax(-1)).float().mean().item()
        agree_base = (l_base.argmax(-1) == l_ft.argmax(-1)).float().mean().item()
        print(f"against the fine-tune: |L_merged - L_ft| / |L_ft - L_base| = {missed:.4f}; "
              f"next-token argmax agrees {agree:.3f} (base: {agree_base:.3f})")
    ok = diff <= args.tol and n == 2 * merged and worst <= args.tol
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
