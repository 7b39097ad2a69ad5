"""`python -m dpo_exp.evaluate run_dir=PATH [eval.num_prompts=...]`: re-evaluate a finished run (entry point)."""

from .evaluation.orchestrator import main

if __name__ == "__main__":
    main()
