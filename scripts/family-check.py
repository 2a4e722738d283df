#!/usr/bin/env python3
"""Tiny random models of eight transformer families, as transformers saves
them, to check deltacome against what people publish.

  family-check.py make DIR
      For each family, DIR/FAMILY/base and DIR/FAMILY/ft: a random model and a
      fine-tune of it (every 2-D weight of the blocks moved by a low-rank
      delta plus noise, norms nudged), saved with save_pretrained
      (safetensors), the fine-tune with a model card, LICENSE and
      .gitattributes. The llama fine-tune also adds 8 tokens (embeddings and
      lm_head 8 rows longer). Prints each family's tensor names and shapes.

  family-check.py check DIR RECON
      Loads DIR/FAMILY/ft and RECON/FAMILY (a deltacome reconstruction) with
      transformers and prints, per family, whether it loaded, the relative
      logit difference on fixed random input (and, for scale, the base's
      difference from the fine-tune), and whether every file of the
      fine-tune folder came back byte-identical. Exit status 1 when a
      reconstruction fails to load or misses a file.

Needs torch and transformers; runs on CPU in seconds.
"""
import hashlib
import json
import os
import sys

import torch
import transformers as tf

SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

FAMILIES = {
    "llama": lambda: tf.LlamaConfig(**SMALL),
    "qwen2": lambda: tf.Qwen2Config(**SMALL),
    "mistral": lambda: tf.MistralConfig(**SMALL),
    "gemma": lambda: tf.GemmaConfig(**SMALL, head_dim=16),
    "phi3": lambda: tf.Phi3Config(**SMALL, pad_token_id=0),
    "mixtral": lambda: tf.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": lambda: tf.Qwen2MoeConfig(**SMALL, num_experts=4, num_experts_per_tok=2,
                                           moe_intermediate_size=64, shared_expert_intermediate_size=128),
    "gpt2": lambda: tf.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128),
}

SIDE = {"README.md": "# tiny fine-tune\n\nA model card.\n", "LICENSE": "Apache-2.0\n",
        ".gitattributes": "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}


def fine_tune(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            in_block = ".layers." in name or ".h." in name
            if p.dim() >= 2 and in_block:
                shape = p.shape
                m = p.reshape(-1, shape[-1])
                r = 4
                a = torch.randn(m.shape[0], r, generator=gen) * 0.02
                b = torch.randn(r, m.shape[1], generator=gen) * 0.02
                m += (a @ b + 0.002 * torch.randn(m.shape, generator=gen)).to(m.dtype)
            elif p.dim() == 1 and ("norm" in name or "ln_" in name):
                p += 0.01 * torch.randn(p.shape, generator=gen).to(p.dtype)


def make(root):
    for fam, cfg in FAMILIES.items():
        torch.manual_seed(1)
        gen = torch.Generator().manual_seed(2)
        base = tf.AutoModelForCausalLM.from_config(cfg()).to(torch.bfloat16)
        base.save_pretrained(os.path.join(root, fam, "base"), safe_serialization=True)
        fine_tune(base, gen)
        if fam == "llama":
            base.resize_token_embeddings(base.config.vocab_size + 8)
        ft = os.path.join(root, fam, "ft")
        base.save_pretrained(ft, safe_serialization=True)
        for name, text in SIDE.items():
            with open(os.path.join(ft, name), "w") as f:
                f.write(text)
        from safetensors import safe_open
        with safe_open(os.path.join(ft, "model.safetensors"), "pt") as f:
            print(fam, json.dumps({k: list(f.get_slice(k).get_shape()) for k in f.keys()}))


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check(root, recon):
    bad = 0
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    for fam in FAMILIES:
        ft_dir, rc_dir = os.path.join(root, fam, "ft"), os.path.join(recon, fam)
        missing = [n for n in sorted(os.listdir(ft_dir))
                   if os.path.isfile(os.path.join(ft_dir, n)) and
                   (not os.path.exists(os.path.join(rc_dir, n)) or
                    digest(os.path.join(ft_dir, n)) != digest(os.path.join(rc_dir, n)) and
                    not n.endswith(".safetensors"))]
        try:
            load = lambda d: tf.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
            ft, rc = load(ft_dir), load(rc_dir)
            with torch.no_grad():
                a, b = ft(ids).logits, rc(ids).logits
                # The base, for scale: how far the fine-tune moved the logits.
                base = load(os.path.join(root, fam, "base"))
                n = min(a.shape[-1], base.config.vocab_size)
                c = base(ids).logits[..., :n]
            rel, moved = float((a - b).norm() / a.norm()), float((a[..., :n] - c).norm() / a[..., :n].norm())
            print(f"{fam:10s} loaded  logit rel diff {rel:.4f} (base to fine-tune: {moved:.4f})  files missing or different: {missing or 'none'}")
        except Exception as e:  # report and go on to the next family
            print(f"{fam:10s} FAILED to load: {e}")
            bad += 1
        bad += bool(missing)
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
