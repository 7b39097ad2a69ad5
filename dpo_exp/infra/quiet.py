"""Library notices that tell the user of a run nothing: silenced once, at the start of a command.

Each is a library talking to another library (or printing at import time); dpo_exp's own code uses the current
names, so what is left here cannot be fixed by calling the libraries differently.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings

INTEGRATIONS = "transformers.integrations.integration_utils"


def quiet_library_notices() -> None:
    """Silence, for this process:

    - transformers' "[INFO] Running in WANDB offline mode", printed when its integrations module is first imported
      under WANDB_MODE=offline (every TrainingArguments imports it), whatever `logger` the run uses: the module is
      imported here once with stdout swallowed (infra.tracking says how W&B logs);
    - transformers 5's FutureWarning on `is_gradient_checkpointing`, which PEFT reads when it wraps a model in LoRA
      (peft.PeftModel.__init__).
    """
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if INTEGRATIONS not in sys.modules:
        with contextlib.redirect_stdout(io.StringIO()):
            __import__(INTEGRATIONS)
