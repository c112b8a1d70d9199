"""`rollout.engine: vllm`: one vLLM engine in the training process samples rollouts and on-policy
evaluation through the policy's LoRA adapter, which alone is synced after each update.

What it does:
- `build_rollout_engine(cfg, base)`: None for `rollout.engine: hf` (nothing is imported); for
  `vllm`, a `VLLMEngine` built once from the frozen base the recipe names (a built-in base's
  folder, a local folder or a hub id, in the recipe's dtype), with LoRA on, in this process
  (`VLLM_ENABLE_V1_MULTIPROCESSING=0` unless set), taking `rollout.vllm_gpu_memory_utilization` of
  a GPU or a CPU KV cache of `rollout.vllm_kv_cache_gib` GiB;
- `VLLMEngine.sync(base)`: when the policy adapter's tensors changed since the last sync (torch's
  in-place version counters say so), writes the adapter (peft format, tensors only: never merged
  base weights) to a folder in RAM (`/dev/shm` where it exists) and hands it to vLLM under a new
  LoRA id; the previous adapter is removed from the engine and the disk. Returns the bytes moved
  (logged as `rollout/sync_bytes`); the first sync prints once what a merged full-weight sync
  (TRL's way: every base weight) would move instead;
- `VLLMEngine.generate(...)`: a drop-in for `align.rollout.generate` (same arguments, same
  `Rollout`): our tokenizer's prompt ids go in, each completion gets its own seed in vLLM's
  per-request `SamplingParams(seed=...)`: a row generator's seed (`completion_generators`: run
  seed, iteration, global completion index, so 1 and 2 processes sample the same), or the
  `seed`/`generator` seed mixed with the row's index. Stops at exactly the `eos_token_ids` and at
  the stop strings; the mask includes the stop token as the hf loop's does. vLLM's log-probs of
  the sampled tokens (after temperature, `processed_logprobs`) come back as
  `Rollout.sampler_logps_BT`: they only measure the training-inference mismatch (and weight the
  optional `rollout.tis_cap` correction); the log-probs that train are the trainer's.

What it leaves out: full-mode policies (the config refuses: every weight would move), sharded
(FSDP) policies, adapters on the embeddings or LM head (vLLM does not load them), GGUF bases,
sleep mode between rollouts, sharing one copy of the base between trainer and engine.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_vllm_engine.py` in an environment with the
`vllm` extra (docs/vllm.md); elsewhere those tests skip.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from align.models import resolve_model_path
from align.rollout import Rollout
from align.rollout import _first_stop as first_stop  # the hf loop's stop-string cut, shared

# The ranks vLLM can be started with (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SEED_MODULUS = 2**63 - 1  # vLLM seeds a torch.Generator per request: keep seeds in int64


def row_seeds(count: int, seed: int | None = None, generator: torch.Generator | None = None,
              row_generators: Sequence[torch.Generator] | None = None) -> list[int]:
    """One sampling seed per row: each row generator's own seed; else the `seed` (or the
    `generator`'s seed) mixed with the row's index; else draws from torch's global RNG."""
    if row_generators is not None:
        return [int(g.initial_seed()) % SEED_MODULUS for g in row_generators]
    if seed is None and generator is not None:
        seed = int(generator.initial_seed())
    if seed is None:
        return [int(s) for s in torch.randint(0, 2**62, (count,))]
    return [((seed * 1_000_003 + i) * 7 + 5) % SEED_MODULUS for i in range(count)]


def ram_dir() -> str | None:
    """A RAM-backed folder for synced adapters (/dev/shm where it exists), else the default temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def full_weight_bytes(model: torch.nn.Module) -> int:
    """What a merged full-weight sync moves: every base weight (adapter tensors left out)."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n)


