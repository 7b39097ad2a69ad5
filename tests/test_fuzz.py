"""Seeded fuzzing of preference files: every corrupted file ends in a clean result or a clean one-line error.

Many cases go through the loading + validation path in-process (the same calls the CLI makes before any model
loads: config.validate, then data.load_preference_data with the real tokenizer's prompt-length check); only
`UserError` may come out. A handful go through the full CLI, where the run must either complete or exit 2 with one
`error:` line, never a traceback or a hang.
"""

from __future__ import annotations

import json
import random
import signal
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from dpo_exp.config import validate
from dpo_exp.data.preference import load_preference_data
from dpo_exp.data.schema import PreferenceData
from dpo_exp.errors import UserError

from .conftest import FAST_MODEL, FAST_TRAINER, compose, run_cli, shared_file

N_ROWS = 14  # rows of the real UltraFeedback sample each fuzzed file starts from
N_CASES = 50  # in-process cases
MAX_LENGTH = 64  # as in FAST_TRAINER


def base_rows() -> list[dict]:
    with shared_file("ultrafeedback/sample.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(N_ROWS)]


# ---------------------------------------------------------------- corruptions: (lines of bytes, rng) -> lines


def _row_index(lines: list[bytes], rng: random.Random) -> int:
    return rng.randrange(len(lines)) if lines else 0


def _edit_row(lines: list[bytes], rng: random.Random, edit: Callable[[dict, random.Random], None]) -> list[bytes]:
    """Apply `edit` to one row that still parses as a JSON object (no-op when none does)."""
    candidates = [i for i, line in enumerate(lines) if _parses(line)]
    if not candidates:
        return lines
    i = rng.choice(candidates)
    row = json.loads(lines[i])
    edit(row, rng)
    lines = list(lines)
    lines[i] = json.dumps(row).encode("utf-8")
    return lines


def _parses(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def truncate_line(lines, rng):
    i = _row_index(lines, rng)
    return [*lines[:i], lines[i][: rng.randrange(1, max(2, len(lines[i])))], *lines[i + 1 :]] if lines else lines


def drop_key(lines, rng):
    return _edit_row(lines, rng, lambda row, r: row.pop(r.choice(["prompt", "chosen", "rejected", "metadata"]), None))


def swap_type(lines, rng):
    def edit(row, r):
        row[r.choice(["prompt", "chosen", "rejected"])] = r.choice([0, 3.5, True, None, ["a", "b"], {"x": 1}, []])

    return _edit_row(lines, rng, edit)


def swap_score_type(lines, rng):
    def edit(row, r):
        row.setdefault("metadata", {})["score_chosen"] = r.choice(["high", "7", None, [1], {"v": 2}, float("nan")])

    return _edit_row(lines, rng, edit)


def invalid_bytes(lines, rng):
    i = _row_index(lines, rng)
    if not lines:
        return lines
    cut = rng.randrange(len(lines[i]) + 1)
    return [
        *lines[:i],
        lines[i][:cut] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80"]) + lines[i][cut:],
        *lines[i + 1 :],
    ]


def empty_strings(lines, rng):
    return _edit_row(lines, rng, lambda row, r: row.update({r.choice(["prompt", "chosen", "rejected"]): ""}))


def chosen_equals_rejected(lines, rng):
    return _edit_row(lines, rng, lambda row, r: row.update(rejected=row.get("chosen")))


def huge_prompt(lines, rng):
    return _edit_row(lines, rng, lambda row, r: row.update(prompt="word " * r.choice([2_000, 50_000])))


def empty_file(lines, rng):
    return []


def blank_and_crlf(lines, rng):
    return [line + b"\r" for line in lines] + [b"", b"   "]


def non_object_line(lines, rng):
    i = _row_index(lines, rng)
    return [*lines[:i], rng.choice([b"[1, 2]", b"42", b'"text"', b"null", b"[" * 5000 + b"]" * 5000]), *lines[i:]]


def lone_surrogate(lines, rng):
    i = _row_index(lines, rng)
    if not lines:
        return lines
    return [*lines[:i], lines[i].replace(b'"chosen": "', b'"chosen": "\\ud800', 1), *lines[i + 1 :]]


def byte_order_mark(lines, rng):
    return [b"\xef\xbb\xbf" + lines[0], *lines[1:]] if lines else lines


def keep_few_rows(lines, rng):
    return lines[: rng.choice([1, 2, 3])]


def all_identical(lines, rng):
    for _ in range(len(lines)):
        lines = chosen_equals_rejected(lines, rng)
    return lines


CORRUPTIONS = [
    truncate_line,
    drop_key,
    swap_type,
    swap_score_type,
    invalid_bytes,
    empty_strings,
    chosen_equals_rejected,
    huge_prompt,
    empty_file,
    blank_and_crlf,
    non_object_line,
    lone_surrogate,
    byte_order_mark,
    keep_few_rows,
    all_identical,
]


def corrupt_file(path: Path, seed: int, rows: list[dict]) -> list[str]:
    """Write the rows as jsonl with 1-3 seeded corruptions applied; returns their names."""
    rng = random.Random(seed)
    lines = [json.dumps(r).encode("utf-8") for r in rows]
    chosen = [rng.choice(CORRUPTIONS) for _ in range(rng.randint(1, 3))]
    for corruption in chosen:
        lines = corruption(lines, rng)
    path.write_bytes(b"\n".join(lines) + (b"\n" if lines else b""))
    return [c.__name__ for c in chosen]


# ---------------------------------------------------------------- in-process: loading + validation


@pytest.fixture(scope="module")
def tokenizer():
    from dpo_exp.models import offline_gpt2_tokenizer

    return offline_gpt2_tokenizer()


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return base_rows()


def load_like_the_cli(path: Path, dataset: str, tokenizer) -> PreferenceData:
    """validate + load_preference_data, exactly as the pipeline calls them before building the model."""
    cfg = compose(
        [
            *FAST_MODEL,
            *FAST_TRAINER,
            f"dataset={dataset}",
            f"dataset.path={path}",
            "logger=none",
            "lora=none",
            "data_size=4",
        ]
    )
    validate(cfg)

    def prompt_fits(prompt: str) -> bool:
        return len(tokenizer(prompt).input_ids) + int(cfg.train.min_prompt_tokens) <= MAX_LENGTH

    return load_preference_data(cfg.dataset, int(cfg.seed), prompt_fits, MAX_LENGTH)


class Hang(Exception):
    """A case ran past its time limit."""


def _alarm(signum, frame):
    raise Hang()


@pytest.fixture(scope="module")
def fuzz_outcomes(tmp_path_factory, rows, tokenizer) -> dict[int, tuple[str, list[str], object]]:
    """seed -> (outcome, corruptions applied, UserError message | PreferenceData | traceback text), run once.

    Outcomes: "clean", "error" (a UserError), "crash" (any other exception) or "hang" (over 30 s).
    """
    folder = tmp_path_factory.mktemp("fuzz")
    results = {}
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for seed in range(N_CASES):
            path = folder / f"{seed}" / "pairs.jsonl"
            path.parent.mkdir()
            applied = corrupt_file(path, seed, rows)
            signal.alarm(30)
            try:
                data = load_like_the_cli(path, ["ultrafeedback", "preference_files"][seed % 2], tokenizer)
                results[seed] = ("clean", applied, data)
            except UserError as exc:
                results[seed] = ("error", applied, str(exc))
            except Hang:
                results[seed] = ("hang", applied, "over 30 s")
            except BaseException:  # noqa: BLE001 - a crash is the finding; it fails that seed's test below
                results[seed] = ("crash", applied, traceback.format_exc())
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return results


@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", range(N_CASES))
def test_corrupted_file_loads_cleanly_or_fails_with_one_line(seed, fuzz_outcomes, tokenizer):
    outcome, applied, result = fuzz_outcomes[seed]
    assert outcome in ("clean", "error"), (applied, result)
    if outcome == "error":
        message = result
        assert message and "\n" not in message and len(message) < 400, (applied, message)
        assert "pairs.jsonl" in message or "data_size" in message, (applied, message)
        return
    data = result
    assert len(data.train) == 4 and data.eval, applied
    for row in data.train + data.eval:
        assert all(isinstance(row[k], str) and row[k].strip() for k in ("chosen", "rejected")), applied
        assert row["chosen"].strip() != row["rejected"].strip()
        assert len(tokenizer(row["prompt"]).input_ids) < MAX_LENGTH


def test_fuzzing_exercises_both_outcomes(fuzz_outcomes):
    """The seeded cases are neither all errors nor all clean: both branches are really tested."""
    outcomes = [outcome for outcome, _, _ in fuzz_outcomes.values()]
    assert outcomes.count("clean") >= 5 and outcomes.count("error") >= 5, outcomes


# ---------------------------------------------------------------- a few through the full CLI


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


CLI_CASES = {
    # benign damage the filters absorb: the run completes on what is left
    "absorbed": lambda lines, rng: huge_prompt(
        empty_strings(chosen_equals_rejected(drop_key(blank_and_crlf(lines, rng), rng), rng), rng), rng
    ),
    "truncated_line": lambda lines, rng: [*lines[:5], lines[5][:37], *lines[6:]],
    "invalid_bytes": lambda lines, rng: [*lines[:2], lines[2][:10] + b"\xff" + lines[2][10:], *lines[3:]],
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_corrupted_file_through_the_cli(tmp_path, case, rows):
    rng = random.Random(0)
    lines = CLI_CASES[case]([json.dumps(r).encode("utf-8") for r in rows], rng)
    path = write_lines(tmp_path / "pairs.jsonl", lines)
    run_dir = tmp_path / "run"
    args = [
        *FAST_MODEL,
        *FAST_TRAINER,
        "dataset=ultrafeedback",
        f"dataset.path={path}",
        "data_size=4",
        "epochs=1",
        "trainer.warmup_steps=0",  # one step: with the default warm-up it would train at lr 0 (refused)
        "eval.enabled=false",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    ]
    proc = run_cli(args, tmp_path, timeout=240)  # a hang raises TimeoutExpired and fails the test
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    if case == "absorbed":
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert summary["status"] == "completed" and summary["data"]["train_pairs"] == 4
        assert summary["data"]["train_dropped_identical"] >= 1
    else:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
        assert "pairs.jsonl: line" in errors[0]
