"""ref_common.py: shared helpers of the PyTorch reference scripts tools/ref_llm.py and tools/ref_vision.py.

Owns: reading the HF-layout checkpoint folder (config.json, sharded or single safetensors), the numerics
set-up (TF32 and reduced-precision reductions off, checked by a functional test), building transformers'
LlamaForCausalLM from config.json the way from_pretrained(torch_dtype=...) does (default-dtype context, so
the RoPE inv_freq buffer stays fp32), the prefill + greedy loop with the KV cache, and the fixture writer
(one .safetensors file, F32/F16/I32 only because src/tensor.h knows no other dtype, string metadata).
Does not own: any model math except the inv_freq check (spec §9); the vision path is in ref_vision.py.

Runs on the GPU machine (torch 2.11, transformers 5.17, safetensors, numpy); no network. Every assumption
about the transformers version is checked at run time and fails with a message that names it.
"""
import contextlib
import json
import os
import platform
import re
import sys

import numpy as np
import torch


def log(*a):
    print("[ref]", *a, flush=True)


def die(msg):
    print("ERROR: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


# ----------------------------------------------------------------------------------------- numerics

def setup_numerics(seed=0):
    """fp32 means IEEE fp32: no TF32 in cuBLAS or cuDNN (the vision patch embedding is a cuDNN conv), and no
    reduced-precision split-K reductions in fp16 GEMMs (PyTorch's default allows them; we want fp32
    accumulation so the C kernels have a well-defined target)."""
    mm = torch.backends.cuda.matmul
    if hasattr(mm, "fp32_precision"):
        # torch >= 2.9: only the new API, since torch refuses to report a TF32 state set through a mix of the
        # legacy flags and the new settings; check_no_tf32 verifies the effect
        mm.fp32_precision = "ieee"
        torch.backends.cudnn.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    else:
        mm.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    for name in ("allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction"):
        if hasattr(mm, name):
            setattr(mm, name, False)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.manual_seed(seed)
    assert torch.get_default_dtype() == torch.float32, torch.get_default_dtype()


def check_no_tf32(device):
    """Functional check: 1 + 2^-20 survives an fp32 GEMM and an fp32 conv only if TF32 (10-bit mantissa) is off."""
    if torch.device(device).type != "cuda":
        return "cpu (no TF32)"
    v = 1.0 + 2.0 ** -20
    a = torch.full((64, 64), v, dtype=torch.float32, device=device)
    eye = torch.eye(64, dtype=torch.float32, device=device)
    got = float((a @ eye)[0, 0])
    if got != v:
        die("TF32 is still on for fp32 matmul (1+2^-20 @ I gave %r)" % got)
    x = torch.full((1, 3, 14, 28), v, dtype=torch.float32, device=device)
    w = torch.zeros((4, 3, 14, 14), dtype=torch.float32, device=device)
    w[:, 0, 0, 0] = 1.0
    got = float(torch.nn.functional.conv2d(x, w, stride=14)[0, 0, 0, 0])
    if abs(got - v) >= 2.0 ** -21:  # TF32 rounds v to 1.0 (error 2^-20); a non-GEMM conv algorithm may add ~1e-7
        die("TF32 is still on for fp32 conv2d (got %r)" % got)
    return "ieee fp32 verified (matmul + conv)"


@contextlib.contextmanager
def default_dtype(dt):
    """What from_pretrained(torch_dtype=dt) does while it constructs the model: parameters are created in dt,
    while code that asks for torch.float explicitly (the RoPE inv_freq) keeps fp32."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dt)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ----------------------------------------------------------------------------------------- checkpoint

def load_config(model_dir):
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        die("%s: no config.json" % model_dir)
    with open(path) as f:
        cfg = json.load(f)
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
              "rms_norm_eps", "rope_theta", "max_position_embeddings"):
        if k not in cfg:
            die("%s: config.json has no %s" % (model_dir, k))
    if cfg.get("rope_scaling") not in (None, {}):
        die("config.json: rope_scaling %r is not supported (spec §1.1: null)" % (cfg["rope_scaling"],))
    if cfg.get("attention_bias", False):
        die("config.json: attention_bias true is not the MiniCPM-Llama3-V 2.5 LLM")
    return cfg


def shard_files(model_dir):
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        files = sorted(set(wm.values()))
        for fn in files:
            if not os.path.exists(os.path.join(model_dir, fn)):
                die("%s lists %s, which is missing" % (idx, fn))
        return files, wm
    files = sorted(fn for fn in os.listdir(model_dir) if fn.endswith(".safetensors"))
    if not files:
        die("%s: no *.safetensors" % model_dir)
    return files, None


def load_prefixed(model_dir, prefix):
    """All tensors whose name starts with prefix, prefix stripped, on the CPU, in their stored dtype.
    Returns (dict, set of stored dtypes)."""
    from safetensors import safe_open
    files, wm = shard_files(model_dir)
    out, dtypes = {}, set()
    for fn in files:
        with safe_open(os.path.join(model_dir, fn), framework="pt", device="cpu") as so:
            for k in so.keys():
                if not k.startswith(prefix):
                    continue
                if wm is not None and wm.get(k) != fn:
                    die("%s is in %s but the index says %s" % (k, fn, wm.get(k)))
                short = k[len(prefix):]
                if short in out:
                    die("tensor %s stored twice" % k)
                t = so.get_tensor(k)
                dtypes.add(str(t.dtype).replace("torch.", ""))
                out[short] = t
    if not out:
        die("%s: no tensor starts with %r" % (model_dir, prefix))
    return out, dtypes


def abs_sum_f64(t):
    """sum |x| in float64 (a checkpoint fingerprint the C tests recompute; summation order changes only
    the last bits, so compare with a relative tolerance like 1e-9)."""
    return float(t.to(torch.float64).abs().sum())


def fmt_f64(x):
    return "%.17g" % x


def copy_weights(module, sd, what):
    """Copies sd into module's parameters and persistent buffers, casting to each parameter's dtype.
    Every name must match both ways and every shape must be equal."""
    msd = module.state_dict()
    missing = sorted(set(msd) - set(sd))
    extra = sorted(set(sd) - set(msd))
    if missing or extra:
        die("%s: checkpoint/module names differ: missing in checkpoint %s; not in module %s"
            % (what, missing[:10], extra[:10]))
    with torch.no_grad():
        for k, dst in msd.items():
            src = sd[k]
            if tuple(src.shape) != tuple(dst.shape):
                die("%s: %s has shape %s in the checkpoint, %s in the module"
                    % (what, k, tuple(src.shape), tuple(dst.shape)))
            dst.copy_(src.to(device=dst.device, dtype=dst.dtype))


# ----------------------------------------------------------------------------------------- Llama

def llama_config(cfg, attn_impl):
    from transformers import LlamaConfig
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    kw = dict(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        hidden_act=cfg.get("hidden_act", "silu"), max_position_embeddings=cfg["max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"], rope_theta=float(cfg["rope_theta"]),
        # transformers >= 5 keeps RoPE settings in rope_parameters; 4.x ignores the extra attribute
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg["rope_theta"])},
        rope_scaling=None, attention_bias=False, attention_dropout=0.0, mlp_bias=False, pretraining_tp=1,
        tie_word_embeddings=False, head_dim=hd, use_cache=True,
        bos_token_id=cfg.get("bos_token_id", 128000), eos_token_id=cfg.get("eos_token_id", 128001),
        attn_implementation=attn_impl,
    )
    dropped = []
    while True:  # tolerate a transformers that rejects one of the optional keywords; the essentials are checked
        try:
            lc = LlamaConfig(**kw)
            break
        except TypeError as ex:
            m = re.search(r"unexpected keyword argument '(\w+)'", str(ex))
            if not m or m.group(1) not in kw or m.group(1) in ("hidden_size", "num_hidden_layers", "vocab_size"):
                raise
            dropped.append(m.group(1))
            kw.pop(m.group(1))
    if dropped:
        log("LlamaConfig rejected %s; built without them" % dropped)
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size", "rms_norm_eps", "tie_word_embeddings"):
        if getattr(lc, k) != kw[k]:
            die("LlamaConfig.%s = %r, config.json says %r" % (k, getattr(lc, k), kw[k]))
    theta = (getattr(lc, "rope_parameters", None) or {}).get("rope_theta", getattr(lc, "rope_theta", None))
    if theta is None or float(theta) != float(cfg["rope_theta"]):
        die("LlamaConfig lost rope_theta (%r)" % theta)
    if getattr(lc, "_attn_implementation", None) != attn_impl:
        lc._attn_implementation = attn_impl
    return lc


def expected_inv_freq(theta, head_dim):
    """Spec §9: inv_freq[i] = 1 / theta^(2i/hd) in fp32, computed on the CPU as transformers does on the
    README load path (from_pretrained builds on the CPU, then .cuda())."""
    return 1.0 / (float(theta) ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim))


def set_attn(model, impl):
    cur = getattr(model.config, "_attn_implementation", None)
    if cur == impl:
        return cur
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(impl)
        except Exception as ex:  # noqa: BLE001
            log("set_attn_implementation(%s) failed: %s" % (impl, ex))
    if getattr(model.config, "_attn_implementation", None) != impl:
        model.config._attn_implementation = impl
    cur = getattr(model.config, "_attn_implementation", None)
    if cur != impl:
        die("could not select attention implementation %s (config says %s)" % (impl, cur))
    return cur


def build_llama(cfg, sd, dtype, device, attn_impl):
    """LlamaForCausalLM in dtype on device with the llm.* weights (prefix stripped) of sd.
    Returns (model, info dict for the fixture metadata)."""
    from transformers import LlamaForCausalLM
    lc = llama_config(cfg, attn_impl)
    with default_dtype(dtype), torch.device(device):
        model = LlamaForCausalLM(lc)
    model.eval()
    info = {"attn_implementation": set_attn(model, attn_impl)}
    copy_weights(model, sd, "llm")
    for n, p in model.named_parameters():
        if p.dtype != dtype:
            die("llm parameter %s is %s, expected %s" % (n, p.dtype, dtype))
    if model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr():
        die("lm_head is tied to embed_tokens; config.json says tie_word_embeddings false")

    # RoPE: the README path keeps inv_freq in fp32 (spec §9, §11.15). Check what this transformers built
    # under an fp16 default dtype, then pin the CPU-computed fp32 values (the C code computes them the same
    # way); a difference is reported in the metadata, never silently kept.
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    want = expected_inv_freq(cfg["rope_theta"], hd)
    found = [(n, b) for n, b in model.named_buffers() if n.endswith("inv_freq")]
    if not found:
        die("no inv_freq buffer found in LlamaForCausalLM (transformers layout changed?)")
    notes = []
    for n, b in found:
        if tuple(b.shape) != tuple(want.shape):
            die("%s has shape %s, expected %s" % (n, tuple(b.shape), tuple(want.shape)))
        got = b.detach().float().cpu()
        ulps = int((got.view(torch.int32) - want.view(torch.int32)).abs().max())
        notes.append("%s built as %s, %d ulp from the CPU formula" % (n, str(b.dtype).replace("torch.", ""), ulps))
        if b.dtype != torch.float32:
            log("WARNING: %s was built as %s under default dtype %s; the README path keeps fp32. Pinning fp32."
                % (n, b.dtype, dtype))
        with torch.no_grad():
            if b.dtype != torch.float32:
                # rebind the buffer as fp32 on its module
                mod_name, _, buf_name = n.rpartition(".")
                mod = model.get_submodule(mod_name) if mod_name else model
                mod.register_buffer(buf_name, want.to(b.device), persistent=False)
            else:
                b.copy_(want.to(b.device))
    for n, b in model.named_buffers():
        if n.endswith("inv_freq") and b.dtype != torch.float32:
            die("%s is still %s after pinning" % (n, b.dtype))
    info["inv_freq_notes"] = "; ".join(notes) + "; pinned to the fp32 CPU values"
    log("llm %s on %s: attn=%s, inv_freq: %s" % (dtype, device, info["attn_implementation"], info["inv_freq_notes"]))
    return model, info


def _hidden(out):
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _cache(out):
    pkv = getattr(out, "past_key_values", None)
    if pkv is None:
        die("LlamaModel returned no past_key_values with use_cache=True")
    return pkv


@torch.no_grad()
def prefill(model, input_ids=None, inputs_embeds=None):
    """One forward over the whole prompt (positions 0..T-1, no attention mask, causal), returning the logits
    of the last position (model dtype, [V]), the KV cache and T."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids, inputs_embeds")
    out = model.model(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=True)
    h = _hidden(out)
    T = h.shape[1]
    logits = model.lm_head(h[:, -1:, :])[0, -1]
    return logits, _cache(out), T


