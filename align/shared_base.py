"""SharedBase: one frozen base model, many roles (policy, reference, reward, value).

What it does:
- holds ONE `transformers` causal LM whose weights are frozen, and gives it roles:
    policy     trainable LoRA adapter (fresh, or started from a saved adapter, e.g. an SFT run's)
    reference  the policy's starting point: the base with adapters disabled when the policy starts
               from the base, or a frozen copy of the start adapter (its own adapter name) when
               the policy starts from a saved adapter
    reward     LoRA adapter + scalar head: frozen when loaded from a reward-model directory,
               trainable when created fresh for reward-model training
    value      trainable LoRA adapter + trainable scalar head (PPO critic), optionally started
               from the reward adapter and head
- runs the model "as" a role: `with base.role("policy") as model: ...`, or the explicit methods
  `logprobs` (per-token log-probs and entropies: `align.logprobs.token_logprobs`, the one log-prob
  path), `hidden_states`, `scores`, `values`, `generate`;
- `mode="full"` gives every role its own full copy of the model (the FullFT baseline) behind the
  same API;
- saves and loads roles in Hugging Face formats: a peft adapter directory that plain
  `peft.PeftModel.from_pretrained(base, dir)` loads (or `save_pretrained` of a full copy), plus
  `head.safetensors` (keys `weight`, `bias`) for the roles with a head.

How roles are switched (the invariant: switching never changes `requires_grad` or train/eval):
peft's own switches have side effects. `PeftModel.set_adapter` sets `requires_grad` on every
adapter (only the active one trainable), so switching roles between a forward and its backward
silently drops gradients; `disable_adapter()` restores flags through `set_adapter`;
`load_adapter(is_trainable=False)` calls `eval()` on the whole model. SharedBase uses none of
them. A role context writes the two per-layer switches that the LoRA forward reads,
`BaseTunerLayer._active_adapter` and `_disable_adapters`, on every tuner layer, and restores
them on exit; it never touches a parameter flag. Adding adapters (where peft does touch flags
and modes) happens inside `_preserve_state()`, which snapshots `requires_grad` of every parameter
and `training` of every module and restores them, then sets the new adapter's flags explicitly.
So a policy forward, a reward forward and a value forward can run in any order before ONE
`backward()` and every trainable role gets its gradients (tests/test_shared_base.py proves it).

Activation checkpointing re-runs layers during `backward()`, when another role may be active;
`enable_activation_checkpointing()` hands torch's checkpoint a `context_fn` that replays the
forward-time adapter switches during the recompute (use it instead of the model's own method).

Outside any role context the adapters are disabled: calling `base.model` directly runs the
plain base. Frozen roles (reference, a loaded reward) run in eval mode inside their context
(dropout off; the modes are restored on exit) and the explicit methods run them under
`torch.no_grad()`. Trainable roles run in whatever train/eval mode the caller set.

Heads are `ScalarHead`s (an `nn.Linear(hidden, 1)` in float32, `align.role_helpers`), kept
outside the peft-wrapped model (so no `target_modules` setting can wrap them), applied to the
final hidden state (after the final norm). `scores` reads the last REAL token (works with left
and right padding); a reward head with the `last_token+logprob` readout also reads the
completion's log-probs under the same role (pass `completion_mask`). Every forward uses position
ids computed from the attention mask, so padding side does not change results.

What it leaves out: loading models by name (`align.models`), batching and generation loops
(`align.rollout`), losses and optimisers (trainers), multi-process wrapping (the trainers wrap
or all-reduce `trainable_parameters`).

Run its tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_shared_base.py`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn

from align.compat import enable_activation_checkpointing
from align.config import LoraSettings
from align.logprobs import DEFAULT_LOGPROB_CHUNK_BYTES, TokenLogProbs, final_hidden_states, sum_and_mean_logprobs, token_logprobs
from align.lora import peft_lora_config
from align.models import load_model_and_tokenizer
from align.modes import eval_mode
from align.role_helpers import (
    HEAD_FILE, CheckpointContextFn, check_readout, ScalarHead, hidden_size, load_full_weights, read_head_state, readout_of_state,
    save_head,
)
from align.rollout import generate as rollout_generate
from align.tensors import last_token_index

ROLES = ("policy", "reference", "reward", "value")
MODES = ("lora", "full")
ROLE_FILE = "align_role.json"
# Whether a role is trained when it is added without saying so.
DEFAULT_TRAINABLE = {"policy": True, "reference": False, "reward": False, "value": True}


@dataclass
class _Role:
    """What one role is. LoRA mode: `adapter` is the peft adapter name (None = adapters
    disabled, the plain base). Full mode: `model` is the role's own full model."""

    name: str
    trainable: bool
    adapter: str | None = None
    model: nn.Module | None = None
    head: ScalarHead | None = None
    source: str | None = None  # the directory it was loaded from, if any