class VLLMEngine:
    """One colocated vLLM engine on a frozen base, sampling through a synced LoRA adapter."""

    def __init__(self, model_path: str, dtype: str, max_lora_rank: int, seed: int = 0,
                 gpu_memory_utilization: float = 0.3, kv_cache_gib: float = 1.0, max_model_len: int | None = None):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine lives in this process
        # read by the CPU build only, as a whole number of GiB ("0.25" fails at engine start): rounded up
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(math.ceil(kv_cache_gib)))
        try:
            from vllm import LLM  # optional dependency: the `vllm` extra
        except ImportError as err:
            raise SystemExit(f"rollout.engine=vllm needs vLLM: pip install -e \".[vllm]\" (docs/vllm.md); {err}") from None
        rank = next((r for r in VLLM_LORA_RANKS if r >= max_lora_rank), None)
        if rank is None:
            raise SystemExit(f"rollout.engine=vllm: LoRA rank {max_lora_rank} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})")
        self.llm = LLM(model=model_path, dtype=dtype, seed=seed, enable_lora=True, max_lora_rank=rank, max_loras=1,
                       enforce_eager=True, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       logprobs_mode="processed_logprobs", enable_prefix_caching=False)
        self.lora_request = None
        self._adapter_dir: str | None = None
        self._versions: tuple | None = None
        self.syncs = 0
        self.last_sync_bytes = 0
        self.full_sync_bytes: int | None = None

    # ------------------------------------------------------------------ adapter sync

    def sync(self, base, role: str = "policy") -> int:
        """Hand `role`'s adapter to the engine when its tensors changed; returns the bytes moved
        (0 when nothing changed)."""
        from vllm.lora.request import LoRARequest  # optional dependency: imported with the engine above

        params = base.role_parameters(role)
        versions = tuple(p._version for p in params) + tuple(p.data_ptr() for p in params)
        if versions == self._versions and self.lora_request is not None:
            return 0
        folder = tempfile.mkdtemp(prefix="align-vllm-adapter-", dir=ram_dir())
        base.save_role(role, folder)  # peft format: adapter_config.json + adapter_model.safetensors
        moved = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
        previous, previous_dir = self.lora_request, self._adapter_dir
        self.syncs += 1
        self.lora_request = LoRARequest(f"{role}-{self.syncs}", self.syncs, folder)
        self._adapter_dir, self._versions, self.last_sync_bytes = folder, versions, moved
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous_dir, ignore_errors=True)
        if self.full_sync_bytes is None:
            self.full_sync_bytes = full_weight_bytes(base.model)
            print(f"vllm engine: adapter-only sync moves {moved / 2**20:.2f} MiB per update; a merged full-weight "
                  f"sync would move {self.full_sync_bytes / 2**20:.2f} MiB ({moved / max(self.full_sync_bytes, 1):.2%})")
        return moved

    def close(self) -> None:
        """Shut the engine down (vLLM's teardown also destroys torch.distributed's default group:
        call it after the last collective) and remove the synced adapter's folder."""
        self.llm.llm_engine.engine_core.shutdown()
        if self._adapter_dir is not None:
            shutil.rmtree(self._adapter_dir, ignore_errors=True)
            self._adapter_dir = None

    # ------------------------------------------------------------------ sampling

    def generate(self, model, tokenizer, prompts: Sequence[str], max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, do_sample: bool = True, stop_strings: Sequence[str] | None = None,
                 batch_size: int = 64, generator: torch.Generator | None = None, seed: int | None = None,
                 row_generators: Sequence[torch.Generator] | None = None, add_special_tokens: bool = True,
                 eos_token_ids: Sequence[int] | None = None, progress: bool | None = None) -> Rollout:
        """`align.rollout.generate`'s arguments and result, sampled by vLLM through the synced
        adapter (`model` and `batch_size` are unused: vLLM batches by itself)."""
        from vllm import SamplingParams  # optional dependency: imported with the engine above

        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if row_generators is not None and (generator is not None or seed is not None):
            raise ValueError("pass row_generators, or generator/seed, not both")
        prompts = list(prompts)
        if row_generators is not None and len(row_generators) != len(prompts):
            raise ValueError(f"got {len(row_generators)} row generators for {len(prompts)} prompts")
        eos_ids = list(eos_token_ids) if eos_token_ids is not None else [tokenizer.eos_token_id]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
        greedy = not do_sample or temperature == 0.0
        seeds = row_seeds(len(prompts), seed, generator, row_generators)
        prompt_ids = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
        params = [SamplingParams(n=1, max_tokens=max_new_tokens, temperature=0.0 if greedy else temperature,
                                 top_p=1.0 if greedy else top_p, seed=None if greedy else s, logprobs=0,
                                 ignore_eos=True, stop_token_ids=eos_ids, stop=list(stop_strings or []) or None,
                                 detokenize=bool(stop_strings), skip_special_tokens=True)
                  for s in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=bool(progress),
                                    lora_request=self.lora_request) if prompts and max_new_tokens > 0 else []

        P = max((len(ids) for ids in prompt_ids), default=0)
        responses = [list(o.outputs[0].token_ids) for o in outputs] or [[] for _ in prompts]
        T = max((len(r) for r in responses), default=0)
        B = len(prompts)
        prompt_ids_BP = torch.full((B, P), pad_id, dtype=torch.long)
        prompt_mask_BP = torch.zeros(B, P, dtype=torch.long)
        response_ids_BT = torch.full((B, T), pad_id, dtype=torch.long)
        response_mask_BT = torch.zeros(B, T, dtype=torch.long)
        sampler_logps_BT = torch.zeros(B, T, dtype=torch.float32)
        stopped_B = torch.zeros(B, dtype=torch.bool)
        texts = []
        for i, (ids, response) in enumerate(zip(prompt_ids, responses)):
            if ids:
                prompt_ids_BP[i, P - len(ids):] = torch.tensor(ids)
                prompt_mask_BP[i, P - len(ids):] = 1
            if response:
                response_ids_BT[i, :len(response)] = torch.tensor(response)
                response_mask_BT[i, :len(response)] = 1
            if outputs:
                completion = outputs[i].outputs[0]
                stopped_B[i] = completion.finish_reason == "stop"
                if completion.logprobs and not greedy:
                    sampler_logps_BT[i, :len(response)] = torch.tensor(
                        [step[token].logprob for step, token in zip(completion.logprobs, response)])
            text = tokenizer.decode(response, skip_special_tokens=True)
            cut = first_stop(text, stop_strings) if stop_strings else -1
            texts.append(text[:cut] if cut >= 0 else text)
        return Rollout(prompts, prompt_ids_BP, prompt_mask_BP, response_ids_BT, response_mask_BT, texts, stopped_B,
                       None if greedy else sampler_logps_BT)