@torch.no_grad()
def greedy(model, logits0, cache, T, steps):
    """steps greedy tokens: step 0 is argmax of the prefill logits; each next token is fed back with the
    KV cache at position T+s. Nothing is suppressed and nothing stops the loop (EOS included), so the
    C side can replay it exactly. Ties go to the lowest id (torch.argmax). Returns (ids, margins) where
    margin = top1 - top2 of the fp32 logits that chose the token."""
    dev = logits0.device
    ids, margins = [], []
    logits = logits0
    for s in range(steps):
        lf = logits.float().cpu()
        top2 = torch.topk(lf, 2).values
        tok = int(torch.argmax(lf))
        ids.append(tok)
        margins.append(float(top2[0] - top2[1]))
        if s == steps - 1:
            break
        out = model.model(input_ids=torch.tensor([[tok]], device=dev), past_key_values=cache, use_cache=True,
                          position_ids=torch.tensor([[T + s]], device=dev))
        cache = _cache(out)
        logits = model.lm_head(_hidden(out)[:, -1:, :])[0, -1]
    return ids, margins


@torch.no_grad()
def generate_check(model, ids, steps, input_ids=None, inputs_embeds=None):
    """Informational: HF generate(do_sample=False) must agree with our loop up to the first EOS it stops at."""
    try:
        kw = dict(do_sample=False, max_new_tokens=steps, pad_token_id=0, num_beams=1)
        if input_ids is not None:
            out = model.generate(input_ids=input_ids, **kw)[0, input_ids.shape[1]:]
        else:
            out = model.generate(inputs_embeds=inputs_embeds, **kw)[0]
        got = [int(x) for x in out]
        n = min(len(got), len(ids))
        same = got[:n] == ids[:n]
        return "generate agrees on %d tokens" % n if same else "generate DIFFERS: %s vs %s" % (got[:n], ids[:n])
    except Exception as ex:  # noqa: BLE001
        return "generate check skipped (%s: %s)" % (type(ex).__name__, str(ex)[:200])


