#!/usr/bin/env python3
"""Measure the input statistics `deltacome compress --calibration STATS` reads.

Runs a fine-tuned Hugging Face model over a text file, one decoder layer at a
time, and writes STATS: a safetensors file with one F32 tensor per input site,
the packed upper triangle (row by row, n(n+1)/2 values) of H = X^T X, X the
inputs (tokens x n) the site's projections saw. docs/CALIBRATION.md specifies
the file; this script is one way to make it.

    python3 scripts/calibrate.py ./my-ft domain.txt ft-stats.safetensors \\
        --tokens 65536 --seq-len 256 --device cuda --deltacome ./deltacome

Needs torch and transformers (written against torch 2.11, transformers 5.17)
and the deltacome binary, which computes the fine-tune's fingerprint
(`deltacome fingerprint MODEL`, recorded in STATS so that compress can tell
statistics of another checkpoint). Tests never run it.

One layer at a time: the model is loaded on the CPU; the embeddings and the
first layer's inputs are computed for every window, then each decoder layer in
turn is moved to --device, run over all windows with forward hooks on its
nn.Linear modules accumulating X^T X in float64 on the device, and moved back;
its outputs are the next layer's inputs. Device memory holds one layer, its
float64 Gram matrices and the windows' hidden states; CPU memory the model.

Sites (the rule deltacome's CalibrationSite applies to tensor names): the
module name of the projection, its last part q_proj/k_proj/v_proj -> qkv_proj
and gate_proj/up_proj -> gate_up_proj (one Gram matrix for projections reading
one input), anything else its own name. Projections that are not nn.Linear
modules in transformers (fused 3-D MoE expert tensors) get no site; compress
encodes them data-free and says so.
"""
import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

# Measured minimum token counts below which calibration did worse than
# data-free (docs/CALIBRATION.md): 16 windows of 256 in-domain tokens, 64 of
# generic text.
MIN_IN_DOMAIN = 16 * 256
MIN_GENERIC = 64 * 256

SHARED_SITES = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def site_of(module_name):
    """The statistics tensor name for a projection module's input."""
    parent, _, last = module_name.rpartition(".")
    last = SHARED_SITES.get(last, last)
    return parent + "." + last if parent else last