def _lora_settings(lora: Any) -> LoraSettings:
    """None (the recipe defaults, `align.config.LoraSettings`: the one source of LoRA defaults),
    a `LoraSettings`, or a dict of some of its fields."""
    if lora is None:
        return LoraSettings()
    if isinstance(lora, LoraSettings):
        return lora
    if isinstance(lora, Mapping):
        known = {f.name for f in dataclasses.fields(LoraSettings)}
        unknown = set(lora) - known
        if unknown:
            raise ValueError(f"unknown lora settings {sorted(unknown)}; known: {sorted(known)}")
        return LoraSettings(**lora)
    raise TypeError(f"lora must be None, a dict or align.config.LoraSettings, got {type(lora).__name__}")


class SharedBase:
    """One frozen base model and its roles. See the module docstring."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, mode: str = "lora", lora: Any = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model = model  # LoRA mode: adapters are injected into this module in place
        self.tokenizer = tokenizer
        self.mode = mode
        self.lora = _lora_settings(lora)
        self.peft_model = None  # the peft.PeftModel wrapping `model`, made by the first adapter
        self._roles: dict[str, _Role] = {}
        self._tuner_layers: list[nn.Module] = []
        self._policy_in_place = False  # full mode: the policy trains `model` itself (add_policy(in_place=True))
        self._hidden_size = hidden_size(model)
        for param in model.parameters():
            param.requires_grad_(False)
        # Float32 logits the log-prob path computes at once (`train.logprob_chunk_mib`).
        self.logprob_chunk_bytes = DEFAULT_LOGPROB_CHUNK_BYTES
        self._lora_config = None
        if mode == "lora":
            # Built once, from the unwrapped model: once peft has wrapped it, the lora_A/lora_B
            # layers are linear layers under attention/MLP too and would match the presets.
            self._lora_config = peft_lora_config(model, self.lora)

    @classmethod
    def from_pretrained(cls, name: str, mode: str = "lora", lora: Any = None, **kwargs: Any) -> "SharedBase":
        """Load a model and tokenizer with `align.models.load_model_and_tokenizer` and wrap them."""
        model, tokenizer = load_model_and_tokenizer(name, **kwargs)
        return cls(model, tokenizer, mode=mode, lora=lora)

    # ------------------------------------------------------------------ properties

    @property
    def roles(self) -> list[str]:
        return list(self._roles)

    def has_role(self, role: str) -> bool:
        return role in self._roles

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def is_trainable(self, role: str) -> bool:
        return self._get(role).trainable

    def head(self, role: str) -> ScalarHead | None:
        return self._get(role).head

    def role_model(self, role: str) -> nn.Module:
        """The module that runs for `role` (LoRA: the shared model; only use it inside `role()`)."""
        entry = self._get(role)
        return entry.model if entry.model is not None else self.model

    def _get(self, role: str) -> _Role:
        if role not in self._roles:
            raise KeyError(f"role {role!r} has not been added; roles: {self.roles}")
        return self._roles[role]

    def _check_new(self, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
        if role in self._roles:
            raise ValueError(f"role {role!r} already exists")

    # ------------------------------------------------------------------ adding roles

    def add_policy(self, init_adapter: str | os.PathLike | None = None, trainable: bool = True,
                   in_place: bool = False) -> None:
        """The policy: a fresh LoRA adapter (B = 0, so it starts as the base), or one started from
        a saved adapter directory (full mode: a fresh copy of the base, or a saved full model).
        `in_place` (full mode, fresh policy): the policy trains the loaded base module itself, no
        copy, for a run in which no role reads the frozen base (GRPO at kl 0 keeps no reference);
        a reference cannot be added after it, and other roles' copies must be added before
        training starts. LoRA mode ignores it (the base is never trained there)."""
        self._check_new("policy")
        if in_place and self.mode == "full" and init_adapter is None:
            self._freeze_copy(self.model, trainable, False)
            self._roles["policy"] = _Role("policy", trainable, model=self.model)
            self._policy_in_place = True
        elif init_adapter is not None:
            self._add_from_dir("policy", Path(init_adapter), trainable=trainable)
        else:
            self._add_fresh("policy", trainable=trainable, with_head=False)

    def add_reference(self) -> None:
        """The reference: the policy's starting point, frozen. Add the policy first.

        Policy from the base -> the base with adapters disabled (full mode: the frozen base module
        itself, no copy). Policy from a saved adapter -> that adapter loaded again under the
        name "reference" and frozen (disabling adapters would be wrong here)."""
        self._check_new("reference")
        if self._policy_in_place:
            raise ValueError("the policy trains the base itself (add_policy(in_place=True)): there is no frozen base left to be the reference")
        start = self._roles["policy"].source if "policy" in self._roles else None
        if start is not None:
            self._add_from_dir("reference", Path(start), trainable=False)
        elif self.mode == "lora":
            self._roles["reference"] = _Role("reference", trainable=False, adapter=None)
        else:
            self._roles["reference"] = _Role("reference", trainable=False, model=self.model)

    def add_reward(self, path: str | os.PathLike | None = None, trainable: bool | None = None,
                   readout: str = "last_token") -> None:
        """The reward model. `path` = a saved reward directory (adapter + head.safetensors, or a
        full model + head): loaded frozen unless `trainable`, with the readout it was trained
        with. `path=None`: a fresh trainable adapter and head with `readout` (`last_token`, or
        `last_token+logprob`: see `ScalarHead`), for reward-model training."""
        self._check_new("reward")
        if trainable is None:
            trainable = path is None
        if path is not None:
            self._add_from_dir("reward", Path(path), trainable=trainable)
        else:
            self._add_fresh("reward", trainable=trainable, with_head=True, readout=readout)

    def add_value(self, init_from_reward: bool = False, path: str | os.PathLike | None = None, trainable: bool = True) -> None:
        """The value model (PPO critic): trainable adapter + head; fresh, copied from the reward
        role (`init_from_reward`), or loaded from a saved value directory (`path`)."""
        self._check_new("value")
        if path is not None:
            self._add_from_dir("value", Path(path), trainable=trainable)
        elif init_from_reward:
            self._copy_role("reward", "value", trainable=trainable)
        else:
            self._add_fresh("value", trainable=trainable, with_head=True)

    def _new_head(self, trainable: bool, readout: str = "last_token") -> ScalarHead:
        head = ScalarHead(self._hidden_size, readout, device=self.device)
        head.requires_grad_(trainable)
        head.train(self.model.training)
        return head

    def _add_fresh(self, role: str, trainable: bool, with_head: bool, readout: str = "last_token") -> None:
        check_readout(readout)  # before anything is added
        if self.mode == "lora":
            self._add_adapter(role, copy.deepcopy(self._lora_config), trainable)
            entry = _Role(role, trainable, adapter=role)
        else:
            model = self._full_copy(self.model, trainable, with_head, uses_lm_head=readout != "last_token")
            entry = _Role(role, trainable, model=model)
        if with_head:
            entry.head = self._new_head(trainable, readout)
        self._roles[role] = entry

    def _add_from_dir(self, role: str, path: Path, trainable: bool) -> None:
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory")
        has_head = (path / HEAD_FILE).is_file()
        if role in ("reward", "value") and not has_head:
            raise FileNotFoundError(f"{path / HEAD_FILE} not found: the {role} role needs a scalar head")
        head_state = read_head_state(path, self.device) if has_head and role in ("reward", "value") else None
        readout = readout_of_state(head_state) if head_state is not None else "last_token"
        if self.mode == "lora":
            if not (path / "adapter_config.json").is_file():
                raise FileNotFoundError(f"{path} has no adapter_config.json (is it a full-mode save?)")
            from peft import PeftConfig

            config = PeftConfig.from_pretrained(str(path))
            config.inference_mode = False  # requires_grad is set by us, below
            self._add_adapter(role, config, trainable)
            self._load_adapter_weights(role, path)
            entry = _Role(role, trainable, adapter=role, source=str(path))
        else:
            model = self._full_copy(self.model, trainable, with_head=head_state is not None,
                                    uses_lm_head=head_state is None or readout != "last_token")
            load_full_weights(model, path)
            entry = _Role(role, trainable, model=model, source=str(path))
        if head_state is not None:
            entry.head = self._new_head(trainable, readout)
            entry.head.load_state_dict(head_state)
        self._roles[role] = entry

    def _copy_role(self, source: str, target: str, trainable: bool) -> None:
        src = self._get(source)
        if self.mode == "lora":
            if src.adapter is None:
                raise ValueError(f"role {source!r} has no adapter to copy")
            from peft import get_peft_model_state_dict, set_peft_model_state_dict

            self._add_adapter(target, copy.deepcopy(self.peft_model.peft_config[src.adapter]), trainable)
            state = get_peft_model_state_dict(self.peft_model, adapter_name=src.adapter)
            state = {k: v.detach().clone() for k, v in state.items()}
            with self._preserve_state():
                set_peft_model_state_dict(self.peft_model, state, adapter_name=target)
            entry = _Role(target, trainable, adapter=target)
        else:
            entry = _Role(target, trainable, model=self._full_copy(src.model, trainable, src.head is not None))
        if src.head is not None:
            # The copy reads hidden states only (a value is per token; a log-prob term is not):
            # it takes w and b of a `last_token+logprob` reward head and leaves the log-prob part.
            entry.head = self._new_head(trainable)
            entry.head.load_state_dict({"weight": src.head.weight.detach(), "bias": src.head.bias.detach()})
        self._roles[target] = entry

    def _full_copy(self, source: nn.Module, trainable: bool, with_head: bool = False, uses_lm_head: bool = False) -> nn.Module:
        model = copy.deepcopy(source)
        self._freeze_copy(model, trainable, with_head and not uses_lm_head)
        return model

    @staticmethod
    def _freeze_copy(model: nn.Module, trainable: bool, freeze_lm_head: bool) -> None:
        for param in model.parameters():
            param.requires_grad_(trainable)
        if freeze_lm_head:
            # A last-token scalar head never uses the LM head; an untied one would get no gradient.
            output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
            if output is not None and output.weight is not inputs.weight:
                output.requires_grad_(False)

    # ------------------------------------------------------------------ peft plumbing

    @contextmanager
    def _preserve_state(self) -> Iterator[None]:
        """Snapshot `requires_grad` of every parameter and `training` of every module; restore
        them afterwards. Modules created inside (new adapter layers) take their parent's mode."""
        root = self.peft_model if self.peft_model is not None else self.model
        flags = [(p, p.requires_grad) for p in root.parameters()]
        modes = {id(m): (m, m.training) for m in root.modules()}
        try:
            yield
        finally:
            for param, flag in flags:
                param.requires_grad_(flag)
            base_training = modes[id(self.model)][1]
            root = self.peft_model if self.peft_model is not None else self.model
            training_by_name: dict[str, bool] = {}
            for name, module in root.named_modules():  # parents come before their children
                if id(module) in modes:
                    module.training = modes[id(module)][1]
                else:
                    parent = name.rsplit(".", 1)[0] if "." in name else ""
                    module.training = training_by_name.get(parent, base_training)
                training_by_name[name] = module.training

    def _add_adapter(self, name: str, config: Any, trainable: bool) -> None:
        from peft import get_peft_model
        from peft.tuners.tuners_utils import BaseTunerLayer

        with self._preserve_state():
            if self.peft_model is None:
                self.peft_model = get_peft_model(self.model, config, adapter_name=name)
            else:
                self.peft_model.add_adapter(name, config)
        self._tuner_layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        for param in self.adapter_parameters(name):
            param.requires_grad_(trainable)
        # Resting state: adapters disabled, so `self.model` outside a role context is the base.
        for layer in self._tuner_layers:
            layer._disable_adapters = True

    def _load_adapter_weights(self, name: str, path: Path) -> None:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        state = load_peft_weights(str(path), device=str(self.device))
        with self._preserve_state():
            result = set_peft_model_state_dict(self.peft_model, state, adapter_name=name)
        missing = [k for k in result.missing_keys if f".{name}." in k or k.endswith(f".{name}")]
        if missing:
            raise ValueError(f"{path}: adapter weights missing for {missing[:5]}")

    def adapter_parameters(self, adapter: str) -> list[nn.Parameter]:
        """The parameters of one peft adapter, across every tuner layer."""
        params: list[nn.Parameter] = []
        for layer in self._tuner_layers:
            for layer_name in layer.adapter_layer_names:
                container = getattr(layer, layer_name, None)
                if container is None or adapter not in container:
                    continue
                item = container[adapter]
                params.extend(item.parameters() if isinstance(item, nn.Module) else [item])
        return params

    # ------------------------------------------------------------------ running as a role

    @contextmanager
    def role(self, role: str) -> Iterator[nn.Module]:
        """Run as `role`: yields the module to call (a transformers causal LM).

        LoRA mode: activates the role's adapter (or disables adapters for a base reference) by
        writing the per-layer switches, and restores them on exit. No `requires_grad` flag is
        touched. Frozen roles run in eval mode inside the context; modes are restored on exit.
        """
        entry = self._get(role)
        model = self.role_model(role)
        saved_layers = [(layer, layer._active_adapter, layer._disable_adapters) for layer in self._tuner_layers]
        try:
            if entry.model is None:
                for layer in self._tuner_layers:
                    if layer.merged:
                        raise RuntimeError("SharedBase cannot switch roles on merged adapters")
                    if entry.adapter is None:
                        layer._disable_adapters = True
                    else:
                        layer._active_adapter = [entry.adapter]
                        layer._disable_adapters = False
            with eval_mode(model, entry.head) if not entry.trainable else nullcontext():
                yield model
        finally:
            for layer, active, disabled in saved_layers:
                layer._active_adapter = active
                layer._disable_adapters = disabled

    def enable_activation_checkpointing(self, every_n_layers: int = 1) -> None:
        """Turn on activation (gradient) checkpointing for every model, role switching included.

        A checkpointed layer is re-run during `backward()`, so a plain checkpoint would re-run a
        policy layer with whatever adapter is active at backward time (after a value forward: the
        value adapter), silently corrupting gradients. The `context_fn` given to
        `torch.utils.checkpoint` records the adapter switches at forward time and replays them
        during the recompute. Non-reentrant checkpointing only (the default since torch 2.4)."""
        kwargs: dict[str, Any] = {"use_reentrant": False}
        if self.mode == "lora":
            kwargs["context_fn"] = CheckpointContextFn(self)
        models = [self.model] + [e.model for e in self._roles.values() if e.model is not None and e.model is not self.model]
        for model in models:
            enable_activation_checkpointing(model, kwargs, every_n_layers=every_n_layers)

    def _grad_context(self, role: str):
        return nullcontext() if self._get(role).trainable else torch.no_grad()

    def logprobs(self, role: str, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor,
                 target_mask_BT: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False) -> TokenLogProbs:
        """Per-token log-probs (B, T) of the target tokens under `role` (and entropies when asked),
        at `temperature`: `align.logprobs.token_logprobs`, the toolkit's one log-prob path, run
        as `role`. Frozen roles run under no_grad."""
        with self._grad_context(role), self.role(role) as model:
            return token_logprobs(model, input_ids_BT, attention_mask_BT, target_mask_BT, temperature, with_entropy,
                                  chunk_bytes=self.logprob_chunk_bytes)

    def hidden_states(self, role: str, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, T, H) of `role` (after the final norm; no LM head computed)."""
        with self._grad_context(role), self.role(role) as model:
            return final_hidden_states(model, input_ids_BT, attention_mask_BT)

    def scores(self, role: str, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor,
               completion_mask_BT: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar score (B,) of `role`'s head on the last real token of each row. A head with the
        `last_token+logprob` readout also needs `completion_mask_BT` (1 on completion tokens) and
        adds its weighted sum and mean completion log-prob, from the same forward."""
        head = self._head_of(role)
        if head.uses_logprobs and completion_mask_BT is None:
            raise ValueError(f"role {role!r} has a last_token+logprob head: scores() needs completion_mask_BT")
        hidden_BTH = self.hidden_states(role, input_ids_BT, attention_mask_BT)
        index_B = last_token_index(attention_mask_BT)
        last_BH = hidden_BTH[torch.arange(hidden_BTH.shape[0], device=hidden_BTH.device), index_B]
        with self._grad_context(role):
            features_B2 = None
            if head.uses_logprobs:  # from the same forward's hidden states (the one log-prob path)
                mask_BT = completion_mask_BT * attention_mask_BT
                with self.role(role) as model:
                    token_logps_BT = token_logprobs(model, input_ids_BT, attention_mask_BT, mask_BT, hidden_BTH=hidden_BTH,
                                                    chunk_bytes=self.logprob_chunk_bytes).logps_BT
                features_B2 = sum_and_mean_logprobs(token_logps_BT, mask_BT)
            return head.score(last_BH, features_B2)

    def values(self, role: str, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor) -> torch.Tensor:
        """Per-token scalars (B, T) of `role`'s head: entry t reads the prefix ending at token t.
        Padding positions are 0."""
        head = self._head_of(role)
        hidden_BTH = self.hidden_states(role, input_ids_BT, attention_mask_BT)
        with self._grad_context(role):
            values_BT = head(hidden_BTH.to(head.weight.dtype)).squeeze(-1)
            return values_BT * attention_mask_BT.to(values_BT.dtype)

    def _head_of(self, role: str) -> ScalarHead:
        head = self._get(role).head
        if head is None:
            raise ValueError(f"role {role!r} has no scalar head")
        return head

    def generate(self, role: str, prompts: Any, **kwargs: Any) -> Any:
        """Sample from `role` with `align.rollout.generate(model, tokenizer, prompts, **kwargs)`,
        under no_grad and in eval mode (dropout off); modes are restored afterwards."""
        with torch.no_grad(), self.role(role) as model, eval_mode(model):
            return rollout_generate(model, self.tokenizer, prompts, **kwargs)

    # ------------------------------------------------------------------ parameters

    def role_parameters(self, role: str) -> list[nn.Parameter]:
        """Every parameter that belongs to `role` alone: its adapter and head (full mode: its
        copy and head; a full-mode base reference owns the base module). Frozen ones included."""
        entry = self._get(role)
        params: list[nn.Parameter] = []
        if entry.model is not None:
            params.extend(entry.model.parameters())
        elif entry.adapter is not None:
            params.extend(self.adapter_parameters(entry.adapter))
        if entry.head is not None:
            params.extend(entry.head.parameters())
        return params

    def trainable_parameters(self, role: str) -> list[nn.Parameter]:
        """The parameters an optimiser for `role` should hold (those with requires_grad)."""
        return [p for p in self.role_parameters(role) if p.requires_grad]

    def parameters_by_role(self) -> dict[str, list[nn.Parameter]]:
        """{role: trainable parameters}, for one optimiser with a parameter group per role."""
        return {role: self.trainable_parameters(role) for role in self._roles}

    def base_parameters(self) -> list[nn.Parameter]:
        """Weights of the base model(s), adapters excluded (full mode: the base and every copy)."""
        adapter_ids = {id(p) for role in self._roles.values() if role.adapter for p in self.adapter_parameters(role.adapter)}
        params = [p for p in self.model.parameters() if id(p) not in adapter_ids]
        for entry in self._roles.values():
            if entry.model is not None and entry.model is not self.model:
                params.extend(entry.model.parameters())
        return params

    def all_adapter_parameters(self) -> list[nn.Parameter]:
        return [p for entry in self._roles.values() if entry.adapter for p in self.adapter_parameters(entry.adapter)]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for entry in self._roles.values() if entry.head is not None for p in entry.head.parameters()]

    # ------------------------------------------------------------------ saving and loading

    def save_role(self, role: str, directory: str | os.PathLike) -> Path:
        """Save `role` to `directory`: a peft adapter dir (LoRA) or `save_pretrained` of its copy
        (full), plus `head.safetensors` when it has a head, plus `align_role.json`."""
        entry = self._get(role)
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if entry.model is not None:
            entry.model.save_pretrained(str(out))
        elif entry.adapter is not None:
            with self._preserve_state(), tempfile.TemporaryDirectory(dir=str(out)) as tmp:
                # save_embedding_layers=False: with adapters on the embeddings or LM head peft would
                # otherwise write a copy of those (frozen, unchanged) base weights into the adapter.
                self.peft_model.save_pretrained(tmp, selected_adapters=[entry.adapter], save_embedding_layers=False)
                saved = Path(tmp) / entry.adapter if entry.adapter != "default" else Path(tmp)
                for item in saved.iterdir():
                    if item.is_file():
                        shutil.move(str(item), str(out / item.name))
        else:
            raise ValueError(f"role {role!r} is the base with adapters disabled; it has nothing to save")
        if entry.head is not None:
            save_head(entry.head, out)
        meta = {"role": role, "mode": self.mode, "head": entry.head is not None, "hidden_size": self._hidden_size,
                "readout": entry.head.readout if entry.head is not None else None}
        (out / ROLE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out

    def load_role(self, role: str, directory: str | os.PathLike, trainable: bool | None = None) -> None:
        """Load `role` from a `save_role` directory. A new role is added (frozen or trainable as
        `trainable` says, default: the role's usual state); an existing one gets the weights
        copied in place, so optimisers holding its parameters stay valid (resume)."""
        path = Path(directory)
        if role not in self._roles:
            if trainable is None:
                trainable = DEFAULT_TRAINABLE[role]
            self._check_new(role)
            self._add_from_dir(role, path, trainable=trainable)
            return
        entry = self._roles[role]
        if entry.model is not None:
            if entry.model is self.model:
                raise ValueError(f"role {role!r} is the frozen base itself; it cannot be overwritten")
            load_full_weights(entry.model, path)
        elif entry.adapter is not None:
            self._load_adapter_weights(entry.adapter, path)
        else:
            raise ValueError(f"role {role!r} is the base with adapters disabled; nothing to load")
        if entry.head is not None:
            state = read_head_state(path, self.device)
            if readout_of_state(state) != entry.head.readout:
                raise ValueError(f"{path}: a {readout_of_state(state)} head cannot be loaded into role {role!r}, "
                                 f"whose head reads {entry.head.readout}")
            with torch.no_grad():
                entry.head.load_state_dict(state)
        if trainable is not None and trainable != entry.trainable:
            self._set_trainable(entry, trainable)

    def _set_trainable(self, entry: _Role, trainable: bool) -> None:
        if entry.model is not None:
            if entry.model is self.model:
                raise ValueError(f"role {entry.name!r} is the frozen base itself; it cannot be made trainable")
            self._freeze_copy(entry.model, trainable, freeze_lm_head=entry.head is not None and not entry.head.uses_logprobs)
        elif entry.adapter is not None:
            for param in self.adapter_parameters(entry.adapter):
                param.requires_grad_(trainable)
        if entry.head is not None:
            entry.head.requires_grad_(trainable)
        entry.trainable = trainable

    def __repr__(self) -> str:
        parts = []
        for entry in self._roles.values():
            what = entry.adapter or ("own copy" if entry.model is not None and entry.model is not self.model else "base")
            parts.append(f"{entry.name}({what}, {'trainable' if entry.trainable else 'frozen'}{', head' if entry.head is not None else ''})")
        return f"SharedBase(mode={self.mode}, model={type(self.model).__name__}, roles=[{', '.join(parts)}])"