# ----------------------------------------------------------------------------------------- fixtures

def env_metadata(device):
    md = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
          "platform": platform.platform()}
    for mod in ("transformers", "safetensors", "tokenizers", "PIL"):
        try:
            md[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            md[mod] = "absent"
    dev = torch.device(device)
    if dev.type == "cuda":
        md["device_name"] = torch.cuda.get_device_name(dev)
        md["cuda"] = str(torch.version.cuda)
        md["cudnn"] = str(torch.backends.cudnn.version())
    else:
        md["device_name"] = "cpu: " + (platform.processor() or platform.machine())
    try:
        md["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        pass
    return md


def tensor_stats(x):
    """[sum, sum of squares, max |x|, numel], computed in float64, stored as F32."""
    d = x.detach().to("cpu", torch.float64)
    return torch.tensor([float(d.sum()), float((d * d).sum()), float(d.abs().max()) if d.numel() else 0.0,
                         float(d.numel())], dtype=torch.float32)


class Fixture:
    """Collects named tensors (F32, F16 or I32) and string metadata; save() writes one .safetensors file.
    put_compact() stores a large [..., d] tensor as NAME.shape (I32, the full shape), NAME.stats (F32 [4]),
    NAME.row_idx (I32 [k], indices into the tensor viewed as [rows, d]) and NAME.rows (F32 [k, d]); with
    full="optional" the whole tensor NAME is added too if it fits the file budget (listed in the metadata key
    full_tensors), with full="always" it is always added."""

    KINDS = {"f32": torch.float32, "f16": torch.float16, "i32": torch.int32}

    def __init__(self, max_bytes=0):
        self.t = {}
        self.meta = {}
        self.optional = []
        self.max_bytes = max_bytes

    def put(self, name, x, kind):
        if name in self.t:
            die("fixture: %s written twice" % name)
        x = torch.as_tensor(x).detach().to("cpu")
        dt = self.KINDS[kind]
        if kind == "f16" and x.dtype not in (torch.float16,):
            # only lossless conversions: an fp16 reference stays fp16, nothing is rounded on the way
            die("fixture: %s stored as F16 but it is %s" % (name, x.dtype))
        self.t[name] = x.to(dt).contiguous()

    def put_compact(self, name, x, row_idx, full="never", full_kind="f16"):
        x = x.detach().to("cpu")
        rows = x.reshape(-1, x.shape[-1])
        row_idx = sorted(set(int(r) for r in row_idx if 0 <= int(r) < rows.shape[0]))
        self.put(name + ".shape", torch.tensor(list(x.shape), dtype=torch.int32), "i32")
        self.put(name + ".stats", tensor_stats(x), "f32")
        self.put(name + ".row_idx", torch.tensor(row_idx, dtype=torch.int32), "i32")
        self.put(name + ".rows", rows[row_idx].float(), "f32")
        if full == "always":
            self.put(name, x, full_kind)
        elif full == "optional":
            self.optional.append((name, x, full_kind))

    def nbytes(self):
        return sum(v.numel() * v.element_size() for v in self.t.values())

    def save(self, path):
        from safetensors.torch import save_file
        kept, dropped = [], []
        for name, x, kind in self.optional:
            need = x.numel() * (2 if kind == "f16" else 4)
            if self.max_bytes <= 0 or self.nbytes() + need + 65536 <= self.max_bytes:
                self.put(name, x, kind)
                kept.append(name)
            else:
                dropped.append(name)
        self.meta["full_tensors"] = ",".join(kept)
        self.meta["full_tensors_dropped_for_size"] = ",".join(dropped)
        meta = {k: str(v) for k, v in self.meta.items()}
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        save_file(self.t, path, metadata=meta)
        size = os.path.getsize(path)
        log("wrote %s: %d tensors, %.1f KiB%s" % (path, len(self.t), size / 1024.0,
                                                  ("; dropped (size) " + ",".join(dropped)) if dropped else ""))
        if self.max_bytes > 0 and size > self.max_bytes:
            log("WARNING: %s is %d bytes, over the %d budget" % (path, size, self.max_bytes))
        return size


def rel_err(a, b):
    a = a.detach().double().cpu().reshape(-1)
    b = b.detach().double().cpu().reshape(-1)
    nb = float(b.norm())
    return float((a - b).norm()) / nb if nb > 0 else float((a - b).norm())


def cosine(a, b):
    a = a.detach().double().cpu().reshape(-1)
    b = b.detach().double().cpu().reshape(-1)
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def parse_ids(s):
    s = s.strip()
    if os.path.exists(s):
        with open(s) as f:
            s = f.read()
    s = s.replace("[", " ").replace("]", " ").replace(",", " ")
    return [int(x) for x in s.split()]


def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        die("--device %s but torch.cuda.is_available() is False" % name)
    return name


def free_cuda():
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