class StatsWriter:
    """Writes a safetensors file whose tensors are known up front (names and
    lengths) and whose data arrive one tensor at a time, in header order: the
    statistics of a large model never need to be in memory together."""

    def __init__(self, path, sites, metadata):
        # sites: list of (name, n) in the order their data will be written.
        self.tmp = path + ".tmp"
        self.path = path
        self.order = [name for name, _ in sites]
        header, off = {"__metadata__": metadata}, 0
        for name, n in sites:
            size = 4 * n * (n + 1) // 2
            header[name] = {"dtype": "F32", "shape": [n * (n + 1) // 2], "data_offsets": [off, off + size]}
            off += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.f = open(self.tmp, "wb")
        self.f.write(struct.pack("<Q", len(raw)) + raw)
        self.sizes = {name: header[name]["data_offsets"][1] - header[name]["data_offsets"][0] for name in self.order}
        self.next = 0

    def write(self, name, data):
        """data: little-endian float32 bytes of the packed triangle."""
        if self.order[self.next] != name or len(data) != self.sizes[name]:
            raise RuntimeError(f"internal: {name} written out of order or with {len(data)} bytes")
        self.f.write(data)
        self.next += 1

    def close(self):
        self.f.close()
        if self.next != len(self.order):
            os.remove(self.tmp)
            raise RuntimeError("internal: not every site was written")
        os.replace(self.tmp, self.path)


def progress(total, desc):
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="window")
    except ImportError:
        class Plain:
            def __init__(self):
                self.n = 0

            def update(self, k=1):
                self.n += k
                if self.n == total or self.n % max(1, total // 10) == 0:
                    print(f"{desc}: {self.n}/{total} windows", file=sys.stderr, flush=True)

            def close(self):
                pass
        return Plain()


def fingerprint(deltacome, model):
    exe = shutil.which(deltacome) or (deltacome if os.path.exists(deltacome) else None)
    if exe is None:
        sys.exit(f"calibrate: the deltacome binary {deltacome!r} was not found; give its path with --deltacome "
                 "(it computes the model's fingerprint that STATS records)")
    out = subprocess.run([exe, "fingerprint", model], check=True, capture_output=True, text=True).stdout
    return out.split()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="the fine-tuned Hugging Face model folder (the FT given to compress)")
    ap.add_argument("text", help="calibration text (UTF-8); text of the fine-tune's own domain works best")
    ap.add_argument("output", help="statistics file to write (safetensors)")
    ap.add_argument("--tokens", type=int, default=MIN_GENERIC * 4, help="tokens to measure, at most (default %(default)s)")
    ap.add_argument("--seq-len", type=int, default=256, help="window length in tokens (default %(default)s)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ap.add_argument("--byte-level", action="store_true",
                    help="the model reads raw bytes (token id = byte value) and ships no tokenizer")
    ap.add_argument("--deltacome", default="deltacome", help="the deltacome binary, for the fingerprint (default: on PATH)")
    args = ap.parse_args()

    fp = fingerprint(args.deltacome, args.model)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    text = open(args.text, "rb").read()
    if args.byte_level:
        ids = list(text)
    else:
        tok = AutoTokenizer.from_pretrained(args.model)
        ids = tok(text.decode("utf-8", errors="replace"), add_special_tokens=False)["input_ids"]
    n_windows = min(len(ids), args.tokens) // args.seq_len
    if n_windows == 0:
        sys.exit(f"calibrate: {args.text} holds {len(ids)} tokens, fewer than one window of {args.seq_len}")
    tokens = n_windows * args.seq_len
    if tokens < MIN_GENERIC:
        print(f"calibrate: warning: {tokens} tokens; calibration measured worse than data-free below "
              f"{MIN_IN_DOMAIN} tokens of the fine-tune's own domain and {MIN_GENERIC} of generic text",
              file=sys.stderr)
    windows = torch.tensor(ids[:tokens]).view(n_windows, args.seq_len)

    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
    except TypeError:  # transformers before 4.56 names it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype="auto")
    model.eval()
    layers = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0 and name.endswith("layers"):
            layers, prefix = mod, name
            break
    if layers is None:
        sys.exit("calibrate: no decoder layer list (a ModuleList named *layers) in this model")

    # The sites of every layer, in the order they are written: a site is
    # measured at the first projection reading it (q_proj for q/k/v).
    plan = []  # per layer: [(site, module name, module)]
    for i, layer in enumerate(layers):
        seen, sites = set(), []
        for name, mod in layer.named_modules():
            if isinstance(mod, torch.nn.Linear):
                site = site_of(f"{prefix}.{i}.{name}")
                if site not in seen:
                    seen.add(site)
                    sites.append((site, mod))
        plan.append(sites)
    writer = StatsWriter(args.output, [(s, m.in_features) for sites in plan for s, m in sites], {
        "deltacome_calibration": "1", "tokens": str(tokens), "seq_len": str(args.seq_len),
        "text": os.path.basename(args.text), "text_sha256": hashlib.sha256(text).hexdigest(),
        "fingerprint": fp, "model": os.path.basename(os.path.abspath(args.model))})

    # The first layer's inputs: run the model up to it, catching the
    # arguments it is called with (positions, masks: whatever this
    # transformers version passes).
    class Caught(Exception):
        pass

    inputs, kwargs = [], []
    first = layers[0]

    def catch(_, a, kw):
        kw = dict(kw)
        hidden = a[0] if a else kw.pop("hidden_states")
        inputs.append(hidden.detach().cpu())
        kwargs.append(kw)
        raise Caught

    # Everything but the decoder layers (embeddings, rotary tables) goes to
    # the device; the layers stay on the CPU until their turn.
    inside = prefix + "."
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not name.startswith(inside):
            t.data = t.data.to(device)
    hook = first.register_forward_pre_hook(catch, with_kwargs=True)
    with torch.no_grad():
        for w in windows:
            try:
                model(w.unsqueeze(0).to(device), use_cache=False)
            except Caught:
                pass
    hook.remove()

    for i, layer in enumerate(layers):
        layer.to(device)
        grams = {}

        def hook_for(site, n):
            grams[site] = torch.zeros(n, n, dtype=torch.float64, device=device)

            def accumulate(_, a):
                x = a[0].reshape(-1, n).to(torch.float64)
                grams[site].addmm_(x.T, x)
            return accumulate

        hooks = [m.register_forward_pre_hook(hook_for(s, m.in_features)) for s, m in plan[i]]
        bar = progress(n_windows, f"layer {i + 1}/{len(layers)}")
        with torch.no_grad():
            for j in range(n_windows):
                out = layer(inputs[j].to(device), **kwargs[j])
                out = out[0] if isinstance(out, tuple) else out
                inputs[j] = out.detach().cpu()
                bar.update(1)
        bar.close()
        for h in hooks:
            h.remove()
        for site, _ in plan[i]:
            g = grams.pop(site)
            packed = torch.cat([g[r, r:] for r in range(g.shape[0])]).to(torch.float32).cpu()
            writer.write(site, packed.numpy().astype("<f4").tobytes())
            del g
        layer.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    writer.close()
    print(f"calibrate: wrote {args.output}: {sum(len(s) for s in plan)} sites, {tokens} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
