"""CI runs `.ci/run`, and `.ci/run` must run exactly the README's test command (command 2 of its
first code block), whose last part is `scripts/tools/test_vllm.sh`: the vLLM engine's tests in their
own environment. A README command edited without `.ci/run` (or the other way round) fails here."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_exactly_the_readme_test_command():
    install_and_run, test = _readme_commands()
    assert "align train" in install_and_run and "pytest" in test
    ci = [line for line in (REPO / ".ci/run").read_text().splitlines() if line.strip()]
    assert ci[-1] == test


def test_the_test_command_runs_the_vllm_engine_tests_in_their_own_environment():
    _, test = _readme_commands()
    assert test.endswith("&& bash scripts/tools/test_vllm.sh")
    script = (REPO / "scripts/tools/test_vllm.sh").read_text()
    assert "python3 -m venv .venv-vllm" in script and '".[test,vllm]"' in script
    assert "tests/test_vllm_engine.py" in script
    # a broken vLLM install must fail the script, not skip the engine's tests
    assert 'python -c "import vllm' in script and "set -euo pipefail" in script