def adapter_rank(base, role: str = "policy") -> int:
    """The LoRA rank of `role`'s adapter, as peft saves it."""
    with tempfile.TemporaryDirectory(dir=ram_dir()) as folder:
        base.save_role(role, folder)
        return int(json.loads((Path(folder) / "adapter_config.json").read_text())["r"])


def build_rollout_engine(cfg, base, sharded: bool = False) -> VLLMEngine | None:
    """The recipe's rollout engine: None for `rollout.engine: hf`, else one `VLLMEngine` on the
    frozen base (module docstring), with the policy adapter synced once."""
    r = cfg.rollout
    if r.engine == "hf":
        return None
    if sharded:
        raise SystemExit("rollout.engine=vllm: a sharded (FSDP) policy is not supported; use rollout.engine=hf")
    if cfg.lora.targets == "all+embeddings":
        raise SystemExit("rollout.engine=vllm: vLLM does not load adapters on the embeddings or LM head "
                         "(lora.targets all+embeddings); use lora.targets all or rollout.engine=hf")
    path = resolve_model_path(cfg.model)
    if path.endswith(".gguf"):
        raise SystemExit("rollout.engine=vllm needs a Hugging Face model folder, not a GGUF file; use rollout.engine=hf")
    engine = VLLMEngine(path, cfg.dtype, adapter_rank(base), seed=cfg.train.seed,
                        gpu_memory_utilization=r.vllm_gpu_memory_utilization, kv_cache_gib=r.vllm_kv_cache_gib)
    engine.sync(base)
    return engine
