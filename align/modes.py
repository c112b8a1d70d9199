"""Train/eval mode switches that put every module's own flag back afterwards.

`model.eval()` followed by `model.train()` is not a restore: it sets every submodule to train,
including frozen roles and heads that were in eval mode on purpose. `eval_mode(*modules)` records
each submodule's flag, switches them all to eval (dropout off) and writes the recorded flags back
on exit, whatever happens inside. Used by evaluation, generation and the frozen roles of
`align.shared_base`.

Run: `python -c "import torch; from align.modes import eval_mode; m = torch.nn.Dropout(); m.train(); exec('with eval_mode(m): print(m.training)'); print(m.training)"`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch.nn as nn


@contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Every submodule of `modules` (None entries are skipped) in eval mode inside the context;
    each one's own train/eval flag restored on exit."""
    saved = [(m, m.training) for module in modules if module is not None for m in module.modules()]
    for module, _ in saved:
        module.training = False
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training
